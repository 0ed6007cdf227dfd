//! Lengths of time as marketers write them: `14d`, `12h`, `30m`, `2w`, `90s`.
//!
//! Used by windows ("3 visits in 14 days"), relative dates ("within the last 30 days"), score
//! decay ("half-life 30d") and caps ("at most 10 points per 1d").

use chrono::Duration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A positive length of time, kept in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    seconds: i64,
}

/// The longest span accepted: ten years.
pub const MAX_SPAN_SECONDS: i64 = 10 * 366 * 86_400;

impl Span {
    /// A span of `n` seconds (must be positive).
    pub fn seconds(n: i64) -> Option<Span> {
        (n > 0 && n <= MAX_SPAN_SECONDS).then_some(Span { seconds: n })
    }

    /// A span of `n` days.
    pub fn days(n: i64) -> Span {
        Span {
            seconds: n * 86_400,
        }
    }

    /// Length in seconds.
    pub fn as_seconds(self) -> i64 {
        self.seconds
    }

    /// Length in microseconds.
    pub fn as_micros(self) -> i64 {
        self.seconds * 1_000_000
    }

    /// As a chrono duration.
    pub fn duration(self) -> Duration {
        Duration::seconds(self.seconds)
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || {
            format!(
                "{s:?} is not a duration: write a whole number and a unit, e.g. 14d, 12h, 30m, 2w or 90s"
            )
        };
        let unit_at = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(unit_at);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(bad()),
        };
        n.checked_mul(mult)
            .and_then(Span::seconds)
            .ok_or_else(|| format!("{s:?} must be longer than zero and at most ten years"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seconds;
        for (unit, len) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
            if s % len == 0 {
                return write!(f, "{}{unit}", s / len);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_units() {
        for (text, secs, shown) in [
            ("14d", 14 * 86_400, "2w"),
            ("12h", 43_200, "12h"),
            ("30m", 1800, "30m"),
            ("2w", 14 * 86_400, "2w"),
            ("90s", 90, "90s"),
            (" 3d ", 3 * 86_400, "3d"),
        ] {
            let s: Span = text.parse().unwrap();
            assert_eq!(s.as_seconds(), secs, "{text}");
            assert_eq!(s.to_string(), shown);
        }
    }

    #[test]
    fn rejects_nonsense() {
        for text in ["", "d", "14", "14x", "-3d", "0d", "1.5d", "99999w"] {
            assert!(text.parse::<Span>().is_err(), "{text}");
        }
    }
}
