//! Tracking messages (Segment spec, R-TRACK-1): the pure half of ingestion.
//!
//! The HTTP layer hands [`parse`] the request body (already gunzipped), the [`Endpoint`] from the
//! path and the basic-auth user; it gets back the write key and the checked, normalized
//! [`Message`]s, or a [`TrackingError`] to answer with. Nothing here does I/O or reads the clock:
//! the receive time is an argument. [`attribution`] and [`classify_channel`] turn a message into
//! the contact's first-touch [`Source`](crate::contact::Source).
//!
//! # Hostile input
//! Every body is bounded before it is parsed: at most [`MAX_MESSAGE_BYTES`] for a single-message
//! endpoint and [`MAX_BATCH_BYTES`] for a batch (each batch item is also held to
//! [`MAX_MESSAGE_BYTES`], measured as the bytes of its own JSON text), at most [`MAX_DEPTH`]
//! levels of nesting per message, at most [`MAX_BATCH_MESSAGES`] messages. No nesting can exhaust
//! the stack: serde_json stops building at its recursion limit (128) with an error, batch items
//! are skimmed iteratively, and depth is measured without recursion. Work is linear in the
//! body. Every rejection is a [`TrackingError`] with an HTTP status (400 or 401), a snake_case
//! code, a sentence and, when one field is at fault, its path (`batch[3].anonymousId`).
//!
//! # Decisions
//! - **A bad message rejects the whole request** (as Segment does, with 400): nothing of a batch
//!   is stored when any item is invalid, so a client never has to work out which half got in.
//! - **Size limits answer 400**, not 413, because Segment's API does and SDKs expect it (the
//!   HTTP layer's own cap on the raw body, which must exist to stop gzip bombs, may say 413).
//! - **Missing `messageId`**: no id is invented here ([`Message::message_id`] is `None`, the
//!   caller assigns one); when the client stated the event time, [`Message::dedupe_key`] is a
//!   content hash so that retries still count once.
//! - **Time**: skew-corrected as Segment does (`receivedAt − (sentAt − originalTimestamp)`);
//!   before 2000 is rejected (400 naming the field); more than a day in the future is clamped
//!   to the receive time and flagged ([`Message::timestamp_clamped`]).
//! - **The path decides the type** of a single message; a `type` in its body is ignored.
//! - **Write key**: basic auth wins; else the body's `writeKey` (a batch's top-level one, else
//!   the one its items carry, which must then agree). None at all → 401. Whether the key is
//!   known is the caller's check.
//! - RudderStack's `merge` (`/v1/merge`, `type: "merge"`) is rejected clearly
//!   (`unsupported_type`): it merges typed identifiers (email, phone), which is not an alias.

mod attribution;
mod json;
mod message;
pub mod offline;
mod timestamps;
pub mod traits;
mod url;

pub use attribution::{
    DIRECT, EMAIL, OFFLINE, ORGANIC_SEARCH, PAID_SEARCH, REFERRAL, SOCIAL, attribution,
    classify_channel,
};
pub use message::{Message, MessageSource, MessageType};

use chrono::{DateTime, Utc};
use message::{RawMessage, Shared};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Largest message: Segment's 32 KB per call (and per item of a batch).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Largest batch body: Segment's 500 KB.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Deepest nesting of arrays and objects in one message (the message object is level 1).
pub const MAX_DEPTH: usize = 32;
/// Most messages in one batch.
pub const MAX_BATCH_MESSAGES: usize = 2500;
/// Longest track event name, in characters.
pub const MAX_EVENT_NAME_CHARS: usize = 200;
/// Longest `userId`, `anonymousId`, `messageId`, `groupId` or `previousId`, in bytes.
pub const MAX_ID_BYTES: usize = 512;

/// A tracking endpoint, from the path after `/v1/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/v1/identify`, `/v1/i`.
    Identify,
    /// `/v1/track`, `/v1/t`.
    Track,
    /// `/v1/page`, `/v1/p`.
    Page,
    /// `/v1/screen`, `/v1/s`.
    Screen,
    /// `/v1/group`, `/v1/g`.
    Group,
    /// `/v1/alias`, `/v1/a`.
    Alias,
    /// `/v1/batch`, `/v1/b`.
    Batch,
    /// `/v1/import`: a batch under its older name (also used by RudderStack).
    Import,
}

impl Endpoint {
    /// All endpoints.
    pub const ALL: [Endpoint; 8] = [
        Self::Identify,
        Self::Track,
        Self::Page,
        Self::Screen,
        Self::Group,
        Self::Alias,
        Self::Batch,
        Self::Import,
    ];

    /// The endpoint for a path: the long names (`track`) and analytics.js's short ones
    /// (`t, i, p, a, g, s, b`), with or without a leading `/v1/` and a trailing `/`. `None` for
    /// anything else, including RudderStack's `merge` (see the module docs).
    pub fn from_path(path: &str) -> Option<Self> {
        let p = path.trim_end_matches('/');
        let p = p
            .strip_prefix("/v1/")
            .or_else(|| p.strip_prefix("v1/"))
            .unwrap_or(p);
        Some(match p {
            "identify" | "i" => Self::Identify,
            "track" | "t" => Self::Track,
            "page" | "p" => Self::Page,
            "screen" | "s" => Self::Screen,
            "group" | "g" => Self::Group,
            "alias" | "a" => Self::Alias,
            "batch" | "b" => Self::Batch,
            "import" => Self::Import,
            _ => return None,
        })
    }

    /// The long path name (`identify`, …, `batch`, `import`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Import => "import",
            other => other.message_type().map_or("", MessageType::as_str),
        }
    }

    /// The message type a single-message endpoint accepts; `None` for batch and import.
    pub fn message_type(self) -> Option<MessageType> {
        match self {
            Self::Identify => Some(MessageType::Identify),
            Self::Track => Some(MessageType::Track),
            Self::Page => Some(MessageType::Page),
            Self::Screen => Some(MessageType::Screen),
            Self::Group => Some(MessageType::Group),
            Self::Alias => Some(MessageType::Alias),
            Self::Batch | Self::Import => None,
        }
    }

    /// Whether the body is a batch (`{"batch": [...]}`).
    pub fn is_batch(self) -> bool {
        self.message_type().is_none()
    }
}

/// Why a request was refused. Serializes to the contract's error object
/// (`{"code","message","field"}`); the status is for the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}{}", field.as_ref().map(|f| format!(" (at {f})")).unwrap_or_default())]
pub struct TrackingError {
    /// HTTP status: 400 (bad or too large body or message) or 401 (no write key).
    #[serde(skip)]
    pub status: u16,
    /// A stable snake_case code, e.g. `missing_identity`.
    pub code: &'static str,
    /// A human sentence.
    pub message: String,
    /// Path of the offending value, e.g. `batch[3].anonymousId`; `None` when the body as a
    /// whole is at fault.
    pub field: Option<String>,
}

impl TrackingError {
    /// A 400 error.
    pub fn bad_request(
        code: &'static str,
        message: impl Into<String>,
        field: Option<String>,
    ) -> Self {
        Self {
            status: 400,
            code,
            message: message.into(),
            field,
        }
    }

    fn unauthorized() -> Self {
        Self {
            status: 401,
            code: "missing_write_key",
            message: "no write key: send it as the basic-auth user name or as writeKey in the body"
                .into(),
            field: None,
        }
    }
}

/// A request's messages, checked and normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The write key that authenticates the request (not yet checked against the store).
    pub write_key: String,
    /// The messages, in the order sent. Empty only for an empty batch.
    pub messages: Vec<Message>,
}

/// Parses and checks the body of a request to `endpoint`.
///
/// `body` is the request body after gzip decoding; `auth_write_key` the basic-auth user name
/// (empty means absent); `received_at` the server's receive time, which also anchors the
/// clock-skew correction. For the order of checks: size, then JSON structure and depth, then the
/// write key (401), then each message's content — so an unauthenticated client learns nothing
/// about message rules.
pub fn parse(
    endpoint: Endpoint,
    body: &[u8],
    auth_write_key: Option<&str>,
    received_at: DateTime<Utc>,
) -> Result<Parsed, TrackingError> {
    let auth = auth_write_key.filter(|k| !k.is_empty());
    match endpoint.message_type() {
        Some(kind) => parse_single(kind, body, auth, received_at),
        None => parse_batch(body, auth, received_at),
    }
}

fn parse_single(
    kind: MessageType,
    body: &[u8],
    auth: Option<&str>,
    received_at: DateTime<Utc>,
) -> Result<Parsed, TrackingError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(TrackingError::bad_request(
            "message_too_large",
            format!(
                "the message is {} bytes; the limit is {MAX_MESSAGE_BYTES} (32 KB)",
                body.len()
            ),
            None,
        ));
    }
    let text = body_text(body)?;
    let mut obj = json::parse_message(text, || None)?;
    let body_key = take_write_key(&mut obj, "")?;
    let write_key = match (auth, body_key) {
        (Some(k), _) => k.to_string(),
        (None, Some(k)) => k,
        (None, None) => return Err(TrackingError::unauthorized()),
    };
    // The endpoint decides the type (see the module docs).
    obj.take("type");
    let msg = message::normalize(obj, kind, "", &Shared::default(), received_at)?;
    Ok(Parsed {
        write_key,
        messages: vec![msg],
    })
}

/// The batch body's own keys. Items, `context` and `integrations` stay raw text until each is
/// size- and depth-checked; unknown keys are ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "writeKey", default)]
    write_key: Option<Value>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    integrations: Option<&'a RawValue>,
}

fn parse_batch(
    body: &[u8],
    auth: Option<&str>,
    received_at: DateTime<Utc>,
) -> Result<Parsed, TrackingError> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(TrackingError::bad_request(
            "batch_too_large",
            format!(
                "the batch is {} bytes; the limit is {MAX_BATCH_BYTES} (500 KB)",
                body.len()
            ),
            None,
        ));
    }
    let text = body_text(body)?;
    if !text.trim_start().starts_with('{') {
        return Err(not_an_object(None));
    }
    // Skimming the items as raw text is iterative inside serde_json, and its recursion limit
    // bounds the few values built here, so no nesting can overflow the stack.
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        if json::is_recursion_limit(&e) {
            json::too_deep(None)
        } else if e.classify() == serde_json::error::Category::Data {
            if e.to_string().starts_with("duplicate field") {
                TrackingError::bad_request("invalid_json", e.to_string(), None)
            } else {
                TrackingError::bad_request(
                    "invalid_batch",
                    format!("batch must be an array of message objects ({e})"),
                    Some("batch".into()),
                )
            }
        } else {
            TrackingError::bad_request(
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
                None,
            )
        }
    })?;
    let items = env.batch.ok_or_else(|| {
        TrackingError::bad_request(
            "missing_batch",
            "a batch body needs a \"batch\" array of messages",
            Some("batch".into()),
        )
    })?;
    if items.len() > MAX_BATCH_MESSAGES {
        return Err(TrackingError::bad_request(
            "too_many_messages",
            format!(
                "the batch has {} messages; the limit is {MAX_BATCH_MESSAGES}",
                items.len()
            ),
            Some("batch".into()),
        ));
    }

    // Structure first: every item within limits and an object, and the write key found.
    let top_key = match env.write_key {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(TrackingError::bad_request(
                "invalid_type",
                "writeKey must be a string",
                Some("writeKey".into()),
            ));
        }
    };
    let mut objs = Vec::with_capacity(items.len());
    let mut item_key: Option<String> = None;
    let mut key_conflict: Option<String> = None;
    for (i, raw) in items.iter().enumerate() {
        let prefix = format!("batch[{i}].");
        let item_field = || Some(format!("batch[{i}]"));
        let raw = raw.get();
        if raw.len() > MAX_MESSAGE_BYTES {
            return Err(TrackingError::bad_request(
                "message_too_large",
                format!(
                    "message {i} is {} bytes; the limit is {MAX_MESSAGE_BYTES} (32 KB)",
                    raw.len()
                ),
                item_field(),
            ));
        }
        let mut obj = json::parse_message(raw, item_field)?;
        if let Some(k) = take_write_key(&mut obj, &prefix)? {
            match &item_key {
                None => item_key = Some(k),
                Some(first) if *first != k && key_conflict.is_none() => {
                    key_conflict = Some(format!("{prefix}writeKey"));
                }
                Some(_) => {}
            }
        }
        objs.push((prefix, obj));
    }
    let write_key = match (auth, top_key) {
        (Some(k), _) => k.to_string(),
        (None, Some(k)) => k,
        (None, None) => match (item_key, key_conflict) {
            (Some(_), Some(field)) => {
                return Err(TrackingError::bad_request(
                    "conflicting_write_key",
                    "the messages of one batch carry different write keys",
                    Some(field),
                ));
            }
            (Some(k), None) => k,
            (None, _) => return Err(TrackingError::unauthorized()),
        },
    };

    // Then content.
    let sent_at = match env.sent_at {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(timestamps::parse(&s).ok_or_else(|| {
            TrackingError::bad_request(
                "invalid_timestamp",
                "sentAt is not an ISO 8601 time (e.g. 2024-05-01T12:00:00.000Z)",
                Some("sentAt".into()),
            )
        })?),
        Some(_) => {
            return Err(TrackingError::bad_request(
                "invalid_timestamp",
                "sentAt must be an ISO 8601 time string",
                Some("sentAt".into()),
            ));
        }
    };
    let context = shared_object(env.context, "context")?;
    let integrations = shared_object(env.integrations, "integrations")?;
    let shared = Shared {
        sent_at,
        context: context.as_ref(),
        integrations: integrations.as_ref(),
    };
    let mut messages = Vec::with_capacity(objs.len());
    for (prefix, mut obj) in objs {
        let kind = match obj.take("type") {
            Some(Value::String(t)) => match MessageType::from_wire(&t) {
                Some(kind) => kind,
                None if t.eq_ignore_ascii_case("merge") => {
                    return Err(TrackingError::bad_request(
                        "unsupported_type",
                        "RudderStack merge calls are not supported; send an alias (previousId → userId) or an identify",
                        Some(format!("{prefix}type")),
                    ));
                }
                None => {
                    return Err(TrackingError::bad_request(
                        "unknown_type",
                        format!(
                            "{:?} is not a message type (identify, track, page, screen, group, alias)",
                            truncate(&t, 40)
                        ),
                        Some(format!("{prefix}type")),
                    ));
                }
            },
            None | Some(Value::Null) => {
                return Err(TrackingError::bad_request(
                    "missing_type",
                    "every message of a batch needs a type (identify, track, page, screen, group, alias)",
                    Some(format!("{prefix}type")),
                ));
            }
            Some(_) => {
                return Err(TrackingError::bad_request(
                    "invalid_type",
                    "type must be a string",
                    Some(format!("{prefix}type")),
                ));
            }
        };
        messages.push(message::normalize(
            obj,
            kind,
            &prefix,
            &shared,
            received_at,
        )?);
    }
    Ok(Parsed {
        write_key,
        messages,
    })
}

/// The body as UTF-8 text (JSON is UTF-8), without a byte-order mark some clients prepend.
fn body_text(body: &[u8]) -> Result<&str, TrackingError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        TrackingError::bad_request(
            "invalid_json",
            format!(
                "the body is not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
            None,
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(TrackingError::bad_request(
            "invalid_json",
            "the body is empty",
            None,
        ));
    }
    Ok(text)
}

/// A batch's shared `context` / `integrations`: an object, depth-checked like a message.
fn shared_object(
    raw: Option<&RawValue>,
    key: &str,
) -> Result<Option<Map<String, Value>>, TrackingError> {
    let Some(raw) = raw else { return Ok(None) };
    // An empty array stands for an empty object (PHP's json_encode), as in messages.
    if raw.get() == "[]" {
        return Ok(None);
    }
    json::parse_object(raw.get(), || Some(key.into()))
        .map(Some)
        .map_err(|e| match e.code {
            "invalid_json" => TrackingError::bad_request(
                "invalid_type",
                format!("{key} must be an object"),
                Some(key.into()),
            ),
            _ => e,
        })
}

/// Removes `writeKey` from a message: it authenticates the request and is not stored.
fn take_write_key(obj: &mut RawMessage, prefix: &str) -> Result<Option<String>, TrackingError> {
    match obj.take("writeKey") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TrackingError::bad_request(
            "invalid_type",
            "writeKey must be a string",
            Some(format!("{prefix}writeKey")),
        )),
    }
}

fn not_an_object(field: Option<String>) -> TrackingError {
    TrackingError::bad_request("invalid_json", "a message must be a JSON object", field)
}

/// At most `n` characters of `s` (for echoing client input in messages).
fn truncate(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_714_564_800, 0).unwrap() // 2024-05-01T12:00:00Z
    }

    fn t(s: &str) -> DateTime<Utc> {
        timestamps::parse(s).unwrap()
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn ok(endpoint: Endpoint, v: Value) -> Parsed {
        parse(endpoint, &bytes(&v), Some("wk"), now()).unwrap()
    }

    fn err(endpoint: Endpoint, v: Value) -> TrackingError {
        parse(endpoint, &bytes(&v), Some("wk"), now()).unwrap_err()
    }

    fn track(i: usize) -> Value {
        json!({"type": "track", "userId": format!("u{i}"), "event": "Viewed Pricing",
               "messageId": format!("m{i}")})
    }

    #[test]
    fn long_and_short_paths() {
        let cases = [
            ("identify", Endpoint::Identify),
            ("i", Endpoint::Identify),
            ("track", Endpoint::Track),
            ("t", Endpoint::Track),
            ("page", Endpoint::Page),
            ("p", Endpoint::Page),
            ("screen", Endpoint::Screen),
            ("s", Endpoint::Screen),
            ("group", Endpoint::Group),
            ("g", Endpoint::Group),
            ("alias", Endpoint::Alias),
            ("a", Endpoint::Alias),
            ("batch", Endpoint::Batch),
            ("b", Endpoint::Batch),
            ("import", Endpoint::Import),
            ("/v1/t", Endpoint::Track),
            ("v1/batch/", Endpoint::Batch),
        ];
        for (path, want) in cases {
            assert_eq!(Endpoint::from_path(path), Some(want), "{path}");
        }
        for path in ["merge", "/v1/merge", "", "T", "tracks", "/v2/t", "x"] {
            assert_eq!(Endpoint::from_path(path), None, "{path}");
        }
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.as_str()), Some(e));
            assert_eq!(
                e.is_batch(),
                matches!(e, Endpoint::Batch | Endpoint::Import)
            );
        }
    }

    #[test]
    fn analytics_js_short_path_with_write_key_in_body() {
        let p = parse(
            Endpoint::from_path("/v1/p").unwrap(),
            &bytes(&json!({
                "type": "page", "anonymousId": "3f1c", "writeKey": "wk_browser",
                "properties": {"title": "Pricing", "url": "https://example.com/pricing"},
                "context": {"library": {"name": "analytics.js", "version": "5.2.0"}},
                "messageId": "ajs-1", "timestamp": "2024-05-01T11:59:58.000Z",
                "sentAt": "2024-05-01T11:59:59.000Z"
            })),
            None,
            now(),
        )
        .unwrap();
        assert_eq!(p.write_key, "wk_browser");
        let m = &p.messages[0];
        assert_eq!(
            (m.kind, m.event.as_str()),
            (MessageType::Page, "page.viewed")
        );
        assert_eq!(m.source, MessageSource::Sdk);
        assert_eq!(m.timestamp, t("2024-05-01T11:59:59Z"));
        assert!(
            !m.extra.contains_key("writeKey"),
            "the key is not stored with the event"
        );
    }

    #[test]
    fn the_path_decides_the_type() {
        let p = ok(
            Endpoint::Track,
            json!({"type": "identify", "userId": "u", "event": "E"}),
        );
        assert_eq!(p.messages[0].kind, MessageType::Track);
        assert!(!p.messages[0].extra.contains_key("type"));
    }

    #[test]
    fn numeric_user_id_from_server_sdks() {
        let p = ok(
            Endpoint::Identify,
            json!({"userId": 1042, "traits": {"email": "a@example.jp"}}),
        );
        assert_eq!(p.messages[0].user_id.as_deref(), Some("1042"));
        assert_eq!(p.messages[0].traits["email"], "a@example.jp");
    }

    #[test]
    fn write_key_sources_and_precedence() {
        let body = bytes(&json!({"userId": "u", "event": "E", "writeKey": "body"}));
        let p = parse(Endpoint::Track, &body, Some("auth"), now()).unwrap();
        assert_eq!(p.write_key, "auth");
        let p = parse(Endpoint::Track, &body, Some(""), now()).unwrap();
        assert_eq!(p.write_key, "body");
        let body = bytes(&json!({"userId": "u", "event": "E", "writeKey": ""}));
        let e = parse(Endpoint::Track, &body, None, now()).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.field),
            (401, "missing_write_key", None)
        );
        let body = bytes(&json!({"userId": "u", "event": "E", "writeKey": 5}));
        let e = parse(Endpoint::Track, &body, None, now()).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (400, Some("writeKey")));
    }

    #[test]
    fn unauthenticated_requests_get_401_before_message_rules() {
        let e = parse(Endpoint::Track, br#"{"event": 5}"#, None, now()).unwrap_err();
        assert_eq!(e.status, 401);
        let body = bytes(&json!({"batch": [{"type": "nope"}]}));
        assert_eq!(
            parse(Endpoint::Batch, &body, None, now())
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn batch_write_keys() {
        let items = |a: &str, b: &str| {
            json!({"batch": [
                {"type": "track", "userId": "u", "event": "E", "writeKey": a},
                {"type": "track", "userId": "u", "event": "E", "writeKey": b}]})
        };
        let p = parse(Endpoint::Batch, &bytes(&items("k1", "k1")), None, now()).unwrap();
        assert_eq!(p.write_key, "k1");
        let e = parse(Endpoint::Batch, &bytes(&items("k1", "k2")), None, now()).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.field.as_deref()),
            (400, "conflicting_write_key", Some("batch[1].writeKey"))
        );
        // A top-level key (analytics.js) or basic auth (server SDKs) settles it.
        let mut body = items("k1", "k2");
        body["writeKey"] = json!("top");
        let p = parse(Endpoint::Batch, &bytes(&body), None, now()).unwrap();
        assert_eq!(p.write_key, "top");
        let p = parse(Endpoint::Batch, &bytes(&body), Some("auth"), now()).unwrap();
        assert_eq!(p.write_key, "auth");
    }

    #[test]
    fn bodies_that_are_not_json_objects() {
        for endpoint in Endpoint::ALL {
            for body in [
                &b""[..],
                b"  ",
                b"not json",
                b"{\"userId\":",
                b"[]",
                b"42",
                b"\xff\xfe",
            ] {
                let e = parse(endpoint, body, Some("wk"), now()).unwrap_err();
                assert_eq!(
                    (e.status, e.code),
                    (400, "invalid_json"),
                    "{endpoint:?} {body:?}"
                );
            }
        }
    }

    #[test]
    fn a_byte_order_mark_is_tolerated() {
        let mut body = "\u{feff}".as_bytes().to_vec();
        body.extend(bytes(&json!({"userId": "u", "event": "E"})));
        assert!(parse(Endpoint::Track, &body, Some("wk"), now()).is_ok());
    }

    /// A track message whose JSON text is exactly `size` bytes.
    fn message_of_size(size: usize) -> Value {
        let mut v =
            json!({"type": "track", "userId": "u", "event": "Big", "properties": {"pad": ""}});
        let base = bytes(&v).len();
        v["properties"]["pad"] = json!("x".repeat(size - base));
        assert_eq!(bytes(&v).len(), size);
        v
    }

    #[test]
    fn single_message_limit_is_32_kb_inclusive() {
        let at = bytes(&message_of_size(MAX_MESSAGE_BYTES));
        assert!(parse(Endpoint::Track, &at, Some("wk"), now()).is_ok());
        let over = bytes(&message_of_size(MAX_MESSAGE_BYTES + 1));
        let e = parse(Endpoint::Track, &over, Some("wk"), now()).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.field),
            (400, "message_too_large", None)
        );
    }

    #[test]
    fn batch_item_limit_is_32_kb_of_its_own_json() {
        let body = json!({"batch": [track(0), message_of_size(MAX_MESSAGE_BYTES)]});
        assert_eq!(ok(Endpoint::Batch, body).messages.len(), 2);
        let body = json!({"batch": [track(0), message_of_size(MAX_MESSAGE_BYTES + 1)]});
        let e = err(Endpoint::Batch, body);
        assert_eq!(
            (e.status, e.code, e.field.as_deref()),
            (400, "message_too_large", Some("batch[1]"))
        );
    }

    /// A batch body of exactly `size` bytes: 32 KB messages, then whitespace padding.
    fn batch_of_size(size: usize) -> Vec<u8> {
        let item = message_of_size(MAX_MESSAGE_BYTES - 100);
        let items: Vec<Value> = (0..15).map(|_| item.clone()).collect();
        let mut body = bytes(&json!({"batch": items}));
        body.pop(); // the closing brace
        body.resize(size - 1, b' ');
        body.push(b'}');
        assert_eq!(body.len(), size);
        body
    }

    #[test]
    fn batch_limit_is_500_kb_inclusive() {
        let at = batch_of_size(MAX_BATCH_BYTES);
        assert_eq!(
            parse(Endpoint::Batch, &at, Some("wk"), now())
                .unwrap()
                .messages
                .len(),
            15
        );
        let over = batch_of_size(MAX_BATCH_BYTES + 1);
        let e = parse(Endpoint::Import, &over, Some("wk"), now()).unwrap_err();
        assert_eq!((e.status, e.code, e.field), (400, "batch_too_large", None));
    }

    #[test]
    fn at_most_2500_messages_per_batch() {
        let items: Vec<Value> = (0..MAX_BATCH_MESSAGES).map(track).collect();
        assert_eq!(
            ok(Endpoint::Batch, json!({"batch": items})).messages.len(),
            2500
        );
        let items: Vec<Value> = (0..=MAX_BATCH_MESSAGES).map(|_| json!({})).collect();
        let e = err(Endpoint::Batch, json!({"batch": items}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("too_many_messages", Some("batch"))
        );
    }

    /// `{"userId":"u","event":"E","properties":{"p":{"p":…{}…}}}` with `depth` levels in all.
    fn nested_message(depth: usize) -> String {
        let inner = depth - 1;
        format!(
            r#"{{"type":"track","userId":"u","event":"E","properties":{}{}}}"#,
            r#"{"p":"#.repeat(inner - 1) + "{}",
            "}".repeat(inner - 1)
        )
    }

    #[test]
    fn nesting_limit_is_32_levels_per_message() {
        assert!(
            parse(
                Endpoint::Track,
                nested_message(32).as_bytes(),
                Some("wk"),
                now()
            )
            .is_ok()
        );
        let e = parse(
            Endpoint::Track,
            nested_message(33).as_bytes(),
            Some("wk"),
            now(),
        )
        .unwrap_err();
        assert_eq!((e.status, e.code, e.field), (400, "too_deep", None));

        let batch = |m: &str| format!(r#"{{"batch":[{},{m}]}}"#, track(0));
        assert!(
            parse(
                Endpoint::Batch,
                batch(&nested_message(32)).as_bytes(),
                Some("wk"),
                now()
            )
            .is_ok()
        );
        let e = parse(
            Endpoint::Batch,
            batch(&nested_message(33)).as_bytes(),
            Some("wk"),
            now(),
        )
        .unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), ("too_deep", Some("batch[1]")));
    }

    #[test]
    fn a_hundred_thousand_levels_are_rejected_cleanly_everywhere() {
        let n = 100_000;
        let arrays = "[".repeat(n) + &"]".repeat(n);
        let objects = r#"{"a":"#.repeat(n) + "1" + &"}".repeat(n);
        let in_message = format!(
            r#"{{"userId":"u","event":"E","properties":{}}}"#,
            &objects[..MAX_MESSAGE_BYTES - 100]
        );
        let in_item = format!(r#"{{"batch":[{{"type":"track","properties":{arrays}}}]}}"#);
        let in_context = format!(r#"{{"batch":[],"context":{objects}}}"#);
        let in_batch_key = format!(r#"{{"batch":{arrays}}}"#);
        let bodies = [
            &arrays,
            &objects,
            &in_message,
            &in_item,
            &in_context,
            &in_batch_key,
        ];
        for endpoint in Endpoint::ALL {
            for body in bodies {
                let e = parse(endpoint, body.as_bytes(), Some("wk"), now()).unwrap_err();
                assert_eq!(e.status, 400, "{endpoint:?}");
                assert!(
                    matches!(
                        e.code,
                        "too_deep" | "message_too_large" | "batch_too_large" | "invalid_json"
                    ),
                    "{endpoint:?}: {e}"
                );
            }
        }
        // Within the size limits, depth is what is reported, at the right place.
        let e = parse(Endpoint::Track, in_message.as_bytes(), Some("wk"), now()).unwrap_err();
        assert_eq!(e.code, "too_deep");
        let n = 10_000;
        let arrays = "[".repeat(n) + &"]".repeat(n);
        let in_item = format!(r#"{{"batch":[{{"type":"track","properties":{arrays}}}]}}"#);
        let in_batch_key = format!(r#"{{"batch":{arrays}}}"#);
        let objects = r#"{"a":"#.repeat(n) + "1" + &"}".repeat(n);
        let in_context = format!(r#"{{"batch":[],"context":{objects}}}"#);
        for (body, field, code) in [
            (&in_item, "batch[0]", "too_deep"),
            (&in_context, "context", "too_deep"),
            // The item is an array, not a message: refused as such at its first byte.
            (&in_batch_key, "batch[0]", "invalid_json"),
        ] {
            let e = parse(Endpoint::Batch, body.as_bytes(), Some("wk"), now()).unwrap_err();
            assert_eq!((e.code, e.field.as_deref()), (code, Some(field)), "{e}");
        }
    }

    #[test]
    fn batch_errors_name_the_item_and_field() {
        let good = track(0);
        let cases = [
            (
                json!({"type": "track", "event": "E"}),
                "missing_identity",
                "batch[3].anonymousId",
            ),
            (
                json!({"type": "track", "userId": "u"}),
                "missing_event",
                "batch[3].event",
            ),
            (
                json!({"type": "alias", "userId": "u"}),
                "missing_previous_id",
                "batch[3].previousId",
            ),
            (
                json!({"type": "group", "userId": "u"}),
                "missing_group_id",
                "batch[3].groupId",
            ),
            (
                json!({"type": "launch", "userId": "u"}),
                "unknown_type",
                "batch[3].type",
            ),
            (
                json!({"type": "batch", "userId": "u"}),
                "unknown_type",
                "batch[3].type",
            ),
            (json!({"userId": "u"}), "missing_type", "batch[3].type"),
            (
                json!({"type": 1, "userId": "u"}),
                "invalid_type",
                "batch[3].type",
            ),
            (
                json!({"type": "merge", "mergeProperties": []}),
                "unsupported_type",
                "batch[3].type",
            ),
            (
                json!({"type": "track", "userId": {}, "event": "E"}),
                "invalid_type",
                "batch[3].userId",
            ),
            (
                json!({"type": "track", "userId": "u", "event": "E", "timestamp": "1990-01-01T00:00:00Z"}),
                "invalid_timestamp",
                "batch[3].timestamp",
            ),
            (json!("track"), "invalid_json", "batch[3]"),
        ];
        for (bad, code, field) in cases {
            let body = json!({"batch": [good, good, good, bad, good]});
            let e = err(Endpoint::Batch, body);
            assert_eq!(
                (e.status, e.code, e.field.as_deref()),
                (400, code, Some(field)),
                "{e}"
            );
        }
    }

    #[test]
    fn batch_shape_errors() {
        let e = err(Endpoint::Batch, json!({"messages": []}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_batch", Some("batch"))
        );
        let e = err(Endpoint::Batch, json!({"batch": {"type": "track"}}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_batch", Some("batch"))
        );
        let e = parse(
            Endpoint::Batch,
            br#"{"batch":[],"batch":[]}"#,
            Some("wk"),
            now(),
        )
        .unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = err(Endpoint::Batch, json!({"batch": [], "sentAt": "later"}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_timestamp", Some("sentAt"))
        );
        let e = err(Endpoint::Batch, json!({"batch": [], "context": "web"}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_type", Some("context"))
        );
        assert!(
            ok(Endpoint::Batch, json!({"batch": []}))
                .messages
                .is_empty()
        );
    }

    #[test]
    fn one_bad_message_rejects_the_whole_batch() {
        let body = json!({"batch": [track(0), track(1), {"type": "track", "userId": "u"}]});
        // Err carries no messages: nothing of the batch can be stored.
        let r: Result<Parsed, TrackingError> =
            parse(Endpoint::Batch, &bytes(&body), Some("wk"), now());
        assert!(r.is_err());
    }

    #[test]
    fn analytics_python_batch_is_skew_corrected_with_the_batch_sent_at() {
        // The server clock is 12:00:00; the client's is 3 hours slow. The two events happened
        // 10 s and 2 s before the send.
        let body = json!({
            "batch": [
                {"type": "identify", "userId": 7, "traits": {"email": "a@example.jp"},
                 "timestamp": "2024-05-01T08:59:50+00:00", "messageId": "a",
                 "context": {"library": {"name": "analytics-python", "version": "2.3.2"}}},
                {"type": "track", "userId": 7, "event": "Trial Started",
                 "timestamp": "2024-05-01T08:59:58+00:00", "messageId": "b",
                 "sentAt": "2024-05-01T09:00:00+00:00"},
                {"type": "page", "anonymousId": "x", "messageId": "c"}
            ],
            "sentAt": "2024-05-01T09:00:00+00:00",
            "context": {"ip": "203.0.113.7"},
            "integrations": {"All": true}
        });
        let p = ok(Endpoint::Batch, body);
        let ts: Vec<_> = p.messages.iter().map(|m| m.timestamp).collect();
        assert_eq!(
            ts,
            vec![t("2024-05-01T11:59:50Z"), t("2024-05-01T11:59:58Z"), now()]
        );
        assert_eq!(p.messages[0].sent_at, Some(t("2024-05-01T09:00:00Z")));
        assert!(p.messages.iter().all(|m| m.context["ip"] == "203.0.113.7"));
        assert!(p.messages.iter().all(|m| m.integrations["All"] == true));
        assert_eq!(p.messages[0].source, MessageSource::Sdk);
        assert_eq!(p.messages[2].source, MessageSource::Api);
    }

    #[test]
    fn future_times_are_clamped_and_flagged() {
        let p = ok(
            Endpoint::Track,
            json!({"userId": "u", "event": "E", "timestamp": "2024-05-03T00:00:00Z"}),
        );
        assert_eq!(p.messages[0].timestamp, now());
        assert!(p.messages[0].timestamp_clamped);
    }

    #[test]
    fn errors_serialize_as_the_contract_error_object() {
        let e = err(
            Endpoint::Batch,
            json!({"batch": [{"type": "track", "event": "E"}]}),
        );
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"code": "missing_identity", "field": "batch[0].anonymousId",
                   "message": "every message needs a userId or an anonymousId"})
        );
        assert_eq!(
            e.to_string(),
            "missing_identity: every message needs a userId or an anonymousId (at batch[0].anonymousId)"
        );
    }

    // ---- fuzzing: any input gives Ok or a 400/401 error, never a panic ----
    // Cases per property follow PROPTEST_CASES (default 256), so CI can run a longer bounded
    // fuzz without code changes.

    const KEYS: &[&str] = &[
        "type",
        "userId",
        "anonymousId",
        "event",
        "properties",
        "traits",
        "context",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "receivedAt",
        "messageId",
        "integrations",
        "name",
        "category",
        "groupId",
        "previousId",
        "writeKey",
        "batch",
        "page",
        "campaign",
        "url",
        "referrer",
        "search",
        "library",
    ];
    const STRINGS: &[&str] = &[
        "track",
        "identify",
        "page",
        "screen",
        "group",
        "alias",
        "merge",
        "batch",
        "",
        "2024-05-01T12:00:00Z",
        "1970-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2024-05-01T12:00:00.123+0900",
        "https://www.google.co.jp/?q=x",
        "https://example.com/?utm_source=a&utm_medium=cpc&utm_campaign=%E5%B1%95%",
        "analytics.js",
        "kizuna.js",
        "wk",
    ];

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => proptest::sample::select(KEYS).prop_map(str::to_string),
            1 => "[a-zA-Z_]{0,8}",
        ]
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            proptest::sample::select(STRINGS).prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ]
    }

    /// Arbitrary JSON whose object keys are mostly Segment field names, so that inputs get past
    /// the first checks and into every rule.
    fn json_value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(8, 128, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(key(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = Value> {
        proptest::collection::btree_map(key(), json_value(), 0..10)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// A valid message with some fields overwritten by arbitrary values.
    fn mutated_message() -> impl Strategy<Value = Value> {
        (
            proptest::sample::select(
                &["track", "identify", "page", "screen", "group", "alias"][..],
            ),
            proptest::collection::btree_map(key(), json_value(), 0..4),
        )
            .prop_map(|(kind, changes)| {
                let mut v = json!({"type": kind, "userId": "u1", "anonymousId": "a1",
                    "event": "Viewed", "groupId": "g", "previousId": "p",
                    "timestamp": "2024-05-01T11:00:00Z", "sentAt": "2024-05-01T11:00:01Z",
                    "context": {"page": {"url": "https://example.com/?utm_source=x"}}});
                for (k, c) in changes {
                    v[k] = c;
                }
                v
            })
    }

    /// Checks the contract of `parse` for one input on every endpoint, with and without auth.
    fn check_any(body: &[u8]) -> Result<(), TestCaseError> {
        for endpoint in Endpoint::ALL {
            for auth in [Some("wk"), None] {
                match parse(endpoint, body, auth, now()) {
                    Err(e) => {
                        prop_assert!(matches!(e.status, 400 | 401 | 413), "{e:?}");
                        prop_assert!(!e.code.is_empty() && !e.message.is_empty());
                        // 401 only without credentials (with none, a broken body is still 400).
                        prop_assert!(e.status != 401 || auth.is_none());
                    }
                    Ok(p) => {
                        prop_assert!(!p.write_key.is_empty());
                        if !endpoint.is_batch() {
                            prop_assert_eq!(p.messages.len(), 1);
                        }
                        for m in &p.messages {
                            if m.kind == MessageType::Alias {
                                prop_assert!(m.user_id.is_some() && m.previous_id.is_some());
                            } else {
                                prop_assert!(m.user_id.is_some() || m.anonymous_id.is_some());
                            }
                            prop_assert!(!m.event.is_empty());
                            prop_assert!(m.event.chars().count() <= MAX_EVENT_NAME_CHARS);
                            prop_assert!(m.timestamp.timestamp() >= timestamps::MIN_UNIX_SECONDS);
                            prop_assert!(m.timestamp <= now() + timestamps::MAX_FUTURE);
                            // Attribution must not panic on anything that parsed.
                            let _ = attribution(m);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn fuzz_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_any(&body)?;
        }

        #[test]
        fn fuzz_arbitrary_json(v in json_value()) {
            check_any(&bytes(&v))?;
        }

        #[test]
        fn fuzz_message_shaped_objects(v in json_object()) {
            check_any(&bytes(&v))?;
        }

        #[test]
        fn fuzz_mutated_messages(v in mutated_message()) {
            check_any(&bytes(&v))?;
        }

        #[test]
        fn fuzz_batches(
            items in proptest::collection::vec(prop_oneof![mutated_message(), json_object()], 0..6),
            top in json_object(),
        ) {
            let mut body = top;
            body["batch"] = Value::Array(items);
            check_any(&bytes(&body))?;
        }

        #[test]
        fn fuzz_truncated_valid_batches(cut in 0usize..400) {
            // Real traffic cut off mid-body (a dropped connection).
            let body = bytes(&json!({"batch": [track(0), track(1)], "writeKey": "k",
                                     "sentAt": "2024-05-01T11:00:00Z"}));
            check_any(&body[..cut.min(body.len())])?;
        }
    }
}
