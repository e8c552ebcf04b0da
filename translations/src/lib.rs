//! Pure mappings between device protocols and MQTT topics and payloads.

pub mod coap;
pub mod link_format;
pub mod lwm2m;
