//! Rates such as a listener's `max_conn_rate`, written as EMQX writes them.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
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
        let period = period.trim();
        // "1000/s" reads as "1000/1s".
        let period: Duration = if period.starts_with(|c: char| c.is_ascii_digit()) {
            period.parse()
        } else {
            format!("1{period}").parse()
        }
        .map_err(|_| error())?;
        if count == 0 || period.is_zero() {
            return Err(error());
        }
        Ok(Rate::Limited { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Infinity => f.write_str("infinity"),
            Rate::Limited { count, period } => {
                let period = period.to_string();
                let period = period
                    .strip_prefix('1')
                    .filter(|unit| unit.starts_with(|c: char| c.is_ascii_alphabetic()))
                    .unwrap_or(&period);
                write!(f, "{count}/{period}")
            }
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct RateVisitor;

impl Visitor<'_> for RateVisitor {
    type Value = Rate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"infinity\" or a rate such as \"1000/s\" or \"50/10s\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
        v.parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(RateVisitor)
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
}
