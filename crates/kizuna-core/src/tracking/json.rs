//! Parsing one message's JSON with a nesting limit, safely.
//!
//! Two layers keep hostile nesting harmless. serde_json refuses to build anything deeper than
//! 128 levels (its recursion limit, on by default) with an error instead of a stack overflow;
//! the value it builds is then measured here, with an explicit stack instead of recursion, and
//! refused beyond [`MAX_DEPTH`]. Measuring the built value costs one visit per array or object,
//! far less than re-reading the text byte by byte on the hot ingestion path.

use super::message::RawMessage;
use super::{MAX_DEPTH, TrackingError};
use serde_json::{Map, Value};

/// Parses `text` as one message object nested at most [`MAX_DEPTH`] levels deep (the message
/// itself is level 1). `field` names it in errors (`None` for a whole body).
pub(crate) fn parse_message(
    text: &str,
    field: impl Fn() -> Option<String>,
) -> Result<RawMessage, TrackingError> {
    let raw: RawMessage = serde_json::from_str(text).map_err(|e| {
        if is_recursion_limit(&e) {
            too_deep(field())
        } else if e.classify() == serde_json::error::Category::Data {
            // Every value is accepted as a `Value`, so a data error is the top level's type.
            TrackingError::bad_request("invalid_json", "a message must be a JSON object", field())
        } else {
            TrackingError::bad_request(
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
                field(),
            )
        }
    })?;
    if raw.values().any(|v| exceeds_depth(v, MAX_DEPTH - 1)) {
        return Err(too_deep(field()));
    }
    Ok(raw)
}

/// Parses `text` as one JSON object nested at most [`MAX_DEPTH`] levels deep (a batch's shared
/// `context`). `field` names it in errors.
pub(crate) fn parse_object(
    text: &str,
    field: impl Fn() -> Option<String>,
) -> Result<Map<String, Value>, TrackingError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        if is_recursion_limit(&e) {
            too_deep(field())
        } else {
            TrackingError::bad_request(
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
                field(),
            )
        }
    })?;
    if exceeds_depth(&value, MAX_DEPTH) {
        return Err(too_deep(field()));
    }
    match value {
        Value::Object(obj) => Ok(obj),
        _ => Err(TrackingError::bad_request(
            "invalid_json",
            "a message must be a JSON object",
            field(),
        )),
    }
}

/// Whether serde_json stopped at its recursion limit.
pub(crate) fn is_recursion_limit(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("recursion limit exceeded")
}

/// The error for JSON nested deeper than [`MAX_DEPTH`].
pub(crate) fn too_deep(field: Option<String>) -> TrackingError {
    TrackingError::bad_request(
        "too_deep",
        format!("the JSON nests deeper than {MAX_DEPTH} levels"),
        field,
    )
}

/// Whether `v` nests arrays and objects more than `max` levels deep (`{}` is one level,
/// `{"a":[1]}` two). Iterative, so the depth of the input never reaches the call stack.
pub(crate) fn exceeds_depth(v: &Value, max: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(v, 1)];
    while let Some((v, depth)) = stack.pop() {
        let children: &mut dyn Iterator<Item = &Value> = match v {
            Value::Array(a) => &mut a.iter(),
            Value::Object(o) => &mut o.values(),
            _ => continue,
        };
        if depth > max {
            return true;
        }
        for c in children {
            if matches!(c, Value::Array(_) | Value::Object(_)) {
                stack.push((c, depth + 1));
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_levels_of_objects_and_arrays() {
        assert!(!exceeds_depth(&json!(1), 0));
        assert!(exceeds_depth(&json!({}), 0));
        assert!(!exceeds_depth(&json!({}), 1));
        assert!(!exceeds_depth(&json!({"a": [1], "b": {"c": 2}}), 2));
        assert!(exceeds_depth(&json!({"a": [[1]]}), 2));
        assert!(exceeds_depth(&json!([1, 2, {"x": [3, {"y": {}}]}]), 3));
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        assert!(!exceeds_depth(&json!({"a": "[[[[{{{{"}), 1));
    }

    #[test]
    fn the_parser_stops_long_before_the_stack_does() {
        // 100,000 levels: serde_json's recursion limit answers, mapped to too_deep.
        for deep in [
            "[".repeat(100_000),
            "{\"a\":".repeat(100_000),
            "[".repeat(100_000) + &"]".repeat(100_000),
        ] {
            let e = parse_object(&deep, || Some("batch[0]".into())).unwrap_err();
            assert_eq!((e.code, e.field.as_deref()), ("too_deep", Some("batch[0]")));
            // A message must be an object: an array is refused at its first byte, whatever
            // its depth; a deep object is refused for its depth.
            let want = if deep.starts_with('[') {
                "invalid_json"
            } else {
                "too_deep"
            };
            let e = parse_message(&deep, || Some("batch[0]".into())).unwrap_err();
            assert_eq!((e.code, e.field.as_deref()), (want, Some("batch[0]")));
        }
    }

    #[test]
    fn limit_is_exact() {
        let nest = |n: usize| "[".repeat(n - 1) + &"]".repeat(n - 1);
        // A known key and an unknown one: both slots and extras are measured.
        for key in ["properties", "custom"] {
            let at = format!(r#"{{"{key}":{}}}"#, nest(MAX_DEPTH));
            assert!(parse_object(&at, || None).is_ok());
            assert!(parse_message(&at, || None).is_ok());
            let over = format!(r#"{{"{key}":{}}}"#, nest(MAX_DEPTH + 1));
            assert_eq!(parse_object(&over, || None).unwrap_err().code, "too_deep");
            assert_eq!(parse_message(&over, || None).unwrap_err().code, "too_deep");
        }
    }

    #[test]
    fn non_objects_and_broken_json() {
        for text in ["[1]", "1", "null", "\"x\"", "{\"a\":", "{\"a\" 1}", ""] {
            let e = parse_message(text, || Some("batch[2]".into())).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_deref()),
                ("invalid_json", Some("batch[2]")),
                "{text}"
            );
        }
        assert_eq!(
            parse_object("[1]", || None).unwrap_err().code,
            "invalid_json"
        );
        assert_eq!(
            parse_object("{\"a\":", || None).unwrap_err().code,
            "invalid_json"
        );
        let e = parse_object("\"x\"", || Some("batch[2]".into())).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("batch[2]"));
    }
}
