//! Feeds arbitrary payloads to the OMA TLV decoder, as the answer to a request on a path
//! the first byte picks (object, instance, multiple resource, resource, resource
//! instance), typed by the built-in object definitions. Decoding may fail but never
//! panic; entries that encode again must decode again, to entries with the same encoding
//! (compared as bytes, so a NaN float does not count as a difference).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use translations::lwm2m::objects::ObjectRegistry;
use translations::lwm2m::{tlv, Path};

const PATHS: [&str; 6] = ["/3", "/3/0", "/3/0/7", "/3/0/9", "/3/0/7/1", "/3303/0"];

fn objects() -> &'static ObjectRegistry {
    static OBJECTS: OnceLock<ObjectRegistry> = OnceLock::new();
    OBJECTS.get_or_init(ObjectRegistry::built_in)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let Some(path) = PATHS
        .get(usize::from(selector) % PATHS.len())
        .and_then(|text| text.parse::<Path>().ok())
    else {
        return;
    };
    let Ok(entries) = tlv::decode(&path, payload, objects()) else {
        return;
    };
    let Ok(encoded) = tlv::encode(&path, &entries) else {
        return;
    };
    let again = tlv::decode(&path, &encoded, objects())
        .unwrap_or_else(|error| panic!("our own TLV does not decode: {error}"));
    assert_eq!(tlv::encode(&path, &again).ok(), Some(encoded));
});
