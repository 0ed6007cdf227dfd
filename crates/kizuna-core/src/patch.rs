//! Partial updates need three states per field: leave it, clear it, set it.

use serde::{Deserialize, Deserializer, Serialize};

/// A field in a partial update.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Patch<T> {
    /// The key was absent: leave the stored value alone.
    #[default]
    Absent,
    /// The key was `null`: clear the stored value.
    Null,
    /// A new value.
    Value(T),
}

impl<T> Patch<T> {
    /// Whether the key was present at all.
    pub fn is_present(&self) -> bool {
        !matches!(self, Patch::Absent)
    }

    /// Applies the patch to a stored optional value.
    pub fn apply_to(self, current: &mut Option<T>) {
        match self {
            Patch::Absent => {}
            Patch::Null => *current = None,
            Patch::Value(v) => *current = Some(v),
        }
    }

    /// A reference view.
    pub fn as_ref(&self) -> Patch<&T> {
        match self {
            Patch::Absent => Patch::Absent,
            Patch::Null => Patch::Null,
            Patch::Value(v) => Patch::Value(v),
        }
    }

    /// Maps the value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Patch<U> {
        match self {
            Patch::Absent => Patch::Absent,
            Patch::Null => Patch::Null,
            Patch::Value(v) => Patch::Value(f(v)),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only called when the key is present (absent keys use `Default`).
        Ok(match Option::<T>::deserialize(d)? {
            None => Patch::Null,
            Some(v) => Patch::Value(v),
        })
    }
}

impl<T: Serialize> Serialize for Patch<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Patch::Value(v) => v.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct P {
        #[serde(default)]
        a: Patch<String>,
        #[serde(default)]
        b: Patch<String>,
        #[serde(default)]
        c: Patch<String>,
    }

    #[test]
    fn distinguishes_absent_null_and_value() {
        let p: P = serde_json::from_str(r#"{"b": null, "c": "x"}"#).unwrap();
        assert_eq!(p.a, Patch::Absent);
        assert_eq!(p.b, Patch::Null);
        assert_eq!(p.c, Patch::Value("x".into()));
    }
}
