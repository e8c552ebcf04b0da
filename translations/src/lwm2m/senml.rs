//! SenML JSON (110) and SenML CBOR (112) as LwM2M 1.1 uses them (RFC 8428; Core TS 1.1.1
//! section 7.4.5 and 7.4.6): records with a base name `bn` that carries over to the
//! following records, a name `n`, and one of `v` (number), `vs` (string), `vb` (boolean),
//! `vd` (opaque: base64url in JSON, a byte string in CBOR) or `vlo` (object link). CBOR
//! uses RFC 8428's integer labels; `vlo` keeps its text label.

use base64::Engine;
use serde_json::{Map, Value as Json};

use super::cbor::{self, Cbor};
use super::oma_json::{base_name, number};
use super::{Entry, FormatError, Path, ResourceType, Value};

const JSON: &str = "SenML JSON";
const CBOR: &str = "SenML CBOR";

const LABEL_BASE_NAME: i64 = -2;
const LABEL_NAME: i64 = 0;
const LABEL_VALUE: i64 = 2;
const LABEL_STRING: i64 = 3;
const LABEL_BOOL: i64 = 4;
const LABEL_DATA: i64 = 8;

fn url_safe() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// The value of one record and its name relative to the current base name.
struct Record {
    base_name: Option<String>,
    name: String,
    value: Option<Value>,
}

fn assemble(records: Vec<Record>, format: &'static str) -> Result<Vec<Entry>, FormatError> {
    let mut base = String::new();
    let mut entries = Vec::with_capacity(records.len());
    for record in records {
        if let Some(bn) = record.base_name {
            base = bn;
        }
        let path: Path = format!("{base}{}", record.name).parse()?;
        // A record without a value names a path (Read-Composite requests); as data it
        // has nothing to say.
        let value = record
            .value
            .ok_or_else(|| FormatError::malformed(format, format!("record {path} has no value")))?;
        entries.push(Entry { path, value });
    }
    Ok(entries)
}

pub fn decode_json(payload: &[u8]) -> Result<Vec<Entry>, FormatError> {
    let malformed = |why: String| FormatError::malformed(JSON, why);
    let document: Json =
        serde_json::from_slice(payload).map_err(|error| malformed(error.to_string()))?;
    let array = document
        .as_array()
        .ok_or_else(|| malformed("not an array".into()))?;
    let text = |record: &Json, key: &str| -> Result<Option<String>, FormatError> {
        match record.get(key) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed(format!("{key} is not a string"))),
        }
    };
    let mut records = Vec::with_capacity(array.len());
    for record in array {
        if !record.is_object() {
            return Err(malformed("a record is not an object".into()));
        }
        let value = if let Some(v) = record.get("v") {
            Some(number(v).ok_or_else(|| malformed("v is not a number".into()))?)
        } else if let Some(s) = text(record, "vs")? {
            Some(Value::String(s))
        } else if let Some(b) = record.get("vb") {
            Some(Value::Boolean(
                b.as_bool()
                    .ok_or_else(|| malformed("vb is not a boolean".into()))?,
            ))
        } else if let Some(d) = text(record, "vd")? {
            Some(Value::Opaque(
                url_safe()
                    .decode(d.trim_end_matches('=').as_bytes())
                    .map_err(|_| malformed("vd is not base64url".into()))?,
            ))
        } else if let Some(link) = text(record, "vlo")? {
            Some(super::text::parse_value(ResourceType::ObjLink, &link)?)
        } else {
            None
        };
        records.push(Record {
            base_name: text(record, "bn")?,
            name: text(record, "n")?.unwrap_or_default(),
            value,
        });
    }
    assemble(records, JSON)
}

/// The record fields of one entry, in SenML terms.
fn fields(entry: &Entry, bn: &str) -> (String, &'static str) {
    let full = entry.path.to_string();
    let name = full.strip_prefix(bn).unwrap_or(&full).to_owned();
    let key = match &entry.value {
        Value::String(_) => "vs",
        Value::Boolean(_) => "vb",
        Value::Opaque(_) => "vd",
        Value::ObjLink(..) => "vlo",
        Value::Integer(_) | Value::Unsigned(_) | Value::Float(_) | Value::Time(_) => "v",
    };
    (name, key)
}

pub fn encode_json(base: &Path, entries: &[Entry]) -> Vec<u8> {
    let bn = base_name(base, entries);
    let records: Vec<Json> = entries
        .iter()
        .enumerate()
        .map(|(at, entry)| {
            let (name, key) = fields(entry, &bn);
            let mut record = Map::new();
            if at == 0 {
                record.insert("bn".into(), bn.as_str().into());
            }
            record.insert("n".into(), name.into());
            let value = match &entry.value {
                Value::Opaque(bytes) => url_safe().encode(bytes).into(),
                other => other.to_json(),
            };
            record.insert(key.into(), value);
            Json::Object(record)
        })
        .collect();
    Json::Array(records).to_string().into_bytes()
}

fn cbor_label(key: &Cbor) -> Option<i64> {
    match key {
        Cbor::Unsigned(n) => i64::try_from(*n).ok(),
        Cbor::Negative(n) => i64::try_from(*n).ok().map(|n| -1 - n),
        _ => None,
    }
}

fn cbor_value(value: &Cbor) -> Option<Value> {
    Some(match value {
        Cbor::Unsigned(n) => match i64::try_from(*n) {
            Ok(n) => Value::Integer(n),
            Err(_) => Value::Unsigned(*n),
        },
        Cbor::Negative(n) => Value::Integer(-1 - i64::try_from(*n).ok()?),
        Cbor::Float(f) if f.is_finite() => Value::Float(*f),
        _ => return None,
    })
}

pub fn decode_cbor(payload: &[u8]) -> Result<Vec<Entry>, FormatError> {
    let malformed = |why: String| FormatError::malformed(CBOR, why);
    let document = cbor::decode(payload).map_err(|error| malformed(error.to_string()))?;
    let Cbor::Array(array) = document else {
        return Err(malformed("not an array".into()));
    };
    let mut records = Vec::with_capacity(array.len());
    for record in array {
        let Cbor::Map(pairs) = record else {
            return Err(malformed("a record is not a map".into()));
        };
        let mut parsed = Record {
            base_name: None,
            name: String::new(),
            value: None,
        };
        for (key, value) in pairs {
            let wrong = |what: &str| malformed(format!("{what} has the wrong type"));
            match (cbor_label(&key), &key, value) {
                (Some(LABEL_BASE_NAME), _, Cbor::Text(s)) => parsed.base_name = Some(s),
                (Some(LABEL_BASE_NAME), _, _) => return Err(wrong("bn")),
                (Some(LABEL_NAME), _, Cbor::Text(s)) => parsed.name = s,
                (Some(LABEL_NAME), _, _) => return Err(wrong("n")),
                (Some(LABEL_VALUE), _, v) => {
                    parsed.value = Some(cbor_value(&v).ok_or_else(|| wrong("v"))?)
                }
                (Some(LABEL_STRING), _, Cbor::Text(s)) => parsed.value = Some(Value::String(s)),
                (Some(LABEL_STRING), _, _) => return Err(wrong("vs")),
                (Some(LABEL_BOOL), _, Cbor::Bool(b)) => parsed.value = Some(Value::Boolean(b)),
                (Some(LABEL_BOOL), _, _) => return Err(wrong("vb")),
                (Some(LABEL_DATA), _, Cbor::Bytes(d)) => parsed.value = Some(Value::Opaque(d)),
                (Some(LABEL_DATA), _, _) => return Err(wrong("vd")),
                (None, Cbor::Text(label), Cbor::Text(link)) if label == "vlo" => {
                    parsed.value = Some(super::text::parse_value(ResourceType::ObjLink, &link)?)
                }
                // Time, units, sums and labels we do not use are skipped (RFC 8428 4.4).
                _ => {}
            }
        }
        records.push(parsed);
    }
    assemble(records, CBOR)
}

pub fn encode_cbor(base: &Path, entries: &[Entry]) -> Vec<u8> {
    let bn = base_name(base, entries);
    let records = entries
        .iter()
        .enumerate()
        .map(|(at, entry)| {
            let (name, key) = fields(entry, &bn);
            let mut pairs = Vec::with_capacity(3);
            if at == 0 {
                pairs.push((Cbor::integer(LABEL_BASE_NAME), Cbor::Text(bn.clone())));
            }
            pairs.push((Cbor::integer(LABEL_NAME), Cbor::Text(name)));
            let value = match &entry.value {
                Value::Integer(n) | Value::Time(n) => Cbor::integer(*n),
                Value::Unsigned(n) => Cbor::Unsigned(*n),
                Value::Float(f) => Cbor::Float(*f),
                Value::Boolean(b) => Cbor::Bool(*b),
                Value::String(s) => Cbor::Text(s.clone()),
                Value::Opaque(bytes) => Cbor::Bytes(bytes.clone()),
                Value::ObjLink(o, i) => Cbor::Text(format!("{o}:{i}")),
            };
            let label = match key {
                "vs" => Cbor::integer(LABEL_STRING),
                "vb" => Cbor::integer(LABEL_BOOL),
                "vd" => Cbor::integer(LABEL_DATA),
                "vlo" => Cbor::Text("vlo".into()),
                _ => Cbor::integer(LABEL_VALUE),
            };
            pairs.push((label, value));
            Cbor::Map(pairs)
        })
        .collect();
    let mut out = Vec::new();
    cbor::encode(&Cbor::Array(records), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::super::{strategies, ContentFormat};
    use super::*;
    use proptest::prelude::*;

    /// Core TS 1.1.1 section 7.4.5 example: a Device object instance in SenML JSON.
    #[test]
    fn spec_example_json() {
        let payload = br#"[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},
            {"n":"1","vs":"Lightweight M2M Client"},
            {"n":"6/0","v":1},{"n":"6/1","v":5},
            {"n":"9","v":100},{"n":"13","v":1.3674912E9},
            {"n":"16","vs":"U"}]"#;
        let entries = decode_json(payload).unwrap();
        assert_eq!(entries.len(), 7);
        assert_eq!(entries[3].path.to_string(), "/3/0/6/1");
        assert_eq!(entries[3].value, Value::Integer(5));
        let time = |_: &Path| Some(ResourceType::Time);
        let base: Path = "/3/0".parse().unwrap();
        let typed = super::super::decode(ContentFormat::SenmlJson, &base, payload, &time).unwrap();
        assert_eq!(typed[5].value, Value::Time(1_367_491_200));
        assert!(decode_json(br#"[{"n":"/3/0/1"}]"#).is_err());
        assert!(decode_json(br#"{"bn":"/3/0/"}"#).is_err());
        assert!(decode_json(br#"[{"bn":"/3/0/","n":"1","vd":"!!"}]"#).is_err());
    }

    /// Core TS 1.1.1 section 7.4.6: the same in SenML CBOR, written by hand from RFC 8428's
    /// labels.
    #[test]
    fn spec_example_cbor() {
        let payload: &[u8] = &[
            0x82, // two records
            0xA3, 0x21, 0x65, b'/', b'3', b'/', b'0', b'/', // bn "/3/0/"
            0x00, 0x61, b'0', // n "0"
            0x03, 0x63, b'O', b'M', b'A', // vs "OMA"
            0xA2, 0x00, 0x61, b'9', 0x02, 0x18, 0x64, // n "9", v 100
        ];
        let entries = decode_cbor(payload).unwrap();
        assert_eq!(entries[0].path.to_string(), "/3/0/0");
        assert_eq!(entries[0].value, Value::String("OMA".into()));
        assert_eq!(entries[1].path.to_string(), "/3/0/9");
        assert_eq!(entries[1].value, Value::Integer(100));
        let base: Path = "/3/0".parse().unwrap();
        assert_eq!(encode_cbor(&base, &entries), payload);
        assert!(decode_cbor(&[0x81, 0xA1, 0x02, 0x61, b'x']).is_err());
    }

    proptest! {
        #[test]
        fn round_trip_json(entries in strategies::instance_entries()) {
            let base: Path = "/3/0".parse().unwrap();
            let typed = entries.clone();
            let types = strategies::types_of(&typed);
            let decoded = super::super::decode(
                ContentFormat::SenmlJson, &base, &encode_json(&base, &entries), &types,
            ).unwrap();
            prop_assert_eq!(decoded, entries);
        }

        #[test]
        fn round_trip_cbor(entries in strategies::instance_entries()) {
            let base: Path = "/3/0".parse().unwrap();
            let typed = entries.clone();
            let types = strategies::types_of(&typed);
            let decoded = super::super::decode(
                ContentFormat::SenmlCbor, &base, &encode_cbor(&base, &entries), &types,
            ).unwrap();
            prop_assert_eq!(decoded, entries);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_cbor(&bytes);
            let _ = decode_json(&bytes);
        }
    }
}
