//! Configuration schema and loader.
//!
//! The schema is plain serde types; every struct denies unknown fields so a typo fails start-up
//! instead of being silently ignored. The single source of default values is the embedded,
//! commented [`DEFAULT_TOML`]; [`Config::defaults`] loads it alone. There is no `Default`
//! impl: it would be a second list of values, or a parse that cannot report failure.
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
mod listeners;
mod load;
mod print;
mod rate;
mod text;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use duration::{Duration, DurationError};
pub use ipnet::{IpNet, IpNetError};
pub use listeners::{ListenerEntry, ListenerFiles, ListenerKind};
pub use load::{ConfigError, Problem};
pub use print::{PrintError, MASKED};
pub use rate::{ByteRate, ByteRateError, Rate, RateError};

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
    pub node: NodeConfig,
    pub flapping_detect: FlappingDetectConfig,
    pub banned: BannedConfig,
    pub dashboard: DashboardConfig,
    pub api_key: ApiKeyConfig,
    pub listeners: ListenersConfig,
    pub gateway: GatewaysConfig,
}

/// The banned list (EMQX's `banned`): a file of bans, and the most it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BannedConfig {
    /// A CSV file of bans with a header line; `None` when `""`.
    #[serde(with = "empty_is_none")]
    pub bootstrap_file: Option<PathBuf>,
    pub max_entries: u32,
}

/// The admin HTTP API's server (EMQX's dashboard listener).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    pub listeners: DashboardListeners,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardListeners {
    pub http: AdminListenerConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: u32,
    /// A request whose head has not arrived by then closes its connection.
    pub request_timeout: Duration,
}

impl AdminListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

/// Who may use the admin HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// `key:secret` lines (EMQX's bootstrap file); `None` when `""`.
    #[serde(with = "empty_is_none")]
    pub bootstrap_file: Option<PathBuf>,
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
    /// Messages; 0 = no flow control from receivers back to publishers.
    pub receiver_high_water: u64,
    /// Messages; below `receiver_high_water`.
    pub receiver_low_water: u64,
    pub slow_receiver_timeout: Duration,
    /// Seconds.
    pub max_keepalive: u16,
    /// Seconds; 0 = use the client's.
    pub server_keepalive: u16,
    pub keepalive_multiplier: f64,
    pub session_expiry_interval: Duration,
    /// The longest Session Expiry Interval any session gets; longer requests are lowered to it.
    pub max_session_expiry_interval: Duration,
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
    /// Topic and payload bytes of all retained messages; 0 = unlimited.
    pub max_retained_bytes: u64,
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
    /// With `fsync = "never"`, the longest a write waits for its sync.
    pub never_sync_interval: Duration,
    /// Bytes in use in the store; 0 = unlimited.
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
    pub acl_format: AclFormat,
    /// Password checks costing a millisecond or more of a core (Argon2id, PBKDF2 with many
    /// iterations) that may run at once; a CONNECT over it is refused as busy.
    pub max_costly_password_checks: u32,
}

/// The syntax and meaning of `auth.acl_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclFormat {
    /// The gateway's ordered allow/deny rules.
    Gateway,
    /// Mosquitto's `acl_file`: `user`, `topic` and `pattern` lines, decided as Mosquitto does.
    Mosquitto,
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
    /// Whether the periodic statistics are published; presence events have their own keys.
    pub enable: bool,
    pub interval: Duration,
    pub sys_event_messages: SysEventMessages,
}

/// Which presence events the broker publishes under `$SYS/brokers/{node}/`
/// (EMQX's `sys_topics.sys_event_messages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysEventMessages {
    pub client_connected: bool,
    pub client_disconnected: bool,
    /// An MQTT-SN client went to sleep.
    pub client_asleep: bool,
    /// A sleeping MQTT-SN client became active again.
    pub client_awake: bool,
}

/// This node as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The `{node}` level of `$SYS/brokers/{node}/...` (EMQX's `node.name`); checked to be
    /// one topic level.
    pub name: String,
}

/// A client id that connects more than `max_count` times within `window_time` is refused
/// for `ban_time` (EMQX's `flapping_detect`), whatever protocol it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlappingDetectConfig {
    pub enable: bool,
    pub max_count: u32,
    pub window_time: Duration,
    pub ban_time: Duration,
    /// Client ids tracked at once; beyond it new ones go untracked until others expire.
    pub max_tracked: u32,
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
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
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
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
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
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
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
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
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
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
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

/// STOMP 1.0, 1.1 and 1.2 over TCP, TLS, WebSocket and WebSocket over TLS (EMQX's
/// `gateway.stomp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompConfig {
    pub enable: bool,
    /// Prefix of every destination; `${clientid}` and `${username}` are replaced. A
    /// listener's own `mountpoint`, when not empty, replaces it.
    pub mountpoint: String,
    /// Time allowed from accept (TLS handshake and WebSocket upgrade included) to a
    /// complete CONNECT.
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
    /// STOMP over TLS (EMQX's `ssl` listeners, 61614).
    pub ssl: BTreeMap<String, StompSslListenerConfig>,
    pub ws: BTreeMap<String, StompWsListenerConfig>,
    /// STOMP over WebSocket over TLS.
    pub wss: BTreeMap<String, StompWssListenerConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompTcpListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub max_conn_rate: Rate,
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
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
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
    /// The HTTP path of the upgrade.
    pub path: String,
    pub supported_subprotocols: Vec<String>,
    pub fail_if_no_subprotocol: bool,
    /// Bytes; also the largest message of fragmented frames.
    pub max_frame_size: u32,
}

/// A STOMP over TCP listener's keys, and its TLS settings under EMQX's name for a
/// gateway listener's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompSslListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub max_conn_rate: Rate,
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
    pub ssl_options: TlsConfig,
}

/// A STOMP over WebSocket listener's keys with TLS under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StompWssListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub max_conn_rate: Rate,
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
    /// The HTTP path of the upgrade.
    pub path: String,
    pub supported_subprotocols: Vec<String>,
    pub fail_if_no_subprotocol: bool,
    /// Bytes; also the largest message of fragmented frames.
    pub max_frame_size: u32,
    pub ssl_options: TlsConfig,
}

impl StompTcpListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl StompSslListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl StompWssListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }

    /// The kit's WebSocket options for this listener, as a `ws` listener has them.
    pub fn websocket(&self) -> WebSocketConfig {
        gateway_websocket(
            &self.path,
            &self.supported_subprotocols,
            self.fail_if_no_subprotocol,
            self.max_frame_size,
        )
    }
}

impl StompWsListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }

    /// The kit's WebSocket options for this listener.
    pub fn websocket(&self) -> WebSocketConfig {
        gateway_websocket(
            &self.path,
            &self.supported_subprotocols,
            self.fail_if_no_subprotocol,
            self.max_frame_size,
        )
    }
}

/// A gateway's WebSocket options: no Origin check and no proxy header, which gateway
/// listeners do not configure.
fn gateway_websocket(
    path: &str,
    supported_subprotocols: &[String],
    fail_if_no_subprotocol: bool,
    max_frame_size: u32,
) -> WebSocketConfig {
    WebSocketConfig {
        mqtt_path: path.to_owned(),
        supported_subprotocols: supported_subprotocols.to_vec(),
        fail_if_no_subprotocol,
        max_frame_size,
        check_origin_enable: false,
        allow_origin_absence: true,
        check_origins: Vec::new(),
        proxy_address_header: String::new(),
        trusted_proxies: Vec::new(),
    }
}

/// CoAP over UDP (EMQX's `gateway.coap`): `/ps/{topic}` publish and observe, and
/// `/mqtt/connection` in connection mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapConfig {
    pub enable: bool,
    /// Silence after which a client is pinged (it has observations) or forgotten; in
    /// connection mode, the interval its PUT heartbeats must keep; on a stream listener,
    /// the time its TLS handshake and WebSocket upgrade may take.
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

/// CoAP's listeners: over UDP and DTLS (RFC 7252), and over TCP, TLS, WebSocket and
/// WebSocket over TLS (RFC 8323).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapGatewayListenersConfig {
    pub udp: BTreeMap<String, UdpListenerConfig>,
    pub dtls: BTreeMap<String, DtlsListenerConfig>,
    pub tcp: BTreeMap<String, CoapTcpListenerConfig>,
    /// `coaps+tcp`.
    pub ssl: BTreeMap<String, CoapSslListenerConfig>,
    pub ws: BTreeMap<String, CoapWsListenerConfig>,
    /// `coaps+ws`.
    pub wss: BTreeMap<String, CoapWssListenerConfig>,
}

/// A UDP listener whose datagrams are DTLS 1.2 records (RFC 6347).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtlsListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    /// Peers tracked at once, handshakes under way included.
    pub max_connections: u32,
    /// Peers tracked at once for one source IP address.
    pub max_peers_per_source: u32,
    /// Largest datagram accepted once decrypted, bytes.
    pub max_packet_size: u32,
    /// Datagrams waiting for one peer; more are dropped as the network would.
    pub max_queued_datagrams: u32,
    /// Handshakes under way at once on this listener.
    pub max_handshakes: u32,
    /// Handshakes under way at once from one source IP address.
    pub max_handshakes_per_source: u32,
    /// A handshake not done by then is given up.
    pub handshake_timeout: Duration,
    /// ClientHellos without the listener's cookie are answered by the listener, which
    /// keeps nothing for them (RFC 6347 4.2.1); off, each makes a peer.
    pub stateless_cookies: bool,
    /// Bytes of the connection ID (RFC 9146) a client that offers the extension gets;
    /// 0: not negotiated.
    pub connection_id_length: u32,
    /// Messages one client may publish per period (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
    /// Replaces the gateway's mountpoint for this listener's clients when not empty.
    pub mountpoint: String,
    pub dtls_options: DtlsOptions,
}

/// A DTLS listener's credentials: pre-shared keys, a certificate, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtlsOptions {
    /// `identity:secret` lines; `None` when `""`.
    #[serde(with = "empty_is_none")]
    pub psk_file: Option<PathBuf>,
    /// PEM, leaf first (ECDSA P-256 or P-384); `None` when `""`.
    #[serde(with = "empty_is_none")]
    pub certfile: Option<PathBuf>,
    #[serde(with = "empty_is_none")]
    pub keyfile: Option<PathBuf>,
    /// CA that signs client certificates; `None` when `""`.
    #[serde(with = "empty_is_none")]
    pub cacertfile: Option<PathBuf>,
    pub verify: TlsVerify,
}

impl DtlsListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }

    /// Whether it has what it needs to start: keys, or a certificate and its key.
    pub fn has_credentials(&self) -> bool {
        let o = &self.dtls_options;
        o.psk_file.is_some() || (o.certfile.is_some() && o.keyfile.is_some())
    }

    /// The datagram side of the listener, as a plain UDP listener has it.
    pub fn udp(&self) -> UdpListenerConfig {
        UdpListenerConfig {
            enable: self.enable,
            bind: self.bind.clone(),
            max_connections: self.max_connections,
            max_peers_per_source: self.max_peers_per_source,
            max_packet_size: self.max_packet_size,
            max_queued_datagrams: self.max_queued_datagrams,
            messages_rate: self.messages_rate,
            bytes_rate: self.bytes_rate,
            mountpoint: self.mountpoint.clone(),
        }
    }
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
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
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
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
    /// Our Max-Message-Size, also the largest WebSocket message accepted.
    pub max_message_size: u32,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
    /// The HTTP path of the upgrade (RFC 8323 4.1: `/.well-known/coap`).
    pub path: String,
    pub supported_subprotocols: Vec<String>,
    pub fail_if_no_subprotocol: bool,
}

/// CoAP over TLS (RFC 8323, `coaps+tcp`): a TCP listener's keys and its TLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapSslListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub max_conn_rate: Rate,
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
    /// Our Max-Message-Size (RFC 8323 5.3.1), as over TCP.
    pub max_message_size: u32,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
    pub ssl_options: TlsConfig,
}

/// CoAP over WebSocket over TLS (RFC 8323, `coaps+ws`): a WebSocket listener's keys and
/// its TLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapWssListenerConfig {
    pub enable: bool,
    #[serde(deserialize_with = "string_or_integer")]
    pub bind: String,
    pub max_connections: u32,
    pub max_conn_rate: Rate,
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
    /// Our Max-Message-Size, also the largest WebSocket message accepted.
    pub max_message_size: u32,
    /// Replaces the gateway's mountpoint for this listener's clients; `""` keeps it.
    pub mountpoint: String,
    /// The HTTP path of the upgrade (RFC 8323 4.1: `/.well-known/coap`).
    pub path: String,
    pub supported_subprotocols: Vec<String>,
    pub fail_if_no_subprotocol: bool,
    pub ssl_options: TlsConfig,
}

impl CoapTcpListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl CoapSslListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }
}

impl CoapWssListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }

    /// The kit's WebSocket options for this listener, as a `ws` listener has them.
    pub fn websocket(&self) -> WebSocketConfig {
        gateway_websocket(
            &self.path,
            &self.supported_subprotocols,
            self.fail_if_no_subprotocol,
            self.max_message_size,
        )
    }
}

impl CoapWsListenerConfig {
    pub fn bind_addr(&self) -> Result<SocketAddr, BindAddrError> {
        parse_bind(&self.bind)
    }

    /// The kit's WebSocket options for this listener.
    pub fn websocket(&self) -> WebSocketConfig {
        gateway_websocket(
            &self.path,
            &self.supported_subprotocols,
            self.fail_if_no_subprotocol,
            self.max_message_size,
        )
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
    pub dtls: BTreeMap<String, DtlsListenerConfig>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub dtls: BTreeMap<String, DtlsListenerConfig>,
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
    /// Messages one client may publish per period; beyond it the client is paused until
    /// the bucket refills (EMQX's `messages_rate`).
    pub messages_rate: Rate,
    /// Bytes of topic and payload one client may publish per period (EMQX's `bytes_rate`).
    pub bytes_rate: ByteRate,
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
    fn default_toml_alone_is_the_whole_valid_config() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::defaults().unwrap());
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
                messages_rate: Rate::Infinity,
                bytes_rate: ByteRate::Infinity,
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
