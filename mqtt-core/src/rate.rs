//! Token buckets for the configured rates: a listener's `max_conn_rate` (the kit's accept
//! loop) and what each of its clients may publish, `messages_rate` and `bytes_rate`
//! (EMQX's names), which the session layer enforces for every adapter alike.

use std::time::{Duration, Instant};

use gateway_config::{ByteRate, Rate};

/// Float rounding must not make a bucket that has refilled look a hair short.
const EPSILON: f64 = 1e-9;

/// The longest single pause a bucket names. Far beyond any sensible setting, it only keeps
/// `Instant` arithmetic in range for a message many times larger than its bucket: the
/// debt left over is paid in the pauses after.
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Lets through `per_second` units on average and one period's worth at once after a
/// quiet spell.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// Counts events (connections, messages); `None` for an unlimited rate: nothing to count.
    pub fn new(rate: Rate, now: Instant) -> Option<TokenBucket> {
        Some(TokenBucket::full(
            rate.per_second()?,
            f64::from(rate.burst()?),
            now,
        ))
    }

    /// Counts bytes; `None` for an unlimited rate.
    pub fn for_bytes(rate: ByteRate, now: Instant) -> Option<TokenBucket> {
        // Exact up to 2^53 bytes, some 8 PB per period.
        Some(TokenBucket::full(
            rate.per_second()?,
            rate.burst()? as f64,
            now,
        ))
    }

    fn full(per_second: f64, capacity: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            per_second,
            capacity,
            tokens: capacity,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refilled = now;
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        match self.wait_for(1.0, now) {
            None => {
                self.tokens = (self.tokens - 1.0).max(0.0);
                Ok(())
            }
            Some(wait) => Err(wait),
        }
    }

    /// Spends `amount` whether it is there or not: the bucket may go into debt, which the
    /// refill pays back before [`wait_for`](Self::wait_for) lets anything more through.
    /// What was already read is let through; what comes after it waits.
    pub fn spend(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.tokens -= amount;
    }

    /// How long until the bucket holds `need` tokens; `None` when it does now. Rounded up
    /// to the microsecond, so the bucket has refilled when that time comes.
    pub fn wait_for(&mut self, need: f64, now: Instant) -> Option<Duration> {
        self.refill(now);
        let missing = need - self.tokens;
        (missing > EPSILON).then(|| {
            let micros = (missing / self.per_second * 1e6).ceil();
            Duration::try_from_secs_f64(micros / 1e6)
                .unwrap_or(MAX_WAIT)
                .min(MAX_WAIT)
        })
    }
}

/// What one client of a listener may publish: EMQX's `messages_rate` and `bytes_rate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishRates {
    pub messages: Rate,
    /// Topic and payload bytes.
    pub bytes: ByteRate,
}

impl PublishRates {
    /// A listener's `messages_rate` and `bytes_rate`.
    pub fn new(messages: Rate, bytes: ByteRate) -> PublishRates {
        PublishRates { messages, bytes }
    }

    pub const UNLIMITED: PublishRates = PublishRates {
        messages: Rate::Infinity,
        bytes: ByteRate::Infinity,
    };
}

/// One client's publish buckets. Each message spends a token of the message bucket and
/// its bytes from the byte bucket; once a bucket cannot pay for the next message, the
/// client is paused until it can: a whole token for a message, and for bytes, since the
/// next message's size is not known before it is read, until the debt the last one left
/// is paid. The message that ran a bucket out was already read, and goes through.
#[derive(Debug)]
pub(crate) struct PublishLimiter {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    paused_until: Option<Instant>,
}

impl PublishLimiter {
    /// `None` when neither rate is limited: the client is never paused.
    pub(crate) fn new(rates: PublishRates, now: Instant) -> Option<PublishLimiter> {
        let messages = TokenBucket::new(rates.messages, now);
        let bytes = TokenBucket::for_bytes(rates.bytes, now);
        (messages.is_some() || bytes.is_some()).then_some(PublishLimiter {
            messages,
            bytes,
            paused_until: None,
        })
    }

    /// Spends one message of `bytes` bytes; true when that starts a pause.
    pub(crate) fn spend(&mut self, bytes: usize, now: Instant) -> bool {
        let was_paused = self.is_paused(now);
        let messages = self.messages.as_mut().and_then(|bucket| {
            bucket.spend(1.0, now);
            bucket.wait_for(1.0, now)
        });
        let bytes = self.bytes.as_mut().and_then(|bucket| {
            bucket.spend(bytes as f64, now);
            bucket.wait_for(0.0, now)
        });
        let Some(wait) = messages.max(bytes) else {
            return false;
        };
        let until = now.checked_add(wait).unwrap_or(now + MAX_WAIT);
        self.paused_until = Some(
            self.paused_until
                .map_or(until, |earlier| earlier.max(until)),
        );
        !was_paused
    }

    /// Whether the client is paused at `now`; a pause that is over is forgotten.
    pub(crate) fn is_paused(&mut self, now: Instant) -> bool {
        self.end_pause_if_over(now);
        self.paused_until.is_some()
    }

    /// Forgets a pause that is over at `now`, so that `paused_until` no longer names it.
    pub(crate) fn end_pause_if_over(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|until| now >= until) {
            self.paused_until = None;
        }
    }

    /// When the current pause ends, until a call at or past that time forgets it.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new("3/s".parse().unwrap(), start).unwrap();
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0 / 3.0).abs() < 1e-5, "{wait:?}");
        assert_eq!(bucket.take(start + wait), Ok(()));
        assert!(bucket.take(start + wait).is_err());
        assert!(TokenBucket::new(Rate::Infinity, start).is_none());
    }

    #[test]
    fn the_message_that_empties_the_bucket_pauses_the_client_until_one_token_is_back() {
        let start = Instant::now();
        let rates = PublishRates {
            messages: "10/s".parse().unwrap(),
            ..PublishRates::UNLIMITED
        };
        let mut limiter = PublishLimiter::new(rates, start).unwrap();
        for _ in 0..9 {
            assert!(!limiter.spend(100, start));
        }
        assert!(!limiter.is_paused(start));
        assert!(limiter.spend(100, start), "the tenth starts a pause");
        assert!(limiter.is_paused(start));
        let until = limiter.paused_until().unwrap();
        let wait = until - start;
        assert!(wait >= Duration::from_millis(100) && wait < Duration::from_millis(101));
        assert!(limiter.is_paused(until - Duration::from_micros(1)));
        assert!(!limiter.is_paused(until));
        assert_eq!(limiter.paused_until(), None, "an ended pause is forgotten");
        assert!(
            limiter.spend(100, until),
            "one message later it is paused again"
        );
    }

    #[test]
    fn a_message_larger_than_the_byte_bucket_goes_through_and_its_debt_is_paid_in_time() {
        let start = Instant::now();
        let rates = PublishRates {
            bytes: "1KB/s".parse().unwrap(),
            ..PublishRates::UNLIMITED
        };
        let mut limiter = PublishLimiter::new(rates, start).unwrap();
        assert!(!limiter.spend(1000, start), "24 bytes are left");
        assert!(limiter.spend(3096, start), "3 KB in debt");
        let wait = limiter.paused_until().unwrap() - start;
        assert!((wait.as_secs_f64() - 3.0).abs() < 1e-3, "{wait:?}");
        assert!(PublishLimiter::new(PublishRates::UNLIMITED, start).is_none());
    }
}
