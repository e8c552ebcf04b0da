//! CoAP requests as a client of the pub/sub resources writes them, so the CoAP targets reach
//! the authenticated resources with the fuzzer choosing the parts; and what the targets
//! learn from the answers (a connection token) to use in later requests.

use std::sync::Arc;
use std::time::Duration;

use adapter_coap::{AuthFailureLimit, Settings, UNDERSTOOD_CRITICAL_BLOCKWISE};
use adapter_kit::coap::{
    CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType, TransmissionParams,
};
use adapter_kit::coap_block::BlockwiseParams;
use arbitrary::Arbitrary;
use gateway_config::{CoapNotifyType, CoapQos};
use mqtt_core::rate::PublishRates;

use crate::{ClientId, Credentials, Filter, Mount, Topic};

/// The CoAP gateway's settings on the listener named `listener`, whose messages may be up
/// to `max_message_size` bytes, for clients of the mountpoint `mount`: notifications at
/// the QoS of their message, answers piggybacked, and limits small enough that inputs
/// reach them.
pub fn settings(
    listener: &str,
    max_message_size: usize,
    mount: Mount,
    connection_required: bool,
) -> Settings {
    Settings {
        listener: Arc::from(listener),
        heartbeat: Duration::from_secs(30),
        connection_required,
        notify_type: CoapNotifyType::Qos,
        subscribe_qos: CoapQos::Coap,
        publish_qos: CoapQos::Coap,
        mountpoint: mount.template().to_owned(),
        transmission: TransmissionParams {
            max_message_size,
            ..TransmissionParams::rfc7252(UNDERSTOOD_CRITICAL_BLOCKWISE)
        },
        // Small blocks and bodies, so that uploads complete and fail within one input.
        blockwise: Some(BlockwiseParams {
            max_szx: 2,
            max_body_size: 512,
            lifetime: Duration::from_secs(60),
            max_transfers: 2,
        }),
        separate_response: false,
        // Small, so that inputs (wrong credentials or tokens) reach the lockout and its end.
        auth_failures: AuthFailureLimit {
            max: 3,
            window: Duration::from_secs(10),
            lockout: Duration::from_secs(5),
        },
        rates: PublishRates::UNLIMITED,
        clients: Arc::default(),
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Other(u8),
}

#[derive(Debug, Clone, Arbitrary)]
pub enum Resource {
    Publish(Topic),
    Observe(Filter),
    Connection,
    Path(Vec<String>),
}

/// The connection-mode token a request presents.
#[derive(Debug, Clone, Arbitrary)]
pub enum TokenRef {
    /// The last one the channel gave out.
    Last,
    Raw(String),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Block {
    pub num: u8,
    pub more: bool,
    pub szx: u8,
}

impl Block {
    fn value(self) -> Vec<u8> {
        let value =
            (u32::from(self.num) << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 7);
        uint(value)
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Request {
    pub confirmable: bool,
    /// Few ids, so that duplicates happen.
    pub message_id: u8,
    pub token: u8,
    pub method: Method,
    pub resource: Resource,
    pub client_id: Option<ClientId>,
    pub credentials: Credentials,
    pub connection_token: Option<TokenRef>,
    pub qos: Option<u8>,
    pub retain: Option<bool>,
    pub expiry: Option<u16>,
    /// Observe 0 (register) or 1 (deregister).
    pub observe: Option<bool>,
    pub block1: Option<Block>,
    pub block2: Option<Block>,
    pub content_format: Option<u16>,
    pub payload: Vec<u8>,
}

/// An option's unsigned integer in the fewest bytes (RFC 7252 3.2).
pub fn uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes.get(skip..).unwrap_or_default().to_vec()
}

impl Request {
    /// The request as a packet; `last_token` is the connection token seen last.
    pub fn packet(&self, last_token: Option<&str>) -> Packet {
        let mut packet = Packet::new();
        packet.header.set_type(if self.confirmable {
            MessageType::Confirmable
        } else {
            MessageType::NonConfirmable
        });
        packet.header.message_id = u16::from(self.message_id);
        if self.token != 0 {
            packet.set_token(vec![self.token]);
        }
        packet.header.code = match self.method {
            Method::Get => MessageClass::Request(RequestType::Get),
            Method::Post => MessageClass::Request(RequestType::Post),
            Method::Put => MessageClass::Request(RequestType::Put),
            Method::Delete => MessageClass::Request(RequestType::Delete),
            Method::Other(code) => MessageClass::from(code),
        };
        let segments: Vec<String> = match &self.resource {
            Resource::Publish(topic) => path("ps", &topic.text()),
            Resource::Observe(filter) => path("ps", &filter.text()),
            Resource::Connection => vec!["mqtt".into(), "connection".into()],
            Resource::Path(segments) => segments.clone(),
        };
        for segment in segments {
            packet.add_option(CoapOption::UriPath, segment.into_bytes());
        }
        let mut query = |key: &str, value: &str| {
            packet.add_option(CoapOption::UriQuery, format!("{key}={value}").into_bytes());
        };
        if let Some(client_id) = &self.client_id {
            query("clientid", &client_id.text());
        }
        if let Some(username) = self.credentials.username() {
            query("username", username);
        }
        if let Some(password) = self.credentials.password_text() {
            query("password", &password);
        }
        match &self.connection_token {
            Some(TokenRef::Last) => query("token", last_token.unwrap_or("")),
            Some(TokenRef::Raw(token)) => query("token", token),
            None => {}
        }
        if let Some(qos) = self.qos {
            query("qos", &qos.to_string());
        }
        if let Some(retain) = self.retain {
            query("retain", if retain { "true" } else { "false" });
        }
        if let Some(expiry) = self.expiry {
            query("expiry", &expiry.to_string());
        }
        if let Some(observe) = self.observe {
            packet.set_observe_value(u32::from(observe));
        }
        if let Some(block) = self.block1 {
            packet.add_option(CoapOption::Block1, block.value());
        }
        if let Some(block) = self.block2 {
            packet.add_option(CoapOption::Block2, block.value());
        }
        if let Some(format) = self.content_format {
            packet.add_option(CoapOption::ContentFormat, uint(u32::from(format)));
        }
        packet.payload = self.payload.clone();
        packet
    }
}

/// `/ps` and the topic's levels, as Uri-Path segments.
fn path(first: &str, topic: &str) -> Vec<String> {
    std::iter::once(first.to_owned())
        .chain(topic.split('/').map(str::to_owned))
        .collect()
}

/// The connection token a 2.01 answer to POST `/mqtt/connection` carries.
pub fn connection_token(packet: &Packet) -> Option<String> {
    if packet.header.code != MessageClass::Response(ResponseType::Created) {
        return None;
    }
    String::from_utf8(packet.payload.clone())
        .ok()
        .filter(|token| !token.is_empty() && token.len() <= 64)
}
