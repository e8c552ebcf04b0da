//! Native MQTT listeners.
