//! OMA TLV (11542, Core TS 1.1.1 section 7.4.3): a tree of object instances, multiple
//! resources, resource instances and resources. Values carry no type on the wire; the
//! object definitions give it.

use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u24, be_u8};
use nom::IResult;

use super::{Entry, FormatError, Path, ResourceType, TypeLookup, Value};

const FORMAT: &str = "TLV";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ObjectInstance,
    ResourceInstance,
    MultipleResource,
    Resource,
}

#[derive(Debug, PartialEq)]
struct Tlv<'a> {
    kind: Kind,
    id: u16,
    value: &'a [u8],
}

fn tlv(input: &[u8]) -> IResult<&[u8], Tlv<'_>> {
    let (input, header) = be_u8(input)?;
    let kind = match header >> 6 {
        0 => Kind::ObjectInstance,
        1 => Kind::ResourceInstance,
        2 => Kind::MultipleResource,
        _ => Kind::Resource,
    };
    let (input, id) = if header & 0x20 != 0 {
        be_u16(input)?
    } else {
        let (input, id) = be_u8(input)?;
        (input, u16::from(id))
    };
    let (input, length) = match (header >> 3) & 0b11 {
        0 => (input, u32::from(header & 0b111)),
        1 => {
            let (input, n) = be_u8(input)?;
            (input, u32::from(n))
        }
        2 => {
            let (input, n) = be_u16(input)?;
            (input, u32::from(n))
        }
        _ => be_u24(input)?,
    };
    let (input, value) = take(length)(input)?;
    Ok((input, Tlv { kind, id, value }))
}

fn tlvs(mut input: &[u8]) -> Result<Vec<Tlv<'_>>, FormatError> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (rest, item) =
            tlv(input).map_err(|_| FormatError::malformed(FORMAT, "truncated TLV"))?;
        out.push(item);
        input = rest;
    }
    Ok(out)
}

/// Decodes a TLV payload answering a request on `path` into entries at full paths.
pub fn decode(
    path: &Path,
    payload: &[u8],
    types: &dyn TypeLookup,
) -> Result<Vec<Entry>, FormatError> {
    let mut entries = Vec::new();
    for item in tlvs(payload)? {
        // Where the top-level item sits depends on its kind, not on how deep the request
        // went: a Resource answering `/3/0/1` is `/3/0/1`, not `/3/0/1/1`.
        let parent_depth = match item.kind {
            Kind::ObjectInstance => 1,
            Kind::MultipleResource | Kind::Resource => 2,
            Kind::ResourceInstance => 3,
        };
        if path.len() < parent_depth {
            return Err(FormatError::malformed(
                FORMAT,
                format!("{:?} under {path}", item.kind),
            ));
        }
        flatten(&path.truncated(parent_depth), &item, types, &mut entries)?;
    }
    Ok(entries)
}

fn flatten(
    parent: &Path,
    item: &Tlv<'_>,
    types: &dyn TypeLookup,
    out: &mut Vec<Entry>,
) -> Result<(), FormatError> {
    let path = parent.child(item.id)?;
    match item.kind {
        Kind::ObjectInstance | Kind::MultipleResource => {
            let expected = if item.kind == Kind::ObjectInstance {
                [Kind::Resource, Kind::MultipleResource]
            } else {
                [Kind::ResourceInstance, Kind::ResourceInstance]
            };
            for child in tlvs(item.value)? {
                if !expected.contains(&child.kind) {
                    return Err(FormatError::malformed(
                        FORMAT,
                        format!("{:?} inside {:?}", child.kind, item.kind),
                    ));
                }
                flatten(&path, &child, types, out)?;
            }
        }
        Kind::Resource | Kind::ResourceInstance => {
            let kind = types
                .resource_type(&path)
                .ok_or_else(|| FormatError::UnknownResource(path.to_string()))?;
            out.push(Entry {
                value: decode_value(kind, item.value)?,
                path,
            });
        }
    }
    Ok(())
}

fn signed(bytes: &[u8]) -> Option<i64> {
    Some(match bytes.len() {
        1 => i64::from(i8::from_be_bytes(bytes.try_into().ok()?)),
        2 => i64::from(i16::from_be_bytes(bytes.try_into().ok()?)),
        4 => i64::from(i32::from_be_bytes(bytes.try_into().ok()?)),
        8 => i64::from_be_bytes(bytes.try_into().ok()?),
        _ => return None,
    })
}

/// A value's bytes, typed by the definition.
pub fn decode_value(kind: ResourceType, bytes: &[u8]) -> Result<Value, FormatError> {
    let invalid = || FormatError::InvalidValue {
        kind: kind.name(),
        value: format!("{bytes:02x?}"),
    };
    Ok(match kind {
        ResourceType::String | ResourceType::CoreLink | ResourceType::None => {
            Value::String(String::from_utf8(bytes.to_vec()).map_err(|_| invalid())?)
        }
        ResourceType::Opaque => Value::Opaque(bytes.to_vec()),
        ResourceType::Integer => Value::Integer(signed(bytes).ok_or_else(invalid)?),
        ResourceType::Time => Value::Time(signed(bytes).ok_or_else(invalid)?),
        ResourceType::UnsignedInteger => {
            if !matches!(bytes.len(), 1 | 2 | 4 | 8) {
                return Err(invalid());
            }
            Value::Unsigned(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
        ResourceType::Float => match bytes.len() {
            4 => Value::Float(f64::from(f32::from_be_bytes(
                bytes.try_into().map_err(|_| invalid())?,
            ))),
            8 => Value::Float(f64::from_be_bytes(bytes.try_into().map_err(|_| invalid())?)),
            _ => return Err(invalid()),
        },
        ResourceType::Boolean => match bytes {
            [0] => Value::Boolean(false),
            [1] => Value::Boolean(true),
            _ => return Err(invalid()),
        },
        ResourceType::ObjLink => match bytes {
            [a, b, c, d] => {
                Value::ObjLink(u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))
            }
            _ => return Err(invalid()),
        },
    })
}

/// A value's bytes in the fewest the format allows.
pub fn encode_value(value: &Value) -> Vec<u8> {
    match value {
        Value::Integer(n) | Value::Time(n) => {
            let n = *n;
            if let Ok(small) = i8::try_from(n) {
                small.to_be_bytes().to_vec()
            } else if let Ok(small) = i16::try_from(n) {
                small.to_be_bytes().to_vec()
            } else if let Ok(small) = i32::try_from(n) {
                small.to_be_bytes().to_vec()
            } else {
                n.to_be_bytes().to_vec()
            }
        }
        Value::Unsigned(n) => {
            let n = *n;
            if let Ok(small) = u8::try_from(n) {
                vec![small]
            } else if let Ok(small) = u16::try_from(n) {
                small.to_be_bytes().to_vec()
            } else if let Ok(small) = u32::try_from(n) {
                small.to_be_bytes().to_vec()
            } else {
                n.to_be_bytes().to_vec()
            }
        }
        Value::Float(f) => {
            let narrow = *f as f32;
            if f64::from(narrow) == *f {
                narrow.to_be_bytes().to_vec()
            } else {
                f.to_be_bytes().to_vec()
            }
        }
        Value::Boolean(b) => vec![u8::from(*b)],
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Opaque(bytes) => bytes.clone(),
        Value::ObjLink(object, instance) => {
            let mut out = object.to_be_bytes().to_vec();
            out.extend_from_slice(&instance.to_be_bytes());
            out
        }
    }
}

fn write_tlv(kind: Kind, id: u16, value: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
    let mut header = match kind {
        Kind::ObjectInstance => 0u8,
        Kind::ResourceInstance => 0x40,
        Kind::MultipleResource => 0x80,
        Kind::Resource => 0xC0,
    };
    let id_bytes = if let Ok(small) = u8::try_from(id) {
        vec![small]
    } else {
        header |= 0x20;
        id.to_be_bytes().to_vec()
    };
    let len = value.len();
    let length_bytes = if len < 8 {
        header |= len as u8;
        Vec::new()
    } else if let Ok(small) = u8::try_from(len) {
        header |= 0x08;
        vec![small]
    } else if let Ok(small) = u16::try_from(len) {
        header |= 0x10;
        small.to_be_bytes().to_vec()
    } else if len < 1 << 24 {
        header |= 0x18;
        (len as u32)
            .to_be_bytes()
            .get(1..)
            .unwrap_or_default()
            .to_vec()
    } else {
        return Err(FormatError::malformed(FORMAT, "value over 16 MiB"));
    };
    out.push(header);
    out.extend(id_bytes);
    out.extend(length_bytes);
    out.extend_from_slice(value);
    Ok(())
}

/// Encodes entries below `base` (`/O`, `/O/I`, `/O/I/R`): object instances under an
/// object, resources under an instance, resource instances under a resource; an entry at
/// `base` itself is a single resource.
pub fn encode(base: &Path, entries: &[Entry]) -> Result<Vec<u8>, FormatError> {
    // A resource written at its own path is encoded as that resource, from the instance.
    let at_base = entries.iter().any(|entry| &entry.path == base);
    let start = if at_base {
        base.len().saturating_sub(1)
    } else {
        base.len()
    };
    if start == 0 {
        return Err(FormatError::malformed(FORMAT, "carries no whole objects"));
    }
    let parent = base.truncated(start);
    let mut relative = Vec::with_capacity(entries.len());
    for entry in entries {
        if !entry.path.starts_with(&parent) || entry.path.len() <= start {
            return Err(FormatError::InvalidPath(entry.path.to_string()));
        }
        relative.push((
            entry.path.ids().get(start..).unwrap_or_default(),
            &entry.value,
        ));
    }
    let mut out = Vec::new();
    encode_level(&relative, start, &mut out)?;
    Ok(out)
}

/// `items` are paths relative to a parent at depth `depth` (1 = object, 2 = instance,
/// 3 = resource).
fn encode_level(
    items: &[(&[u16], &Value)],
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    let mut at = 0;
    while let Some((ids, _)) = items.get(at) {
        let Some(&id) = ids.first() else {
            return Err(FormatError::malformed(
                FORMAT,
                "entry without a resource id",
            ));
        };
        let group_end = items
            .iter()
            .skip(at)
            .position(|(other, _)| other.first() != Some(&id))
            .map_or(items.len(), |n| at + n);
        let group: Vec<(&[u16], &Value)> = items
            .get(at..group_end)
            .unwrap_or_default()
            .iter()
            .map(|(ids, value)| (ids.get(1..).unwrap_or_default(), *value))
            .collect();
        match (depth, group.as_slice()) {
            (1, _) => {
                let mut inner = Vec::new();
                encode_level(&group, 2, &mut inner)?;
                write_tlv(Kind::ObjectInstance, id, &inner, out)?;
            }
            (2, [([], value)]) => write_tlv(Kind::Resource, id, &encode_value(value), out)?,
            (2, _) => {
                let mut inner = Vec::new();
                encode_level(&group, 3, &mut inner)?;
                write_tlv(Kind::MultipleResource, id, &inner, out)?;
            }
            (3, [([], value)]) => write_tlv(Kind::ResourceInstance, id, &encode_value(value), out)?,
            _ => {
                return Err(FormatError::malformed(
                    FORMAT,
                    "paths nest deeper than a resource instance",
                ))
            }
        }
        at = group_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::strategies;
    use super::*;
    use proptest::prelude::*;

    fn device_types(path: &Path) -> Option<ResourceType> {
        Some(match path.resource()? {
            0..=3 => ResourceType::String,
            6..=11 | 13 => ResourceType::Integer,
            _ => ResourceType::String,
        })
    }

    /// Core TS 1.0.2 section 6.4.3.1 example: a Device object instance read as TLV.
    #[test]
    fn spec_example_single_device_instance() {
        let payload: &[u8] = &[
            0xC8, 0x00, 0x14, b'O', b'p', b'e', b'n', b' ', b'M', b'o', b'b', b'i', b'l', b'e',
            b' ', b'A', b'l', b'l', b'i', b'a', b'n', b'c', b'e', // 0: manufacturer
            0xC8, 0x01, 0x16, b'L', b'i', b'g', b'h', b't', b'w', b'e', b'i', b'g', b'h', b't',
            b' ', b'M', b'2', b'M', b' ', b'C', b'l', b'i', b'e', b'n', b't', // 1: model
            0xC8, 0x02, 0x09, b'3', b'4', b'5', b'0', b'0', b'0', b'1', b'2',
            b'3', // 2: serial
            0xC3, 0x03, b'1', b'.', b'0', // 3: firmware version
            0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05, // 6: power sources 1, 5
            0x88, 0x07, 0x08, 0x42, 0x00, 0x0E, 0xD8, 0x42, 0x01, 0x13, 0x88, // 7: voltages
            0x87, 0x08, 0x41, 0x00, 0x7D, 0x42, 0x01, 0x03, 0x84, // 8: currents
            0xC1, 0x09, 0x64, // 9: battery level 100
            0xC1, 0x0A, 0x0F, // 10: memory free 15
            0x83, 0x0B, 0x41, 0x00, 0x00, // 11: error code 0
            0xC4, 0x0D, 0x51, 0x82, 0x42, 0x8F, // 13: current time
            0xC6, 0x0E, b'+', b'0', b'2', b':', b'0', b'0', // 14: UTC offset
            0xC1, 0x10, b'U', // 16: binding
        ];
        let path: Path = "/3/0".parse().unwrap();
        let entries = decode(&path, payload, &device_types).unwrap();
        let find = |p: &str| {
            let p: Path = p.parse().unwrap();
            entries
                .iter()
                .find(|e| e.path == p)
                .map(|e| e.value.clone())
        };
        assert_eq!(
            find("/3/0/0"),
            Some(Value::String("Open Mobile Alliance".into()))
        );
        assert_eq!(find("/3/0/6/1"), Some(Value::Integer(5)));
        assert_eq!(find("/3/0/7/0"), Some(Value::Integer(3800)));
        assert_eq!(find("/3/0/8/1"), Some(Value::Integer(900)));
        assert_eq!(find("/3/0/9"), Some(Value::Integer(100)));
        assert_eq!(find("/3/0/13"), Some(Value::Integer(1_367_491_215)));
        assert_eq!(find("/3/0/16"), Some(Value::String("U".into())));
        assert_eq!(entries.len(), 16);
        // Encoding what was decoded gives the same bytes back.
        assert_eq!(encode(&path, &entries).unwrap(), payload);
    }

    #[test]
    fn single_resource_answering_its_own_path() {
        let path: Path = "/3/0/9".parse().unwrap();
        let entries = decode(&path, &[0xC1, 0x09, 0x64], &device_types).unwrap();
        assert_eq!(
            entries,
            vec![Entry {
                path: path.clone(),
                value: Value::Integer(100)
            }]
        );
        assert_eq!(encode(&path, &entries).unwrap(), vec![0xC1, 0x09, 0x64]);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let path: Path = "/3/0".parse().unwrap();
        for bad in [
            &[0xC8u8, 0x00][..],
            &[0xC8, 0x00, 0x05, b'a'],
            &[0x08, 0x00, 0x02, 0xC1],
        ] {
            assert!(decode(&path, bad, &device_types).is_err(), "{bad:02x?}");
        }
        let unknown = |_: &Path| None;
        assert!(matches!(
            decode(&path, &[0xC1, 0x09, 0x64], &unknown),
            Err(FormatError::UnknownResource(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trip(entries in strategies::instance_entries()) {
            let base: Path = "/3/0".parse().unwrap();
            let encoded = encode(&base, &entries).unwrap();
            let typed = entries.clone();
            let types = strategies::types_of(&typed);
            prop_assert_eq!(decode(&base, &encoded, &types).unwrap(), entries.clone());
            // The same resources inside an object instance, encoded under the object.
            let object: Path = "/3".parse().unwrap();
            let encoded = encode(&object, &entries).unwrap();
            prop_assert_eq!(decode(&object, &encoded, &types).unwrap(), entries);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let path: Path = "/3/0".parse().unwrap();
            let _ = decode(&path, &bytes, &device_types);
        }
    }
}
