//! Extractors whose rejections speak the contract's error shape: JSON bodies and query strings
//! that name the offending field, and API-key authentication with scopes.

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use kizuna_store::keys::{ApiKey, Scope};
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// A JSON body. Malformed JSON is a 400; a wrong type or an unknown field is a 422 naming the
/// field's path; an oversized body is a 413.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.is_empty() && !ct.starts_with("application/json") && !ct.contains("+json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses JSON bytes with the field path in errors.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not valid JSON: {inner}"),
            )
        } else {
            let field = if path == "." { None } else { Some(path) };
            let mut err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                inner.to_string(),
            );
            if let Some(f) = field.or_else(|| unknown_field_name(&inner.to_string())) {
                err = err.field(f);
            }
            err
        }
    })
}

/// serde reports an unknown field at the parent path; pull its name out of the message.
fn unknown_field_name(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next().map(str::to_string)
}

/// Maps a body-reading failure (too large, broken stream) to the contract's error.
pub fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than this endpoint accepts",
        )
    } else {
        ApiError::bad_request("invalid_body", e.body_text())
    }
}

/// A query string; unknown or ill-typed parameters are a 400 naming the parameter.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.into_inner().to_string();
                let field = if path == "." {
                    unknown_field_name(&msg)
                } else {
                    Some(path)
                };
                let mut err = ApiError::bad_request(
                    "invalid_query",
                    format!("invalid query parameter: {msg}"),
                );
                if let Some(f) = field {
                    err = err.field(f);
                }
                err
            })
    }
}

/// A scope requirement, as a type.
pub trait NeedScope {
    /// The scope.
    const SCOPE: Scope;
}
/// Needs `read`.
pub struct Read;
/// Needs `write`.
pub struct Write;
/// Needs `admin`.
pub struct Admin;
impl NeedScope for Read {
    const SCOPE: Scope = Scope::Read;
}
impl NeedScope for Write {
    const SCOPE: Scope = Scope::Write;
}
impl NeedScope for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// An authenticated API key with at least scope `N`. A missing or invalid key is a 401, too
/// small a scope a 403 — never a silent anonymous request.
pub struct Auth<N: NeedScope> {
    /// The key.
    pub key: ApiKey,
    _n: PhantomData<N>,
}

impl<N: NeedScope> FromRequestParts<AppState> for Auth<N> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        }) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "send an API key as `Authorization: Bearer <key>` (create one with `kizuna api-key create`)",
            ));
        };
        let key = state
            .store
            .verify_api_key(token.trim(), state.clock.now())
            .await?;
        let Some(key) = key else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "the API key is unknown or revoked",
            ));
        };
        if !key.allows(N::SCOPE) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this key lacks the {} scope", N::SCOPE),
            ));
        }
        Ok(Auth {
            key,
            _n: PhantomData,
        })
    }
}
