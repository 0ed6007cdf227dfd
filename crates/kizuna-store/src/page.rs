//! Cursor pagination: `{"data": [...], "next_cursor": "…" | null}`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use uuid::Uuid;

/// One page of a list.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Opaque cursor for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A position in an ordered list: a sort key (time in microseconds, or 0) and the id that breaks ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Sort key.
    pub key: i64,
    /// Tie-breaking id.
    pub id: Uuid,
}

impl Cursor {
    /// Encodes as an opaque string.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&self.key.to_be_bytes());
        b.extend_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(b)
    }

    /// Decodes a string from [`Cursor::encode`]; `None` if it is not one.
    pub fn decode(s: &str) -> Option<Cursor> {
        let b = URL_SAFE_NO_PAD.decode(s).ok()?;
        if b.len() != 24 {
            return None;
        }
        let key = i64::from_be_bytes(b[..8].try_into().ok()?);
        let id = Uuid::from_slice(&b[8..]).ok()?;
        Some(Cursor { key, id })
    }
}

/// Clamps a requested page size to 1..=1000 (default 50), as the API contract says.
pub fn clamp_limit(limit: Option<u32>) -> u32 {
    limit.unwrap_or(50).clamp(1, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            key: 1_790_000_000_000_000,
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("garbage!"), None);
        assert_eq!(Cursor::decode(""), None);
    }

    #[test]
    fn limits_are_clamped() {
        assert_eq!(clamp_limit(None), 50);
        assert_eq!(clamp_limit(Some(0)), 1);
        assert_eq!(clamp_limit(Some(5000)), 1000);
    }
}
