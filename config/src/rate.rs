//! Rates such as a listener's `max_conn_rate`, `messages_rate` and `bytes_rate`, written as
//! EMQX writes them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Duration;

/// `"infinity"`, or a count per period: `"1000/s"`, `"50/10s"`, `"6000/m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rate {
    #[default]
    Infinity,
    Limited {
        count: u32,
        period: Duration,
    },
}

impl Rate {
    /// The steady rate in events per second; `None` when unlimited.
    pub fn per_second(self) -> Option<f64> {
        match self {
            Rate::Infinity => None,
            Rate::Limited { count, period } => Some(f64::from(count) / period.as_secs_f64()),
        }
    }

    /// How many events may come at once after a quiet spell: one period's worth.
    pub fn burst(self) -> Option<u32> {
        match self {
            Rate::Infinity => None,
            Rate::Limited { count, .. } => Some(count),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {0:?}: expected \"infinity\" or a count per period such as \"1000/s\" or \"50/10s\", both above 0")]
pub struct RateError(String);

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, RateError> {
        let s = s.trim();
        if s == "infinity" {
            return Ok(Rate::Infinity);
        }
        let error = || RateError(s.to_owned());
        let (count, period) = s.split_once('/').ok_or_else(error)?;
        let count: u32 = count.trim().parse().map_err(|_| error())?;
        // "1000/s" reads as "1000/1s".
        let period = parse_period(period).ok_or_else(error)?;
        if count == 0 {
            return Err(error());
        }
        Ok(Rate::Limited { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Infinity => f.write_str("infinity"),
            Rate::Limited { count, period } => write!(f, "{count}/{}", PeriodText(*period)),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::text::deserialize(
            deserializer,
            "\"infinity\" or a rate such as \"1000/s\" or \"50/10s\"",
        )
    }
}

/// `"infinity"`, or bytes per period: `"1MB/s"`, `"512KB/s"`, `"10MB/10s"`, `"2000/s"`.
/// The units are EMQX's, powers of 1024: KB = 1024 bytes, MB = 1024 KB, GB = 1024 MB; `B`
/// or no unit is bytes. Case does not matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteRate {
    #[default]
    Infinity,
    Limited {
        bytes: u64,
        period: Duration,
    },
}

impl ByteRate {
    /// The steady rate in bytes per second; `None` when unlimited.
    pub fn per_second(self) -> Option<f64> {
        match self {
            ByteRate::Infinity => None,
            // Precision is lost only beyond 2^53 bytes, some 8 PB.
            ByteRate::Limited { bytes, period } => Some(bytes as f64 / period.as_secs_f64()),
        }
    }

    /// How many bytes may come at once after a quiet spell: one period's worth.
    pub fn burst(self) -> Option<u64> {
        match self {
            ByteRate::Infinity => None,
            ByteRate::Limited { bytes, .. } => Some(bytes),
        }
    }
}

/// Byte units, largest first, so that a rate prints in the largest that divides it.
const BYTE_UNITS: [(&str, u64); 4] = [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid byte rate {0:?}: expected \"infinity\" or a size per period such as \"1MB/s\", \"512KB/s\" or \"10MB/10s\" (KB = 1024 bytes), both above 0")]
pub struct ByteRateError(String);

impl FromStr for ByteRate {
    type Err = ByteRateError;

    fn from_str(s: &str) -> Result<Self, ByteRateError> {
        let s = s.trim();
        if s == "infinity" {
            return Ok(ByteRate::Infinity);
        }
        let error = || ByteRateError(s.to_owned());
        let (size, period) = s.split_once('/').ok_or_else(error)?;
        let size = size.trim();
        let digits = size
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(size.len());
        let (count, unit) = size.split_at(digits);
        let count: u64 = count.parse().map_err(|_| error())?;
        let unit = unit.trim();
        let scale = if unit.is_empty() {
            1
        } else {
            BYTE_UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|(_, scale)| *scale)
                .ok_or_else(error)?
        };
        let bytes = count.checked_mul(scale).ok_or_else(error)?;
        let period = parse_period(period).ok_or_else(error)?;
        if bytes == 0 {
            return Err(error());
        }
        Ok(ByteRate::Limited { bytes, period })
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ByteRate::Infinity => f.write_str("infinity"),
            ByteRate::Limited { bytes, period } => {
                let (unit, scale) = BYTE_UNITS
                    .iter()
                    .find(|(_, scale)| bytes % scale == 0)
                    .copied()
                    .unwrap_or(("B", 1));
                write!(f, "{}{unit}/{}", bytes / scale, PeriodText(*period))
            }
        }
    }
}

impl Serialize for ByteRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::text::deserialize(
            deserializer,
            "\"infinity\" or a byte rate such as \"1MB/s\" or \"512KB/s\"",
        )
    }
}

/// The period of a rate: `"s"` reads as `"1s"`; zero is refused.
fn parse_period(period: &str) -> Option<Duration> {
    let period = period.trim();
    let parsed: Duration = if period.starts_with(|c: char| c.is_ascii_digit()) {
        period.parse()
    } else {
        format!("1{period}").parse()
    }
    .ok()?;
    (!parsed.is_zero()).then_some(parsed)
}

/// A period as a rate writes it: `"s"` for one second, `"10s"` for ten.
struct PeriodText(Duration);

impl fmt::Display for PeriodText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let period = self.0.to_string();
        let period = period
            .strip_prefix('1')
            .filter(|unit| unit.starts_with(|c: char| c.is_ascii_alphabetic()))
            .unwrap_or(&period);
        f.write_str(period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        for (text, per_second) in [
            ("1000/s", 1000.0),
            ("50/10s", 5.0),
            ("6000/m", 100.0),
            ("5/500ms", 10.0),
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(rate.per_second(), Some(per_second), "{text}");
            assert_eq!(rate.to_string(), text);
        }
        assert_eq!("infinity".parse::<Rate>().unwrap(), Rate::Infinity);
        assert_eq!(Rate::Infinity.per_second(), None);
        for bad in ["", "10", "0/s", "10/0s", "-1/s", "10/x", "x/s", "1.5/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_rates_count_in_powers_of_1024_and_print_back() {
        for (text, bytes, per_second) in [
            ("1MB/s", 1 << 20, 1048576.0),
            ("512KB/s", 512 << 10, 524288.0),
            ("10MB/10s", 10 << 20, 1048576.0),
            ("2GB/m", 2 << 30, 2.0 * 1073741824.0 / 60.0),
            ("1500B/s", 1500, 1500.0),
        ] {
            let rate: ByteRate = text.parse().unwrap();
            assert_eq!(rate.burst(), Some(bytes), "{text}");
            assert_eq!(rate.per_second(), Some(per_second), "{text}");
            assert_eq!(rate.to_string(), text);
        }
        assert_eq!("1500/s".parse::<ByteRate>().unwrap().to_string(), "1500B/s");
        assert_eq!(
            "1kb/s".parse::<ByteRate>().unwrap(),
            "1024/s".parse().unwrap()
        );
        assert_eq!("infinity".parse::<ByteRate>().unwrap(), ByteRate::Infinity);
        for bad in [
            "",
            "1MB",
            "0MB/s",
            "0/s",
            "1MB/0s",
            "1TB/s",
            "-1KB/s",
            "1.5MB/s",
            "MB/s",
            "99999999999GB/s",
        ] {
            assert!(bad.parse::<ByteRate>().is_err(), "{bad}");
        }
    }
}
