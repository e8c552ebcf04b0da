//! Arrival stamps: the order in which connections' input became readable, across all of
//! them.
//!
//! Connections are served by several worker threads, so a SUBSCRIBE that reached us
//! before a matching PUBLISH on another connection can still be applied after that
//! PUBLISH was routed: the runtime may run the later connection first, or both at once.
//! A driver takes a stamp whenever a read finds its socket empty and again after each
//! read that returns input, so the input it reads arrived between the two: a message is
//! stamped with the later (it was there by then), a subscription with the earlier (it
//! came after that). The router remembers the last messages it routed with their stamps
//! (`Router::route`), and a subscription applied after routing messages stamped later
//! than it is given them then (`Router::subscribe`): what arrives first takes effect
//! first. Where the two spans overlap (input read in the same moments), the subscription
//! gets the message: one it might have been owed is never missed.

use std::sync::atomic::{AtomicU64, Ordering};

/// Stamps are numbered from 1; 0 means "not stamped" (the broker's own messages, and
/// adapters that do not stamp), which no subscription waits for.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A new stamp, later than every earlier one.
pub fn stamp() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}
