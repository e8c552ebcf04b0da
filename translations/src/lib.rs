//! Pure mappings between device protocols and MQTT topics and payloads; adapters fill this in.
