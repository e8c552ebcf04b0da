//! Every listener of every kind in one list, under the one name that logs and auth rules
//! give it, so the binary, validation and `config check` cannot disagree on either.

use crate::{parse_bind, BindAddrError, Config, DtlsListenerConfig, QuicListenerConfig, TlsConfig};

/// A table of named listeners. A listener added to a table under a new name takes its
/// omitted keys from the table's `default` listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Ssl,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
    /// MQTT over QUIC.
    Quic,
    MqttSnUdp,
    /// MQTT-SN over DTLS.
    MqttSnDtls,
    CoapUdp,
    /// CoAP over DTLS.
    CoapDtls,
    CoapTcp,
    /// CoAP over TLS (`coaps+tcp`).
    CoapSsl,
    CoapWs,
    /// CoAP over WebSocket over TLS (`coaps+ws`).
    CoapWss,
    Lwm2mUdp,
    /// LwM2M over DTLS.
    Lwm2mDtls,
    StompTcp,
    /// STOMP over TLS.
    StompSsl,
    StompWs,
    /// STOMP over WebSocket over TLS.
    StompWss,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 19] = [
        ListenerKind::Tcp,
        ListenerKind::Ssl,
        ListenerKind::Ws,
        ListenerKind::Wss,
        ListenerKind::Quic,
        ListenerKind::MqttSnUdp,
        ListenerKind::MqttSnDtls,
        ListenerKind::CoapUdp,
        ListenerKind::CoapDtls,
        ListenerKind::CoapTcp,
        ListenerKind::CoapSsl,
        ListenerKind::CoapWs,
        ListenerKind::CoapWss,
        ListenerKind::Lwm2mUdp,
        ListenerKind::Lwm2mDtls,
        ListenerKind::StompTcp,
        ListenerKind::StompSsl,
        ListenerKind::StompWs,
        ListenerKind::StompWss,
    ];

    /// The table of this kind's listeners, e.g. `gateway.coap.listeners.udp`.
    pub const fn table(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "listeners.tcp",
            ListenerKind::Ssl => "listeners.ssl",
            ListenerKind::Ws => "listeners.ws",
            ListenerKind::Wss => "listeners.wss",
            ListenerKind::Quic => "listeners.quic",
            ListenerKind::MqttSnUdp => "gateway.mqttsn.listeners.udp",
            ListenerKind::MqttSnDtls => "gateway.mqttsn.listeners.dtls",
            ListenerKind::CoapUdp => "gateway.coap.listeners.udp",
            ListenerKind::CoapDtls => "gateway.coap.listeners.dtls",
            ListenerKind::CoapTcp => "gateway.coap.listeners.tcp",
            ListenerKind::CoapSsl => "gateway.coap.listeners.ssl",
            ListenerKind::CoapWs => "gateway.coap.listeners.ws",
            ListenerKind::CoapWss => "gateway.coap.listeners.wss",
            ListenerKind::Lwm2mUdp => "gateway.lwm2m.listeners.udp",
            ListenerKind::Lwm2mDtls => "gateway.lwm2m.listeners.dtls",
            ListenerKind::StompTcp => "gateway.stomp.listeners.tcp",
            ListenerKind::StompSsl => "gateway.stomp.listeners.ssl",
            ListenerKind::StompWs => "gateway.stomp.listeners.ws",
            ListenerKind::StompWss => "gateway.stomp.listeners.wss",
        }
    }

    /// The key of the table holding a TLS listener's TLS settings within the listener's
    /// own: `tls` for MQTT's, `ssl_options` (EMQX's name) for a gateway's; None for kinds
    /// without TLS over TCP or QUIC.
    pub const fn tls_table(self) -> Option<&'static str> {
        match self {
            ListenerKind::Ssl | ListenerKind::Wss | ListenerKind::Quic => Some("tls"),
            ListenerKind::CoapSsl
            | ListenerKind::CoapWss
            | ListenerKind::StompSsl
            | ListenerKind::StompWss => Some("ssl_options"),
            _ => None,
        }
    }

    /// What the names of this kind's listeners start with: the transport alone for MQTT's
    /// own listeners (EMQX's `tcp:default`), the gateway and the transport for a gateway's.
    const fn name_prefix(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Ssl => "ssl",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
            ListenerKind::Quic => "quic",
            ListenerKind::MqttSnUdp => "mqttsn:udp",
            ListenerKind::MqttSnDtls => "mqttsn:dtls",
            ListenerKind::CoapUdp => "coap:udp",
            ListenerKind::CoapDtls => "coap:dtls",
            ListenerKind::CoapTcp => "coap:tcp",
            ListenerKind::CoapSsl => "coap:ssl",
            ListenerKind::CoapWs => "coap:ws",
            ListenerKind::CoapWss => "coap:wss",
            ListenerKind::Lwm2mUdp => "lwm2m:udp",
            ListenerKind::Lwm2mDtls => "lwm2m:dtls",
            ListenerKind::StompTcp => "stomp:tcp",
            ListenerKind::StompSsl => "stomp:ssl",
            ListenerKind::StompWs => "stomp:ws",
            ListenerKind::StompWss => "stomp:wss",
        }
    }

    /// The protocol this kind serves, as its listeners' names start: `mqtt` for MQTT's own
    /// listeners, the gateway's name (`coap`, `mqttsn`) for a gateway's.
    pub fn protocol(self) -> &'static str {
        match self.name_prefix().split_once(':') {
            Some((gateway, _)) => gateway,
            None => "mqtt",
        }
    }

    /// The transport this kind's listeners take: `tcp`, `ssl`, `ws`, `wss`, `quic`, `udp`,
    /// `dtls`.
    pub fn transport(self) -> &'static str {
        let prefix = self.name_prefix();
        prefix
            .split_once(':')
            .map_or(prefix, |(_, transport)| transport)
    }

    /// The name logs and auth rules give the listener `name` of this kind's table:
    /// `tcp:default`, `coap:udp:default`, `stomp:ws:browsers`.
    pub fn listener_name(self, name: &str) -> String {
        format!("{}:{name}", self.name_prefix())
    }
}

/// The settings naming the files a listener reads when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerFiles<'a> {
    /// A listener that reads no file.
    None,
    /// A TLS listener's `tls` or `ssl_options`.
    Tls(&'a TlsConfig),
    /// A QUIC listener, whose `tls` makes its TLS configuration with the rest.
    Quic(&'a QuicListenerConfig),
    /// A DTLS listener, whose `dtls_options` name its files.
    Dtls(&'a DtlsListenerConfig),
}

/// One configured listener, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerEntry<'a> {
    pub kind: ListenerKind,
    /// Its name in its table (`default`).
    pub name: &'a str,
    pub bind: &'a str,
    /// Enabled, its gateway enabled, and given a certificate when it needs one: it will bind.
    pub starts: bool,
    /// What names the files it reads when it starts.
    pub files: ListenerFiles<'a>,
}

impl ListenerEntry<'_> {
    /// Its table's key, e.g. `gateway.coap.listeners.udp.default`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.kind.table(), self.name)
    }

    /// See [`ListenerKind::listener_name`].
    pub fn listener_name(&self) -> String {
        self.kind.listener_name(self.name)
    }

    pub fn bind_addr(&self) -> Result<std::net::SocketAddr, BindAddrError> {
        parse_bind(self.bind)
    }
}

impl Config {
    /// Every configured listener, started or not, by kind in [`ListenerKind::ALL`]'s order
    /// and then by name.
    pub fn all_listeners(&self) -> Vec<ListenerEntry<'_>> {
        fn entries<'a, L>(
            out: &mut Vec<ListenerEntry<'a>>,
            kind: ListenerKind,
            table: &'a std::collections::BTreeMap<String, L>,
            fields: impl Fn(&'a L) -> (&'a str, bool),
            files: impl Fn(&'a L) -> ListenerFiles<'a>,
        ) {
            out.extend(table.iter().map(|(name, listener)| {
                let (bind, starts) = fields(listener);
                ListenerEntry {
                    kind,
                    name,
                    bind,
                    starts,
                    files: files(listener),
                }
            }));
        }
        let mut out = Vec::new();
        let l = &self.listeners;
        let none = ListenerFiles::None;
        entries(
            &mut out,
            ListenerKind::Tcp,
            &l.tcp,
            |l| (&l.bind, l.enable),
            |_| none,
        );
        entries(
            &mut out,
            ListenerKind::Ssl,
            &l.ssl,
            |l| (&l.bind, l.enable && l.tls.has_certificate()),
            |l| ListenerFiles::Tls(&l.tls),
        );
        entries(
            &mut out,
            ListenerKind::Ws,
            &l.ws,
            |l| (&l.bind, l.enable),
            |_| none,
        );
        entries(
            &mut out,
            ListenerKind::Wss,
            &l.wss,
            |l| (&l.bind, l.enable && l.tls.has_certificate()),
            |l| ListenerFiles::Tls(&l.tls),
        );
        entries(
            &mut out,
            ListenerKind::Quic,
            &l.quic,
            |l| (&l.bind, l.enable && l.tls.has_certificate()),
            ListenerFiles::Quic,
        );
        let g = &self.gateway;
        entries(
            &mut out,
            ListenerKind::MqttSnUdp,
            &g.mqttsn.listeners.udp,
            |l| (&l.bind, l.enable && g.mqttsn.enable),
            |_| none,
        );
        entries(
            &mut out,
            ListenerKind::MqttSnDtls,
            &g.mqttsn.listeners.dtls,
            |l| (&l.bind, l.enable && g.mqttsn.enable && l.has_credentials()),
            ListenerFiles::Dtls,
        );
        entries(
            &mut out,
            ListenerKind::CoapUdp,
            &g.coap.listeners.udp,
            |l| (&l.bind, l.enable && g.coap.enable),
            |_| none,
        );
        entries(
            &mut out,
            ListenerKind::CoapDtls,
            &g.coap.listeners.dtls,
            |l| (&l.bind, l.enable && g.coap.enable && l.has_credentials()),
            ListenerFiles::Dtls,
        );
        entries(
            &mut out,
            ListenerKind::CoapTcp,
            &g.coap.listeners.tcp,
            |l| (&l.bind, l.enable && g.coap.enable),
            |_| none,
        );
        entries(
            &mut out,
            ListenerKind::CoapSsl,
            &g.coap.listeners.ssl,
            |l| {
                let starts = l.enable && g.coap.enable && l.ssl_options.has_certificate();
                (&l.bind, starts)
            },
            |l| ListenerFiles::Tls(&l.ssl_options),
        );
        entries(
            &mut out,
            ListenerKind::CoapWs,
            &g.coap.listeners.ws,
            |l| (&l.bind, l.enable && g.coap.enable),
            |_| none,
        );
        entries(
            &mut out,
            ListenerKind::CoapWss,
            &g.coap.listeners.wss,
            |l| {
                let starts = l.enable && g.coap.enable && l.ssl_options.has_certificate();
                (&l.bind, starts)
            },
            |l| ListenerFiles::Tls(&l.ssl_options),
        );
        entries(
            &mut out,
            ListenerKind::Lwm2mUdp,
            &g.lwm2m.listeners.udp,
            |l| (&l.bind, l.enable && g.lwm2m.enable),
            |_| none,
        );
        entries(
            &mut out,
            ListenerKind::Lwm2mDtls,
            &g.lwm2m.listeners.dtls,
            |l| (&l.bind, l.enable && g.lwm2m.enable && l.has_credentials()),
            ListenerFiles::Dtls,
        );
        entries(
            &mut out,
            ListenerKind::StompTcp,
            &g.stomp.listeners.tcp,
            |l| (&l.bind, l.enable && g.stomp.enable),
            |_| none,
        );
        entries(
            &mut out,
            ListenerKind::StompSsl,
            &g.stomp.listeners.ssl,
            |l| {
                let starts = l.enable && g.stomp.enable && l.ssl_options.has_certificate();
                (&l.bind, starts)
            },
            |l| ListenerFiles::Tls(&l.ssl_options),
        );
        entries(
            &mut out,
            ListenerKind::StompWs,
            &g.stomp.listeners.ws,
            |l| (&l.bind, l.enable && g.stomp.enable),
            |_| none,
        );
        entries(
            &mut out,
            ListenerKind::StompWss,
            &g.stomp.listeners.wss,
            |l| {
                let starts = l.enable && g.stomp.enable && l.ssl_options.has_certificate();
                (&l.bind, starts)
            },
            |l| ListenerFiles::Tls(&l.ssl_options),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_listed_once_and_names_its_kind_apart() {
        let tables: std::collections::HashSet<_> =
            ListenerKind::ALL.iter().map(|k| k.table()).collect();
        assert_eq!(tables.len(), ListenerKind::ALL.len());
        // Listener names cannot hold ':', so distinct prefixes make distinct names.
        let prefixes: std::collections::HashSet<_> =
            ListenerKind::ALL.iter().map(|k| k.name_prefix()).collect();
        assert_eq!(prefixes.len(), ListenerKind::ALL.len());
    }

    #[test]
    fn a_kind_says_its_protocol_and_transport_as_its_names_do() {
        for (kind, protocol, transport) in [
            (ListenerKind::Tcp, "mqtt", "tcp"),
            (ListenerKind::Quic, "mqtt", "quic"),
            (ListenerKind::MqttSnDtls, "mqttsn", "dtls"),
            (ListenerKind::CoapWss, "coap", "wss"),
            (ListenerKind::StompTcp, "stomp", "tcp"),
        ] {
            assert_eq!((kind.protocol(), kind.transport()), (protocol, transport));
            assert_eq!(
                kind.listener_name("x"),
                match protocol {
                    "mqtt" => format!("{transport}:x"),
                    _ => format!("{protocol}:{transport}:x"),
                }
            );
        }
    }

    #[test]
    fn no_tls_listener_starts_on_the_defaults_which_give_no_certificate() {
        let config = Config::defaults().unwrap();
        let started: Vec<String> = config
            .all_listeners()
            .iter()
            .filter(|l| l.kind.tls_table().is_some() && l.starts)
            .map(ListenerEntry::key)
            .collect();
        assert_eq!(started, Vec::<String>::new());
    }

    #[test]
    fn every_default_listener_is_listed_under_its_name() {
        let config = Config::defaults().unwrap();
        let names: Vec<String> = config
            .all_listeners()
            .iter()
            .map(ListenerEntry::listener_name)
            .collect();
        assert_eq!(
            names,
            [
                "tcp:default",
                "ssl:default",
                "ws:default",
                "wss:default",
                "quic:default",
                "mqttsn:udp:default",
                "mqttsn:dtls:default",
                "coap:udp:default",
                "coap:dtls:default",
                "coap:tcp:default",
                "coap:ssl:default",
                "coap:ws:default",
                "coap:wss:default",
                "lwm2m:udp:default",
                "lwm2m:dtls:default",
                "stomp:tcp:default",
                "stomp:ssl:default",
                "stomp:ws:default",
                "stomp:wss:default",
            ]
        );
    }
}
