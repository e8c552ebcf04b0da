//! Human-written durations: `"500ms"`, `"10s"`, `"5m"`, `"2h"`, `"1d"`, or an integer of seconds.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configured duration.
///
/// Written as a string of digits followed by one unit (`ms`, `s`, `m`, `h`, `d`), or as a bare
/// integer meaning seconds. Serialised back as a string in the largest unit that represents it
/// exactly, so a value survives a print-and-reload unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl std::ops::Deref for Duration {
    type Target = std::time::Duration;

    fn deref(&self) -> &std::time::Duration {
        &self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {0:?}: expected digits followed by ms, s, m, h or d (e.g. \"10s\")")]
    Syntax(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

// (unit, milliseconds per unit), longest suffix first so "ms" is not read as "m" + garbage.
const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, DurationError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let digits_end = s
            .char_indices()
            .find(|(_, c)| !c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        let (digits, unit) = s.split_at(digits_end);
        if digits.is_empty() {
            return Err(DurationError::Syntax(s.to_owned()));
        }
        let value: u64 = digits
            .parse()
            .map_err(|_| DurationError::Overflow(s.to_owned()))?;
        // A string of digits alone is read like the bare integer form: seconds. Env vars
        // that look numeric arrive as integers anyway, this keeps a quoted "30" consistent.
        let per_unit = if unit.is_empty() {
            1_000
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, ms)| *ms)
                .ok_or_else(|| DurationError::Syntax(s.to_owned()))?
        };
        let millis = value
            .checked_mul(per_unit)
            .ok_or_else(|| DurationError::Overflow(s.to_owned()))?;
        Ok(Duration::from_millis(millis))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        // Sub-millisecond parts cannot be written in this syntax; they only arise from
        // `From<std::time::Duration>` and are dropped here.
        let (name, per_unit) = UNITS
            .iter()
            .rev()
            .find(|(_, per)| millis.checked_rem(u128::from(*per)) == Some(0))
            .copied()
            .unwrap_or(("ms", 1));
        write!(f, "{}{}", millis / u128::from(per_unit), name)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"500ms\", \"10s\", \"5m\", \"2h\", \"1d\" or an integer of seconds")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        v.parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("0s", 0),
            ("500ms", 500),
            ("1ms", 1),
            ("10s", 10_000),
            ("300s", 300_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("30", 30_000),
            (" 7s ", 7_000),
        ];
        for (input, millis) in ok {
            let d: Duration = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                d.get(),
                std::time::Duration::from_millis(*millis),
                "{input}"
            );
        }
        let bad = [
            "",
            "s",
            "10x",
            "1.5s",
            "-1s",
            "10 s",
            "10sec",
            "ms10",
            "1h30m",
            "10S",
            "99999999999999999999s",
            "18446744073709551615d",
        ];
        for input in bad {
            assert!(input.parse::<Duration>().is_err(), "{input:?} should fail");
        }
    }

    #[test]
    fn display_picks_largest_exact_unit() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (500, "500ms"),
            (1_500, "1500ms"),
            (10_000, "10s"),
            (300_000, "5m"),
            (5_400_000, "90m"),
            (7_200_000, "2h"),
            (86_400_000, "1d"),
            (90_000_000, "25h"),
        ];
        for (millis, text) in cases {
            let d = Duration::from_millis(*millis);
            assert_eq!(d.to_string(), *text);
            assert_eq!(text.parse::<Duration>(), Ok(d));
        }
    }

    #[derive(Deserialize, Serialize, PartialEq, Debug)]
    struct Holder {
        d: Duration,
    }

    #[test]
    fn serde_accepts_strings_and_integer_seconds() {
        let h: Holder = toml::from_str("d = \"2h\"").unwrap();
        assert_eq!(h.d, Duration::from_secs(7200));
        let h: Holder = toml::from_str("d = 15").unwrap();
        assert_eq!(h.d, Duration::from_secs(15));
        assert!(toml::from_str::<Holder>("d = -3").is_err());
        assert!(toml::from_str::<Holder>("d = 1.5").is_err());
        assert!(toml::from_str::<Holder>("d = \"soon\"").is_err());
        let text = toml::to_string(&Holder {
            d: Duration::from_millis(1500),
        })
        .unwrap();
        assert_eq!(text.trim(), "d = \"1500ms\"");
    }
}
