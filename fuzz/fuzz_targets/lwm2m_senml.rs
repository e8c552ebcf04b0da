//! Feeds arbitrary payloads to the SenML JSON and SenML CBOR decoders, raw and typed by
//! the built-in object definitions. Decoding may fail but never panic; whatever one
//! decodes must survive an encode and decode in both formats, ending as the same bytes
//! (compared as bytes, so a NaN float does not count as a difference).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use translations::lwm2m::objects::ObjectRegistry;
use translations::lwm2m::{self, senml, ContentFormat, Entry, FormatError, Path};

type Decoder = fn(&[u8]) -> Result<Vec<Entry>, FormatError>;
type Encoder = fn(&Path, &[Entry]) -> Vec<u8>;

const FORMATS: [(&str, Decoder, Encoder); 2] = [
    ("SenML JSON", senml::decode_json, senml::encode_json),
    ("SenML CBOR", senml::decode_cbor, senml::encode_cbor),
];

fn objects() -> &'static ObjectRegistry {
    static OBJECTS: OnceLock<ObjectRegistry> = OnceLock::new();
    OBJECTS.get_or_init(ObjectRegistry::built_in)
}

fuzz_target!(|data: &[u8]| {
    let root = Path::default();
    for format in [ContentFormat::SenmlJson, ContentFormat::SenmlCbor] {
        let _ = lwm2m::decode(format, &root, data, objects());
    }
    for (_, decode, _) in FORMATS {
        let Ok(entries) = decode(data) else {
            continue;
        };
        for (name, decode_again, encode) in FORMATS {
            let encoded = encode(&root, &entries);
            let again = decode_again(&encoded)
                .unwrap_or_else(|error| panic!("our own {name} does not decode: {error}"));
            assert_eq!(encode(&root, &again), encoded, "{name}");
        }
    }
});
