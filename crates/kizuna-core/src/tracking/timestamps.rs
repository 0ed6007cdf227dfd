//! When did it happen? Parsing the SDKs' timestamps and correcting client clock skew exactly as
//! the Segment spec does.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};

/// Times before this (2000-01-01T00:00:00Z) are not real events: a device with a dead clock, a
/// zero value or a seconds/milliseconds mix-up.
pub(crate) const MIN_UNIX_SECONDS: i64 = 946_684_800;

/// How far in the future a corrected timestamp may be before it is clamped to `receivedAt`.
pub(crate) const MAX_FUTURE: TimeDelta = TimeDelta::days(1);

/// Which input field a timestamp problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeField {
    Timestamp,
    OriginalTimestamp,
    SentAt,
}

impl TimeField {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Timestamp => "timestamp",
            Self::OriginalTimestamp => "originalTimestamp",
            Self::SentAt => "sentAt",
        }
    }
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// When the event happened, on the server's clock.
    pub timestamp: DateTime<Utc>,
    /// The time the client claimed (`originalTimestamp`, else `timestamp`), uncorrected.
    pub original: Option<DateTime<Utc>>,
    /// Whether the result was more than [`MAX_FUTURE`] ahead of `receivedAt` and was replaced
    /// by it.
    pub clamped: bool,
}

/// Parses an SDK timestamp: RFC 3339 / ISO 8601 with `Z` or an offset (`+09:00` or `+0900`), with
/// or without fractional seconds; without an offset (older analytics-python sends naive UTC) it
/// is read as UTC; a bare date is midnight UTC. `None` if it is none of these.
pub(crate) fn parse(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    // No valid timestamp is this long; refuse early rather than hand chrono 30 KB.
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// The event time, from what the client sent (already parsed) and when the server received it.
///
/// - `sentAt` and a client time (`originalTimestamp`, else `timestamp`) both present: the
///   client's clock may be wrong, but the time between the event and the send is right, so
///   `timestamp = receivedAt − (sentAt − client time)` (Segment's formula). A device whose clock
///   says 1970 therefore still gets a correct time.
/// - Otherwise an explicit `timestamp` (else `originalTimestamp`) is taken as it is: server-side
///   libraries and imports of history set it on purpose.
/// - Otherwise `receivedAt`.
///
/// The result must be on or after 2000-01-01 (else an error names the field it came from); a
/// result more than a day after `receivedAt` is clamped to `receivedAt` and flagged.
pub(crate) fn resolve(
    timestamp: Option<DateTime<Utc>>,
    original: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
) -> Result<Resolved, (TimeField, String)> {
    let (client, client_field) = match (original, timestamp) {
        (Some(o), _) => (Some(o), TimeField::OriginalTimestamp),
        (None, Some(t)) => (Some(t), TimeField::Timestamp),
        (None, None) => (None, TimeField::Timestamp),
    };
    let (ts, corrected) = match (sent_at, client) {
        (Some(sent), Some(client)) => {
            let delay = sent.signed_duration_since(client);
            let ts = received_at.checked_sub_signed(delay).ok_or_else(|| {
                (
                    TimeField::SentAt,
                    "sentAt is too far from the event time to correct the clock skew".to_string(),
                )
            })?;
            (ts, true)
        }
        (None, _) => (timestamp.or(original).unwrap_or(received_at), false),
        (Some(_), None) => (received_at, false),
    };
    if ts.timestamp() < MIN_UNIX_SECONDS {
        let field = if timestamp.is_some() && !corrected {
            TimeField::Timestamp
        } else {
            client_field
        };
        let how = if corrected {
            " after clock-skew correction (receivedAt − (sentAt − originalTimestamp))"
        } else {
            ""
        };
        return Err((
            field,
            format!("the event time{how} is {ts}, before 2000-01-01; send an ISO 8601 time"),
        ));
    }
    let limit = received_at.checked_add_signed(MAX_FUTURE);
    let clamped = limit.is_some_and(|limit| ts > limit);
    Ok(Resolved {
        timestamp: if clamped { received_at } else { ts },
        original: client,
        clamped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse(s).unwrap_or_else(|| panic!("bad test time {s}"))
    }

    #[test]
    fn parses_the_formats_sdks_send() {
        let want = DateTime::from_timestamp(1_714_564_800, 0).unwrap(); // 2024-05-01T12:00:00Z
        for s in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.000Z",
            "2024-05-01T21:00:00+09:00",
            "2024-05-01T21:00:00.000+0900",
            "2024-05-01T12:00:00.000000", // naive: older analytics-python
            "2024-05-01 12:00:00",
            " 2024-05-01T12:00:00z ",
        ] {
            assert_eq!(parse(s), Some(want), "{s}");
        }
        assert_eq!(
            parse("2024-05-01"),
            DateTime::from_timestamp(1_714_521_600, 0)
        );
        assert_eq!(
            parse("2024-05-01T12:00:00.123456+00:00").map(|t| t.timestamp_subsec_micros()),
            Some(123_456)
        );
    }

    #[test]
    fn rejects_non_times() {
        for s in [
            "",
            "yesterday",
            "1714564800",
            "2024-13-01T00:00:00Z",
            &"9".repeat(100),
        ] {
            assert_eq!(parse(s), None, "{s}");
        }
    }

    #[test]
    fn skew_is_corrected_with_segments_formula() {
        // The device clock is 3 hours behind: the event happened 5 s before the send, and the
        // server received it at 12:00:10, so it happened at 12:00:05 server time.
        let r = resolve(
            None,
            Some(t("2024-05-01T09:00:00Z")),
            Some(t("2024-05-01T09:00:05Z")),
            t("2024-05-01T12:00:10Z"),
        )
        .unwrap();
        assert_eq!(r.timestamp, t("2024-05-01T12:00:05Z"));
        assert_eq!(r.original, Some(t("2024-05-01T09:00:00Z")));
        assert!(!r.clamped);
    }

    #[test]
    fn timestamp_stands_in_for_original_timestamp_when_sent_at_is_present() {
        // analytics.js sends `timestamp` + `sentAt`: skew-corrected the same way.
        let r = resolve(
            Some(t("2024-05-01T12:30:00Z")),
            None,
            Some(t("2024-05-01T12:30:02.500Z")),
            t("2024-05-01T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(r.timestamp, t("2024-05-01T11:59:57.500Z"));
    }

    #[test]
    fn original_timestamp_wins_over_timestamp_for_the_correction() {
        let r = resolve(
            Some(t("2030-01-01T00:00:00Z")),
            Some(t("2024-05-01T11:00:00Z")),
            Some(t("2024-05-01T11:00:01Z")),
            t("2024-05-01T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(r.timestamp, t("2024-05-01T11:59:59Z"));
    }

    #[test]
    fn explicit_timestamp_without_sent_at_is_used_as_is() {
        // Imports of history: a year-old time stays a year old.
        let r = resolve(
            Some(t("2023-05-01T00:00:00Z")),
            None,
            None,
            t("2024-05-01T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(r.timestamp, t("2023-05-01T00:00:00Z"));
        let r = resolve(
            None,
            Some(t("2023-05-01T00:00:00Z")),
            None,
            t("2024-05-01T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(r.timestamp, t("2023-05-01T00:00:00Z"));
    }

    #[test]
    fn no_client_time_means_received_at() {
        let now = t("2024-05-01T12:00:00Z");
        assert_eq!(resolve(None, None, None, now).unwrap().timestamp, now);
        let r = resolve(None, None, Some(t("2024-05-01T11:00:00Z")), now).unwrap();
        assert_eq!(r.timestamp, now);
        assert_eq!(r.original, None);
    }

    #[test]
    fn a_device_stuck_in_1970_is_rescued_by_the_correction() {
        let r = resolve(
            None,
            Some(t("1970-01-01T00:05:00Z")),
            Some(t("1970-01-01T00:06:00Z")),
            t("2024-05-01T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(r.timestamp, t("2024-05-01T11:59:00Z"));
    }

    #[test]
    fn before_2000_is_an_error_naming_the_field() {
        let now = t("2024-05-01T12:00:00Z");
        let (field, _) = resolve(Some(t("1999-12-31T23:59:59Z")), None, None, now).unwrap_err();
        assert_eq!(field, TimeField::Timestamp);
        let (field, _) = resolve(None, Some(t("1970-01-01T00:00:00Z")), None, now).unwrap_err();
        assert_eq!(field, TimeField::OriginalTimestamp);
        // Exactly 2000-01-01 is fine.
        assert!(resolve(Some(t("2000-01-01T00:00:00Z")), None, None, now).is_ok());
        // sentAt 30 years after the event: the corrected time falls before 2000.
        let (field, msg) = resolve(
            None,
            Some(t("2020-01-01T00:00:00Z")),
            Some(t("2050-01-01T00:00:00Z")),
            now,
        )
        .unwrap_err();
        assert_eq!(field, TimeField::OriginalTimestamp);
        assert!(msg.contains("clock-skew"), "{msg}");
    }

    #[test]
    fn more_than_a_day_ahead_is_clamped_to_received_at() {
        let now = t("2024-05-01T12:00:00Z");
        let r = resolve(Some(t("2024-05-02T12:00:01Z")), None, None, now).unwrap();
        assert_eq!(r.timestamp, now);
        assert!(r.clamped);
        // Exactly one day ahead is kept.
        let r = resolve(Some(t("2024-05-02T12:00:00Z")), None, None, now).unwrap();
        assert_eq!(r.timestamp, t("2024-05-02T12:00:00Z"));
        assert!(!r.clamped);
        // After correction: sent 2 days before it happened.
        let r = resolve(
            None,
            Some(t("2024-05-03T00:00:00Z")),
            Some(t("2024-05-01T00:00:00Z")),
            now,
        )
        .unwrap();
        assert_eq!(r.timestamp, now);
        assert!(r.clamped);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let now = t("2024-05-01T12:00:00Z");
        let r = resolve(
            None,
            Some(DateTime::<Utc>::MIN_UTC),
            Some(DateTime::<Utc>::MAX_UTC),
            now,
        );
        assert_eq!(r.unwrap_err().0, TimeField::SentAt);
        let r = resolve(
            None,
            Some(DateTime::<Utc>::MAX_UTC),
            Some(DateTime::<Utc>::MIN_UTC),
            now,
        );
        assert_eq!(r.unwrap_err().0, TimeField::SentAt);
        let r = resolve(None, None, None, DateTime::<Utc>::MAX_UTC).unwrap();
        assert!(!r.clamped);
    }
}
