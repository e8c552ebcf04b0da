//! Where servers under test listen.
//!
//! A gateway binds every listener to port 0 and says in its log where each one ended up
//! (`MQTT listener started listener=tcp:default bound=127.0.0.1:40611`, or the same
//! fields in a JSON line); [`bound_listeners`] reads those lines. Asking the system for a
//! free port and handing it to the server instead races with every socket other tests
//! open meanwhile, which the system may give the same port.
//!
//! Servers that cannot report a port-0 bind (haproxy, mosquitto, chromedriver) get one
//! from [`server_port`]: a port below the system's ephemeral range, so no client socket
//! is ever given it, and locked for the life of the test process, so no concurrently
//! running test process is given it either.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

/// A listener as a gateway's log reported it once bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundListener {
    /// `tcp:default`, `mqttsn:udp:default`, `dashboard:http`.
    pub name: String,
    /// The address it is bound to: the port the system chose for port 0.
    pub addr: SocketAddr,
}

/// The listener a log line reports bound, in the text or the JSON log format; None for
/// any other line. A line counts when it has both a `listener` and a `bound` field, the
/// latter an address.
pub fn parse_bound_line(line: &str) -> Option<BoundListener> {
    let line = line.trim();
    let (name, addr) = if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let field = |key: &str| -> Option<String> {
            // Flattened events carry fields at the top; nested ones under `fields`.
            value
                .get(key)
                .or_else(|| value.get("fields").and_then(|f| f.get(key)))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        (field("listener")?, field("bound")?)
    } else {
        let plain = strip_ansi(line);
        let field = |key: &str| -> Option<String> {
            let prefix = format!("{key}=");
            plain
                .split_whitespace()
                .find_map(|word| word.strip_prefix(prefix.as_str()))
                .map(|v| v.trim_matches('"').to_owned())
        };
        (field("listener")?, field("bound")?)
    };
    let addr = addr.parse().ok()?;
    Some(BoundListener { name, addr })
}

/// Every listener `log` reports bound, in the order reported; a name reported twice keeps
/// its last address (a gateway restarted into the same log).
pub fn bound_listeners(log: &str) -> Vec<BoundListener> {
    let mut found: Vec<BoundListener> = Vec::new();
    for bound in log.lines().filter_map(parse_bound_line) {
        match found.iter_mut().find(|b| b.name == bound.name) {
            Some(known) => known.addr = bound.addr,
            None => found.push(bound),
        }
    }
    found
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The first port servers that cannot bind port 0 get: above the well-known services
/// (1883, 8080, 18083, ...) that a test machine may run.
const SERVER_PORTS_FROM: u16 = 20000;

/// A TCP and UDP port on 127.0.0.1 for a server that cannot report a port-0 bind: below
/// the system's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), so the
/// system never gives it to a client socket; not given before by this process; not bound
/// when tried; and locked (a `flock` held until this process exits) against the other
/// test processes running at the same time, which start their search elsewhere.
pub fn server_port() -> u16 {
    static GIVEN: Mutex<Option<(HashSet<u16>, Vec<File>)>> = Mutex::new(None);
    let (low, high) = ephemeral_range();
    let range: Vec<u16> = if low > SERVER_PORTS_FROM + 1000 {
        (SERVER_PORTS_FROM..low).collect()
    } else if high < 64535 {
        (high + 1..=65535).collect()
    } else {
        panic!(
            "the ephemeral port range {low}-{high} leaves no ports for test servers; \
             narrow it (sysctl net.ipv4.ip_local_port_range=\"32768 60999\")"
        );
    };
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (given, locks) = given.get_or_insert_with(|| (HashSet::new(), Vec::new()));
    let dir = lock_dir();
    // Processes start at different places so they seldom meet on a lock.
    let start = (std::process::id() as usize * 97) % range.len();
    for i in 0..range.len() {
        let port = range[(start + i) % range.len()];
        if given.contains(&port) {
            continue;
        }
        let Some(lock) = lock_port(&dir, port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_err()
            || UdpSocket::bind(("127.0.0.1", port)).is_err()
        {
            continue;
        }
        given.insert(port);
        locks.push(lock);
        return port;
    }
    panic!("no free port left in {:?}", range.first()..range.last());
}

/// The system's ephemeral port range (the Linux default when it cannot be read).
pub fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(low)), Some(Ok(high))) => (low, high),
        _ => (32768, 60999),
    }
}

fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("gateway-interop-ports");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot make the port lock directory {}: {e}", dir.display()));
    dir
}

/// The lock on `port`, or None when another process holds it.
fn lock_port(dir: &std::path::Path, port: u16) -> Option<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{port}.lock")))
        .ok()?;
    // SAFETY: flock on a descriptor this function owns; the lock goes with the file.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_text_and_json_lines_and_skips_the_rest() {
        let log = "\
2026-12-07T13:40:57.782294Z  INFO adapter_kit::launch: MQTT listener started listener=tcp:default bound=127.0.0.1:56459
2026-12-07T13:40:57.790000Z  INFO conn{listener=tcp:default peer=127.0.0.1:4000}: adapter_kit::stream: connection accepted
not a log line at all listener=
{\"timestamp\":\"2026-12-07T13:40:57Z\",\"level\":\"INFO\",\"message\":\"MQTT-SN listener started\",\"listener\":\"mqttsn:udp:default\",\"bound\":\"127.0.0.1:40000\",\"target\":\"adapter_kit::launch\"}
{\"message\":\"half a line\",
\x1b[2m2026-12-07T13:40:58Z\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mgateway\x1b[0m: admin API started \x1b[3mlistener\x1b[0m\x1b[2m=\x1b[0mdashboard:http \x1b[3mbound\x1b[0m\x1b[2m=\x1b[0m127.0.0.1:18083
2026-12-07T13:41:00Z  INFO adapter_kit::launch: MQTT listener started listener=tcp:default bound=[::1]:56460
";
        let found = bound_listeners(log);
        let names: Vec<(&str, String)> = found
            .iter()
            .map(|b| (b.name.as_str(), b.addr.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("tcp:default", "[::1]:56460".to_owned()),
                ("mqttsn:udp:default", "127.0.0.1:40000".to_owned()),
                ("dashboard:http", "127.0.0.1:18083".to_owned()),
            ]
        );
    }

    #[test]
    fn a_bound_field_that_is_no_address_is_no_report() {
        assert_eq!(
            parse_bound_line("INFO x: started listener=tcp:default bound=nowhere"),
            None
        );
    }

    #[test]
    fn server_ports_are_below_the_ephemeral_range_and_distinct() {
        let (low, _) = ephemeral_range();
        let a = server_port();
        let b = server_port();
        assert_ne!(a, b);
        if low > SERVER_PORTS_FROM + 1000 {
            assert!(
                a < low && b < low && a >= SERVER_PORTS_FROM,
                "{a} {b} {low}"
            );
        }
        // Held against other processes: a second lock on it fails.
        assert!(lock_port(&lock_dir(), a).is_none());
    }
}
