//! Values the configuration writes as one string (a rate, a network): read with their
//! `FromStr`, so the file, the environment and the code parse them alike.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::Deserializer;

struct FromText<T> {
    expecting: &'static str,
    value: PhantomData<T>,
}

impl<T: FromStr> Visitor<'_> for FromText<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

/// Reads a `T` from a string; anything else, or a string `T` refuses, is an error naming
/// `expecting`.
pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: FromStr>(
    deserializer: D,
    expecting: &'static str,
) -> Result<T, D::Error> {
    deserializer.deserialize_str(FromText {
        expecting,
        value: PhantomData,
    })
}
