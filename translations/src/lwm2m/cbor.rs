//! The subset of CBOR (RFC 8949) that SenML CBOR needs: integers, byte and text strings,
//! arrays, maps, booleans, null and floats (half, single, double). Definite lengths only,
//! as RFC 8428 section 6 requires; nesting is bounded so a hostile payload cannot recurse
//! deeply.

use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u32, be_u64, be_u8};
use nom::IResult;

#[derive(Debug, Clone, PartialEq)]
pub enum Cbor {
    Unsigned(u64),
    /// `-1 - n`.
    Negative(u64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Cbor>),
    Map(Vec<(Cbor, Cbor)>),
    Bool(bool),
    Null,
    Float(f64),
}

/// Containers nested deeper than this are refused.
const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("truncated or malformed CBOR")]
    Malformed,
    #[error("CBOR item {0:#04x} is not supported (indefinite length, tag or simple value)")]
    Unsupported(u8),
    #[error("CBOR nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("text string is not UTF-8")]
    NotUtf8,
    #[error("bytes after the CBOR item")]
    Trailing,
}

type Parsed<'a> = Result<(&'a [u8], Cbor), CborError>;

fn argument(input: &[u8], info: u8) -> IResult<&[u8], u64> {
    match info {
        0..=23 => Ok((input, u64::from(info))),
        24 => be_u8(input).map(|(i, n)| (i, u64::from(n))),
        25 => be_u16(input).map(|(i, n)| (i, u64::from(n))),
        26 => be_u32(input).map(|(i, n)| (i, u64::from(n))),
        27 => be_u64(input),
        _ => Err(nom::Err::Error(nom::error::Error::new(
            input,
            nom::error::ErrorKind::Tag,
        ))),
    }
}

fn item(input: &[u8], depth: usize) -> Parsed<'_> {
    if depth > MAX_DEPTH {
        return Err(CborError::TooDeep);
    }
    let (input, initial) =
        be_u8::<_, nom::error::Error<&[u8]>>(input).map_err(|_| CborError::Malformed)?;
    let (major, info) = (initial >> 5, initial & 0x1F);
    if major == 7 {
        return simple(input, initial, info);
    }
    if info > 27 {
        return Err(CborError::Unsupported(initial));
    }
    let (mut input, n) = argument(input, info).map_err(|_| CborError::Malformed)?;
    let length = || usize::try_from(n).map_err(|_| CborError::Malformed);
    match major {
        0 => Ok((input, Cbor::Unsigned(n))),
        1 => Ok((input, Cbor::Negative(n))),
        2 | 3 => {
            let (rest, bytes) = take::<_, _, nom::error::Error<&[u8]>>(length()?)(input)
                .map_err(|_| CborError::Malformed)?;
            let value = if major == 2 {
                Cbor::Bytes(bytes.to_vec())
            } else {
                Cbor::Text(String::from_utf8(bytes.to_vec()).map_err(|_| CborError::NotUtf8)?)
            };
            Ok((rest, value))
        }
        4 => {
            // Each item takes at least one byte: a count above what is left is a lie.
            let count = length()?;
            if count > input.len() {
                return Err(CborError::Malformed);
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let (rest, value) = item(input, depth + 1)?;
                items.push(value);
                input = rest;
            }
            Ok((input, Cbor::Array(items)))
        }
        5 => {
            let count = length()?;
            if count > input.len() / 2 {
                return Err(CborError::Malformed);
            }
            let mut pairs = Vec::with_capacity(count);
            for _ in 0..count {
                let (rest, key) = item(input, depth + 1)?;
                let (rest, value) = item(rest, depth + 1)?;
                pairs.push((key, value));
                input = rest;
            }
            Ok((input, Cbor::Map(pairs)))
        }
        _ => Err(CborError::Unsupported(initial)),
    }
}

fn simple(input: &[u8], initial: u8, info: u8) -> Parsed<'_> {
    let malformed = |_| CborError::Malformed;
    match info {
        20 => Ok((input, Cbor::Bool(false))),
        21 => Ok((input, Cbor::Bool(true))),
        22 => Ok((input, Cbor::Null)),
        25 => be_u16::<_, nom::error::Error<&[u8]>>(input)
            .map(|(rest, bits)| (rest, Cbor::Float(half_to_f64(bits))))
            .map_err(malformed),
        26 => be_u32::<_, nom::error::Error<&[u8]>>(input)
            .map(|(rest, bits)| (rest, Cbor::Float(f64::from(f32::from_bits(bits)))))
            .map_err(malformed),
        27 => be_u64::<_, nom::error::Error<&[u8]>>(input)
            .map(|(rest, bits)| (rest, Cbor::Float(f64::from_bits(bits))))
            .map_err(malformed),
        _ => Err(CborError::Unsupported(initial)),
    }
}

/// IEEE 754 half precision (RFC 8949 appendix D).
fn half_to_f64(bits: u16) -> f64 {
    let exponent = (bits >> 10) & 0x1F;
    let mantissa = f64::from(bits & 0x3FF);
    let magnitude = match exponent {
        0 => mantissa * 2f64.powi(-24),
        31 if mantissa == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (mantissa + 1024.0) * 2f64.powi(i32::from(exponent) - 25),
    };
    if bits & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Decodes exactly one item.
pub fn decode(input: &[u8]) -> Result<Cbor, CborError> {
    let (rest, value) = item(input, 0)?;
    if !rest.is_empty() {
        return Err(CborError::Trailing);
    }
    Ok(value)
}

fn head(major: u8, n: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    if n < 24 {
        out.push(major | n as u8);
    } else if let Ok(small) = u8::try_from(n) {
        out.extend_from_slice(&[major | 24, small]);
    } else if let Ok(small) = u16::try_from(n) {
        out.push(major | 25);
        out.extend_from_slice(&small.to_be_bytes());
    } else if let Ok(small) = u32::try_from(n) {
        out.push(major | 26);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

pub fn encode(value: &Cbor, out: &mut Vec<u8>) {
    match value {
        Cbor::Unsigned(n) => head(0, *n, out),
        Cbor::Negative(n) => head(1, *n, out),
        Cbor::Bytes(bytes) => {
            head(2, bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }
        Cbor::Text(text) => {
            head(3, text.len() as u64, out);
            out.extend_from_slice(text.as_bytes());
        }
        Cbor::Array(items) => {
            head(4, items.len() as u64, out);
            for item in items {
                encode(item, out);
            }
        }
        Cbor::Map(pairs) => {
            head(5, pairs.len() as u64, out);
            for (key, value) in pairs {
                encode(key, out);
                encode(value, out);
            }
        }
        Cbor::Bool(b) => out.push(if *b { 0xF5 } else { 0xF4 }),
        Cbor::Null => out.push(0xF6),
        Cbor::Float(f) => {
            let narrow = *f as f32;
            if f64::from(narrow) == *f || f.is_nan() {
                out.push(0xFA);
                out.extend_from_slice(&narrow.to_bits().to_be_bytes());
            } else {
                out.push(0xFB);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
        }
    }
}

impl Cbor {
    /// A signed integer as CBOR.
    pub fn integer(n: i64) -> Cbor {
        if n >= 0 {
            Cbor::Unsigned(n as u64)
        } else {
            Cbor::Negative(!(n as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 8949 appendix A examples.
    #[test]
    fn rfc_examples() {
        let cases: &[(&[u8], Cbor)] = &[
            (&[0x17], Cbor::Unsigned(23)),
            (&[0x19, 0x03, 0xE8], Cbor::Unsigned(1000)),
            (&[0x38, 0x63], Cbor::Negative(99)),
            (&[0xF9, 0x3C, 0x00], Cbor::Float(1.0)),
            (&[0xF9, 0xC4, 0x00], Cbor::Float(-4.0)),
            (&[0xFA, 0x47, 0xC3, 0x50, 0x00], Cbor::Float(100000.0)),
            (&[0x64, 0x49, 0x45, 0x54, 0x46], Cbor::Text("IETF".into())),
            (
                &[0x82, 0x01, 0x02],
                Cbor::Array(vec![Cbor::Unsigned(1), Cbor::Unsigned(2)]),
            ),
            (&[0xF5], Cbor::Bool(true)),
        ];
        for (bytes, value) in cases {
            assert_eq!(&decode(bytes).unwrap(), value, "{bytes:02x?}");
        }
        assert_eq!(Cbor::integer(-100), Cbor::Negative(99));
        for bad in [
            &[0x9F][..],
            &[0x82, 0x01],
            &[0x62, 0xFF, 0xFF],
            &[0x01, 0x02],
            &[0x9B, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        ] {
            assert!(decode(bad).is_err(), "{bad:02x?}");
        }
        let deep = [0x81u8; 20];
        assert_eq!(decode(&deep), Err(CborError::TooDeep));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
