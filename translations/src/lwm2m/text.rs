//! text/plain (0): one resource value as text, typed by the object definition
//! (Core TS 1.1.1 section 7.4.1). Opaque values are base64; a Boolean is `0` or `1`; an
//! object link is `O:I`.

use base64::Engine;
use nom::bytes::complete::take_while1;
use nom::character::complete::char;
use nom::combinator::{all_consuming, map_res};
use nom::sequence::separated_pair;
use nom::IResult;

use super::{Entry, FormatError, Path, ResourceType, TypeLookup, Value};

pub fn encode(value: &Value) -> Vec<u8> {
    match value {
        Value::Integer(n) | Value::Time(n) => n.to_string().into_bytes(),
        Value::Unsigned(n) => n.to_string().into_bytes(),
        Value::Float(f) => format_float(*f).into_bytes(),
        Value::Boolean(b) => {
            if *b {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            }
        }
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Opaque(bytes) => base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into_bytes(),
        Value::ObjLink(object, instance) => format!("{object}:{instance}").into_bytes(),
    }
}

/// Rust's shortest round-trip form, which is also a valid LwM2M float literal.
fn format_float(f: f64) -> String {
    let text = format!("{f:?}");
    text
}

/// Decodes the value of the resource `path` names; the definition gives its type, and a
/// resource without one is an error rather than a guess.
pub fn decode(path: &Path, payload: &[u8], types: &dyn TypeLookup) -> Result<Entry, FormatError> {
    let kind = types
        .resource_type(path)
        .ok_or_else(|| FormatError::UnknownResource(path.to_string()))?;
    let text = std::str::from_utf8(payload)
        .map_err(|_| FormatError::malformed("text/plain", "not UTF-8"))?;
    Ok(Entry {
        path: path.clone(),
        value: parse_value(kind, text)?,
    })
}

fn objlnk(input: &str) -> IResult<&str, (u16, u16)> {
    let id = |input| map_res(take_while1(|c: char| c.is_ascii_digit()), str::parse::<u16>)(input);
    all_consuming(separated_pair(id, char(':'), id))(input)
}

/// A value written as text, typed by `kind`.
pub fn parse_value(kind: ResourceType, text: &str) -> Result<Value, FormatError> {
    let invalid = || FormatError::InvalidValue {
        kind: kind.name(),
        value: text.to_owned(),
    };
    let trimmed = text.trim();
    Ok(match kind {
        ResourceType::String | ResourceType::CoreLink | ResourceType::None => {
            Value::String(text.to_owned())
        }
        ResourceType::Integer => Value::Integer(trimmed.parse().map_err(|_| invalid())?),
        ResourceType::Time => Value::Time(trimmed.parse().map_err(|_| invalid())?),
        ResourceType::UnsignedInteger => Value::Unsigned(trimmed.parse().map_err(|_| invalid())?),
        ResourceType::Float => {
            let f: f64 = trimmed.parse().map_err(|_| invalid())?;
            if !f.is_finite() {
                return Err(invalid());
            }
            Value::Float(f)
        }
        ResourceType::Boolean => match trimmed {
            "1" | "true" => Value::Boolean(true),
            "0" | "false" => Value::Boolean(false),
            _ => return Err(invalid()),
        },
        ResourceType::Opaque => Value::Opaque(
            base64::engine::general_purpose::STANDARD
                .decode(trimmed)
                .map_err(|_| invalid())?,
        ),
        ResourceType::ObjLink => {
            let (_, (object, instance)) = objlnk(trimmed).map_err(|_| invalid())?;
            Value::ObjLink(object, instance)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::strategies;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_examples() {
        let types = |_: &Path| Some(ResourceType::Integer);
        let path: Path = "/3/0/9".parse().unwrap();
        assert_eq!(
            decode(&path, b"95", &types).unwrap().value,
            Value::Integer(95)
        );
        assert_eq!(
            parse_value(ResourceType::ObjLink, "3:0").unwrap(),
            Value::ObjLink(3, 0)
        );
        assert_eq!(
            parse_value(ResourceType::Boolean, "1").unwrap(),
            Value::Boolean(true)
        );
        assert!(parse_value(ResourceType::Boolean, "2").is_err());
        assert!(parse_value(ResourceType::ObjLink, "3:x").is_err());
        assert!(parse_value(ResourceType::Float, "inf").is_err());
        let unknown = |_: &Path| None;
        assert!(matches!(
            decode(&path, b"1", &unknown),
            Err(FormatError::UnknownResource(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trip(value in strategies::value()) {
            let path: Path = "/3/0/1".parse().unwrap();
            let kind = value.kind();
            let types = move |_: &Path| Some(kind);
            let encoded = encode(&value);
            prop_assert_eq!(decode(&path, &encoded, &types).unwrap().value, value);
        }
    }
}
