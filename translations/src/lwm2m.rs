//! LwM2M content formats (Core TS 1.1.1 section 7.4), each with a decoder and an encoder:
//! text/plain (0), opaque (42), TLV (11542), OMA JSON (11543), SenML JSON (110) and SenML
//! CBOR (112). Binary formats are parsed with nom; the JSON ones with serde_json. Every
//! format meets the others in one shape, a list of [`Entry`] (a path and a typed value),
//! which becomes EMQX's `[{"path": "/3/0/0", "value": ...}]` on MQTT. The object
//! definitions ([`objects`]) type the values of formats that do not say their types.

pub mod cbor;
pub mod objects;
pub mod oma_json;
pub mod senml;
pub mod text;
pub mod tlv;

use std::fmt;
use std::str::FromStr;

use base64::Engine;

/// CoAP Content-Format numbers of the LwM2M formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    Text,
    LinkFormat,
    Opaque,
    Cbor,
    SenmlJson,
    SenmlCbor,
    Tlv,
    OmaJson,
}

impl ContentFormat {
    pub fn from_number(number: u16) -> Option<ContentFormat> {
        Some(match number {
            0 => ContentFormat::Text,
            40 => ContentFormat::LinkFormat,
            42 => ContentFormat::Opaque,
            60 => ContentFormat::Cbor,
            110 => ContentFormat::SenmlJson,
            112 => ContentFormat::SenmlCbor,
            11542 => ContentFormat::Tlv,
            11543 => ContentFormat::OmaJson,
            _ => return None,
        })
    }

    pub fn number(self) -> u16 {
        match self {
            ContentFormat::Text => 0,
            ContentFormat::LinkFormat => 40,
            ContentFormat::Opaque => 42,
            ContentFormat::Cbor => 60,
            ContentFormat::SenmlJson => 110,
            ContentFormat::SenmlCbor => 112,
            ContentFormat::Tlv => 11542,
            ContentFormat::OmaJson => 11543,
        }
    }
}

/// Why a payload could not be decoded or a value encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    #[error("malformed {format} payload: {why}")]
    Malformed { format: &'static str, why: String },
    #[error("invalid path {0:?}")]
    InvalidPath(String),
    #[error("no object definition for {0}")]
    UnknownResource(String),
    #[error("value {value:?} is not a valid {kind}")]
    InvalidValue { kind: &'static str, value: String },
    #[error("content format {0} is not supported")]
    Unsupported(u16),
}

impl FormatError {
    fn malformed(format: &'static str, why: impl Into<String>) -> FormatError {
        FormatError::Malformed {
            format,
            why: why.into(),
        }
    }
}

/// `/O[/I[/R[/RI]]]`, each id 0..=65535 (65535 is reserved, but seen in the wild).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Path(Vec<u16>);

impl Path {
    pub fn new(ids: Vec<u16>) -> Result<Path, FormatError> {
        if ids.len() > 4 {
            return Err(FormatError::InvalidPath(Path(ids).to_string()));
        }
        Ok(Path(ids))
    }

    pub fn ids(&self) -> &[u16] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn object(&self) -> Option<u16> {
        self.0.first().copied()
    }

    /// The resource id, for paths naming a resource or a resource instance.
    pub fn resource(&self) -> Option<u16> {
        self.0.get(2).copied()
    }

    /// This path with `id` appended, if it stays within four levels.
    pub fn child(&self, id: u16) -> Result<Path, FormatError> {
        let mut ids = self.0.clone();
        ids.push(id);
        Path::new(ids)
    }

    pub fn truncated(&self, len: usize) -> Path {
        Path(self.0.iter().take(len).copied().collect())
    }

    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for id in &self.0 {
            write!(f, "/{id}")?;
        }
        Ok(())
    }
}

impl FromStr for Path {
    type Err = FormatError;

    /// Accepts `/3/0/1`, `3/0/1`, `/3/0/` and `/` (the root).
    fn from_str(text: &str) -> Result<Path, FormatError> {
        let trimmed = text.trim_matches('/');
        if trimmed.is_empty() {
            return Ok(Path::default());
        }
        let ids = trimmed
            .split('/')
            .map(|id| {
                id.parse::<u16>()
                    .map_err(|_| FormatError::InvalidPath(text.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Path::new(ids)
    }
}

/// Resource data types of the object definitions (Core TS 1.1.1 appendix C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    String,
    Integer,
    UnsignedInteger,
    Float,
    Boolean,
    Opaque,
    Time,
    ObjLink,
    CoreLink,
    /// Executable resources carry no value.
    None,
}

impl ResourceType {
    /// The type named in an object definition or a write command (`"Objlnk"`, `"Time"`, ...).
    pub fn from_name(name: &str) -> Option<ResourceType> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "string" => ResourceType::String,
            "integer" => ResourceType::Integer,
            "unsigned integer" | "unsignedinteger" => ResourceType::UnsignedInteger,
            "float" => ResourceType::Float,
            "boolean" => ResourceType::Boolean,
            "opaque" => ResourceType::Opaque,
            "time" => ResourceType::Time,
            "objlnk" => ResourceType::ObjLink,
            "corelnk" => ResourceType::CoreLink,
            "" | "none" => ResourceType::None,
            _ => return None,
        })
    }

    /// Brings a value decoded from a self-describing format (JSON numbers, CBOR integers)
    /// to the type the definition gives, so `Time` and `Float` come out as declared.
    pub fn coerce(self, value: Value) -> Result<Value, FormatError> {
        let invalid = |value: &Value| FormatError::InvalidValue {
            kind: self.name(),
            value: format!("{value:?}"),
        };
        Ok(match (self, value) {
            (ResourceType::Integer, Value::Unsigned(n)) => {
                Value::Integer(i64::try_from(n).map_err(|_| invalid(&Value::Unsigned(n)))?)
            }
            (ResourceType::Integer, Value::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e18 => {
                Value::Integer(f as i64)
            }
            (ResourceType::Time, Value::Integer(n)) => Value::Time(n),
            (ResourceType::Time, Value::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e18 => {
                Value::Time(f as i64)
            }
            (ResourceType::UnsignedInteger, Value::Integer(n)) => {
                Value::Unsigned(u64::try_from(n).map_err(|_| invalid(&Value::Integer(n)))?)
            }
            (ResourceType::Float, Value::Integer(n)) => Value::Float(n as f64),
            (ResourceType::Float, Value::Unsigned(n)) => Value::Float(n as f64),
            (ResourceType::CoreLink, Value::String(s)) => Value::String(s),
            // OMA JSON carries opaque values as base64 strings.
            (ResourceType::Opaque, Value::String(s)) => Value::Opaque(
                base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|_| invalid(&Value::String(s.clone())))?,
            ),
            (_, value) => value,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ResourceType::String => "String",
            ResourceType::Integer => "Integer",
            ResourceType::UnsignedInteger => "Unsigned Integer",
            ResourceType::Float => "Float",
            ResourceType::Boolean => "Boolean",
            ResourceType::Opaque => "Opaque",
            ResourceType::Time => "Time",
            ResourceType::ObjLink => "Objlnk",
            ResourceType::CoreLink => "Corelnk",
            ResourceType::None => "none",
        }
    }
}

/// A typed resource value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Integer(i64),
    Unsigned(u64),
    Float(f64),
    Boolean(bool),
    String(String),
    Opaque(Vec<u8>),
    Time(i64),
    /// Object id and instance id.
    ObjLink(u16, u16),
}

impl Value {
    /// The value as EMQX publishes it: numbers as numbers, opaque as base64, an object
    /// link as `"O:I"`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Integer(n) | Value::Time(n) => (*n).into(),
            Value::Unsigned(n) => (*n).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Boolean(b) => (*b).into(),
            Value::String(s) => s.clone().into(),
            Value::Opaque(bytes) => base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into(),
            Value::ObjLink(object, instance) => format!("{object}:{instance}").into(),
        }
    }

    /// A value of a write command: `value` as JSON (string, number or boolean) typed by
    /// `kind`; opaque values are base64.
    pub fn from_command(
        kind: ResourceType,
        value: &serde_json::Value,
    ) -> Result<Value, FormatError> {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            other => {
                return Err(FormatError::InvalidValue {
                    kind: kind.name(),
                    value: other.to_string(),
                })
            }
        };
        match kind {
            ResourceType::Opaque => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Value::Opaque)
                .map_err(|_| FormatError::InvalidValue {
                    kind: kind.name(),
                    value: text,
                }),
            _ => text::parse_value(kind, &text),
        }
    }

    pub fn kind(&self) -> ResourceType {
        match self {
            Value::Integer(_) => ResourceType::Integer,
            Value::Unsigned(_) => ResourceType::UnsignedInteger,
            Value::Float(_) => ResourceType::Float,
            Value::Boolean(_) => ResourceType::Boolean,
            Value::String(_) => ResourceType::String,
            Value::Opaque(_) => ResourceType::Opaque,
            Value::Time(_) => ResourceType::Time,
            Value::ObjLink(..) => ResourceType::ObjLink,
        }
    }
}

/// One resource (or resource instance) value at its full path.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: Path,
    pub value: Value,
}

impl Entry {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "path": self.path.to_string(), "value": self.value.to_json() })
    }
}

/// Where the type of a resource comes from: the object definitions.
pub trait TypeLookup {
    /// The type of the resource `path` names (`/O/I/R` or `/O/I/R/RI`), if defined.
    fn resource_type(&self, path: &Path) -> Option<ResourceType>;
}

impl<F: Fn(&Path) -> Option<ResourceType>> TypeLookup for F {
    fn resource_type(&self, path: &Path) -> Option<ResourceType> {
        self(path)
    }
}

/// Types every self-describing value by the definitions where one exists.
fn coerce_all(entries: Vec<Entry>, types: &dyn TypeLookup) -> Result<Vec<Entry>, FormatError> {
    entries
        .into_iter()
        .map(|entry| match types.resource_type(&entry.path) {
            Some(kind) => Ok(Entry {
                value: kind.coerce(entry.value)?,
                path: entry.path,
            }),
            None => Ok(entry),
        })
        .collect()
}

/// Decodes a payload of `format` sent for a request on `path`.
pub fn decode(
    format: ContentFormat,
    path: &Path,
    payload: &[u8],
    types: &dyn TypeLookup,
) -> Result<Vec<Entry>, FormatError> {
    match format {
        ContentFormat::Text => Ok(vec![text::decode(path, payload, types)?]),
        ContentFormat::Opaque => Ok(vec![Entry {
            path: path.clone(),
            value: Value::Opaque(payload.to_vec()),
        }]),
        ContentFormat::Tlv => tlv::decode(path, payload, types),
        ContentFormat::OmaJson => coerce_all(oma_json::decode(payload)?, types),
        ContentFormat::SenmlJson => coerce_all(senml::decode_json(payload)?, types),
        ContentFormat::SenmlCbor => coerce_all(senml::decode_cbor(payload)?, types),
        other @ (ContentFormat::LinkFormat | ContentFormat::Cbor) => {
            Err(FormatError::Unsupported(other.number()))
        }
    }
}

/// Encodes entries below `base` in `format`.
pub fn encode(
    format: ContentFormat,
    base: &Path,
    entries: &[Entry],
) -> Result<Vec<u8>, FormatError> {
    match format {
        ContentFormat::Text => match entries {
            [entry] => Ok(text::encode(&entry.value)),
            _ => Err(FormatError::malformed(
                "text/plain",
                "carries exactly one value",
            )),
        },
        ContentFormat::Opaque => match entries {
            [Entry {
                value: Value::Opaque(bytes),
                ..
            }] => Ok(bytes.clone()),
            _ => Err(FormatError::malformed(
                "opaque",
                "carries exactly one opaque value",
            )),
        },
        ContentFormat::Tlv => tlv::encode(base, entries),
        ContentFormat::OmaJson => Ok(oma_json::encode(base, entries)),
        ContentFormat::SenmlJson => Ok(senml::encode_json(base, entries)),
        ContentFormat::SenmlCbor => Ok(senml::encode_cbor(base, entries)),
        other @ (ContentFormat::LinkFormat | ContentFormat::Cbor) => {
            Err(FormatError::Unsupported(other.number()))
        }
    }
}

#[cfg(test)]
pub(crate) mod strategies {
    use super::*;
    use proptest::prelude::*;

    pub fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::Integer),
            any::<u64>().prop_map(Value::Unsigned),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Float),
            any::<bool>().prop_map(Value::Boolean),
            "[ -~]{0,40}".prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Opaque),
            any::<i64>().prop_map(Value::Time),
            (any::<u16>(), any::<u16>()).prop_map(|(o, i)| Value::ObjLink(o, i)),
        ]
    }

    /// Resources of one object instance `/3/0`, distinct ids, some with instances.
    pub fn instance_entries() -> impl Strategy<Value = Vec<Entry>> {
        proptest::collection::btree_map(
            0u16..2000,
            prop_oneof![
                value().prop_map(|v| vec![(None, v)]),
                proptest::collection::btree_map(0u16..300, value(), 1..4)
                    .prop_map(|m| m.into_iter().map(|(k, v)| (Some(k), v)).collect()),
            ],
            1..6,
        )
        .prop_map(|resources| {
            let mut entries = Vec::new();
            for (resource, values) in resources {
                for (instance, value) in values {
                    let mut ids = vec![3, 0, resource];
                    ids.extend(instance);
                    entries.push(Entry {
                        path: Path(ids),
                        value,
                    });
                }
            }
            entries
        })
    }

    /// Types each path by the value the test put there.
    pub fn types_of(entries: &[Entry]) -> impl Fn(&Path) -> Option<ResourceType> + '_ {
        move |path: &Path| {
            entries
                .iter()
                .find(|entry| &entry.path == path)
                .map(|entry| entry.value.kind())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_print() {
        let path: Path = "/3/0/1".parse().unwrap();
        assert_eq!(path.ids(), &[3, 0, 1]);
        assert_eq!(path.to_string(), "/3/0/1");
        assert_eq!("/".parse::<Path>().unwrap().to_string(), "/");
        assert_eq!("3/0/".parse::<Path>().unwrap().to_string(), "/3/0");
        assert!("/3/x".parse::<Path>().is_err());
        assert!("/1/2/3/4/5".parse::<Path>().is_err());
        assert!("/70000".parse::<Path>().is_err());
    }

    #[test]
    fn values_become_emqx_json() {
        assert_eq!(Value::Opaque(vec![1, 2, 3]).to_json(), "AQID");
        assert_eq!(Value::ObjLink(3, 0).to_json(), "3:0");
        assert_eq!(Value::Integer(-5).to_json(), -5);
        assert_eq!(Value::Boolean(true).to_json(), true);
    }
}
