//! Feeds arbitrary payloads to every LwM2M content-format decoder (TLV, SenML JSON, SenML
//! CBOR, OMA JSON, text/plain), typed by the built-in object definitions, at every depth
//! of request path. None may panic, and what TLV decodes must encode again.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use translations::lwm2m::objects::ObjectRegistry;
use translations::lwm2m::{self, ContentFormat, Path};

fn objects() -> &'static ObjectRegistry {
    static OBJECTS: OnceLock<ObjectRegistry> = OnceLock::new();
    OBJECTS.get_or_init(ObjectRegistry::built_in)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let path: Path = match selector % 4 {
        0 => "/3",
        1 => "/3/0",
        2 => "/3/0/7",
        _ => "/3303/0/5700",
    }
    .parse()
    .unwrap_or_default();
    for format in [
        ContentFormat::Tlv,
        ContentFormat::SenmlJson,
        ContentFormat::SenmlCbor,
        ContentFormat::OmaJson,
        ContentFormat::Text,
    ] {
        if let Ok(entries) = lwm2m::decode(format, &path, payload, objects()) {
            if format == ContentFormat::Tlv && !entries.is_empty() {
                let _ = lwm2m::encode(format, &path, &entries);
            }
        }
    }
});
