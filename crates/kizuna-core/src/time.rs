//! Instants as the store keeps them: microseconds since the Unix epoch.

use chrono::{DateTime, Utc};

/// Microseconds since the epoch → instant.
pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Instant → microseconds since the epoch.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}
