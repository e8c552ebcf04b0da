//! The gateway under a service manager (systemd's `Type=notify`): it sends READY=1 over
//! `$NOTIFY_SOCKET` only once every listener is bound, from its main process (systemd's
//! default `NotifyAccess=main` ignores anyone else), and STOPPING=1 when SIGTERM starts
//! its shutdown. The test plays the manager's part, receiving with the sender's
//! credentials as systemd does, and freezes the gateway the moment READY=1 arrives: every
//! listener must then already take connections and datagrams.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::io::{self, ErrorKind};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use interop_tests::broker::gateway_bin;
use interop_tests::{mosquitto_pub, Broker, MosquittoSub, Setting, Version, TIMEOUT};

/// A notice and the process that sent it, as the kernel vouches for it.
struct Notice {
    text: String,
    pid: libc::pid_t,
}

/// Binds the manager's socket at `path`, asking the kernel for each sender's credentials.
fn manager_socket(path: &Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(path).expect("bind the notify socket");
    let on: libc::c_int = 1;
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_PASSCRED: {}", io::Error::last_os_error());
    socket
}

/// The next notice, with its sender's pid from SCM_CREDENTIALS.
fn receive_notice(socket: &UnixDatagram, timeout: Duration) -> io::Result<Notice> {
    socket.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Aligned for cmsghdr; room for one ucred message.
    let mut control = [0u64; 8];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_CREDENTIALS {
            let cred: libc::ucred =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            return Ok(Notice {
                text,
                pid: cred.pid,
            });
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Err(io::Error::other(format!(
        "{text:?} came without credentials"
    )))
}

/// A UDP socket connected to `port` on loopback that has sent `datagram`, and whether
/// the port refused it: a port nobody has bound answers with ICMP port unreachable,
/// which the next receive reports as ConnectionRefused; a bound one stays silent while
/// the gateway is frozen.
fn probe_udp(port: u16, datagram: &[u8]) -> (UdpSocket, bool) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    socket.send(datagram).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let refused = match socket.recv(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        other => panic!("udp port {port}: unexpected answer while frozen: {other:?}"),
    };
    (socket, refused)
}

/// The answer to a probe once the gateway runs again.
fn answer(socket: &UdpSocket) -> Vec<u8> {
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf).expect("an answer to the probe");
    buf[..n].to_vec()
}

/// A CoAP ping (RFC 7252 4.3): an empty confirmable message, answered with a Reset.
const COAP_PING: [u8; 4] = [0x40, 0x00, 0x4a, 0x11];
/// MQTT-SN SEARCHGW, radius 0: answered with GWINFO.
const SEARCHGW: [u8; 3] = [0x03, 0x01, 0x00];

#[test]
fn ready_comes_from_the_gateway_once_every_listener_is_bound_and_stopping_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let manager = manager_socket(&path);
    let (notices, received) = mpsc::channel();
    let listener = thread::spawn(move || loop {
        match receive_notice(&manager, Duration::from_secs(30)) {
            Ok(notice) => {
                if notice.text == "READY=1" {
                    // Frozen at once: whatever is not bound by now stays unbound.
                    unsafe {
                        libc::kill(notice.pid, libc::SIGSTOP);
                    }
                }
                let last = notice.text == "STOPPING=1";
                if notices.send(notice).is_err() || last {
                    return;
                }
            }
            Err(_) => return,
        }
    });

    let settings = [Setting::new("NOTIFY_SOCKET", path.display().to_string())];
    // Returns once every listener has reported where it is bound, which the gateway logs
    // before READY=1; with NOTIFY_SOCKET set, the harness leaves readiness to READY=1.
    let Some(mut broker) =
        Broker::start_gateway_only("a gateway under a service manager", &settings)
    else {
        return;
    };
    let ready = received
        .recv_timeout(TIMEOUT)
        .expect("READY=1 from the gateway");
    assert_eq!(ready.text, "READY=1");
    let exe = std::fs::read_link(format!("/proc/{}/exe", ready.pid)).unwrap();
    assert_eq!(
        exe,
        gateway_bin().canonicalize().unwrap(),
        "READY=1 comes from the gateway's own process"
    );
    // SIGSTOP takes effect asynchronously: the state turns to T once the kernel has
    // stopped every thread.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let stat = loop {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", ready.pid)).unwrap();
        let stopped = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]) == Some("T");
        if stopped || std::time::Instant::now() > deadline {
            break stat;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
    assert_eq!(state, Some("T"), "the gateway is frozen: {stat}");

    for (what, port) in [
        ("MQTT", broker.port),
        ("MQTT over WebSocket", broker.ws_port),
        ("CoAP over TCP", broker.coap_tcp_port),
        ("STOMP", broker.stomp_port),
    ] {
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), TIMEOUT)
            .unwrap_or_else(|e| panic!("{what} not listening on {port} at READY=1: {e}"));
    }
    let mut probes = Vec::new();
    for (what, port, datagram) in [
        ("CoAP", broker.coap_port, &COAP_PING[..]),
        ("LwM2M", broker.lwm2m_port, &COAP_PING[..]),
        ("MQTT-SN", broker.mqttsn_port, &SEARCHGW[..]),
    ] {
        let (socket, refused) = probe_udp(port, datagram);
        assert!(!refused, "{what} not bound to udp {port} at READY=1");
        probes.push((what, socket));
    }

    broker.signal(libc::SIGCONT);
    // The datagrams sent while it was frozen were queued on its sockets: each is answered.
    for (what, socket) in &probes {
        let reply = answer(socket);
        match *what {
            "MQTT-SN" => assert!(
                reply.len() >= 3 && usize::from(reply[0]) == reply.len() && reply[1] == 0x02,
                "GWINFO: {reply:02x?}"
            ),
            _ => assert_eq!(
                reply,
                [0x70, 0x00, COAP_PING[2], COAP_PING[3]],
                "{what}: the ping's Reset"
            ),
        }
    }
    let mut sub = MosquittoSub::start(&broker, Version::V5, &["notify/ready"], 1, &[]);
    mosquitto_pub(
        &broker,
        Version::V5,
        "notify/ready",
        b"serving",
        1,
        false,
        &[],
    );
    assert_eq!(sub.recv(TIMEOUT).payload, b"serving");

    assert!(
        broker.terminate().is_some(),
        "the gateway exits on SIGTERM\n{}",
        broker.log_tail()
    );
    let stopping = received
        .recv_timeout(TIMEOUT)
        .expect("STOPPING=1 at SIGTERM");
    assert_eq!(stopping.text, "STOPPING=1");
    assert_eq!(stopping.pid, ready.pid);
    listener.join().unwrap();
}

#[test]
fn a_notify_socket_nobody_listens_on_does_not_keep_the_gateway_from_serving() {
    let dir = tempfile::tempdir().unwrap();
    for (case, target) in [
        (
            "a missing socket",
            dir.path().join("gone").display().to_string(),
        ),
        ("a regular file", {
            let file = dir.path().join("file");
            std::fs::write(&file, b"not a socket").unwrap();
            file.display().to_string()
        }),
        ("a relative name", "relative/notify".to_owned()),
        (
            "an abstract name nobody bound",
            "@gateway-test-nobody-here".to_owned(),
        ),
    ] {
        let settings = [Setting::new("NOTIFY_SOCKET", target)];
        let Some(mut broker) =
            Broker::start_gateway_only("a gateway under a service manager", &settings)
        else {
            return;
        };
        let mut sub = MosquittoSub::start(&broker, Version::V311, &["notify/none"], 0, &[]);
        mosquitto_pub(
            &broker,
            Version::V311,
            "notify/none",
            case.as_bytes(),
            0,
            false,
            &[],
        );
        assert_eq!(sub.recv(TIMEOUT).payload, case.as_bytes(), "{case}");
        drop(sub);
        assert!(broker.terminate().is_some(), "{case}: exits on SIGTERM");
        let log = broker.log_tail();
        assert!(
            log.contains("cannot notify the service manager"),
            "{case}: the failed notice is logged\n{log}"
        );
    }
}
