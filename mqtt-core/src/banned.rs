//! Clients an operator banned (EMQX's banned list): by client id, user name, source address
//! or source network, until a time or for good. Checked in the session layer when a session
//! opens, so every adapter refuses a banned client the same way, in its own terms (MQTT 5
//! CONNACK 0x8A, a CoAP 4.29 with Max-Age, ...). Held in memory: a restart forgets those
//! made through the admin API; those of the banned file are read from it again.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;

use crate::auth::ClientInfo;

/// Who a ban names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BanTarget {
    ClientId(String),
    Username(String),
    PeerHost(IpAddr),
    /// Every source address within `prefix` leading bits of `network`.
    PeerNet {
        network: IpAddr,
        prefix: u8,
    },
}

impl BanTarget {
    fn matches(&self, client: &ClientInfo) -> bool {
        match self {
            BanTarget::ClientId(id) => *client.client_id == **id,
            BanTarget::Username(name) => client.username.as_deref() == Some(name.as_str()),
            BanTarget::PeerHost(host) => client
                .peer
                .is_some_and(|peer| canonical(peer.ip()) == canonical(*host)),
            BanTarget::PeerNet { network, prefix } => client
                .peer
                .is_some_and(|peer| within(peer.ip(), *network, *prefix)),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps, as a dual-stack listener
/// reports an IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `address` is within `prefix` leading bits of `network` (IPv4-mapped IPv6
/// addresses compared as IPv4).
fn within(address: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (canonical(address), canonical(network)) {
        (IpAddr::V4(a), IpAddr::V4(n)) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub target: BanTarget,
    pub reason: String,
    /// Who banned.
    pub by: String,
    pub at: SystemTime,
    /// `None`: until it is lifted.
    pub until: Option<SystemTime>,
    /// Read from the banned file: replaced when the file is read again.
    pub from_file: bool,
}

impl Ban {
    fn live(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BanError {
    #[error("the banned list holds {0} entries, its most")]
    Full(usize),
    #[error("the ban has already ended")]
    AlreadyOver,
}

/// How long a ban without an end is said to last, to a client that is told when to retry.
const FOR_GOOD: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug)]
pub struct BannedList {
    bans: RwLock<Vec<Ban>>,
    /// Read without the lock on every session open: most gateways ban nobody.
    count: AtomicUsize,
    max: usize,
}

impl BannedList {
    pub fn new(max: usize) -> BannedList {
        BannedList {
            bans: RwLock::new(Vec::new()),
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// Adds `ban`, replacing one of the same target.
    pub fn add(&self, ban: Ban, now: SystemTime) -> Result<(), BanError> {
        if !ban.live(now) {
            return Err(BanError::AlreadyOver);
        }
        let mut bans = self.bans.write();
        bans.retain(|held| held.live(now) && held.target != ban.target);
        if bans.len() >= self.max {
            return Err(BanError::Full(self.max));
        }
        bans.push(ban);
        self.count.store(bans.len(), Ordering::Release);
        Ok(())
    }

    /// Puts the bans of a file read again in place of those it held before; bans made
    /// otherwise stay, unless the file names their target. All or nothing: a list that
    /// would go over its most keeps what it held.
    pub fn replace_file_bans(&self, from_file: Vec<Ban>, now: SystemTime) -> Result<(), BanError> {
        let mut bans = self.bans.write();
        let mut kept: Vec<Ban> = bans
            .iter()
            .filter(|held| {
                held.live(now)
                    && !held.from_file
                    && !from_file.iter().any(|ban| ban.target == held.target)
            })
            .cloned()
            .collect();
        let mut read: Vec<Ban> = Vec::with_capacity(from_file.len());
        for ban in from_file.into_iter().filter(|ban| ban.live(now)) {
            // A target named twice: its last line is the ban.
            read.retain(|earlier| earlier.target != ban.target);
            read.push(Ban {
                from_file: true,
                ..ban
            });
        }
        if kept.len() + read.len() > self.max {
            return Err(BanError::Full(self.max));
        }
        kept.extend(read);
        *bans = kept;
        self.count.store(bans.len(), Ordering::Release);
        Ok(())
    }

    /// Lifts the ban of `target`; whether there was one.
    pub fn remove(&self, target: &BanTarget) -> bool {
        let mut bans = self.bans.write();
        let before = bans.len();
        bans.retain(|held| held.target != *target);
        self.count.store(bans.len(), Ordering::Release);
        bans.len() != before
    }

    /// The bans in force, oldest first.
    pub fn list(&self, now: SystemTime) -> Vec<Ban> {
        self.bans
            .read()
            .iter()
            .filter(|ban| ban.live(now))
            .cloned()
            .collect()
    }

    /// How long `client` is still banned, if it is.
    pub fn check(&self, client: &ClientInfo, now: SystemTime) -> Option<Duration> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.bans
            .read()
            .iter()
            .filter(|ban| ban.live(now) && ban.target.matches(client))
            .map(|ban| match ban.until {
                Some(until) => until.duration_since(now).unwrap_or_default(),
                None => FOR_GOOD,
            })
            .max()
    }

    /// Forgets the bans that have ended.
    pub fn purge(&self, now: SystemTime) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut bans = self.bans.write();
        bans.retain(|ban| ban.live(now));
        self.count.store(bans.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn client(id: &str, user: Option<&str>, peer: &str) -> ClientInfo {
        ClientInfo {
            protocol: "mqtt",
            listener: Arc::from("tcp:default"),
            client_id: Arc::from(id),
            username: user.map(str::to_owned),
            peer: Some(peer.parse::<SocketAddr>().unwrap()),
            mountpoint: None,
        }
    }

    fn ban(target: BanTarget, until: Option<SystemTime>) -> Ban {
        Ban {
            target,
            reason: "test".into(),
            by: "ops".into(),
            at: SystemTime::UNIX_EPOCH,
            until,
            from_file: false,
        }
    }

    #[test]
    fn a_file_read_again_replaces_its_own_bans_and_keeps_the_others() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let list = BannedList::new(3);
        list.add(ban(BanTarget::Username("by-api".into()), None), now)
            .unwrap();
        let first = vec![
            ban(BanTarget::ClientId("a".into()), None),
            ban(BanTarget::ClientId("b".into()), None),
        ];
        list.replace_file_bans(first, now).unwrap();
        assert_eq!(list.list(now).len(), 3);
        let second = vec![ban(BanTarget::ClientId("c".into()), None)];
        list.replace_file_bans(second, now).unwrap();
        let targets: Vec<BanTarget> = list.list(now).into_iter().map(|b| b.target).collect();
        assert_eq!(
            targets,
            vec![
                BanTarget::Username("by-api".into()),
                BanTarget::ClientId("c".into())
            ]
        );
        // Over the most: nothing changes.
        let too_many = ["x", "y", "z"]
            .map(|id| ban(BanTarget::ClientId(id.into()), None))
            .to_vec();
        assert_eq!(
            list.replace_file_bans(too_many, now),
            Err(BanError::Full(3))
        );
        assert_eq!(list.list(now).len(), 2);
        // The file may name what the API banned: it takes that target over.
        list.replace_file_bans(vec![ban(BanTarget::Username("by-api".into()), None)], now)
            .unwrap();
        assert_eq!(list.list(now).len(), 1);
        assert!(list.list(now)[0].from_file);
    }

    #[test]
    fn each_kind_of_ban_names_only_its_clients() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let list = BannedList::new(10);
        let dev = client("dev-1", Some("alice"), "192.0.2.10:5000");
        assert_eq!(list.check(&dev, now), None);
        let soon = Some(now + Duration::from_secs(60));
        for (target, hit, miss) in [
            (
                BanTarget::ClientId("dev-1".into()),
                client("dev-1", None, "198.51.100.1:1"),
                client("dev-10", Some("alice"), "192.0.2.10:1"),
            ),
            (
                BanTarget::Username("alice".into()),
                client("x", Some("alice"), "198.51.100.1:1"),
                client("dev-1", Some("alicE"), "198.51.100.1:1"),
            ),
            (
                BanTarget::PeerHost("192.0.2.10".parse().unwrap()),
                client("x", None, "[::ffff:192.0.2.10]:9"),
                client("dev-1", None, "192.0.2.11:5000"),
            ),
            (
                BanTarget::PeerNet {
                    network: "192.0.2.0".parse().unwrap(),
                    prefix: 24,
                },
                client("x", None, "192.0.2.200:1"),
                client("dev-1", None, "192.0.3.1:1"),
            ),
        ] {
            list.add(ban(target.clone(), soon), now).unwrap();
            assert_eq!(
                list.check(&hit, now),
                Some(Duration::from_secs(60)),
                "{target:?}"
            );
            assert_eq!(list.check(&miss, now), None, "{target:?}");
            assert!(list.remove(&target));
            assert_eq!(list.check(&hit, now), None);
        }
    }

    #[test]
    fn bans_end_in_time_or_never_and_the_list_is_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let list = BannedList::new(2);
        let dev = client("dev-1", None, "192.0.2.1:1");
        list.add(
            ban(
                BanTarget::ClientId("dev-1".into()),
                Some(now + Duration::from_secs(5)),
            ),
            now,
        )
        .unwrap();
        assert!(
            list.check(&dev, now + Duration::from_secs(5)).is_none(),
            "over at its end"
        );
        assert_eq!(
            list.add(ban(BanTarget::ClientId("old".into()), Some(now)), now),
            Err(BanError::AlreadyOver)
        );
        list.add(ban(BanTarget::Username("u".into()), None), now)
            .unwrap();
        assert_eq!(
            list.add(ban(BanTarget::Username("v".into()), None), now),
            Err(BanError::Full(2))
        );
        // A ban of the same target replaces the older one, and an ended one makes room.
        list.add(ban(BanTarget::Username("u".into()), None), now)
            .unwrap();
        list.add(
            ban(BanTarget::Username("v".into()), None),
            now + Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(list.list(now + Duration::from_secs(10)).len(), 2);
        let forever = client("x", Some("u"), "192.0.2.1:1");
        assert_eq!(list.check(&forever, now), Some(FOR_GOOD));
        list.purge(now + Duration::from_secs(10));
        assert_eq!(list.list(now).len(), 2);
    }

    #[test]
    fn networks_compare_only_their_prefix() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(within(v4("10.1.2.3"), v4("10.0.0.0"), 8));
        assert!(!within(v4("11.1.2.3"), v4("10.0.0.0"), 8));
        assert!(within(v4("11.1.2.3"), v4("10.0.0.0"), 0));
        assert!(within(v4("2001:db8::1"), v4("2001:db8::"), 32));
        assert!(!within(v4("2001:db9::1"), v4("2001:db8::"), 32));
        assert!(
            !within(v4("10.0.0.1"), v4("10.0.0.1"), 33),
            "no such prefix"
        );
        assert!(
            !within(v4("2001:db8::1"), v4("10.0.0.0"), 8),
            "families differ"
        );
    }
}
