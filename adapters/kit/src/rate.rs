//! A token bucket for the configured rates (`max_conn_rate` and the like).

use std::time::{Duration, Instant};

use gateway_config::Rate;

/// Lets through `rate` events per second on average and one period's count at once.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// `None` for an unlimited rate: nothing to count.
    pub fn new(rate: Rate, now: Instant) -> Option<TokenBucket> {
        let per_second = rate.per_second()?;
        let capacity = f64::from(rate.burst()?);
        Some(TokenBucket {
            per_second,
            capacity,
            tokens: capacity,
            refilled: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refilled = now;
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        // The tolerance keeps the wait we name from falling short by a rounding error.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
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
        assert!((wait.as_secs_f64() - 1.0 / 3.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(bucket.take(start + wait), Ok(()));
        assert!(bucket.take(start + wait).is_err());
        assert!(TokenBucket::new(Rate::Infinity, start).is_none());
    }
}
