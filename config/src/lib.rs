//! Configuration schema and loader.
//!
//! The schema is plain serde types; every struct denies unknown fields so a typo fails start-up
//! instead of being silently ignored. The single source of default values is the embedded,
//! commented [`DEFAULT_TOML`]; [`Config::default`] is built by parsing it.
//!
//! Loading ([`Config::load`]) layers, lowest first: embedded defaults, the TOML file, then
//! `GATEWAY_*` environment variables with `__` between key levels. Only variables whose name
//! contains `__` are read, so unrelated ones such as `GATEWAY_CONFIG` never count as unknown keys.
//! The gateway can add its own layer (CLI flags) between [`Config::figment`] and
//! [`Config::from_figment`].
//!
//! `auth.password_file` and `auth.acl_file` are `Option<PathBuf>`: the empty string written in
//! TOML (and the default) is `None`, and `None` is written back as `""`.

mod duration;
mod ipnet;
mod load;
mod rate;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use duration::{Duration, DurationError};
pub use ipnet::{IpNet, IpNetError};
pub use load::{ConfigError, Problem};
pub use rate::{Rate, RateError};

/// The embedded defaults, a commented TOML file with every key of the schema.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub mqtt: MqttConfig,
    pub retainer: RetainerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub sys: SysConfig,
    pub listeners: ListenersConfig,
    pub gateway: GatewaysConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// tracing env-filter syntax; checked by the binary, which owns tracing-subscriber.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Bytes, whole packet, both directions.
    pub max_packet_size: u32,
    pub max_client_id_length: u32,
    pub max_topic_levels: u32,
    /// 0..=2, checked by validation.
    pub max_qos_allowed: u8,
    /// 0 disables topic aliases.
    pub max_topic_alias: u16,
    pub retain_available: bool,
    pub wildcard_subscription: bool,
    pub shared_subscription: bool,
    pub subscription_identifiers: bool,
    /// 1..=65535; wider than u16 so an out-of-range value gets the range message, not a type error.
    pub receive_maximum: u32,
    /// 1..=65535, same reason.
    pub max_inflight: u32,
    pub max_awaiting_rel: u32,
    pub await_rel_timeout: Duration,
    /// 0 = unlimited.
    pub max_queued_messages: u64,
    /// 0 = unlimited.
    pub max_queued_bytes: u64,
    pub queue_qos0: bool,
    /// Seconds.
    pub max_keepalive: u16,
    /// Seconds; 0 = use the client's.
    pub server_keepalive: u16,
    pub keepalive_multiplier: f64,
    pub session_expiry_interval: Duration,
    pub shared_subscription_strategy: SharedSubscriptionStrategy,
    /// 0 = unlimited.
    pub max_subscriptions: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedSubscriptionStrategy {
    Random,
    RoundRobin,
    Sticky,
    HashClientid,
    HashTopic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetainerConfig {
    pub enable: bool,
    /// 0 = unlimited.
    pub max_retained_messages: u64,
    /// Bytes.
    pub max_payload_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// Relative paths are taken from the working directory.
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub commit_window: Duration,
    /// Bytes; 0 = unlimited.
    pub max_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    Memory,
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    Always,
    Batch,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub allow_anonymous: bool,
    /// `None` when the TOML value is `""`.
    #[serde(with = "empty_is_none")]
    pub password_file: Option<PathBuf>,
    /// `None` when the TOML value is `""`.
    #[serde(with = "empty_is_none")]
    pub acl_file: Option<PathBuf>,
    pub acl_no_match: AclNoMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclNoMatch {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysConfig {
    pub enable: bool,
    pub interval: Duration,
}

/// Listeners by kind, then by name (letters, digits, `_` and `-`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersConfig {
    pub tcp: BTreeMap<String, TcpListenerConfig>,
    /// MQTT over TLS (EMQX calls the kind `ssl`).
    pub ssl: BTreeMap<String, SslListenerConfig>,
    pub ws: BTreeMap<String, WsListenerConfig>,
    pub wss: BTreeMap<String, WssListenerConfig>,
    /// MQTT over QUIC: one bidirectional stream per connection carries the session.
    pub quic: BTreeMap<String, QuicListenerConfig>,
}

/// The listener kinds, as they appear under `listeners.`.
/// Every table of named listeners: a listener added under a new name takes its omitted keys
/// from the `default` one of its table.
pub const LISTENER_TABLES: [&str; 12] = [
    "listeners.tcp",
    "listeners.ssl",
    "listeners.ws",
    "listeners.wss",
    "listeners.quic",
    "gateway.mqttsn.listeners.udp",
    "gateway.coap.listeners.udp",
    "gateway.coap.listeners.tcp",
    "gateway.coap.listeners.ws",
    "gateway.lwm2m.listeners.udp",
    "gateway.stomp.listeners.tcp",
    "gateway.stomp.listeners.ws",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicListenerConfig {
    pub enable: bool,
    /// A UDP address.
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    /// From the first packet to a complete CONNECT, QUIC handshake and stream opening included.
    pub handshake_timeout: Duration,
    /// Connections accepted per period; beyond it, accepting pauses and handshakes wait.
    pub max_conn_rate: Rate,
    /// Topic prefix of this listener's clients; `${clientid}` and `${username}` replaced.
    pub mountpoint: String,
    /// QUIC idle timeout; zero = as long as the longest MQTT keep-alive the broker grants.
    pub idle_timeout: Duration,
    /// Accept 0-RTT data from resuming clients (replayable: off unless asked for).
    pub enable_0rtt: bool,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SslListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub handshake_timeout: Duration,
    /// Connections accepted per period; beyond it, accepting pauses and clients wait.
    pub max_conn_rate: Rate,
    /// Topic prefix of this listener's clients; `${clientid}` and `${username}` replaced.
    pub mountpoint: String,
    pub proxy_protocol: bool,
    pub proxy_protocol_timeout: Duration,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub handshake_timeout: Duration,
    /// Connections accepted per period; beyond it, accepting pauses and clients wait.
    pub max_conn_rate: Rate,
    /// Topic prefix of this listener's clients; `${clientid}` and `${username}` replaced.
    pub mountpoint: String,
    pub websocket: WebSocketConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WssListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub handshake_timeout: Duration,
    /// Connections accepted per period; beyond it, accepting pauses and clients wait.
    pub max_conn_rate: Rate,
    /// Topic prefix of this listener's clients; `${clientid}` and `${username}` replaced.
    pub mountpoint: String,
    pub websocket: WebSocketConfig,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM chain, leaf first; `None` when `""`.
    #[serde(with = "empty_is_none")]
    pub certfile: Option<PathBuf>,
    #[serde(with = "empty_is_none")]
    pub keyfile: Option<PathBuf>,
    /// CA that signs client certificates; `None` when `""`.
    #[serde(with = "empty_is_none")]
    pub cacertfile: Option<PathBuf>,
    pub verify: TlsVerify,
    pub versions: Vec<TlsVersion>,
    /// rustls suite names; empty = every suite rustls offers for the versions.
    pub ciphers: Vec<String>,
    pub self_signed: bool,
    pub peer_cert_as_username: PeerCertField,
    pub peer_cert_as_clientid: PeerCertField,
}

/// Which part of a client certificate names the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerCertField {
    None,
    /// The subject's common name.
    Cn,
    /// The whole subject distinguished name.
    Dn,
    /// The first DNS name, e-mail address or URI of the subject alternative names.
    San,
}

impl TlsConfig {
    /// Whether the listener has what it needs to start: a certificate and key, or leave
    /// to make one up.
    pub fn has_certificate(&self) -> bool {
        self.self_signed || (self.certfile.is_some() && self.keyfile.is_some())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsVerify {
    /// No client certificate is asked for.
    None,
    /// A client certificate is asked for and checked when sent.
    Optional,
    /// A client without a certificate signed by the CA is refused.
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "tlsv1.2")]
    Tlsv12,
    #[serde(rename = "tlsv1.3")]
    Tlsv13,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    pub mqtt_path: String,
    pub supported_subprotocols: Vec<String>,
    pub fail_if_no_subprotocol: bool,
    /// Bytes; also the largest message of fragmented frames.
    pub max_frame_size: u32,
    pub check_origin_enable: bool,
    pub allow_origin_absence: bool,
    pub check_origins: Vec<String>,
    /// Header in which proxies name the client, X-Forwarded-For's form (addresses separated
    /// by commas, each proxy appending the one it saw); "" = none.
    pub proxy_address_header: String,
    /// The peers whose `proxy_address_header` is believed, and whose entries in it are
    /// skipped from the right; empty = any peer, whose last entry names the client.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListenerConfig {
    pub enable: bool,
    /// `"ip:port"`, `"[v6]:port"` or `"port"`; see [`TcpListenerConfig::bind_addr`].
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub handshake_timeout: Duration,
    /// Connections accepted per period; beyond it, accepting pauses and clients wait.
    pub max_conn_rate: Rate,
    /// Topic prefix of this listener's clients; `${clientid}` and `${username}` replaced.
    pub mountpoint: String,
    pub proxy_protocol: bool,
    pub proxy_protocol_timeout: Duration,
}

/// Device protocol gateways, under EMQX's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaysConfig {
    pub mqttsn: MqttSnConfig,
    pub coap: CoapConfig,
    pub lwm2m: Lwm2mConfig,
    pub stomp: StompConfig,
}

/// STOMP 1.0, 1.1 and 1.2 over TCP and WebSocket (EMQX's `gateway.stomp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompConfig {
    pub enable: bool,
    /// Prefix of every destination; `${clientid}` and `${username}` are replaced. A
    /// listener's own `mountpoint`, when not empty, replaces it.
    pub mountpoint: String,
    /// Time allowed from accept (and WebSocket upgrade) to a complete CONNECT.
    pub idle_timeout: Duration,
    /// How long the session of a client that named itself with `client-id` outlives its
    /// connection, holding its subscriptions and unacknowledged messages.
    pub session_expiry_interval: Duration,
    /// Messages of `client` and `client-individual` subscriptions sent and not yet
    /// acknowledged, per connection; beyond it deliveries wait in the session's queue.
    pub max_unacked: u32,
    pub nack: StompNack,
    /// Where unacknowledged messages of a `$share/` subscription go when their client's
    /// connection closes.
    pub shared_redelivery: StompSharedRedelivery,
    /// An open transaction older than this is aborted.
    pub transaction_timeout: Duration,
    /// Transactions open at once per connection.
    pub max_transactions: u32,
    /// SEND, ACK and NACK frames one transaction may hold.
    pub max_transaction_frames: u32,
    /// Bytes (bodies and headers) of the frames one transaction may hold.
    pub max_transaction_bytes: u32,
    pub frame: StompFrameConfig,
    pub listeners: StompListenersConfig,
}

/// What a NACK does to the message it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StompNack {
    /// Delivered again (to this client, or after a reconnect of its session).
    Redeliver,
    Drop,
}

/// Where the unacknowledged messages of a shared subscription go when a client leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StompSharedRedelivery {
    /// To another member of the share group at once, even when the client's session
    /// lives on.
    Group,
    /// They stay with a session that lives on, for its return; they go to another member
    /// only when the session ends with the connection.
    Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompFrameConfig {
    /// Headers per frame.
    pub max_headers: u32,
    /// Longest header line (name, colon and value as sent), bytes.
    pub max_headers_length: u32,
    /// Longest body, bytes.
    pub max_body_length: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompListenersConfig {
    pub tcp: BTreeMap<String, StompTcpListenerConfig>,
    pub ws: BTreeMap<String, StompWsListenerConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompTcpListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub max_conn_rate: Rate,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompWsListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub max_conn_rate: Rate,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
    /// The HTTP path of the upgrade.
    pub path: String,
    pub supported_subprotocols: Vec<String>,
    pub fail_if_no_subprotocol: bool,
    /// Bytes; also the largest message of fragmented frames.
    pub max_frame_size: u32,
}

impl StompTcpListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl StompWsListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }

    /// The kit's WebSocket options for this listener: no Origin check and no proxy
    /// header, which STOMP listeners do not configure.
    pub fn websocket(&self) -> WebSocketConfig {
        WebSocketConfig {
            mqtt_path: self.path.clone(),
            supported_subprotocols: self.supported_subprotocols.clone(),
            fail_if_no_subprotocol: self.fail_if_no_subprotocol,
            max_frame_size: self.max_frame_size,
            check_origin_enable: false,
            allow_origin_absence: true,
            check_origins: Vec::new(),
            proxy_address_header: String::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// CoAP over UDP (EMQX's `gateway.coap`): `/ps/{topic}` publish and observe, and
/// `/mqtt/connection` in connection mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapConfig {
    pub enable: bool,
    /// Silence after which a client is pinged (it has observations) or forgotten; in
    /// connection mode, the interval its PUT heartbeats must keep.
    pub heartbeat: Duration,
    /// Requests need a token from `POST /mqtt/connection`.
    pub connection_required: bool,
    pub notify_type: CoapNotifyType,
    pub subscribe_qos: CoapQos,
    pub publish_qos: CoapQos,
    /// Prefix of every topic; `{clientid}` and `{username}` are replaced.
    pub mountpoint: String,
    /// Kept for EMQX configuration files; the listener counters are always kept.
    pub enable_stats: bool,
    /// RFC 7252 ACK_TIMEOUT.
    pub ack_timeout: Duration,
    /// RFC 7252 ACK_RANDOM_FACTOR, >= 1.0.
    pub ack_random_factor: f64,
    /// RFC 7252 MAX_RETRANSMIT.
    pub max_retransmit: u32,
    /// RFC 7252 EXCHANGE_LIFETIME: how long a confirmable message id is remembered.
    pub exchange_lifetime: Duration,
    /// RFC 7252 NON_LIFETIME: the same for non-confirmable message ids.
    pub non_lifetime: Duration,
    /// Answer confirmable requests with an empty acknowledgement and a separate
    /// confirmable response (RFC 7252 5.2.2) instead of piggybacked.
    pub separate_response: bool,
    /// Failed authentications from one source within `auth_failure_window` after which its
    /// requests that need checking are refused (4.29) unchecked for `auth_lockout`; 0 = no limit.
    pub max_auth_failures: u32,
    pub auth_failure_window: Duration,
    pub auth_lockout: Duration,
    pub blockwise: CoapBlockwiseConfig,
    pub listeners: CoapGatewayListenersConfig,
}

/// CoAP's listeners: over UDP (RFC 7252), and over TCP and WebSocket (RFC 8323).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapGatewayListenersConfig {
    pub udp: BTreeMap<String, UdpListenerConfig>,
    pub tcp: BTreeMap<String, CoapTcpListenerConfig>,
    pub ws: BTreeMap<String, CoapWsListenerConfig>,
}

/// CoAP over TCP (RFC 8323).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapTcpListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub max_conn_rate: Rate,
    /// Our Max-Message-Size (RFC 8323 5.3.1): the largest message accepted, header
    /// included, announced in our CSM; a larger one aborts the connection.
    pub max_message_size: u32,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
}

/// CoAP over WebSocket (RFC 8323): one CoAP message per binary WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapWsListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub max_conn_rate: Rate,
    /// Our Max-Message-Size, also the largest WebSocket message accepted.
    pub max_message_size: u32,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
    /// The HTTP path of the upgrade (RFC 8323 4.1: `/.well-known/coap`).
    pub path: String,
    pub supported_subprotocols: Vec<String>,
    pub fail_if_no_subprotocol: bool,
}

impl CoapTcpListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl CoapWsListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }

    /// The kit's WebSocket options for this listener.
    pub fn websocket(&self) -> WebSocketConfig {
        WebSocketConfig {
            mqtt_path: self.path.clone(),
            supported_subprotocols: self.supported_subprotocols.clone(),
            fail_if_no_subprotocol: self.fail_if_no_subprotocol,
            max_frame_size: self.max_message_size,
            check_origin_enable: false,
            allow_origin_absence: true,
            check_origins: Vec::new(),
            proxy_address_header: String::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Block-wise transfers (RFC 7959), EMQX's `gateway.coap.blockwise`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapBlockwiseConfig {
    /// Off: Block1 and Block2 options are answered 4.02 Bad Option.
    pub enable: bool,
    /// Block size we send and accept, bytes: 16, 32, 64, 128, 256, 512 or 1024.
    pub max_block_size: u32,
    /// Largest body reassembled from Block1 blocks, bytes; beyond it 4.13 with Size1.
    pub max_body_size: u32,
    /// How long an upload waits for its next block.
    pub exchange_lifetime: Duration,
    /// Uploads reassembled at once per client.
    pub max_transfers: u32,
}

/// The message type of notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoapNotifyType {
    /// Non-confirmable for QoS 0 deliveries, confirmable for QoS 1 and 2.
    Qos,
    Con,
    Non,
}

/// The MQTT QoS of a CoAP publish or subscription when the request names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoapQos {
    /// QoS 1 for a confirmable request, QoS 0 for a non-confirmable one.
    Coap,
    Qos0,
    Qos1,
    Qos2,
}

/// LwM2M 1.0 / 1.1 over UDP (EMQX's `gateway.lwm2m`): devices register over CoAP and
/// are managed with JSON commands over MQTT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lwm2mConfig {
    pub enable: bool,
    /// Directory of extra OMA object definitions (`*.xml`); "" = only the built-in ones.
    pub xml_dir: String,
    /// Lifetimes below this are raised to it.
    pub lifetime_min: Duration,
    /// Lifetimes above this (and `lt=0`) are lowered to it.
    pub lifetime_max: Duration,
    /// A device in queue mode is reachable this long after its last message.
    pub qmode_time_window: Duration,
    /// Objects observed as soon as a device registers: `false`, `true` or `"on"` (all
    /// but the management objects), or a list of paths (a list or a comma-separated string).
    pub auto_observe: AutoObserve,
    pub update_msg_publish_condition: UpdatePublishCondition,
    /// Prefix of every topic; `${endpoint_name}`, `${clientid}` and `${username}` replaced.
    pub mountpoint: String,
    pub translators: Lwm2mTranslators,
    /// Commands waiting for a device's turn; beyond it the oldest is answered with a failure.
    pub max_queued_commands: u32,
    /// Extra time past the lifetime before a silent device's registration ends.
    pub lifetime_grace: Duration,
    /// RFC 7252 ACK_TIMEOUT for requests to devices.
    pub ack_timeout: Duration,
    /// RFC 7252 MAX_RETRANSMIT for requests to devices.
    pub max_retransmit: u32,
    pub listeners: CoapListenersConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AutoObserve {
    Enabled(bool),
    Text(String),
    Paths(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePublishCondition {
    Always,
    ContainsObjectList,
}

/// The MQTT topics of the LwM2M gateway, relative to the mountpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lwm2mTranslators {
    pub command: Translator,
    pub response: Translator,
    pub notify: Translator,
    pub register: Translator,
    pub update: Translator,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Translator {
    pub topic: String,
    pub qos: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapListenersConfig {
    pub udp: BTreeMap<String, UdpListenerConfig>,
}

/// MQTT-SN 1.2 over UDP (EMQX's `gateway.mqttsn`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSnConfig {
    pub enable: bool,
    /// GwId of ADVERTISE and GWINFO.
    pub gateway_id: u8,
    /// Send ADVERTISE every `advertise_interval` to `broadcast_address`.
    pub broadcast: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub broadcast_address: String,
    pub advertise_interval: Duration,
    /// Accept QoS -1 publishes from clients that never connected.
    pub enable_qos3: bool,
    /// Prefix of every topic this gateway's clients publish and subscribe to.
    pub mountpoint: String,
    /// Time a peer may stay silent before CONNECT or inside the will handshake.
    pub idle_timeout: Duration,
    /// Time a connected client whose CONNECT asked for no keep-alive (Duration 0) may stay
    /// silent before it counts as lost: no peer is kept for ever.
    pub max_idle_without_keepalive: Duration,
    /// T_RETRY: wait before a gateway-to-client message or REGISTER is sent again.
    pub retry_interval: Duration,
    /// N_RETRY: resends before the client is taken as lost.
    pub max_retries: u32,
    /// Topic ids one session may register, both directions together.
    pub max_registered_topics: u32,
    pub predefined: Vec<PredefinedTopic>,
    /// REGISTER every subscribed topic name again when a session is resumed.
    pub subs_resume: bool,
    pub clientinfo_override: ClientInfoOverride,
    pub listeners: MqttSnListenersConfig,
}

/// EMQX's `clientinfo_override`: templates for what a gateway's clients are authenticated
/// and authorized as, for protocols whose CONNECT carries less than MQTT's. An empty template
/// keeps what the client presented.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientInfoOverride {
    pub clientid: String,
    pub username: String,
    pub password: String,
}

impl ClientInfoOverride {
    /// What a template may name, as `${name}`.
    pub const PLACEHOLDERS: [&'static str; 4] = ["clientid", "username", "password", "peerhost"];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredefinedTopic {
    /// 1..=1024.
    pub id: u16,
    pub topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSnListenersConfig {
    pub udp: BTreeMap<String, UdpListenerConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    /// Peers tracked at once.
    pub max_connections: u32,
    /// Peers tracked at once for one source IP address, every port and MQTT-SN forwarder
    /// node behind it included.
    pub max_peers_per_source: u32,
    /// Largest datagram accepted, bytes.
    pub max_packet_size: u32,
    /// Datagrams waiting for one peer's channel; more are dropped as the network would.
    pub max_queued_datagrams: u32,
    /// Replaces the gateway's mountpoint for this listener's clients when not empty.
    pub mountpoint: String,
}

impl UdpListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }

    /// The mountpoint template of this listener's clients: its own, or else its gateway's.
    pub fn mountpoint_or<'a>(&'a self, gateway_mountpoint: &'a str) -> &'a str {
        if self.mountpoint.is_empty() {
            gateway_mountpoint
        } else {
            &self.mountpoint
        }
    }
}

impl MqttSnConfig {
    pub fn broadcast_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.broadcast_address)
    }
}

/// Why a `bind` value is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {0:?}: expected \"ip:port\", \"[ipv6]:port\" or \"port\"")]
pub struct BindAddrError(pub String);

impl TcpListenerConfig {
    /// The socket address to bind; a bare port means every IPv4 interface, as the schema says.
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl SslListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl WsListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl WssListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl QuicListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }

    /// QUIC's idle timeout: `idle_timeout`, or when that is zero the longest a session's
    /// keep-alive may let a client stay silent, so QUIC never cuts a client MQTT would keep.
    pub fn effective_idle_timeout(&self, mqtt: &MqttConfig) -> std::time::Duration {
        if !self.idle_timeout.is_zero() {
            return self.idle_timeout.get();
        }
        let secs = f64::from(mqtt.max_keepalive) * mqtt.keepalive_multiplier;
        std::time::Duration::try_from_secs_f64(secs).unwrap_or(std::time::Duration::MAX)
    }
}

pub(crate) fn parse_bind(text: &str) -> Result<SocketAddr, BindAddrError> {
    let trimmed = text.trim();
    if let Ok(port) = trimmed.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    trimmed
        .parse::<SocketAddr>()
        .map_err(|_| BindAddrError(text.to_owned()))
}

impl Default for Config {
    /// Parses [`DEFAULT_TOML`]. Its validity is a unit test; should it ever break, the
    /// hard-coded fallback below keeps this infallible without a second list of values
    /// drifting silently: the test compares against the embedded file, not this fallback.
    fn default() -> Self {
        toml::from_str::<Config>(DEFAULT_TOML).unwrap_or_else(|_| Config::fallback())
    }
}

impl Config {
    // Only reachable if default.toml stops parsing, which the test suite forbids.
    fn fallback() -> Config {
        Config {
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Human,
            },
            mqtt: MqttConfig {
                max_packet_size: 1_048_576,
                max_client_id_length: 65_535,
                max_topic_levels: 128,
                max_qos_allowed: 2,
                max_topic_alias: 65_535,
                retain_available: true,
                wildcard_subscription: true,
                shared_subscription: true,
                subscription_identifiers: true,
                receive_maximum: 32,
                max_inflight: 32,
                max_awaiting_rel: 100,
                await_rel_timeout: Duration::from_secs(300),
                max_queued_messages: 1000,
                max_queued_bytes: 67_108_864,
                queue_qos0: true,
                max_keepalive: 65_535,
                server_keepalive: 0,
                keepalive_multiplier: 1.5,
                session_expiry_interval: Duration::from_secs(7200),
                shared_subscription_strategy: SharedSubscriptionStrategy::RoundRobin,
                max_subscriptions: 0,
            },
            retainer: RetainerConfig {
                enable: true,
                max_retained_messages: 0,
                max_payload_size: 1_048_576,
            },
            storage: StorageConfig {
                backend: StorageBackend::Disk,
                data_dir: PathBuf::from("data"),
                fsync: FsyncPolicy::Batch,
                commit_window: Duration::from_millis(2),
                max_size: 1_073_741_824,
            },
            auth: AuthConfig {
                allow_anonymous: true,
                password_file: None,
                acl_file: None,
                acl_no_match: AclNoMatch::Allow,
            },
            sys: SysConfig {
                enable: true,
                interval: Duration::from_secs(10),
            },
            listeners: ListenersConfig {
                tcp: BTreeMap::from([(
                    "default".to_owned(),
                    TcpListenerConfig {
                        enable: true,
                        bind: "0.0.0.0:1883".into(),
                        max_connections: 1_024_000,
                        handshake_timeout: Duration::from_secs(10),
                        max_conn_rate: Rate::Infinity,
                        mountpoint: String::new(),
                        proxy_protocol: false,
                        proxy_protocol_timeout: Duration::from_secs(3),
                    },
                )]),
                ssl: BTreeMap::from([(
                    "default".to_owned(),
                    SslListenerConfig {
                        enable: true,
                        bind: "0.0.0.0:8883".into(),
                        max_connections: 1_024_000,
                        handshake_timeout: Duration::from_secs(10),
                        max_conn_rate: Rate::Infinity,
                        mountpoint: String::new(),
                        proxy_protocol: false,
                        proxy_protocol_timeout: Duration::from_secs(3),
                        tls: TlsConfig::fallback(),
                    },
                )]),
                ws: BTreeMap::from([(
                    "default".to_owned(),
                    WsListenerConfig {
                        enable: true,
                        bind: "0.0.0.0:8083".into(),
                        max_connections: 1_024_000,
                        handshake_timeout: Duration::from_secs(10),
                        max_conn_rate: Rate::Infinity,
                        mountpoint: String::new(),
                        websocket: WebSocketConfig::fallback(),
                    },
                )]),
                wss: BTreeMap::from([(
                    "default".to_owned(),
                    WssListenerConfig {
                        enable: true,
                        bind: "0.0.0.0:8084".into(),
                        max_connections: 1_024_000,
                        handshake_timeout: Duration::from_secs(10),
                        max_conn_rate: Rate::Infinity,
                        mountpoint: String::new(),
                        websocket: WebSocketConfig::fallback(),
                        tls: TlsConfig::fallback(),
                    },
                )]),
                quic: BTreeMap::from([(
                    "default".to_owned(),
                    QuicListenerConfig {
                        enable: true,
                        bind: "0.0.0.0:14567".into(),
                        max_connections: 1_024_000,
                        handshake_timeout: Duration::from_secs(10),
                        max_conn_rate: Rate::Infinity,
                        mountpoint: String::new(),
                        idle_timeout: Duration::from_secs(0),
                        enable_0rtt: false,
                        tls: TlsConfig {
                            versions: vec![TlsVersion::Tlsv13],
                            ..TlsConfig::fallback()
                        },
                    },
                )]),
            },
            gateway: GatewaysConfig {
                mqttsn: MqttSnConfig {
                    enable: true,
                    gateway_id: 1,
                    broadcast: false,
                    broadcast_address: "255.255.255.255:1884".into(),
                    advertise_interval: Duration::from_secs(900),
                    enable_qos3: true,
                    mountpoint: String::new(),
                    idle_timeout: Duration::from_secs(30),
                    max_idle_without_keepalive: Duration::from_secs(3600),
                    retry_interval: Duration::from_secs(10),
                    max_retries: 3,
                    max_registered_topics: 1000,
                    predefined: Vec::new(),
                    subs_resume: false,
                    clientinfo_override: ClientInfoOverride::default(),
                    listeners: MqttSnListenersConfig {
                        udp: BTreeMap::from([(
                            "default".to_owned(),
                            UdpListenerConfig {
                                enable: true,
                                bind: "0.0.0.0:1884".into(),
                                max_connections: 1_024_000,
                                max_packet_size: 65_535,
                                max_queued_datagrams: 64,
                                max_peers_per_source: 32,
                                mountpoint: String::new(),
                            },
                        )]),
                    },
                },
                coap: CoapConfig {
                    enable: true,
                    heartbeat: Duration::from_secs(30),
                    connection_required: false,
                    notify_type: CoapNotifyType::Qos,
                    subscribe_qos: CoapQos::Coap,
                    publish_qos: CoapQos::Coap,
                    mountpoint: String::new(),
                    enable_stats: true,
                    ack_timeout: Duration::from_secs(2),
                    ack_random_factor: 1.5,
                    max_retransmit: 4,
                    exchange_lifetime: Duration::from_secs(247),
                    non_lifetime: Duration::from_secs(145),
                    separate_response: false,
                    max_auth_failures: 5,
                    auth_failure_window: Duration::from_secs(60),
                    auth_lockout: Duration::from_secs(60),
                    blockwise: CoapBlockwiseConfig {
                        enable: true,
                        max_block_size: 1024,
                        max_body_size: 4 * 1024 * 1024,
                        exchange_lifetime: Duration::from_secs(247),
                        max_transfers: 4,
                    },
                    listeners: CoapGatewayListenersConfig {
                        udp: BTreeMap::from([(
                            "default".to_owned(),
                            UdpListenerConfig {
                                enable: true,
                                bind: "0.0.0.0:5683".into(),
                                max_connections: 1_024_000,
                                max_packet_size: 65_535,
                                max_queued_datagrams: 64,
                                max_peers_per_source: 32,
                                mountpoint: String::new(),
                            },
                        )]),
                        tcp: BTreeMap::from([(
                            "default".to_owned(),
                            CoapTcpListenerConfig {
                                enable: true,
                                bind: "0.0.0.0:5683".into(),
                                max_connections: 1_024_000,
                                max_conn_rate: Rate::Infinity,
                                max_message_size: 1_048_576,
                                mountpoint: String::new(),
                            },
                        )]),
                        ws: BTreeMap::from([(
                            "default".to_owned(),
                            CoapWsListenerConfig {
                                enable: false,
                                bind: "0.0.0.0:8683".into(),
                                max_connections: 1_024_000,
                                max_conn_rate: Rate::Infinity,
                                max_message_size: 1_048_576,
                                mountpoint: String::new(),
                                path: "/.well-known/coap".into(),
                                supported_subprotocols: vec!["coap".into()],
                                fail_if_no_subprotocol: true,
                            },
                        )]),
                    },
                },
                lwm2m: Lwm2mConfig {
                    enable: true,
                    xml_dir: String::new(),
                    lifetime_min: Duration::from_secs(15),
                    lifetime_max: Duration::from_secs(86_400),
                    qmode_time_window: Duration::from_secs(22),
                    auto_observe: AutoObserve::Enabled(false),
                    update_msg_publish_condition: UpdatePublishCondition::Always,
                    mountpoint: "lwm2m/${endpoint_name}/".into(),
                    translators: Lwm2mTranslators {
                        command: Translator {
                            topic: "dn/#".into(),
                            qos: 0,
                        },
                        response: Translator {
                            topic: "up/resp".into(),
                            qos: 0,
                        },
                        notify: Translator {
                            topic: "up/notify".into(),
                            qos: 0,
                        },
                        register: Translator {
                            topic: "up/resp".into(),
                            qos: 0,
                        },
                        update: Translator {
                            topic: "up/update".into(),
                            qos: 0,
                        },
                    },
                    max_queued_commands: 100,
                    lifetime_grace: Duration::from_secs(30),
                    ack_timeout: Duration::from_secs(2),
                    max_retransmit: 4,
                    listeners: CoapListenersConfig {
                        udp: BTreeMap::from([(
                            "default".to_owned(),
                            UdpListenerConfig {
                                enable: true,
                                bind: "0.0.0.0:5783".into(),
                                max_connections: 1_024_000,
                                max_packet_size: 65_535,
                                max_queued_datagrams: 64,
                                max_peers_per_source: 32,
                                mountpoint: String::new(),
                            },
                        )]),
                    },
                },
                stomp: StompConfig {
                    enable: true,
                    mountpoint: String::new(),
                    idle_timeout: Duration::from_secs(30),
                    session_expiry_interval: Duration::from_secs(7200),
                    max_unacked: 1000,
                    nack: StompNack::Redeliver,
                    shared_redelivery: StompSharedRedelivery::Group,
                    transaction_timeout: Duration::from_secs(60),
                    max_transactions: 16,
                    max_transaction_frames: 1000,
                    max_transaction_bytes: 1024 * 1024,
                    frame: StompFrameConfig {
                        max_headers: 10,
                        max_headers_length: 1024,
                        max_body_length: 65_536,
                    },
                    listeners: StompListenersConfig {
                        tcp: BTreeMap::from([(
                            "default".to_owned(),
                            StompTcpListenerConfig {
                                enable: true,
                                bind: "0.0.0.0:61613".into(),
                                max_connections: 1_024_000,
                                max_conn_rate: Rate::Infinity,
                                mountpoint: String::new(),
                            },
                        )]),
                        ws: BTreeMap::from([(
                            "default".to_owned(),
                            StompWsListenerConfig {
                                enable: false,
                                bind: "0.0.0.0:15674".into(),
                                max_connections: 1_024_000,
                                max_conn_rate: Rate::Infinity,
                                mountpoint: String::new(),
                                path: "/ws".into(),
                                supported_subprotocols: ["v12.stomp", "v11.stomp", "v10.stomp"]
                                    .map(String::from)
                                    .to_vec(),
                                fail_if_no_subprotocol: false,
                                max_frame_size: 1_048_576,
                            },
                        )]),
                    },
                },
            },
        }
    }
}

impl TlsConfig {
    fn fallback() -> TlsConfig {
        TlsConfig {
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify: TlsVerify::None,
            versions: vec![TlsVersion::Tlsv13, TlsVersion::Tlsv12],
            ciphers: Vec::new(),
            self_signed: false,
            peer_cert_as_username: PeerCertField::None,
            peer_cert_as_clientid: PeerCertField::None,
        }
    }
}

impl WebSocketConfig {
    fn fallback() -> WebSocketConfig {
        WebSocketConfig {
            mqtt_path: "/mqtt".into(),
            supported_subprotocols: ["mqtt", "mqttv3.1", "mqtt-v3", "mqtt-v3.1.1", "mqtt-v5"]
                .map(String::from)
                .to_vec(),
            fail_if_no_subprotocol: true,
            max_frame_size: 2_097_152,
            check_origin_enable: false,
            allow_origin_absence: true,
            check_origins: Vec::new(),
            proxy_address_header: String::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Paths where the TOML writes `""` for "none": env vars and TOML have no null.
mod empty_is_none {
    use std::path::{Path, PathBuf};

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        let text = value
            .as_deref()
            .map(Path::to_string_lossy)
            .unwrap_or_default();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        let text = super::string_or_integer(d)?;
        Ok((!text.is_empty()).then(|| PathBuf::from(text)))
    }
}

/// Env values that look numeric reach serde as integers (`GATEWAY_..._BIND=1883`), so
/// string keys that may hold a bare number accept both.
fn string_or_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_parses_to_default_and_fallback_agrees() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        // The fallback must never matter, but if it did it should be the same values.
        assert_eq!(parsed, Config::fallback());
    }

    #[test]
    fn every_default_key_has_a_comment_above_it() {
        let mut previous = "";
        for line in DEFAULT_TOML.lines() {
            let trimmed = line.trim();
            if !trimmed.is_empty() && !trimmed.starts_with('#') && !trimmed.starts_with('[') {
                assert!(
                    previous.trim_start().starts_with('#'),
                    "key line without a comment above it: {line}"
                );
            }
            previous = line;
        }
    }

    #[test]
    fn bind_addr_forms() {
        let cases: &[(&str, &str)] = &[
            ("0.0.0.0:1883", "0.0.0.0:1883"),
            ("127.0.0.1:21883", "127.0.0.1:21883"),
            ("1883", "0.0.0.0:1883"),
            ("[::]:1883", "[::]:1883"),
            ("[::1]:8883", "[::1]:8883"),
            ("0", "0.0.0.0:0"),
        ];
        for (bind, want) in cases {
            let l = TcpListenerConfig {
                enable: true,
                bind: (*bind).into(),
                max_connections: 1,
                handshake_timeout: Duration::from_secs(1),
                max_conn_rate: Rate::Infinity,
                mountpoint: String::new(),
                proxy_protocol: false,
                proxy_protocol_timeout: Duration::from_secs(1),
            };
            assert_eq!(l.bind_addr().unwrap().to_string(), *want, "{bind}");
        }
        for bad in [
            "",
            "localhost:1883",
            "1.2.3.4",
            "::1:1883",
            "65536",
            "1.2.3.4:99999",
            ":1883",
        ] {
            assert!(parse_bind(bad).is_err(), "{bad:?} should fail");
        }
    }
}
