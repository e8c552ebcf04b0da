//! CoAP Content-Format numbers (RFC 7252 12.3 and the IANA registry) and MQTT 5 content
//! types, both ways.

/// The content formats the gateway names, as (number, MQTT 5 content type).
const FORMATS: &[(u16, &str)] = &[
    (0, "text/plain;charset=utf-8"),
    (40, "application/link-format"),
    (41, "application/xml"),
    (42, "application/octet-stream"),
    (47, "application/exi"),
    (50, "application/json"),
    (60, "application/cbor"),
    (11542, "application/vnd.oma.lwm2m+tlv"),
    (11543, "application/vnd.oma.lwm2m+json"),
];

/// The MQTT 5 content type of a CoAP Content-Format; an unknown number is opaque bytes.
pub fn content_type(format: u16) -> &'static str {
    FORMATS
        .iter()
        .find(|(number, _)| *number == format)
        .map_or("application/octet-stream", |(_, name)| name)
}

/// The CoAP Content-Format of an MQTT 5 content type, if CoAP has a number for it.
/// Parameters other than a UTF-8 charset on text/plain have no number.
pub fn content_format(content_type: &str) -> Option<u16> {
    let normalized = content_type.trim().to_ascii_lowercase().replace(' ', "");
    let wanted = if normalized == "text/plain" {
        "text/plain;charset=utf-8"
    } else {
        normalized.as_str()
    };
    FORMATS
        .iter()
        .find(|(_, name)| *name == wanted)
        .map(|(number, _)| *number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_formats_round_trip() {
        for (number, name) in FORMATS {
            assert_eq!(content_type(*number), *name);
            assert_eq!(content_format(name), Some(*number));
        }
    }

    #[test]
    fn unknown_numbers_are_opaque_and_unknown_types_have_no_number() {
        assert_eq!(content_type(9999), "application/octet-stream");
        assert_eq!(content_format("text/plain"), Some(0));
        assert_eq!(content_format("Application/JSON"), Some(50));
        assert_eq!(content_format("image/png"), None);
    }
}
