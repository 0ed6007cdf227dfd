//! Public email endpoints, outside `/api/` and without cookies, for recipients and their mail
//! systems. None shows another contact's data; every token is HMAC-signed and a bad one is a
//! 400, never a redirect.
//!
//! | route | does |
//! |---|---|
//! | `GET /o/{token}.gif` | open pixel: records the open (machine opens flagged), answers a 1×1 GIF |
//! | `GET`/`HEAD /c/{token}` | click: records it (scanners flagged), 302 to the signed target |
//! | `GET /u/{token}` | unsubscribe confirmation page (changes nothing) |
//! | `POST /u/{token}` | RFC 8058 one-click unsubscribe: 200, no cookie, no redirect |
//! | `GET`/`POST /p/{token}` | preference center per subscription type |
//! | `GET /v/{token}` | the message in a browser |
//! | `GET`/`POST /confirm/{token}` | double opt-in: page, then the confirmation (POST) |
//! | `POST /email/feedback/{dsn,arf,ses,sendgrid}` | bounce/complaint intake (`?key=` webhook secret or an API key) |

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use kizuna_delivery::service::html_escape;
use kizuna_delivery::{DeliveryError, EmailService};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/o/{token}", get(open))
        .route("/c/{token}", get(click).head(click))
        .route("/u/{token}", get(unsubscribe_page).post(one_click))
        .route("/p/{token}", get(preferences).post(save_preferences))
        .route("/v/{token}", get(view))
        .route("/confirm/{token}", get(confirm_page).post(confirm))
        .route("/email/feedback/{source}", post(feedback))
}

/// The client's address (from the connection) and user agent.
pub struct Client {
    /// Address.
    pub ip: Option<IpAddr>,
    /// User agent.
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Client {
            ip: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
    }
}

/// The email service, or 503.
pub fn service(s: &AppState) -> Result<Arc<EmailService>, ApiError> {
    s.config.email.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "email_not_configured",
            "the email channel is not configured on this server",
        )
    })
}

/// Maps the delivery errors to the contract's error.
pub fn api_error(e: DeliveryError) -> ApiError {
    use kizuna_mail::MailError;
    match e {
        DeliveryError::Store(e) => e.into(),
        DeliveryError::Invalid { field, message } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).field(field)
        }
        DeliveryError::Mail(MailError::Template {
            part,
            line,
            message,
        }) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_template",
            match line {
                Some(l) => format!("{part} line {l}: {message}"),
                None => format!("{part}: {message}"),
            },
        )
        .field(part.to_string())
        .details(serde_json::json!({"part": part, "line": line})),
        DeliveryError::Mail(MailError::InvalidToken) => {
            ApiError::bad_request("invalid_link", "this link is not valid")
        }
        DeliveryError::Mail(MailError::TokenExpired) => {
            ApiError::bad_request("link_expired", "this link has expired")
        }
        DeliveryError::Mail(e) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
        }
    }
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><meta name=\"robots\" content=\"noindex\"><title>{t}</title><style>body{{font-family:sans-serif;max-width:36em;margin:3em auto;padding:0 1em;line-height:1.6}}button{{font-size:1em;padding:.5em 1.5em}}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = html_escape(title)
    );
    let mut r = (status, Html(html)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn bad_link(e: DeliveryError) -> Response {
    match e {
        DeliveryError::Mail(kizuna_mail::MailError::InvalidToken)
        | DeliveryError::Store(kizuna_store::StoreError::NotFound) => page(
            StatusCode::BAD_REQUEST,
            "無効なリンクです / Invalid link",
            "<p>このリンクは無効です。This link is not valid.</p>",
        ),
        DeliveryError::Mail(kizuna_mail::MailError::TokenExpired) => page(
            StatusCode::BAD_REQUEST,
            "リンクの有効期限切れ / Link expired",
            "<p>このリンクの有効期限が切れています。This link has expired.</p>",
        ),
        other => {
            tracing::error!(error = %other, "public email endpoint failed");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "エラー / Error",
                "<p>Something went wrong on our side; please try again later.</p>",
            )
        }
    }
}

/// A transparent 1×1 GIF.
const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

async fn open(State(s): State<AppState>, Path(token): Path<String>, c: Client) -> Response {
    let Ok(svc) = service(&s) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match svc.open(&token, c.ip, c.user_agent.as_deref()).await {
        Ok(()) => (
            [
                (header::CONTENT_TYPE, "image/gif"),
                (
                    header::CACHE_CONTROL,
                    "no-store, no-cache, must-revalidate, max-age=0",
                ),
            ],
            GIF,
        )
            .into_response(),
        Err(e) => bad_link(e),
    }
}

async fn click(
    State(s): State<AppState>,
    method: Method,
    Path(token): Path<String>,
    c: Client,
) -> Response {
    let Ok(svc) = service(&s) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match svc
        .click(&token, method.as_str(), c.ip, c.user_agent.as_deref())
        .await
    {
        Ok(url) => match HeaderValue::from_str(&url) {
            Ok(loc) => {
                let mut r = StatusCode::FOUND.into_response();
                r.headers_mut().insert(header::LOCATION, loc);
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Err(_) => bad_link(DeliveryError::Mail(kizuna_mail::MailError::InvalidToken)),
        },
        Err(e) => bad_link(e),
    }
}

async fn unsubscribe_page(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let Ok(svc) = service(&s) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    // GET only shows the page: link scanners must not unsubscribe anyone.
    match svc.verify_unsubscribe(&token) {
        Ok(_) => page(
            StatusCode::OK,
            "配信停止 / Unsubscribe",
            &format!(
                "<p>このメールの配信を停止しますか？ Stop receiving these e-mails?</p><form method=\"post\" action=\"/u/{}\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">配信を停止する / Unsubscribe</button></form>",
                html_escape(&token)
            ),
        ),
        Err(e) => bad_link(e),
    }
}

async fn one_click(
    State(s): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    c: Client,
    body: Bytes,
) -> Response {
    let Ok(svc) = service(&s) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    // RFC 8058: the body is `List-Unsubscribe=One-Click` (form-encoded). The page's own button
    // posts the same body; anything else still unsubscribes (the token is the authority).
    let one_click =
        form_urlencoded::parse(&body).any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click");
    let via_page = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let source = if one_click && !via_page {
        "one_click"
    } else {
        "unsubscribe_page"
    };
    match svc
        .unsubscribe(&token, source, c.ip, c.user_agent.as_deref())
        .await
    {
        Ok(_) => page(
            StatusCode::OK,
            "配信を停止しました / Unsubscribed",
            "<p>配信停止を承りました。今後このメールは送信されません。You have been unsubscribed.</p>",
        ),
        Err(e) => bad_link(e),
    }
}

async fn preferences(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let Ok(svc) = service(&s) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match svc.preferences(&token).await {
        Ok(p) => preferences_page(&token, &p, None),
        Err(e) => bad_link(e),
    }
}

fn preferences_page(
    token: &str,
    p: &kizuna_delivery::service::Preferences,
    saved: Option<&str>,
) -> Response {
    let mut rows = String::new();
    for (t, on) in &p.types {
        rows.push_str(&format!(
            "<p><label><input type=\"checkbox\" name=\"subscribe\" value=\"{n}\"{c}> {l}</label>{d}</p>",
            n = html_escape(&t.name),
            c = if *on { " checked" } else { "" },
            l = html_escape(&t.label),
            d = t
                .description
                .as_deref()
                .map(|d| format!("<br><small>{}</small>", html_escape(d)))
                .unwrap_or_default()
        ));
    }
    page(
        StatusCode::OK,
        "配信設定 / E-mail preferences",
        &format!(
            "{saved}<p>{email}</p><form method=\"post\" action=\"/p/{tok}\">{rows}<button type=\"submit\">保存 / Save</button></form><form method=\"post\" action=\"/p/{tok}\"><input type=\"hidden\" name=\"unsubscribe_all\" value=\"1\"><button type=\"submit\">すべて停止 / Unsubscribe from all</button></form>",
            saved = saved
                .map(|s| format!("<p><strong>{}</strong></p>", html_escape(s)))
                .unwrap_or_default(),
            email = html_escape(&p.email),
            tok = html_escape(token),
        ),
    )
}

async fn save_preferences(
    State(s): State<AppState>,
    Path(token): Path<String>,
    c: Client,
    body: Bytes,
) -> Response {
    let Ok(svc) = service(&s) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let mut subscribed = Vec::new();
    let mut all_off = false;
    for (k, v) in form_urlencoded::parse(&body) {
        match k.as_ref() {
            "subscribe" => subscribed.push(v.into_owned()),
            "unsubscribe_all" => all_off = true,
            _ => {}
        }
    }
    if all_off {
        subscribed.clear();
    }
    match svc
        .save_preferences(&token, &subscribed, c.ip, c.user_agent.as_deref())
        .await
    {
        Ok(p) => preferences_page(&token, &p, Some("保存しました / Saved")),
        Err(e) => bad_link(e),
    }
}

async fn view(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let Ok(svc) = service(&s) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match svc.view(&token).await {
        Ok(html) => {
            let mut r = Html(html).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => bad_link(e),
    }
}

async fn confirm_page(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let Ok(svc) = service(&s) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match svc.links().verify_confirm(&token, svc.now()) {
        Ok(_) => page(
            StatusCode::OK,
            "登録の確認 / Confirm your subscription",
            &format!(
                "<form method=\"post\" action=\"/confirm/{}\"><button type=\"submit\">登録を確認する / Confirm</button></form>",
                html_escape(&token)
            ),
        ),
        Err(e) => bad_link(e.into()),
    }
}

async fn confirm(State(s): State<AppState>, Path(token): Path<String>, c: Client) -> Response {
    let Ok(svc) = service(&s) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match svc.confirm(&token, c.ip, c.user_agent.as_deref()).await {
        Ok(_) => page(
            StatusCode::OK,
            "登録が完了しました / Subscription confirmed",
            "<p>ご登録ありがとうございます。Thank you, your subscription is confirmed.</p>",
        ),
        Err(e) => bad_link(e),
    }
}

async fn feedback(
    State(s): State<AppState>,
    Path(source): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let svc = service(&s)?;
    // Authentication: the webhook secret as `?key=` (SES/SendGrid cannot send a bearer
    // token), or an API key with the write scope.
    let by_secret = match (svc.webhook_secret(), q.get("key")) {
        (Some(secret), Some(k)) => {
            use subtle::ConstantTimeEq;
            bool::from(secret.as_bytes().ct_eq(k.as_bytes()))
        }
        _ => false,
    };
    if !by_secret {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_api_key",
                    "send ?key=<webhook secret> or an API key as `Authorization: Bearer <key>`",
                )
            })?;
        let key = s
            .store
            .verify_api_key(token.trim(), s.clock.now())
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "the API key is unknown or revoked",
                )
            })?;
        if !key.allows(kizuna_store::keys::Scope::Write) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "this key lacks the write scope",
            ));
        }
    }
    use kizuna_mail::feedback::{parse_report, parse_sendgrid, parse_ses, ses_subscription_url};
    let text = || String::from_utf8_lossy(&body).into_owned();
    let parsed = match source.as_str() {
        "dsn" | "arf" | "report" => parse_report(&body),
        "ses" => {
            if let Some(url) = ses_subscription_url(&text()) {
                // Confirming an SNS subscription is the operator's step (Kizuna makes no
                // outbound call on a webhook's say-so): log the URL.
                tracing::warn!(%url, "SNS subscription confirmation received: open this URL once to confirm");
                return Ok(axum::Json(serde_json::json!({"subscription_confirmation": url})).into_response());
            }
            parse_ses(&text())
        }
        "sendgrid" => parse_sendgrid(&text()),
        _ => return Err(ApiError::not_found("feedback source (dsn, arf, ses, sendgrid)")),
    }
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_feedback", e.to_string()))?;
    let report = svc
        .apply_feedback(&parsed, &source)
        .await
        .map_err(api_error)?;
    Ok(axum::Json(report).into_response())
}
