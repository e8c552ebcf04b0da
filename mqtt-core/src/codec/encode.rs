//! The encoder writes every packet through one generic body writer, run once over a byte
//! counter and once over the output buffer, so `encoded_len` cannot drift from `encode`.

use bytes::BytesMut;

use super::error::EncodeError;
use super::packet::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    Disconnect, DisconnectProperties, Packet, ProtocolVersion, PubResponse, Publish,
    PublishProperties, QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe, UserProperties,
    WillProperties,
};
use super::wire;

type Result<T> = std::result::Result<T, EncodeError>;

/// Appends `packet`, encoded for `version`, to `out`. On error nothing is appended.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) -> Result<()> {
    let remaining = body_len(packet, version)?;
    let total = packet_len(remaining)?;
    out.reserve(total);
    out.u8(first_byte(packet));
    write_vbi(out, remaining, "packet")?;
    write_body(packet, version, out)
}

/// The full encoded size of `packet` (fixed header included), without encoding it.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize> {
    packet_len(body_len(packet, version)?)
}

fn body_len(packet: &Packet, version: ProtocolVersion) -> Result<usize> {
    let mut counter = Counter(0);
    write_body(packet, version, &mut counter)?;
    Ok(counter.0)
}

fn packet_len(remaining: usize) -> Result<usize> {
    let length_bytes = wire::vbi_len(remaining).ok_or(EncodeError::TooLong("packet"))?;
    Ok(1 + length_bytes + remaining)
}

/// Where bytes go: a counter when measuring, the output buffer when encoding.
trait Sink {
    fn put(&mut self, bytes: &[u8]);

    fn u8(&mut self, value: u8) {
        self.put(&[value]);
    }

    fn u16(&mut self, value: u16) {
        self.put(&value.to_be_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.put(&value.to_be_bytes());
    }
}

struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

fn first_byte(packet: &Packet) -> u8 {
    let (packet_type, flags) = match packet {
        Packet::Connect(_) => (wire::CONNECT, 0),
        Packet::ConnAck(_) => (wire::CONNACK, 0),
        Packet::Publish(p) => (
            wire::PUBLISH,
            u8::from(p.dup) << 3 | p.qos.as_u8() << 1 | u8::from(p.retain),
        ),
        Packet::PubAck(_) => (wire::PUBACK, 0),
        Packet::PubRec(_) => (wire::PUBREC, 0),
        Packet::PubRel(_) => (wire::PUBREL, 0b0010),
        Packet::PubComp(_) => (wire::PUBCOMP, 0),
        Packet::Subscribe(_) => (wire::SUBSCRIBE, 0b0010),
        Packet::SubAck(_) => (wire::SUBACK, 0),
        Packet::Unsubscribe(_) => (wire::UNSUBSCRIBE, 0b0010),
        Packet::UnsubAck(_) => (wire::UNSUBACK, 0),
        Packet::PingReq => (wire::PINGREQ, 0),
        Packet::PingResp => (wire::PINGRESP, 0),
        Packet::Disconnect(_) => (wire::DISCONNECT, 0),
        Packet::Auth(_) => (wire::AUTH, 0),
    };
    packet_type << 4 | flags
}

fn write_body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) -> Result<()> {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => write_connect(s, c, version),
        Packet::ConnAck(c) => write_connack(s, c, version),
        Packet::Publish(p) => write_publish(s, p, v5),
        Packet::PubAck(p) => write_pub_response(s, p, v5, wire::PUBACK),
        Packet::PubRec(p) => write_pub_response(s, p, v5, wire::PUBREC),
        Packet::PubRel(p) => write_pub_response(s, p, v5, wire::PUBREL),
        Packet::PubComp(p) => write_pub_response(s, p, v5, wire::PUBCOMP),
        Packet::Subscribe(p) => write_subscribe(s, p, v5),
        Packet::SubAck(p) => write_suback(s, p, v5),
        Packet::Unsubscribe(p) => write_unsubscribe(s, p, v5),
        Packet::UnsubAck(p) => write_unsuback(s, p, v5),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => write_disconnect(s, d, v5),
        Packet::Auth(a) => write_auth(s, a, version),
    }
}

fn write_connect<S: Sink>(s: &mut S, c: &Connect, version: ProtocolVersion) -> Result<()> {
    if c.protocol != version {
        return Err(EncodeError::Invalid(
            "CONNECT's protocol differs from the version it is encoded for",
        ));
    }
    let v5 = version.is_v5();
    if !v5 && c.password.is_some() && c.username.is_none() {
        return Err(EncodeError::Invalid(
            "[MQTT-3.1.2-22] a 3.x CONNECT cannot carry a password without a user name",
        ));
    }
    let name = match version {
        ProtocolVersion::V3_1 => "MQIsdp",
        ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
    };
    write_str(s, name, "protocol name")?;
    s.u8(version.level());

    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | will.qos.as_u8() << 3;
        if will.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        write_properties(s, &c.properties)?;
    }
    write_str(s, &c.client_id, "client identifier")?;
    if let Some(will) = &c.will {
        if v5 {
            write_properties(s, &will.properties)?;
        }
        write_str(s, &will.topic, "will topic")?;
        write_binary(s, &will.payload, "will payload")?;
    }
    if let Some(username) = &c.username {
        write_str(s, username, "user name")?;
    }
    if let Some(password) = &c.password {
        write_binary(s, password, "password")?;
    }
    Ok(())
}

fn write_connack<S: Sink>(s: &mut S, c: &ConnAck, version: ProtocolVersion) -> Result<()> {
    let code = if version.is_v5() {
        if !wire::connack_code_valid(c.reason_code) {
            return Err(EncodeError::Invalid(
                "[MQTT-3.2.2-8] not a CONNACK reason code",
            ));
        }
        c.reason_code.0
    } else {
        v3_connack_return_code(c.reason_code)?
    };
    // 3.1 has no Session Present flag.
    let session_present = c.session_present && version != ProtocolVersion::V3_1;
    if session_present && c.reason_code != ReasonCode::SUCCESS {
        return Err(EncodeError::Invalid(
            "[MQTT-3.2.2-6] Session Present must be 0 in a refusing CONNACK",
        ));
    }
    s.u8(u8::from(session_present));
    s.u8(code);
    if version.is_v5() {
        write_properties(s, &c.properties)?;
    }
    Ok(())
}

/// 3.x has six return codes; every 5.0 refusal is folded onto the closest of them.
fn v3_connack_return_code(code: ReasonCode) -> Result<u8> {
    Ok(match code.0 {
        0x00 => 0,
        0x84 => 1,
        0x85 => 2,
        0x88 | 0x89 => 3,
        0x86 => 4,
        c if c >= 0x80 => 5,
        _ => {
            return Err(EncodeError::Invalid(
                "CONNACK reason code is neither success nor an error",
            ))
        }
    })
}

fn write_publish<S: Sink>(s: &mut S, p: &Publish, v5: bool) -> Result<()> {
    if p.qos == QoS::AtMostOnce && p.dup {
        return Err(EncodeError::Invalid(
            "[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH",
        ));
    }
    if p.topic.is_empty() && !(v5 && p.properties.topic_alias.is_some()) {
        return Err(EncodeError::Invalid(
            "[MQTT-4.7.3-1] empty Topic Name without a Topic Alias",
        ));
    }
    write_str(s, &p.topic, "topic name")?;
    if p.qos != QoS::AtMostOnce {
        s.u16(nonzero_packet_id(p.packet_id)?);
    }
    if v5 {
        write_properties(s, &*p.properties)?;
    }
    s.put(&p.payload);
    Ok(())
}

fn write_pub_response<S: Sink>(
    s: &mut S,
    p: &PubResponse,
    v5: bool,
    packet_type: u8,
) -> Result<()> {
    s.u16(nonzero_packet_id(p.packet_id)?);
    if !v5 {
        return Ok(());
    }
    let valid = match packet_type {
        wire::PUBACK | wire::PUBREC => wire::puback_code_valid(p.reason_code),
        _ => wire::pubrel_code_valid(p.reason_code),
    };
    if !valid {
        return Err(EncodeError::Invalid(
            "[MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1] reason code not \
             allowed in this acknowledgement",
        ));
    }
    // The short forms of §3.4.2.1: nothing after the id for plain success, no Property
    // Length when there are no properties.
    let no_properties = p.properties == AckProperties::default();
    if p.reason_code == ReasonCode::SUCCESS && no_properties {
        return Ok(());
    }
    s.u8(p.reason_code.0);
    if !no_properties {
        write_properties(s, &p.properties)?;
    }
    Ok(())
}

fn write_subscribe<S: Sink>(s: &mut S, p: &Subscribe, v5: bool) -> Result<()> {
    if p.filters.is_empty() {
        return Err(EncodeError::Invalid(
            "[MQTT-3.8.3-2] SUBSCRIBE without a topic filter",
        ));
    }
    s.u16(nonzero_packet_id(p.packet_id)?);
    if v5 {
        write_properties(
            s,
            &SubscribeProperties {
                subscription_identifier: p.subscription_identifier,
                user_properties: &p.user_properties,
            },
        )?;
    }
    for (filter, options) in &p.filters {
        write_str(s, filter, "topic filter")?;
        let byte = if v5 {
            if options.retain_handling > 2 {
                return Err(EncodeError::Invalid("[§3.8.3.1] Retain Handling above 2"));
            }
            options.qos.as_u8()
                | u8::from(options.no_local) << 2
                | u8::from(options.retain_as_published) << 3
                | options.retain_handling << 4
        } else {
            options.qos.as_u8()
        };
        s.u8(byte);
    }
    Ok(())
}

fn write_suback<S: Sink>(s: &mut S, p: &SubAck, v5: bool) -> Result<()> {
    if p.reason_codes.is_empty() {
        return Err(EncodeError::Invalid(
            "[MQTT-3.8.4-6] SUBACK without a reason code",
        ));
    }
    s.u16(nonzero_packet_id(p.packet_id)?);
    if v5 {
        write_properties(s, &p.properties)?;
    }
    for &code in &p.reason_codes {
        let byte = if v5 {
            if !wire::suback_code_valid(code) {
                return Err(EncodeError::Invalid(
                    "[MQTT-3.9.3-2] not a SUBACK reason code",
                ));
            }
            code.0
        } else {
            // 3.x knows a granted QoS or a bare failure.
            match code.0 {
                c @ 0x00..=0x02 => c,
                c if c >= 0x80 => 0x80,
                _ => {
                    return Err(EncodeError::Invalid(
                        "[MQTT-3.9.3-2] SUBACK reason code is neither a QoS nor a failure",
                    ))
                }
            }
        };
        s.u8(byte);
    }
    Ok(())
}

fn write_unsubscribe<S: Sink>(s: &mut S, p: &Unsubscribe, v5: bool) -> Result<()> {
    if p.filters.is_empty() {
        return Err(EncodeError::Invalid(
            "[MQTT-3.10.3-2] UNSUBSCRIBE without a topic filter",
        ));
    }
    s.u16(nonzero_packet_id(p.packet_id)?);
    if v5 {
        write_properties(s, &UserOnly(&p.user_properties))?;
    }
    for filter in &p.filters {
        write_str(s, filter, "topic filter")?;
    }
    Ok(())
}

fn write_unsuback<S: Sink>(s: &mut S, p: &UnsubAck, v5: bool) -> Result<()> {
    s.u16(nonzero_packet_id(p.packet_id)?);
    if !v5 {
        return Ok(());
    }
    if p.reason_codes.is_empty() {
        return Err(EncodeError::Invalid(
            "[MQTT-3.11.3-1] a 5.0 UNSUBACK needs a reason code per filter",
        ));
    }
    write_properties(s, &p.properties)?;
    for &code in &p.reason_codes {
        if !wire::unsuback_code_valid(code) {
            return Err(EncodeError::Invalid(
                "[MQTT-3.11.3-2] not an UNSUBACK reason code",
            ));
        }
        s.u8(code.0);
    }
    Ok(())
}

fn write_disconnect<S: Sink>(s: &mut S, d: &Disconnect, v5: bool) -> Result<()> {
    if !v5 {
        return Ok(());
    }
    if !wire::disconnect_code_valid(d.reason_code) {
        return Err(EncodeError::Invalid(
            "[MQTT-3.14.2-1] not a DISCONNECT reason code",
        ));
    }
    let no_properties = d.properties == DisconnectProperties::default();
    if d.reason_code == ReasonCode::NORMAL_DISCONNECTION && no_properties {
        return Ok(());
    }
    s.u8(d.reason_code.0);
    if !no_properties {
        write_properties(s, &d.properties)?;
    }
    Ok(())
}

fn write_auth<S: Sink>(s: &mut S, a: &Auth, version: ProtocolVersion) -> Result<()> {
    if !version.is_v5() {
        return Err(EncodeError::NotInVersion {
            packet: "AUTH",
            version: version.as_str(),
        });
    }
    if !wire::auth_code_valid(a.reason_code) {
        return Err(EncodeError::Invalid(
            "[MQTT-3.15.2-1] not an AUTH reason code",
        ));
    }
    if a.reason_code == ReasonCode::SUCCESS && a.properties == AuthProperties::default() {
        return Ok(());
    }
    if a.properties.authentication_method.is_none() {
        return Err(EncodeError::Invalid(
            "[§3.15.2.2.2] AUTH with a reason code or properties needs an Authentication Method",
        ));
    }
    s.u8(a.reason_code.0);
    write_properties(s, &a.properties)
}

fn nonzero_packet_id(id: u16) -> Result<u16> {
    if id == 0 {
        return Err(EncodeError::Invalid(
            "[MQTT-2.2.1-3] packet identifier is 0",
        ));
    }
    Ok(id)
}

fn write_vbi<S: Sink>(s: &mut S, value: usize, what: &'static str) -> Result<()> {
    if value > wire::VBI_MAX as usize {
        return Err(EncodeError::TooLong(what));
    }
    let mut rest = value;
    loop {
        let mut byte = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            byte |= 0x80;
        }
        s.u8(byte);
        if rest == 0 {
            return Ok(());
        }
    }
}

fn write_binary<S: Sink>(s: &mut S, data: &[u8], what: &'static str) -> Result<()> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::TooLong(what))?;
    s.u16(len);
    s.put(data);
    Ok(())
}

fn write_str<S: Sink>(s: &mut S, value: &str, what: &'static str) -> Result<()> {
    write_binary(s, value.as_bytes(), what)
}

/// A set of 5.0 properties. `write_entries` writes the properties without their length, so
/// [`write_properties`] can measure them first.
trait Properties {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()>;
}

fn write_properties<S: Sink, P: Properties>(s: &mut S, properties: &P) -> Result<()> {
    let mut counter = Counter(0);
    properties.write_entries(&mut counter)?;
    write_vbi(s, counter.0, "property length")?;
    properties.write_entries(s)
}

fn prop_u8<S: Sink>(s: &mut S, id: u8, value: Option<u8>) {
    if let Some(value) = value {
        s.u8(id);
        s.u8(value);
    }
}

fn prop_bool<S: Sink>(s: &mut S, id: u8, value: Option<bool>) {
    prop_u8(s, id, value.map(u8::from));
}

fn prop_u16<S: Sink>(s: &mut S, id: u8, value: Option<u16>) {
    if let Some(value) = value {
        s.u8(id);
        s.u16(value);
    }
}

fn prop_u32<S: Sink>(s: &mut S, id: u8, value: Option<u32>) {
    if let Some(value) = value {
        s.u8(id);
        s.u32(value);
    }
}

fn prop_str<S: Sink>(s: &mut S, id: u8, value: Option<&str>, what: &'static str) -> Result<()> {
    if let Some(value) = value {
        s.u8(id);
        write_str(s, value, what)?;
    }
    Ok(())
}

fn prop_binary<S: Sink>(s: &mut S, id: u8, value: Option<&[u8]>, what: &'static str) -> Result<()> {
    if let Some(value) = value {
        s.u8(id);
        write_binary(s, value, what)?;
    }
    Ok(())
}

fn prop_subscription_id<S: Sink>(s: &mut S, id: u32) -> Result<()> {
    if id == 0 || id > wire::VBI_MAX {
        return Err(EncodeError::Invalid(
            "[§3.3.2.3.8] Subscription Identifier outside 1..=268435455",
        ));
    }
    s.u8(wire::SUBSCRIPTION_IDENTIFIER);
    write_vbi(s, id as usize, "subscription identifier")
}

fn prop_users<S: Sink>(s: &mut S, users: &UserProperties) -> Result<()> {
    for (key, value) in users {
        s.u8(wire::USER_PROPERTY);
        write_str(s, key, "user property name")?;
        write_str(s, value, "user property value")?;
    }
    Ok(())
}

fn nonzero_u16(value: Option<u16>, message: &'static str) -> Result<Option<u16>> {
    match value {
        Some(0) => Err(EncodeError::Invalid(message)),
        other => Ok(other),
    }
}

fn nonzero_u32(value: Option<u32>, message: &'static str) -> Result<Option<u32>> {
    match value {
        Some(0) => Err(EncodeError::Invalid(message)),
        other => Ok(other),
    }
}

impl Properties for ConnectProperties {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()> {
        prop_u32(
            s,
            wire::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        let receive_maximum = nonzero_u16(self.receive_maximum, "Receive Maximum is 0")?;
        prop_u16(s, wire::RECEIVE_MAXIMUM, receive_maximum);
        let maximum_packet_size =
            nonzero_u32(self.maximum_packet_size, "Maximum Packet Size is 0")?;
        prop_u32(s, wire::MAXIMUM_PACKET_SIZE, maximum_packet_size);
        prop_u16(s, wire::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        prop_bool(
            s,
            wire::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        prop_bool(
            s,
            wire::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        prop_users(s, &self.user_properties)?;
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(EncodeError::Invalid(
                "[§3.1.2.11.10] Authentication Data without an Authentication Method",
            ));
        }
        prop_str(
            s,
            wire::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
            "authentication method",
        )?;
        prop_binary(
            s,
            wire::AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
            "authentication data",
        )
    }
}

impl Properties for WillProperties {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()> {
        prop_u32(s, wire::WILL_DELAY_INTERVAL, self.will_delay_interval);
        prop_u8(
            s,
            wire::PAYLOAD_FORMAT_INDICATOR,
            payload_format(self.payload_format_indicator)?,
        );
        prop_u32(
            s,
            wire::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        prop_str(
            s,
            wire::CONTENT_TYPE,
            self.content_type.as_deref(),
            "content type",
        )?;
        prop_str(
            s,
            wire::RESPONSE_TOPIC,
            self.response_topic.as_deref(),
            "response topic",
        )?;
        prop_binary(
            s,
            wire::CORRELATION_DATA,
            self.correlation_data.as_deref(),
            "correlation data",
        )?;
        prop_users(s, &self.user_properties)
    }
}

fn payload_format(value: Option<u8>) -> Result<Option<u8>> {
    match value {
        Some(v) if v > 1 => Err(EncodeError::Invalid(
            "[§3.3.2.3.2] Payload Format Indicator is neither 0 nor 1",
        )),
        other => Ok(other),
    }
}

impl Properties for ConnAckProperties {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()> {
        prop_u32(
            s,
            wire::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        let receive_maximum = nonzero_u16(self.receive_maximum, "Receive Maximum is 0")?;
        prop_u16(s, wire::RECEIVE_MAXIMUM, receive_maximum);
        let maximum_qos = match self.maximum_qos {
            Some(QoS::ExactlyOnce) => {
                return Err(EncodeError::Invalid(
                    "[§3.2.2.3.4] Maximum QoS is 0 or 1; leave it out for 2",
                ))
            }
            other => other.map(QoS::as_u8),
        };
        prop_u8(s, wire::MAXIMUM_QOS, maximum_qos);
        prop_bool(s, wire::RETAIN_AVAILABLE, self.retain_available);
        let maximum_packet_size =
            nonzero_u32(self.maximum_packet_size, "Maximum Packet Size is 0")?;
        prop_u32(s, wire::MAXIMUM_PACKET_SIZE, maximum_packet_size);
        prop_str(
            s,
            wire::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_deref(),
            "assigned client identifier",
        )?;
        prop_u16(s, wire::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        prop_str(
            s,
            wire::REASON_STRING,
            self.reason_string.as_deref(),
            "reason string",
        )?;
        prop_users(s, &self.user_properties)?;
        prop_bool(
            s,
            wire::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        prop_bool(
            s,
            wire::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        prop_bool(
            s,
            wire::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        prop_u16(s, wire::SERVER_KEEP_ALIVE, self.server_keep_alive);
        prop_str(
            s,
            wire::RESPONSE_INFORMATION,
            self.response_information.as_deref(),
            "response information",
        )?;
        prop_str(
            s,
            wire::SERVER_REFERENCE,
            self.server_reference.as_deref(),
            "server reference",
        )?;
        prop_str(
            s,
            wire::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
            "authentication method",
        )?;
        prop_binary(
            s,
            wire::AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
            "authentication data",
        )
    }
}

impl Properties for PublishProperties {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()> {
        prop_u8(
            s,
            wire::PAYLOAD_FORMAT_INDICATOR,
            payload_format(self.payload_format_indicator)?,
        );
        prop_u32(
            s,
            wire::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        let topic_alias = nonzero_u16(self.topic_alias, "[MQTT-3.3.2-8] Topic Alias is 0")?;
        prop_u16(s, wire::TOPIC_ALIAS, topic_alias);
        prop_str(
            s,
            wire::RESPONSE_TOPIC,
            self.response_topic.as_deref(),
            "response topic",
        )?;
        prop_binary(
            s,
            wire::CORRELATION_DATA,
            self.correlation_data.as_deref(),
            "correlation data",
        )?;
        prop_users(s, &self.user_properties)?;
        for &id in &self.subscription_identifiers {
            prop_subscription_id(s, id)?;
        }
        prop_str(
            s,
            wire::CONTENT_TYPE,
            self.content_type.as_deref(),
            "content type",
        )
    }
}

impl Properties for AckProperties {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()> {
        prop_str(
            s,
            wire::REASON_STRING,
            self.reason_string.as_deref(),
            "reason string",
        )?;
        prop_users(s, &self.user_properties)
    }
}

impl Properties for DisconnectProperties {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()> {
        prop_u32(
            s,
            wire::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        prop_str(
            s,
            wire::REASON_STRING,
            self.reason_string.as_deref(),
            "reason string",
        )?;
        prop_users(s, &self.user_properties)?;
        prop_str(
            s,
            wire::SERVER_REFERENCE,
            self.server_reference.as_deref(),
            "server reference",
        )
    }
}

impl Properties for AuthProperties {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()> {
        prop_str(
            s,
            wire::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
            "authentication method",
        )?;
        prop_binary(
            s,
            wire::AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
            "authentication data",
        )?;
        prop_str(
            s,
            wire::REASON_STRING,
            self.reason_string.as_deref(),
            "reason string",
        )?;
        prop_users(s, &self.user_properties)
    }
}

/// SUBSCRIBE keeps its two properties as fields of the packet.
struct SubscribeProperties<'a> {
    subscription_identifier: Option<u32>,
    user_properties: &'a UserProperties,
}

impl Properties for SubscribeProperties<'_> {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()> {
        if let Some(id) = self.subscription_identifier {
            prop_subscription_id(s, id)?;
        }
        prop_users(s, self.user_properties)
    }
}

/// UNSUBSCRIBE carries only user properties.
struct UserOnly<'a>(&'a UserProperties);

impl Properties for UserOnly<'_> {
    fn write_entries<S: Sink>(&self, s: &mut S) -> Result<()> {
        prop_users(s, self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode::parse_vbi;
    use super::*;

    fn vbi_bytes(value: usize) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_vbi(&mut out, value, "test").unwrap();
        out.to_vec()
    }

    #[test]
    fn variable_byte_integer_boundaries() {
        // Table 1-1 of 5.0 §1.5.5.
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            assert_eq!(vbi_bytes(value), bytes, "{value}");
            assert_eq!(wire::vbi_len(value), Some(bytes.len()));
            assert_eq!(
                parse_vbi(bytes),
                Ok(Some((value as u32, bytes.len(), true)))
            );
            // Every proper prefix asks for more bytes.
            for cut in 0..bytes.len() {
                assert_eq!(parse_vbi(&bytes[..cut]), Ok(None));
            }
        }
        assert_eq!(wire::vbi_len(268_435_456), None);
        let mut out = BytesMut::new();
        assert_eq!(
            write_vbi(&mut out, 268_435_456, "x"),
            Err(EncodeError::TooLong("x"))
        );
    }

    #[test]
    fn variable_byte_integer_rejects_five_bytes_and_flags_padding() {
        assert!(parse_vbi(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
        assert!(parse_vbi(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert_eq!(parse_vbi(&[0x80, 0x00]), Ok(Some((0, 2, false))));
        assert_eq!(parse_vbi(&[0xFF, 0x80, 0x00]), Ok(Some((127, 3, false))));
        assert_eq!(parse_vbi(&[0x85, 0x01]), Ok(Some((133, 2, true))));
    }

    #[test]
    fn counter_and_buffer_agree_on_properties() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(9),
            topic_alias: Some(3),
            response_topic: Some("r".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"c")),
            user_properties: vec![("a".into(), "b".into())],
            subscription_identifiers: vec![1, 200, 70_000],
            content_type: Some("t".into()),
        };
        let mut counter = Counter(0);
        write_properties(&mut counter, &props).unwrap();
        let mut out = BytesMut::new();
        write_properties(&mut out, &props).unwrap();
        assert_eq!(counter.0, out.len());
        // Property Length, then 2+5+3+4+4+(1+2+1+2+1)+1+2+3+4
        assert_eq!(out.first(), Some(&((out.len() - 1) as u8)));
    }
}
