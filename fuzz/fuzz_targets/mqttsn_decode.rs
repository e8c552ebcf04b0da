//! Feeds arbitrary datagrams to the MQTT-SN decoder and checks that every message that
//! decodes encodes again to a datagram that decodes to the same message.

#![no_main]

use adapter_mqtt_sn::codec::{decode, to_datagram};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let datagram = Bytes::copy_from_slice(data);
    if let Ok(message) = decode(&datagram) {
        let encoded = to_datagram(&message).expect("a decoded message fits a datagram");
        assert_eq!(decode(&encoded).expect("re-encoded message decodes"), message);
    }
});
