//! LwM2M 1.0 / 1.1 over UDP: devices register over CoAP and are managed from MQTT with
//! EMQX's topics and JSON commands.

pub mod translations;
