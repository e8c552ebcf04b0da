//! OMA JSON (11543, Core TS 1.0.2 section 6.4.4): `{"bn": "/3/0/", "e": [{"n": "0",
//! "sv": "..."}, {"n": "6/0", "v": 1}]}`; numbers in `v`, strings and opaque (base64) in
//! `sv`, booleans in `bv`, object links in `ov`.

use base64::Engine;
use serde_json::{json, Map, Value as Json};

use super::{Entry, FormatError, Path, Value};

const FORMAT: &str = "OMA JSON";

fn malformed(why: impl Into<String>) -> FormatError {
    FormatError::malformed(FORMAT, why)
}

pub fn decode(payload: &[u8]) -> Result<Vec<Entry>, FormatError> {
    let document: Json =
        serde_json::from_slice(payload).map_err(|error| malformed(error.to_string()))?;
    let base = match document.get("bn") {
        None => "",
        Some(Json::String(bn)) => bn.as_str(),
        Some(_) => return Err(malformed("bn is not a string")),
    };
    let records = document
        .get("e")
        .and_then(Json::as_array)
        .ok_or_else(|| malformed("no e array"))?;
    records
        .iter()
        .map(|record| {
            let name = match record.get("n") {
                None => "",
                Some(Json::String(n)) => n.as_str(),
                Some(_) => return Err(malformed("n is not a string")),
            };
            let path: Path = format!("{base}{name}").parse()?;
            let value = if let Some(v) = record.get("v") {
                number(v).ok_or_else(|| malformed("v is not a number"))?
            } else if let Some(sv) = record.get("sv") {
                Value::String(
                    sv.as_str()
                        .ok_or_else(|| malformed("sv is not a string"))?
                        .to_owned(),
                )
            } else if let Some(bv) = record.get("bv") {
                Value::Boolean(
                    bv.as_bool()
                        .ok_or_else(|| malformed("bv is not a boolean"))?,
                )
            } else if let Some(ov) = record.get("ov") {
                let text = ov.as_str().ok_or_else(|| malformed("ov is not a string"))?;
                super::text::parse_value(super::ResourceType::ObjLink, text)?
            } else {
                return Err(malformed(format!("record {path} has no value")));
            };
            Ok(Entry { path, value })
        })
        .collect()
}

/// A JSON number as the narrowest value it is: integer, unsigned, or float.
pub(crate) fn number(json: &Json) -> Option<Value> {
    if let Some(n) = json.as_i64() {
        Some(Value::Integer(n))
    } else if let Some(n) = json.as_u64() {
        Some(Value::Unsigned(n))
    } else {
        json.as_f64().map(Value::Float)
    }
}

/// The base name shared by all entries: `base`, or its parent when an entry is `base`.
pub(crate) fn base_name(base: &Path, entries: &[Entry]) -> String {
    let parent = if entries.iter().any(|entry| &entry.path == base) {
        base.truncated(base.len().saturating_sub(1))
    } else {
        base.clone()
    };
    if parent.is_empty() {
        "/".to_owned()
    } else {
        format!("{parent}/")
    }
}

pub fn encode(base: &Path, entries: &[Entry]) -> Vec<u8> {
    let bn = base_name(base, entries);
    let records: Vec<Json> = entries
        .iter()
        .map(|entry| {
            let full = entry.path.to_string();
            let name = full.strip_prefix(&bn).unwrap_or(&full);
            let mut record = Map::new();
            record.insert("n".into(), name.into());
            let (key, value) = match &entry.value {
                Value::String(s) => ("sv", Json::from(s.as_str())),
                Value::Opaque(bytes) => (
                    "sv",
                    base64::engine::general_purpose::STANDARD
                        .encode(bytes)
                        .into(),
                ),
                Value::Boolean(b) => ("bv", (*b).into()),
                Value::ObjLink(o, i) => ("ov", format!("{o}:{i}").into()),
                other => ("v", other.to_json()),
            };
            record.insert(key.into(), value);
            Json::Object(record)
        })
        .collect();
    json!({ "bn": bn, "e": records }).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::strategies;
    use super::*;
    use proptest::prelude::*;

    /// Core TS 1.0.2 section 6.4.4 example (part of the Device object).
    #[test]
    fn spec_example() {
        let payload = br#"{"bn":"/3/0/","e":[
            {"n":"0","sv":"Open Mobile Alliance"},
            {"n":"6/0","v":1},{"n":"6/1","v":5},
            {"n":"9","v":100},{"n":"13","v":1367491215},
            {"n":"16","sv":"U"}]}"#;
        let entries = decode(payload).unwrap();
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[0].path.to_string(), "/3/0/0");
        assert_eq!(entries[2].path.to_string(), "/3/0/6/1");
        assert_eq!(entries[2].value, Value::Integer(5));
        assert!(decode(br#"{"bn":"/3/0/","e":[{"n":"x","v":1}]}"#).is_err());
        assert!(decode(br#"{"e":[{"n":"/3/0/1"}]}"#).is_err());
        assert!(decode(b"{").is_err());
    }

    proptest! {
        #[test]
        fn round_trip(entries in strategies::instance_entries()) {
            let base: Path = "/3/0".parse().unwrap();
            let typed = entries.clone();
            let types = strategies::types_of(&typed);
            let decoded = super::super::decode(
                super::super::ContentFormat::OmaJson, &base, &encode(&base, &entries), &types,
            ).unwrap();
            prop_assert_eq!(decoded, entries);
        }
    }
}
