//! A NAT in front of the gateway for one UDP client: the client sends to the NAT's inside
//! address, the NAT forwards each datagram to the gateway from an outside port of its own
//! and sends the gateway's answers back. `rebind` moves the mapping to a new outside port,
//! as a NAT does when a mapping expires between two packets of a quiet device: the gateway
//! sees the client come from a new address while the client itself never learns of it.
//!
//! The client is whoever sends first; datagrams from any other address are not forwarded.
//! Only the gateway's address is answered from outside (a port-restricted NAT), and what the
//! gateway sends to an outside port left behind by a rebinding is counted and dropped, so a
//! test can tell whether the gateway followed the move. One thread polls the sockets; it
//! stops when the `Nat` is dropped.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::TIMEOUT;

/// How many of the latest datagrams to the gateway are kept for `sent_to_server`.
const KEPT: usize = 64;
/// How often the thread looks for a command while no datagram arrives.
const POLL_MS: i32 = 10;

pub struct Nat {
    inside: SocketAddr,
    shared: Arc<Shared>,
    commands: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    to_server: AtomicU64,
    to_client: AtomicU64,
    to_old_ports: AtomicU64,
    outside_port: AtomicU16,
    sent: Mutex<VecDeque<Vec<u8>>>,
}

enum Command {
    /// A new outside port; its number goes back on the channel once it is in use.
    Rebind(Sender<u16>),
}

impl Nat {
    /// A NAT forwarding to `server`, its thread running.
    pub fn start(server: impl ToSocketAddrs) -> Nat {
        let server = server
            .to_socket_addrs()
            .expect("resolve the NAT's server address")
            .next()
            .expect("the NAT's server address resolves to an address");
        let inside = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the NAT's inside");
        inside
            .set_nonblocking(true)
            .expect("a non-blocking inside socket");
        let inside_addr = inside.local_addr().expect("the NAT's inside address");
        let outside = outside_socket(server);
        let shared = Arc::new(Shared::default());
        shared
            .outside_port
            .store(port_of(&outside), Ordering::SeqCst);
        let (commands, received) = mpsc::channel();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("nat".into())
                .spawn(move || forward(inside, outside, server, &shared, &received))
                .expect("start the NAT's thread")
        };
        Nat {
            inside: inside_addr,
            shared,
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    /// Where the client sends its datagrams.
    pub fn addr(&self) -> SocketAddr {
        self.inside
    }

    /// The outside port the gateway sees the client come from now.
    pub fn outside_port(&self) -> u16 {
        self.shared.outside_port.load(Ordering::SeqCst)
    }

    /// Moves the client to a new outside port and returns it, once the NAT uses it: every
    /// datagram the client sends from then on reaches the gateway from there.
    pub fn rebind(&self) -> u16 {
        let (reply, port) = mpsc::channel();
        self.commands
            .as_ref()
            .expect("the NAT is running")
            .send(Command::Rebind(reply))
            .expect("the NAT's thread is running");
        port.recv_timeout(TIMEOUT)
            .expect("the NAT took a new outside port")
    }

    /// Datagrams forwarded from the client to the gateway so far.
    pub fn to_server(&self) -> u64 {
        self.shared.to_server.load(Ordering::SeqCst)
    }

    /// Datagrams forwarded from the gateway to the client so far.
    pub fn to_client(&self) -> u64 {
        self.shared.to_client.load(Ordering::SeqCst)
    }

    /// Datagrams the gateway sent to outside ports given up by `rebind`, dropped.
    pub fn to_old_ports(&self) -> u64 {
        self.shared.to_old_ports.load(Ordering::SeqCst)
    }

    /// The latest datagrams forwarded to the gateway (up to 64), oldest first: records a
    /// test can send again from elsewhere.
    pub fn sent_to_server(&self) -> Vec<Vec<u8>> {
        let sent = self.shared.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.iter().cloned().collect()
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        // The thread ends when it finds the channel closed.
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An outside socket on a fresh port, of the server's address family.
fn outside_socket(server: SocketAddr) -> UdpSocket {
    let any: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any).expect("bind an outside port of the NAT");
    socket
        .set_nonblocking(true)
        .expect("a non-blocking outside socket");
    socket
}

fn port_of(socket: &UdpSocket) -> u16 {
    socket
        .local_addr()
        .expect("a bound socket's address")
        .port()
}

/// Waits up to POLL_MS for any of `sockets` to be readable; which ones are.
fn readable(sockets: &[&UdpSocket]) -> Vec<bool> {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|socket| libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a live array of `fds.len()` pollfd structures for the duration of
    // the call, and each fd belongs to a socket borrowed for that long.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
    if ready <= 0 {
        return vec![false; sockets.len()];
    }
    fds.iter().map(|fd| fd.revents != 0).collect()
}

/// Every datagram waiting on `socket`, each passed to `each` with its source.
fn drain(socket: &UdpSocket, buf: &mut [u8], mut each: impl FnMut(&[u8], SocketAddr)) {
    loop {
        match socket.recv_from(buf) {
            Ok((n, from)) => each(&buf[..n], from),
            // WouldBlock: all read. Anything else (an ICMP error reported on the socket)
            // is not a datagram; the next poll tells whether more came.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn forward(
    inside: UdpSocket,
    mut outside: UdpSocket,
    server: SocketAddr,
    shared: &Shared,
    commands: &Receiver<Command>,
) {
    let mut old: Vec<UdpSocket> = Vec::new();
    let mut client: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65536];
    loop {
        match commands.try_recv() {
            Ok(Command::Rebind(reply)) => {
                let fresh = outside_socket(server);
                let port = port_of(&fresh);
                old.push(std::mem::replace(&mut outside, fresh));
                shared.outside_port.store(port, Ordering::SeqCst);
                let _ = reply.send(port);
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => return,
        }
        let mut sockets = vec![&inside, &outside];
        sockets.extend(old.iter());
        let ready = readable(&sockets);
        if ready[0] {
            drain(&inside, &mut buf, |datagram, from| {
                if *client.get_or_insert(from) != from {
                    return;
                }
                // Counted and kept before it is sent, so that whoever receives it sees it
                // counted.
                shared.to_server.fetch_add(1, Ordering::SeqCst);
                {
                    let mut sent = shared.sent.lock().unwrap_or_else(|e| e.into_inner());
                    if sent.len() == KEPT {
                        sent.pop_front();
                    }
                    sent.push_back(datagram.to_vec());
                }
                if outside.send_to(datagram, server).is_err() {
                    shared.to_server.fetch_sub(1, Ordering::SeqCst);
                    let mut sent = shared.sent.lock().unwrap_or_else(|e| e.into_inner());
                    sent.pop_back();
                }
            });
        }
        if ready[1] {
            drain(&outside, &mut buf, |datagram, from| {
                let Some(client) = client else { return };
                if from != server {
                    return;
                }
                shared.to_client.fetch_add(1, Ordering::SeqCst);
                if inside.send_to(datagram, client).is_err() {
                    shared.to_client.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
        for (socket, _) in old.iter().zip(&ready[2..]).filter(|(_, ready)| **ready) {
            drain(socket, &mut buf, |_, from| {
                if from == server {
                    shared.to_old_ports.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket standing for the gateway, or for the client.
    fn socket() -> UdpSocket {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        socket
    }

    fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = socket.recv_from(&mut buf).expect("a datagram in time");
        (buf[..n].to_vec(), from)
    }

    #[test]
    fn datagrams_go_both_ways_from_one_outside_port_and_are_counted() {
        let server = socket();
        let nat = Nat::start(server.local_addr().unwrap());
        let client = socket();
        client.send_to(b"one", nat.addr()).unwrap();
        client.send_to(b"two", nat.addr()).unwrap();
        let (first, outside) = recv(&server);
        let (second, again) = recv(&server);
        assert_eq!(
            (first.as_slice(), second.as_slice()),
            (&b"one"[..], &b"two"[..])
        );
        assert_eq!(outside, again);
        assert_eq!(outside.port(), nat.outside_port());
        assert_ne!(outside, client.local_addr().unwrap());

        server.send_to(b"back", outside).unwrap();
        assert_eq!(recv(&client), (b"back".to_vec(), nat.addr()));
        assert_eq!((nat.to_server(), nat.to_client()), (2, 1));
        assert_eq!(nat.sent_to_server(), vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn rebinding_moves_the_client_and_forgets_the_old_port() {
        let server = socket();
        let nat = Nat::start(server.local_addr().unwrap());
        let client = socket();
        client.send_to(b"before", nat.addr()).unwrap();
        let (_, old) = recv(&server);

        let new_port = nat.rebind();
        assert_ne!(new_port, old.port());
        assert_eq!(nat.outside_port(), new_port);
        client.send_to(b"after", nat.addr()).unwrap();
        let (datagram, new) = recv(&server);
        assert_eq!((datagram.as_slice(), new.port()), (&b"after"[..], new_port));

        // What the server sends to the old port is dropped; the new port still answers.
        server.send_to(b"to the old port", old).unwrap();
        server.send_to(b"to the new port", new).unwrap();
        assert_eq!(recv(&client).0, b"to the new port");
        let deadline = std::time::Instant::now() + TIMEOUT;
        while nat.to_old_ports() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the old port saw nothing"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!((nat.to_old_ports(), nat.to_client()), (1, 1));
    }

    #[test]
    fn only_the_first_sender_is_forwarded_and_only_the_servers_answers() {
        let server = socket();
        let nat = Nat::start(server.local_addr().unwrap());
        let client = socket();
        let stranger = socket();
        client.send_to(b"client", nat.addr()).unwrap();
        let (_, outside) = recv(&server);
        // Queued behind the stranger's on the inside socket, read in that order: had the
        // stranger's been forwarded, it would arrive first.
        stranger.send_to(b"stranger", nat.addr()).unwrap();
        client.send_to(b"barrier", nat.addr()).unwrap();
        assert_eq!(recv(&server).0, b"barrier");

        // Another host writing to the outside port reaches nobody.
        stranger.send_to(b"from outside", outside).unwrap();
        server.send_to(b"from the server", outside).unwrap();
        assert_eq!(recv(&client).0, b"from the server");
        assert_eq!((nat.to_server(), nat.to_client()), (2, 1));
    }

    #[test]
    fn dropping_the_nat_stops_it_and_frees_its_ports() {
        let server = socket();
        let nat = Nat::start(server.local_addr().unwrap());
        let client = socket();
        client.send_to(b"hello", nat.addr()).unwrap();
        let (_, outside) = recv(&server);
        let inside = nat.addr();
        drop(nat);
        // Both sockets are closed once drop returns: their ports can be bound again.
        UdpSocket::bind(inside).expect("the inside port is free after drop");
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, outside.port()))
            .expect("the outside port is free after drop");
    }
}
