//! Start-up and shutdown notices to a service manager that asked for them (systemd's
//! `Type=notify`): one datagram to the socket `$NOTIFY_SOCKET` names, sent only when the
//! variable is set. Written against the socket directly, since the protocol is one
//! datagram and libsystemd would be a C dependency for it.

use std::ffi::OsStr;
use std::io;

/// The variable through which a service manager names the socket it listens on.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells the service manager that every listener is bound, so that units ordered after
/// this one start only once clients can connect.
pub fn notify_ready() {
    notify("READY=1");
}

/// Tells the service manager that shutdown has begun, so that it does not take the
/// draining gateway for a hung one.
pub fn notify_stopping() {
    notify("STOPPING=1");
}

/// A notice that cannot be delivered is logged and start-up or shutdown goes on: the
/// gateway serves all the same, and a manager waiting for READY=1 gives up on its own.
fn notify(state: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    match send(&socket, state) {
        Ok(()) => tracing::debug!(state, "service manager notified"),
        Err(error) => tracing::warn!(
            socket = %socket.to_string_lossy(),
            state,
            %error,
            "cannot notify the service manager"
        ),
    }
}

/// Sends `state` to the socket named `socket`: an absolute path, or an abstract name
/// written with a leading `@`. The send never waits: a manager whose queue is full makes
/// it fail rather than hold up a runtime thread.
#[cfg(unix)]
pub fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;

    let name = socket.as_bytes();
    let sender = UnixDatagram::unbound()?;
    sender.set_nonblocking(true)?;
    let sent = match name.split_first() {
        Some((b'/', _)) => sender.send_to(state.as_bytes(), socket)?,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some((b'@', abstract_name)) => {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            sender.send_to_addr(state.as_bytes(), &address)?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an abstract socket name (@name)",
            ))
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notice was cut short",
        ));
    }
    Ok(())
}

/// No service manager speaks this protocol off Unix.
#[cfg(not(unix))]
pub fn send(_socket: &OsStr, _state: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "service manager notices need Unix sockets",
    ))
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A path in the temporary directory no other test of this run uses, removed on drop.
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new() -> TempSocket {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("gateway-notify-{}-{n}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            TempSocket(path)
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn receive(manager: &UnixDatagram) -> String {
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = manager.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_manager_on_a_socket_path_receives_each_notice_as_one_datagram() {
        let path = TempSocket::new();
        let manager = UnixDatagram::bind(&path.0).unwrap();
        send(path.0.as_os_str(), "READY=1").unwrap();
        send(path.0.as_os_str(), "STOPPING=1").unwrap();
        assert_eq!(receive(&manager), "READY=1");
        assert_eq!(receive(&manager), "STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_manager_on_an_abstract_socket_receives_the_notice() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("gateway-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&address).unwrap();
        send(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(receive(&manager), "READY=1");
    }

    #[test]
    fn a_socket_name_that_is_neither_a_path_nor_abstract_is_refused() {
        for name in ["", "relative/notify.sock", "notify.sock", "vsock:2:1234"] {
            let error = send(OsStr::new(name), "READY=1").unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_not_a_panic() {
        let missing = TempSocket::new();
        assert!(send(missing.0.as_os_str(), "READY=1").is_err());
        // A path that is a file rather than a socket.
        std::fs::write(&missing.0, b"not a socket").unwrap();
        assert!(send(missing.0.as_os_str(), "READY=1").is_err());
        let too_long = format!("/{}", "x".repeat(200));
        assert!(send(OsStr::new(&too_long), "READY=1").is_err());
    }

    #[test]
    fn a_manager_that_reads_nothing_never_blocks_the_sender() {
        let path = TempSocket::new();
        let _manager = UnixDatagram::bind(&path.0).unwrap();
        // The receiving queue holds a few datagrams (net.unix.max_dgram_qlen, 10 by
        // default, or the buffer size): past them a blocking send would wait forever.
        let target = path.0.clone();
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let refused = (0..100_000).find_map(|_| send(target.as_os_str(), "READY=1").err());
            let _ = done.send(refused);
        });
        let refused = outcome
            .recv_timeout(Duration::from_secs(10))
            .expect("the sender blocked on a full queue");
        let error = refused.expect("a full queue refuses the notice");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }
}
