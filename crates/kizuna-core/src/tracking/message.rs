//! One Segment-spec message (identify, track, page, screen, group, alias), checked and normalized
//! for storage.

use super::timestamps::{self, TimeField};
use super::{MAX_EVENT_NAME_CHARS, MAX_ID_BYTES, TrackingError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The kind of a message (the Segment `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// Who the user is: `userId` and `traits`.
    Identify,
    /// Something the user did: `event` and `properties`.
    Track,
    /// A web page view.
    Page,
    /// A mobile app screen view.
    Screen,
    /// The user belongs to a group (for Kizuna: a company): `groupId` and `traits`.
    Group,
    /// Two ids are one user: `previousId` becomes `userId`.
    Alias,
}

impl MessageType {
    /// All types.
    pub const ALL: [MessageType; 6] = [
        Self::Identify,
        Self::Track,
        Self::Page,
        Self::Screen,
        Self::Group,
        Self::Alias,
    ];

    /// The wire name (`identify`, `track`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identify => "identify",
            Self::Track => "track",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }

    /// The type for a wire name, ignoring ASCII case.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }

    /// The engine's event name for every type but track (whose name is the `event` it carries):
    /// `contact.identified`, `page.viewed`, `screen.viewed`, `company.linked`,
    /// `contact.aliased`.
    pub fn fixed_event_name(self) -> Option<&'static str> {
        match self {
            Self::Identify => Some("contact.identified"),
            Self::Track => None,
            Self::Page => Some("page.viewed"),
            Self::Screen => Some("screen.viewed"),
            Self::Group => Some("company.linked"),
            Self::Alias => Some("contact.aliased"),
        }
    }
}

/// What sent a message, for the timeline (issue 3 item 8), from `context.library.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageSource {
    /// A Segment or RudderStack library (analytics.js, analytics-python, analytics-node,
    /// rudder-sdk-python, the mobile SDKs…).
    Sdk,
    /// Kizuna's own browser snippet, `kizuna.js`.
    Snippet,
    /// Anything else: a direct HTTP call, or a library we do not know.
    Api,
}

impl MessageSource {
    /// The wire name: `sdk`, `snippet`, `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sdk => "sdk",
            Self::Snippet => "snippet",
            Self::Api => "api",
        }
    }

    /// Classifies a `context.library.name`: `kizuna.js` is the snippet; names of the Segment
    /// (`analytics.js`, `analytics-python`, `analytics-node`, `@segment/…`, `analytics-ios`…) and
    /// RudderStack (`rudder-sdk-python`, `RudderLabs JavaScript SDK`…) families are SDKs;
    /// anything else, or no name, is the API.
    pub fn from_library(name: Option<&str>) -> Self {
        let Some(name) = name.map(str::trim) else {
            return Self::Api;
        };
        let lower = name.to_ascii_lowercase();
        if lower == "kizuna.js" {
            Self::Snippet
        } else if [
            "analytics",
            "@segment/",
            "segment",
            "rudder",
            "@rudderstack/",
        ]
        .iter()
        .any(|p| lower.starts_with(p))
            || lower.contains("rudderlabs")
        {
            Self::Sdk
        } else {
            Self::Api
        }
    }
}

/// A validated, normalized message, ready to store.
///
/// Which of the type-specific fields are set: `name`/`category` for page and screen,
/// `group_id` for group, `previous_id` for alias; the track `event` is in [`Message::event`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The Segment type.
    pub kind: MessageType,
    /// The engine's event name: the track `event` as given (trimmed, at most
    /// 200 characters), or the type's fixed name ([`MessageType::fixed_event_name`]).
    pub event: String,
    /// `userId` (numbers are turned into text; empty means absent).
    pub user_id: Option<String>,
    /// `anonymousId` (numbers are turned into text; empty means absent).
    pub anonymous_id: Option<String>,
    /// The client's `messageId`, the dedupe key of R-TRACK-5. `None` when the client sent none:
    /// the caller assigns an id (see [`Message::dedupe_key`] for retries of such messages).
    pub message_id: Option<String>,
    /// Only when `message_id` is absent and the client stated when the event happened: a
    /// SHA-256 (hex) of the type, ids, event/name/group/previous id, that client time, the
    /// properties and the traits. The same event at the same claimed instant is the same
    /// occurrence, so a retry of a client that sets no `messageId` still counts once. Without a
    /// client time identical content may be two real events (two clicks), so no key is made
    /// and such retries are not deduplicated.
    pub dedupe_key: Option<String>,
    /// When it happened, on the server's clock (skew-corrected; see [`super::parse`]).
    pub timestamp: DateTime<Utc>,
    /// The time the client claimed (`originalTimestamp`, else `timestamp`), uncorrected.
    pub original_timestamp: Option<DateTime<Utc>>,
    /// `sentAt` of the message, else of its batch.
    pub sent_at: Option<DateTime<Utc>>,
    /// When the server received it (the `received_at` given to [`super::parse`]; a client's
    /// `receivedAt` is ignored).
    pub received_at: DateTime<Utc>,
    /// Whether the event time was more than a day after `received_at` and was replaced by it.
    pub timestamp_clamped: bool,
    /// Page/screen `name`.
    pub name: Option<String>,
    /// Page/screen `category`.
    pub category: Option<String>,
    /// Group `groupId` (numbers as text).
    pub group_id: Option<String>,
    /// Alias `previousId` (numbers as text).
    pub previous_id: Option<String>,
    /// `properties` (track, page, screen); empty when absent.
    pub properties: Map<String, Value>,
    /// `traits` (identify, group). For an identify without top-level traits, a copy of
    /// `context.traits` (RudderStack sends identify traits only there).
    pub traits: Map<String, Value>,
    /// `context` (page, campaign, ip, userAgent, library, traits…), with a batch's shared
    /// context keys filled in where the message has none.
    pub context: Map<String, Value>,
    /// `integrations`, with a batch's shared keys filled in likewise.
    pub integrations: Map<String, Value>,
    /// What sent it, from `context.library.name`.
    pub source: MessageSource,
    /// Top-level keys this module does not read (SDKs add their own, e.g. `channel`,
    /// `_metadata`, `rudderId`), kept as sent. `type`, `writeKey`, `sentAt` and `receivedAt` are
    /// not kept here.
    pub extra: Map<String, Value>,
}

impl Message {
    /// The key that makes a retry count once: the `messageId`, else the [`dedupe_key`]
    /// (`None` when neither exists: the caller's freshly assigned id is then the key).
    ///
    /// [`dedupe_key`]: Message::dedupe_key
    pub fn idempotency_key(&self) -> Option<&str> {
        self.message_id.as_deref().or(self.dedupe_key.as_deref())
    }
}

/// What a batch shares with each of its messages.
#[derive(Debug, Default)]
pub(crate) struct Shared<'a> {
    /// The batch's `sentAt`.
    pub sent_at: Option<DateTime<Utc>>,
    /// The batch's `context`.
    pub context: Option<&'a Map<String, Value>>,
    /// The batch's `integrations`.
    pub integrations: Option<&'a Map<String, Value>>,
}

/// The top-level keys this module reads, in the order of [`RawMessage`]'s slots.
const KNOWN: [&str; 18] = [
    "type",
    "writeKey",
    "userId",
    "anonymousId",
    "messageId",
    "properties",
    "traits",
    "context",
    "integrations",
    "event",
    "name",
    "category",
    "groupId",
    "previousId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
];

/// Keys that are never kept in [`Message::extra`]: the transport's, not the event's.
const DROPPED: [&str; 4] = ["type", "writeKey", "sentAt", "receivedAt"];

fn slot_of(key: &str) -> Option<usize> {
    KNOWN.iter().position(|k| *k == key)
}

/// A message's top-level keys as parsed: the known ones in fixed slots, the rest in `extra`.
///
/// Splitting while parsing (see the `Deserialize` impl) spares the hot path an intermediate
/// map of the top level, an allocation per known key, and a lookup per field afterwards.
#[derive(Debug, Default)]
pub(crate) struct RawMessage {
    slots: [Option<Value>; KNOWN.len()],
    extra: Map<String, Value>,
}

impl RawMessage {
    /// Removes and returns a top-level value.
    pub(crate) fn take(&mut self, key: &str) -> Option<Value> {
        match slot_of(key) {
            Some(i) => self.slots[i].take(),
            None => self.extra.remove(key),
        }
    }

    /// Every top-level value, for the depth check.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Value> {
        self.slots.iter().flatten().chain(self.extra.values())
    }

    /// The keys nothing consumed, as sent (e.g. `event` on an identify), minus the transport's.
    fn into_extra(self) -> Map<String, Value> {
        let mut extra = self.extra;
        for (key, v) in KNOWN.iter().zip(self.slots) {
            if let Some(v) = v
                && !DROPPED.contains(key)
            {
                extra.insert((*key).to_string(), v);
            }
        }
        extra
    }
}

impl<'de> Deserialize<'de> for RawMessage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> serde::de::Visitor<'de> for RawVisitor {
    type Value = RawMessage;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawMessage, A::Error> {
        let mut m = RawMessage::default();
        while let Some(Key(key)) = map.next_key()? {
            // A repeated key: the last one wins, as with any JSON object map.
            match slot_of(&key) {
                Some(i) => m.slots[i] = Some(map.next_value()?),
                None => {
                    let v = map.next_value()?;
                    m.extra.insert(key.into_owned(), v);
                }
            }
        }
        Ok(m)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `prefix` is `""` for a single message and `batch[3].` for a batch item, so that errors name
/// the field the way the sender wrote it.
struct Fields<'p> {
    obj: RawMessage,
    prefix: &'p str,
}

impl Fields<'_> {
    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn err(&self, key: &str, code: &'static str, message: impl Into<String>) -> TrackingError {
        TrackingError::bad_request(code, message, Some(self.path(key)))
    }

    /// An identifier: a string, or a number (SDKs send numeric ids) turned into text. Empty or
    /// blank means absent; longer than [`MAX_ID_BYTES`] is an error (ids are indexed keys).
    fn id(&mut self, key: &str) -> Result<Option<String>, TrackingError> {
        let s = match self.obj.take(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(self.err(
                    key,
                    "invalid_type",
                    format!("{key} must be a string or a number"),
                ));
            }
        };
        if s.trim().is_empty() {
            Ok(None)
        } else if s.len() > MAX_ID_BYTES {
            Err(self.err(
                key,
                "value_too_long",
                format!(
                    "{key} is {} bytes long; the limit is {MAX_ID_BYTES}",
                    s.len()
                ),
            ))
        } else {
            Ok(Some(s))
        }
    }

    /// An optional string.
    fn string(&mut self, key: &str) -> Result<Option<String>, TrackingError> {
        match self.obj.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(key, "invalid_type", format!("{key} must be a string"))),
        }
    }

    /// An optional object; absent or null is empty. An empty array is read as an empty object
    /// because PHP's `json_encode` writes an empty associative array as `[]`.
    fn object(&mut self, key: &str) -> Result<Map<String, Value>, TrackingError> {
        match self.obj.take(key) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m),
            Some(Value::Array(a)) if a.is_empty() => Ok(Map::new()),
            Some(_) => Err(self.err(key, "invalid_type", format!("{key} must be an object"))),
        }
    }

    /// An optional ISO 8601 time.
    fn time(&mut self, key: &str) -> Result<Option<DateTime<Utc>>, TrackingError> {
        match self.obj.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => timestamps::parse(&s).map(Some).ok_or_else(|| {
                self.err(
                    key,
                    "invalid_timestamp",
                    format!("{key} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00.000Z)"),
                )
            }),
            Some(_) => Err(self.err(
                key,
                "invalid_timestamp",
                format!("{key} must be an ISO 8601 time string"),
            )),
        }
    }
}

/// Checks and normalizes one message of type `kind` (already decided by the endpoint or the
/// batch item's `type`; the caller has removed `type` and `writeKey`).
pub(crate) fn normalize(
    obj: RawMessage,
    kind: MessageType,
    prefix: &str,
    shared: &Shared<'_>,
    received_at: DateTime<Utc>,
) -> Result<Message, TrackingError> {
    let mut f = Fields { obj, prefix };
    let user_id = f.id("userId")?;
    let anonymous_id = f.id("anonymousId")?;
    let message_id = f.id("messageId")?;
    let properties = f.object("properties")?;
    let mut traits = f.object("traits")?;
    let mut context = f.object("context")?;
    let mut integrations = f.object("integrations")?;

    let (mut event, mut name, mut category, mut group_id, mut previous_id) =
        (None, None, None, None, None);
    match kind {
        MessageType::Track => {
            let raw = f.string("event")?.unwrap_or_default();
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                return Err(f.err("event", "missing_event", "a track call needs an event name"));
            }
            let chars = trimmed.chars().count();
            if chars > MAX_EVENT_NAME_CHARS {
                return Err(f.err(
                    "event",
                    "value_too_long",
                    format!("the event name is {chars} characters long; the limit is {MAX_EVENT_NAME_CHARS}"),
                ));
            }
            event = Some(if trimmed.len() == raw.len() {
                raw
            } else {
                trimmed.to_string()
            });
        }
        MessageType::Page | MessageType::Screen => {
            name = f.string("name")?;
            category = f.string("category")?;
        }
        MessageType::Group => {
            group_id = f.id("groupId")?;
            if group_id.is_none() {
                return Err(f.err(
                    "groupId",
                    "missing_group_id",
                    "a group call needs a groupId",
                ));
            }
        }
        MessageType::Alias => {
            previous_id = f.id("previousId")?;
            if previous_id.is_none() {
                return Err(f.err(
                    "previousId",
                    "missing_previous_id",
                    "an alias call needs a previousId",
                ));
            }
        }
        MessageType::Identify => {}
    }
    if kind == MessageType::Alias {
        if user_id.is_none() {
            return Err(f.err(
                "userId",
                "missing_user_id",
                "an alias call needs the userId that previousId becomes",
            ));
        }
    } else if user_id.is_none() && anonymous_id.is_none() {
        return Err(f.err(
            "anonymousId",
            "missing_identity",
            "every message needs a userId or an anonymousId",
        ));
    }

    let timestamp = f.time("timestamp")?;
    let original = f.time("originalTimestamp")?;
    let own_sent_at = f.time("sentAt")?;
    let sent_at = own_sent_at.or(shared.sent_at);
    let times = timestamps::resolve(timestamp, original, sent_at, received_at).map_err(
        |(field, message)| {
            // A batch-level sentAt is named without the item prefix: it is not in the item.
            if field == TimeField::SentAt && own_sent_at.is_none() {
                TrackingError::bad_request("invalid_timestamp", message, Some("sentAt".into()))
            } else {
                f.err(field.name(), "invalid_timestamp", message)
            }
        },
    )?;

    for (shared_map, map) in [
        (shared.context, &mut context),
        (shared.integrations, &mut integrations),
    ] {
        if let Some(shared_map) = shared_map {
            for (k, v) in shared_map {
                if !map.contains_key(k) {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if kind == MessageType::Identify
        && traits.is_empty()
        && let Some(Value::Object(t)) = context.get("traits")
    {
        traits = t.clone();
    }
    let source = MessageSource::from_library(
        context
            .get("library")
            .and_then(|l| l.get("name"))
            .and_then(Value::as_str),
    );
    let event = event
        .or_else(|| kind.fixed_event_name().map(str::to_string))
        .unwrap_or_default();

    let mut msg = Message {
        kind,
        event,
        user_id,
        anonymous_id,
        message_id,
        dedupe_key: None,
        timestamp: times.timestamp,
        original_timestamp: times.original,
        sent_at,
        received_at,
        timestamp_clamped: times.clamped,
        name,
        category,
        group_id,
        previous_id,
        properties,
        traits,
        context,
        integrations,
        source,
        extra: f.obj.into_extra(),
    };
    if msg.message_id.is_none() && msg.original_timestamp.is_some() {
        msg.dedupe_key = content_hash(&msg);
    }
    Ok(msg)
}

/// Feeds serialized JSON straight into the hash, without building a buffer.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// See [`Message::dedupe_key`]. Serialized as one JSON array, so field boundaries are
/// unambiguous.
fn content_hash(m: &Message) -> Option<String> {
    let mut w = HashWriter(Sha256::new());
    let parts = (
        m.kind,
        &m.user_id,
        &m.anonymous_id,
        &m.event,
        &m.name,
        &m.category,
        &m.group_id,
        &m.previous_id,
        m.original_timestamp,
        &m.properties,
        &m.traits,
    );
    serde_json::to_writer(&mut w, &parts).ok()?;
    Some(hex::encode(w.0.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_714_564_800, 0).unwrap()
    }

    fn raw(v: Value) -> RawMessage {
        serde_json::from_value(v).unwrap()
    }

    fn norm(kind: MessageType, v: Value) -> Result<Message, TrackingError> {
        normalize(raw(v), kind, "", &Shared::default(), now())
    }

    #[test]
    fn wire_names_round_trip() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_wire(t.as_str()), Some(t));
        }
        assert_eq!(MessageType::from_wire("TRACK"), Some(MessageType::Track));
        assert_eq!(MessageType::from_wire("merge"), None);
        assert_eq!(MessageType::from_wire("batch"), None);
    }

    #[test]
    fn engine_event_names() {
        let id = json!({"userId": "u"});
        let cases = [
            (MessageType::Identify, "contact.identified"),
            (MessageType::Page, "page.viewed"),
            (MessageType::Screen, "screen.viewed"),
        ];
        for (kind, want) in cases {
            assert_eq!(norm(kind, id.clone()).unwrap().event, want);
        }
        let g = norm(MessageType::Group, json!({"userId": "u", "groupId": 42})).unwrap();
        assert_eq!(
            (g.event.as_str(), g.group_id.as_deref()),
            ("company.linked", Some("42"))
        );
        let a = norm(
            MessageType::Alias,
            json!({"userId": "u", "previousId": "anon"}),
        )
        .unwrap();
        assert_eq!(a.event, "contact.aliased");
        let t = norm(
            MessageType::Track,
            json!({"userId": "u", "event": "  Webinar Attended "}),
        )
        .unwrap();
        assert_eq!(t.event, "Webinar Attended");
    }

    #[test]
    fn numeric_ids_become_text_and_empty_ids_are_absent() {
        let m = norm(
            MessageType::Track,
            json!({"userId": 12345, "anonymousId": "", "messageId": 7.5, "event": "x"}),
        )
        .unwrap();
        assert_eq!(m.user_id.as_deref(), Some("12345"));
        assert_eq!(m.anonymous_id, None);
        assert_eq!(m.message_id.as_deref(), Some("7.5"));
        let e = norm(MessageType::Track, json!({"userId": " ", "event": "x"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("anonymousId"));
        let e = norm(MessageType::Track, json!({"userId": true, "event": "x"})).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_type", Some("userId"))
        );
        let long = "u".repeat(MAX_ID_BYTES + 1);
        let e = norm(MessageType::Track, json!({"userId": long, "event": "x"})).unwrap_err();
        assert_eq!(e.code, "value_too_long");
        assert!(
            norm(
                MessageType::Track,
                json!({"userId": "u".repeat(MAX_ID_BYTES), "event": "x"})
            )
            .is_ok()
        );
    }

    #[test]
    fn type_specific_requirements() {
        let e = norm(MessageType::Track, json!({"userId": "u"})).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.field.as_deref()),
            (400, "missing_event", Some("event"))
        );
        let e = norm(MessageType::Track, json!({"userId": "u", "event": "  "})).unwrap_err();
        assert_eq!(e.code, "missing_event");
        let e = norm(MessageType::Track, json!({"userId": "u", "event": 5})).unwrap_err();
        assert_eq!(e.code, "invalid_type");
        let e = norm(MessageType::Group, json!({"userId": "u"})).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_group_id", Some("groupId"))
        );
        let e = norm(MessageType::Alias, json!({"userId": "u"})).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_previous_id", Some("previousId"))
        );
        let e = norm(
            MessageType::Alias,
            json!({"anonymousId": "a", "previousId": "p"}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_user_id", Some("userId"))
        );
        let e = norm(MessageType::Page, json!({"name": "Home"})).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_identity", Some("anonymousId"))
        );
    }

    #[test]
    fn event_name_length_limit_counts_characters() {
        // 200 Japanese characters are 600 bytes but still within the limit.
        let ok = "展".repeat(MAX_EVENT_NAME_CHARS);
        assert!(norm(MessageType::Track, json!({"userId": "u", "event": ok})).is_ok());
        let long = "展".repeat(MAX_EVENT_NAME_CHARS + 1);
        let e = norm(MessageType::Track, json!({"userId": "u", "event": long})).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("value_too_long", Some("event"))
        );
    }

    #[test]
    fn objects_must_be_objects_but_php_empty_arrays_pass() {
        let m = norm(
            MessageType::Track,
            json!({"userId": "u", "event": "x", "properties": [], "context": null}),
        )
        .unwrap();
        assert!(m.properties.is_empty() && m.context.is_empty());
        let e = norm(
            MessageType::Track,
            json!({"userId": "u", "event": "x", "properties": [1]}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_type", Some("properties"))
        );
        let e = norm(MessageType::Identify, json!({"userId": "u", "traits": "x"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("traits"));
    }

    #[test]
    fn raw_split_borrows_keys_keeps_the_last_duplicate_and_returns_unread_keys() {
        let mut m: RawMessage =
            serde_json::from_str(r#"{"userId":"a","userId":"b","x\u0079":1,"event":"E"}"#).unwrap();
        assert_eq!(m.take("userId"), Some(json!("b")));
        assert_eq!(m.take("xy"), Some(json!(1)));
        let extra = m.into_extra();
        assert_eq!(extra.len(), 1);
        assert_eq!(extra["event"], "E");
        assert!(serde_json::from_str::<RawMessage>("[1]").is_err());
    }

    #[test]
    fn fields_of_other_types_stay_in_extra() {
        let m = norm(
            MessageType::Identify,
            json!({"userId": "u", "event": "Signed Up", "groupId": 5, "type": "identify",
                   "writeKey": "k", "sentAt": null}),
        )
        .unwrap();
        assert_eq!(m.extra.len(), 2);
        assert_eq!(m.extra["event"], "Signed Up");
        assert_eq!(m.extra["groupId"], 5);
    }

    #[test]
    fn unknown_keys_are_kept_and_transport_keys_dropped() {
        let m = norm(
            MessageType::Track,
            json!({"userId": "u", "event": "x", "channel": "server", "_metadata": {"a": 1},
                   "receivedAt": "2024-01-01T00:00:00Z"}),
        )
        .unwrap();
        assert_eq!(m.extra.len(), 2);
        assert_eq!(m.extra["channel"], "server");
        assert_eq!(m.received_at, now());
    }

    #[test]
    fn bad_timestamps_name_the_field() {
        let e = norm(
            MessageType::Track,
            json!({"userId": "u", "event": "x", "timestamp": "soon"}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_timestamp", Some("timestamp"))
        );
        let e = norm(
            MessageType::Track,
            json!({"userId": "u", "event": "x", "sentAt": 17}),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("sentAt"));
        let e = norm(
            MessageType::Track,
            json!({"userId": "u", "event": "x", "originalTimestamp": "1999-01-01T00:00:00Z"}),
        )
        .unwrap_err();
        assert_eq!(
            (e.status, e.field.as_deref()),
            (400, Some("originalTimestamp"))
        );
    }

    #[test]
    fn identify_traits_fall_back_to_context_traits() {
        let m = norm(
            MessageType::Identify,
            json!({"userId": "u", "context": {"traits": {"email": "a@example.com"}}}),
        )
        .unwrap();
        assert_eq!(m.traits["email"], "a@example.com");
        let m = norm(
            MessageType::Identify,
            json!({"userId": "u", "traits": {"email": "top@example.com"},
                   "context": {"traits": {"email": "ctx@example.com"}}}),
        )
        .unwrap();
        assert_eq!(m.traits["email"], "top@example.com");
        // A group's context.traits are the user's, not the company's.
        let m = norm(
            MessageType::Group,
            json!({"userId": "u", "groupId": "g", "context": {"traits": {"email": "a@example.com"}}}),
        )
        .unwrap();
        assert!(m.traits.is_empty());
    }

    #[test]
    fn source_from_library_name() {
        let cases = [
            (Some("analytics.js"), MessageSource::Sdk),
            (Some("analytics-python"), MessageSource::Sdk),
            (Some("@segment/analytics-node"), MessageSource::Sdk),
            (Some("analytics-node"), MessageSource::Sdk),
            (Some("rudder-sdk-python"), MessageSource::Sdk),
            (Some("RudderLabs JavaScript SDK"), MessageSource::Sdk),
            (Some("com.rudderstack.android.sdk.core"), MessageSource::Api),
            (Some("kizuna.js"), MessageSource::Snippet),
            (Some("Kizuna.JS"), MessageSource::Snippet),
            (Some("curl"), MessageSource::Api),
            (None, MessageSource::Api),
        ];
        for (name, want) in cases {
            assert_eq!(MessageSource::from_library(name), want, "{name:?}");
        }
        let m = norm(
            MessageType::Page,
            json!({"anonymousId": "a", "context": {"library": {"name": "kizuna.js", "version": "1"}}}),
        )
        .unwrap();
        assert_eq!(m.source, MessageSource::Snippet);
        assert_eq!(m.source.as_str(), "snippet");
    }

    #[test]
    fn dedupe_key_only_without_message_id_and_with_a_client_time() {
        let base = json!({"userId": "u", "event": "x", "timestamp": "2024-05-01T11:00:00Z",
                          "properties": {"plan": "pro"}});
        let a = norm(MessageType::Track, base.clone()).unwrap();
        let b = norm(MessageType::Track, base.clone()).unwrap();
        let key = a.dedupe_key.clone().unwrap();
        assert_eq!(key.len(), 64);
        assert_eq!(a.dedupe_key, b.dedupe_key, "a retry hashes the same");
        assert_eq!(a.idempotency_key(), Some(key.as_str()));

        let mut other = base.clone();
        other["properties"]["plan"] = json!("free");
        assert_ne!(
            norm(MessageType::Track, other).unwrap().dedupe_key,
            a.dedupe_key
        );
        let mut later = base.clone();
        later["timestamp"] = json!("2024-05-01T11:00:01Z");
        assert_ne!(
            norm(MessageType::Track, later).unwrap().dedupe_key,
            a.dedupe_key
        );

        let mut with_id = base.clone();
        with_id["messageId"] = json!("m-1");
        let m = norm(MessageType::Track, with_id).unwrap();
        assert_eq!(
            (m.dedupe_key.as_deref(), m.idempotency_key()),
            (None, Some("m-1"))
        );

        let no_time = norm(MessageType::Track, json!({"userId": "u", "event": "x"})).unwrap();
        assert_eq!(no_time.dedupe_key, None);
        assert_eq!(no_time.idempotency_key(), None);
    }

    #[test]
    fn shared_batch_context_fills_gaps_only() {
        let shared_ctx: Map<String, Value> = serde_json::from_value(
            json!({"ip": "203.0.113.9", "library": {"name": "analytics-python"}}),
        )
        .unwrap();
        let shared = Shared {
            context: Some(&shared_ctx),
            ..Shared::default()
        };
        let obj = raw(json!({"userId": "u", "event": "x", "context": {"ip": "198.51.100.1"}}));
        let m = normalize(obj, MessageType::Track, "batch[0].", &shared, now()).unwrap();
        assert_eq!(m.context["ip"], "198.51.100.1");
        assert_eq!(m.source, MessageSource::Sdk);
    }
}
