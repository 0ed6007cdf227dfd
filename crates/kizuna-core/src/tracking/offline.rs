//! Offline and product events (R-TRACK-4): a seminar attended, a trade-show booth visit, a sales
//! call, a trial started — facts that happened outside any web page, attached to contacts by
//! e-mail (or id) from a CSV file (`kizuna import events`) or the REST API.
//!
//! This module checks them; nothing is stored here. Every problem names its row (CSV) or item,
//! so that a whole file can be refused with a complete report and nothing half-imported.

use crate::import::{Encoding, ImportError, RowError, header_key};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Which contact an offline event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContactRef {
    /// By e-mail (normalized).
    Email(String),
    /// By id.
    Id(Uuid),
}

/// One checked offline event.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineEvent {
    /// CSV row number (header = 1), or the item's index in an API request.
    pub row: u64,
    /// The contact.
    pub contact: ContactRef,
    /// `noun.verb`, e.g. `seminar.attended`.
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The sender's id for it; a repeated id is stored once. `None`: see
    /// [`OfflineEvent::idempotency_key`].
    pub message_id: Option<String>,
    /// Details (other columns of the row, or the item's properties).
    pub properties: Map<String, Value>,
}

impl OfflineEvent {
    /// The key that makes a re-import count once: the message id, else a SHA-256 (hex) of the
    /// contact, type, time and properties — the same fact imported twice is one fact.
    pub fn idempotency_key(&self) -> String {
        if let Some(id) = &self.message_id {
            return id.clone();
        }
        let contact = match &self.contact {
            ContactRef::Email(e) => format!("email:{e}"),
            ContactRef::Id(id) => format!("id:{id}"),
        };
        let parts = (
            contact,
            &self.event_type,
            self.occurred_at.timestamp_micros(),
            &self.properties,
        );
        let text = serde_json::to_string(&parts).unwrap_or_default();
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}

/// Longest event type, in characters.
pub const MAX_EVENT_TYPE_CHARS: usize = 200;

/// Checks an event type: non-empty, at most [`MAX_EVENT_TYPE_CHARS`], no control characters.
/// Returns it trimmed.
pub fn check_event_type(raw: &str) -> Result<String, String> {
    let t = raw.trim();
    if t.is_empty() {
        return Err("the event type is empty (e.g. seminar.attended)".into());
    }
    if t.chars().count() > MAX_EVENT_TYPE_CHARS {
        return Err(format!(
            "the event type is longer than {MAX_EVENT_TYPE_CHARS} characters"
        ));
    }
    if t.chars().any(char::is_control) {
        return Err("the event type contains control characters".into());
    }
    Ok(t.to_string())
}

/// Parses an event time: RFC 3339 (`2026-10-14T10:00:00+09:00`), or a local date and time as
/// spreadsheets write it (`2026-10-14 10:00`, `2026/10/14 10:00:00`, `2026-10-14`, the latter
/// meaning midnight) read at `offset`. Full-width digits are accepted.
pub fn parse_event_time(raw: &str, offset: FixedOffset) -> Option<DateTime<Utc>> {
    use unicode_normalization::UnicodeNormalization;
    let s: String = raw.nfkc().collect::<String>().trim().to_string();
    if let Ok(t) = DateTime::parse_from_rfc3339(&s) {
        return Some(t.with_timezone(&Utc));
    }
    let s = s.replace('/', "-").replace('T', " ");
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(&s, f) {
            return offset
                .from_local_datetime(&n)
                .single()
                .map(|t| t.with_timezone(&Utc));
        }
    }
    let d = NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok()?;
    offset
        .from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// Checks an event time against `now`: not before 2000, not more than a day ahead.
pub fn check_event_time(t: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    if t.timestamp() < 946_684_800 {
        return Err("the time is before 2000".into());
    }
    if t > now + chrono::Duration::days(1) {
        return Err("the time is in the future".into());
    }
    Ok(())
}

/// How to read an events file.
#[derive(Debug, Clone)]
pub struct EventsCsvOptions {
    /// File encoding.
    pub encoding: Encoding,
    /// The event type of rows without an `event` column (`--event seminar.attended`).
    pub event_type: Option<String>,
    /// The time of rows without an `occurred_at` column.
    pub occurred_at: Option<DateTime<Utc>>,
    /// Offset of local times written without one (Japan: +09:00).
    pub offset: FixedOffset,
    /// Now, to refuse future times.
    pub now: DateTime<Utc>,
}

/// Why an events file was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventsCsvError {
    /// Not a readable CSV file.
    #[error(transparent)]
    File(#[from] ImportError),
    /// A required column is missing (the message names it).
    #[error("{0}")]
    Columns(String),
    /// Rows are invalid; every problem is listed.
    #[error("{} invalid rows", .0.len())]
    Rows(Vec<RowError>),
}

/// Column roles by header (compared with [`header_key`]).
fn role(key: &str) -> Option<&'static str> {
    Some(match key {
        "email" | "e-mail" | "e_mail" | "mail" | "メールアドレス" | "メール" | "eメール" => {
            "email"
        }
        "contact_id" => "contact_id",
        "event" | "type" | "event_type" | "イベント" | "種別" => "event",
        "occurred_at" | "timestamp" | "time" | "date" | "datetime" | "日時" | "日付" => {
            "occurred_at"
        }
        "message_id" | "messageid" => "message_id",
        _ => return None,
    })
}

/// Reads and checks a whole events CSV file (UTF-8 or Shift_JIS, header row first). Columns:
/// `email` (or `contact_id`), `event` (unless [`EventsCsvOptions::event_type`]), `occurred_at`
/// (unless [`EventsCsvOptions::occurred_at`]), optional `message_id`; every other column goes
/// into the event's properties under its header. Returns every event, or every problem.
pub fn read_events_csv(
    bytes: &[u8],
    opts: &EventsCsvOptions,
) -> Result<(Vec<OfflineEvent>, Encoding), EventsCsvError> {
    let (text, encoding) = decode(bytes, opts.encoding)?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = rdr.records();
    let headers: Vec<String> = match records.next() {
        None => return Err(ImportError::Empty.into()),
        Some(r) => r
            .map_err(|e| ImportError::NotCsv(e.to_string()))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect(),
    };
    let roles: Vec<Option<&'static str>> = headers.iter().map(|h| role(&header_key(h))).collect();
    let col = |r: &str| roles.iter().position(|x| *x == Some(r));
    let (email_col, id_col) = (col("email"), col("contact_id"));
    if email_col.is_none() && id_col.is_none() {
        return Err(EventsCsvError::Columns(
            "the file needs an email column (or contact_id) to attach each event to a contact"
                .into(),
        ));
    }
    let event_col = col("event");
    if event_col.is_none() && opts.event_type.is_none() {
        return Err(EventsCsvError::Columns(
            "the file needs an event column (e.g. seminar.attended), or give one type for every row with --event".into(),
        ));
    }
    let time_col = col("occurred_at");
    if time_col.is_none() && opts.occurred_at.is_none() {
        return Err(EventsCsvError::Columns(
            "the file needs an occurred_at column (e.g. 2026-10-14 10:00), or give one time for every row with --at".into(),
        ));
    }
    let message_col = col("message_id");
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for (i, rec) in records.enumerate() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let row = e.position().map_or(i as u64 + 2, |p| p.line());
                errors.push(RowError {
                    row,
                    column: None,
                    value: None,
                    reason: format!("unreadable row: {e}"),
                });
                continue;
            }
        };
        if rec.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        // The line the record starts on (header = 1).
        let row = rec.position().map_or(i as u64 + 2, |p| p.line());
        let cell = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(str::trim).unwrap_or("");
        let err = |c: Option<usize>, value: &str, reason: String| RowError {
            row,
            column: c.map(|c| headers[c].clone()),
            value: (!value.is_empty()).then(|| value.to_string()),
            reason,
        };
        let before = errors.len();
        let contact = if !cell(email_col).is_empty() {
            match crate::email_address::normalize_email(cell(email_col), "email") {
                Ok(e) => Some(ContactRef::Email(e)),
                Err(e) => {
                    errors.push(err(email_col, cell(email_col), e.message));
                    None
                }
            }
        } else if !cell(id_col).is_empty() {
            match cell(id_col).parse::<Uuid>() {
                Ok(id) => Some(ContactRef::Id(id)),
                Err(_) => {
                    errors.push(err(id_col, cell(id_col), "not a contact id".into()));
                    None
                }
            }
        } else {
            errors.push(err(
                email_col.or(id_col),
                "",
                "no e-mail address: every event needs the contact's e-mail".into(),
            ));
            None
        };
        let event_type = match event_col.map(|c| cell(Some(c))).filter(|s| !s.is_empty()) {
            Some(t) => check_event_type(t)
                .map_err(|r| errors.push(err(event_col, t, r)))
                .ok(),
            None => match &opts.event_type {
                Some(t) => Some(t.clone()),
                None => {
                    errors.push(err(event_col, "", "no event type".into()));
                    None
                }
            },
        };
        let occurred_at = match time_col.map(|c| cell(Some(c))).filter(|s| !s.is_empty()) {
            Some(raw) => match parse_event_time(raw, opts.offset) {
                Some(t) => match check_event_time(t, opts.now) {
                    Ok(()) => Some(t),
                    Err(r) => {
                        errors.push(err(time_col, raw, r));
                        None
                    }
                },
                None => {
                    errors.push(err(
                        time_col,
                        raw,
                        "not a date and time (e.g. 2026-10-14 10:00 or 2026-10-14T10:00:00+09:00)"
                            .into(),
                    ));
                    None
                }
            },
            None => match opts.occurred_at {
                Some(t) => Some(t),
                None => {
                    errors.push(err(time_col, "", "no time".into()));
                    None
                }
            },
        };
        if errors.len() > before {
            continue;
        }
        let mut properties = Map::new();
        for (c, h) in headers.iter().enumerate() {
            if roles[c].is_some() || h.is_empty() {
                continue;
            }
            let v = rec.get(c).map(str::trim).unwrap_or("");
            if !v.is_empty() {
                properties.insert(h.clone(), Value::String(v.to_string()));
            }
        }
        let message_id = Some(cell(message_col))
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let (Some(contact), Some(event_type), Some(occurred_at)) =
            (contact, event_type, occurred_at)
        {
            events.push(OfflineEvent {
                row,
                contact,
                event_type,
                occurred_at,
                message_id,
                properties,
            });
        }
    }
    if errors.is_empty() {
        Ok((events, encoding))
    } else {
        Err(EventsCsvError::Rows(errors))
    }
}

/// The file as UTF-8 text: a BOM or valid UTF-8 is UTF-8, anything else is read as Shift_JIS
/// (cp932) unless UTF-8 was asked for.
fn decode(bytes: &[u8], encoding: Encoding) -> Result<(String, Encoding), ImportError> {
    if bytes.is_empty() {
        return Err(ImportError::Empty);
    }
    if bytes.contains(&0) {
        return Err(ImportError::NotCsv(
            "it contains NUL bytes (a workbook or binary file?): save it as CSV".into(),
        ));
    }
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return String::from_utf8(rest.to_vec())
            .map(|s| (s, Encoding::Utf8))
            .map_err(|_| ImportError::Undecodable("invalid UTF-8 after the BOM".into()));
    }
    match encoding {
        Encoding::Utf8 => String::from_utf8(bytes.to_vec())
            .map(|s| (s, Encoding::Utf8))
            .map_err(|e| {
                ImportError::Undecodable(format!(
                    "not UTF-8 (invalid byte at offset {}); try --encoding shift_jis",
                    e.utf8_error().valid_up_to()
                ))
            }),
        Encoding::Auto if std::str::from_utf8(bytes).is_ok() => Ok((
            String::from_utf8(bytes.to_vec()).unwrap_or_default(),
            Encoding::Utf8,
        )),
        _ => {
            let (text, _, bad) = encoding_rs::SHIFT_JIS.decode(bytes);
            if bad {
                return Err(ImportError::Undecodable(
                    "neither UTF-8 nor Shift_JIS text".into(),
                ));
            }
            Ok((text.into_owned(), Encoding::ShiftJis))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn jst() -> FixedOffset {
        FixedOffset::east_opt(9 * 3600).unwrap()
    }

    fn opts() -> EventsCsvOptions {
        EventsCsvOptions {
            encoding: Encoding::Auto,
            event_type: None,
            occurred_at: None,
            offset: jst(),
            now: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
        }
    }

    #[test]
    fn times_as_spreadsheets_write_them() {
        let want = Utc.with_ymd_and_hms(2026, 10, 14, 1, 0, 0).unwrap();
        for s in [
            "2026-10-14 10:00",
            "2026/10/14 10:00:00",
            "２０２６/１０/１４ １０:００",
            "2026-10-14T10:00:00+09:00",
            "2026-10-14T01:00:00Z",
        ] {
            assert_eq!(parse_event_time(s, jst()), Some(want), "{s}");
        }
        assert_eq!(
            parse_event_time("2026-10-14", jst()),
            Some(Utc.with_ymd_and_hms(2026, 10, 13, 15, 0, 0).unwrap())
        );
        assert_eq!(parse_event_time("next tuesday", jst()), None);
    }

    #[test]
    fn a_seminar_attendee_list_reads() {
        let csv = "メールアドレス,イベント,日時,セミナー名,席\n\
                   Taro@Yamada-Shoji.co.jp,seminar.attended,2026/10/14 14:00,秋のDXセミナー,A-3\n\
                   hanako@example.jp,seminar.attended,2026-10-14 14:00,秋のDXセミナー,\n";
        let (events, enc) = read_events_csv(csv.as_bytes(), &opts()).unwrap();
        assert_eq!(enc, Encoding::Utf8);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].contact,
            ContactRef::Email("taro@yamada-shoji.co.jp".into())
        );
        assert_eq!(events[0].event_type, "seminar.attended");
        assert_eq!(events[0].properties["セミナー名"], "秋のDXセミナー");
        assert_eq!(events[0].properties["席"], "A-3");
        assert!(
            !events[1].properties.contains_key("席"),
            "empty cells are left out"
        );
        assert_eq!((events[0].row, events[1].row), (2, 3), "row numbers");
        assert_ne!(events[0].idempotency_key(), events[1].idempotency_key());
    }

    #[test]
    fn shift_jis_and_defaults_from_options() {
        let (bytes, _, _) = encoding_rs::SHIFT_JIS.encode("メール,展示会\na@example.jp,ブースA\n");
        let t = Utc.with_ymd_and_hms(2026, 10, 20, 0, 0, 0).unwrap();
        let o = EventsCsvOptions {
            event_type: Some("tradeshow.visited".into()),
            occurred_at: Some(t),
            ..opts()
        };
        let (events, enc) = read_events_csv(&bytes, &o).unwrap();
        assert_eq!(enc, Encoding::ShiftJis);
        assert_eq!(events[0].event_type, "tradeshow.visited");
        assert_eq!(events[0].occurred_at, t);
        assert_eq!(events[0].properties["展示会"], "ブースA");
    }

    #[test]
    fn every_bad_row_is_reported() {
        let csv = "email,event,occurred_at\n\
                   not-an-address,call.made,2026-10-01 10:00\n\
                   ok@example.jp,,2026-10-01 10:00\n\
                   ok@example.jp,call.made,someday\n\
                   ok@example.jp,call.made,2030-01-01 00:00\n\
                   ,call.made,2026-10-01 10:00\n\
                   ok@example.jp,call.made,2026-10-01 10:00\n";
        let Err(EventsCsvError::Rows(errs)) = read_events_csv(csv.as_bytes(), &opts()) else {
            panic!("expected row errors")
        };
        let rows: Vec<u64> = errs.iter().map(|e| e.row).collect();
        assert_eq!(rows, [2, 3, 4, 5, 6]);
        assert_eq!(errs[0].column.as_deref(), Some("email"));
        assert!(errs[3].reason.contains("future"));
    }

    #[test]
    fn missing_columns_are_named() {
        for (csv, word) in [
            ("name,event,occurred_at\nx,y,2026-10-01\n", "email"),
            ("email,occurred_at\na@example.jp,2026-10-01\n", "event"),
            ("email,event\na@example.jp,call.made\n", "occurred_at"),
        ] {
            match read_events_csv(csv.as_bytes(), &opts()) {
                Err(EventsCsvError::Columns(m)) => assert!(m.contains(word), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reimport_keys_are_stable() {
        let csv = "email,event,occurred_at,message_id\na@example.jp,call.made,2026-10-01 10:00,\nb@example.jp,call.made,2026-10-01 10:00,crm-17\n";
        let (a, _) = read_events_csv(csv.as_bytes(), &opts()).unwrap();
        let (b, _) = read_events_csv(csv.as_bytes(), &opts()).unwrap();
        assert_eq!(a[0].idempotency_key(), b[0].idempotency_key());
        assert_eq!(a[1].idempotency_key(), "crm-17");
    }
}
