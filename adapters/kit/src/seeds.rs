//! Seeds for channels' randomness (message ids, tokens, jitter, made-up ids): each
//! connection or peer gets one of its own, which a peer cannot predict from its own.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Hands out seeds: the keys are the process's random ones, and no two seeds come from the
/// same input, since a counter is part of it.
#[derive(Default)]
pub struct Seeds {
    keys: RandomState,
    handed_out: AtomicU64,
}

impl Seeds {
    pub fn next(&self, peer: SocketAddr) -> u64 {
        let nth = self.handed_out.fetch_add(1, Ordering::Relaxed);
        self.keys.hash_one((peer, nth))
    }
}
