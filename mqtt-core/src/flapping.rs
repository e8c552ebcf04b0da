//! Flapping detection: a client id that connects more than `max_count` times within
//! `window_time` is refused for `ban_time`. It sits in the session layer, so every adapter
//! refuses a flapping device the same way, in its own terms.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_config::FlappingDetectConfig;
use parking_lot::Mutex;

use crate::session::SessionKey;

/// Why a connection was refused: its client id is banned until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Banned {
    pub remaining: Duration,
}

#[derive(Debug)]
struct Track {
    window_start: Instant,
    connects: u32,
    banned_until: Option<Instant>,
}

#[derive(Debug)]
pub struct FlappingDetector {
    max_count: u32,
    window: Duration,
    ban: Duration,
    max_tracked: usize,
    clients: Mutex<HashMap<(&'static str, Arc<str>), Track>>,
}

impl FlappingDetector {
    /// `None` when detection is off.
    pub fn new(config: &FlappingDetectConfig) -> Option<FlappingDetector> {
        config.enable.then(|| FlappingDetector {
            max_count: config.max_count,
            window: config.window_time.get(),
            ban: config.ban_time.get(),
            max_tracked: config.max_tracked as usize,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection of `client`; refuses it while the client is banned, and bans
    /// it when this connection is one too many for the window.
    pub fn admit(&self, client: &SessionKey, now: Instant) -> Result<(), Banned> {
        let mut clients = self.clients.lock();
        let key = (client.namespace, client.client_id.clone());
        let track = match clients.get_mut(&key) {
            Some(track) => track,
            None => {
                // A flood of fresh client ids cannot grow the table without bound; the ids
                // beyond it are simply not tracked until others' windows end.
                if clients.len() >= self.max_tracked {
                    return Ok(());
                }
                clients.entry(key).or_insert(Track {
                    window_start: now,
                    connects: 0,
                    banned_until: None,
                })
            }
        };
        if let Some(until) = track.banned_until {
            if now < until {
                return Err(Banned {
                    remaining: until - now,
                });
            }
            track.banned_until = None;
            track.window_start = now;
            track.connects = 0;
        }
        if now >= track.window_start + self.window {
            track.window_start = now;
            track.connects = 0;
        }
        track.connects += 1;
        if track.connects > self.max_count {
            track.banned_until = Some(now + self.ban);
            tracing::warn!(
                client_id = %client.client_id,
                connects = track.connects,
                window_s = self.window.as_secs(),
                ban_s = self.ban.as_secs(),
                "flapping: client id banned"
            );
            return Err(Banned {
                remaining: self.ban,
            });
        }
        Ok(())
    }

    /// Forgets clients whose window and ban are over.
    pub fn purge(&self, now: Instant) {
        self.clients.lock().retain(|_, track| {
            track.banned_until.is_some_and(|until| now < until)
                || now < track.window_start + self.window
        });
    }

    pub fn tracked(&self) -> usize {
        self.clients.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(max_count: u32, max_tracked: u32) -> FlappingDetector {
        let config = FlappingDetectConfig {
            enable: true,
            max_count,
            window_time: gateway_config::Duration::from_secs(60),
            ban_time: gateway_config::Duration::from_secs(300),
            max_tracked,
        };
        FlappingDetector::new(&config).expect("enabled")
    }

    fn key(client_id: &str) -> SessionKey {
        SessionKey {
            namespace: "mqtt",
            client_id: Arc::from(client_id),
        }
    }

    #[test]
    fn one_connection_too_many_in_the_window_bans_the_client_id_for_the_ban_time() {
        let start = Instant::now();
        let flapping = detector(3, 100);
        for second in 0..3 {
            let now = start + Duration::from_secs(second);
            assert_eq!(flapping.admit(&key("dev"), now), Ok(()));
        }
        let fourth = start + Duration::from_secs(3);
        assert_eq!(
            flapping.admit(&key("dev"), fourth),
            Err(Banned {
                remaining: Duration::from_secs(300)
            })
        );
        // Another client id is not concerned, nor the same id in another protocol.
        assert_eq!(flapping.admit(&key("other"), fourth), Ok(()));
        let sn = SessionKey {
            namespace: "mqtt-sn",
            client_id: Arc::from("dev"),
        };
        assert_eq!(flapping.admit(&sn, fourth), Ok(()));
        // Still banned just before the end, each attempt told how long is left.
        let later = fourth + Duration::from_secs(299);
        assert_eq!(
            flapping.admit(&key("dev"), later),
            Err(Banned {
                remaining: Duration::from_secs(1)
            })
        );
        // Admitted again once the ban is over, with a fresh window.
        let after = fourth + Duration::from_secs(300);
        for second in 0..3 {
            let now = after + Duration::from_secs(second);
            assert_eq!(flapping.admit(&key("dev"), now), Ok(()));
        }
    }

    #[test]
    fn connections_spread_over_windows_are_not_flapping() {
        let start = Instant::now();
        let flapping = detector(2, 100);
        for minute in 0..10 {
            let now = start + Duration::from_secs(60 * minute);
            assert_eq!(flapping.admit(&key("dev"), now), Ok(()));
            assert_eq!(
                flapping.admit(&key("dev"), now + Duration::from_secs(30)),
                Ok(())
            );
        }
    }

    #[test]
    fn a_flood_of_fresh_client_ids_is_bounded_and_forgotten() {
        let start = Instant::now();
        let flapping = detector(1, 1_000);
        for n in 0..5_000 {
            assert_eq!(flapping.admit(&key(&format!("id-{n}")), start), Ok(()));
        }
        assert_eq!(flapping.tracked(), 1_000);
        flapping.purge(start + Duration::from_secs(59));
        assert_eq!(flapping.tracked(), 1_000, "windows not over yet");
        flapping.purge(start + Duration::from_secs(60));
        assert_eq!(flapping.tracked(), 0);
        // A banned client is kept until its ban is over.
        let now = start + Duration::from_secs(61);
        assert_eq!(flapping.admit(&key("dev"), now), Ok(()));
        assert!(flapping.admit(&key("dev"), now).is_err());
        flapping.purge(now + Duration::from_secs(120));
        assert_eq!(flapping.tracked(), 1);
        flapping.purge(now + Duration::from_secs(300));
        assert_eq!(flapping.tracked(), 0);
    }
}
