//! `/imports`: CSV upload of contacts (R-DATA-4), all or nothing.
//!
//! `POST /api/v1/imports?encoding=auto&list=…&map=COLUMN=FIELD&skip_invalid=…&overwrite=…` with
//! the CSV file as the raw body (`curl --data-binary @file.csv`). The body is streamed to a spool
//! file (never held in memory), capped at [`WebConfig::max_import_bytes`](crate::WebConfig), then
//! imported by the same pipeline as `kizuna import contacts`. A file with bad rows imports
//! nothing and answers 422 with every bad row (row, column, value, reason) in `details`.

use super::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Read, Write};
use crate::state::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use futures_util::StreamExt;
use kizuna_core::import::Encoding;
use kizuna_store::csv_import::{CsvImportError, CsvImportRequest};
use kizuna_store::imports::ImportRecord;
use std::io::Write as _;

/// Routes. The upload has its own body limit (the API's JSON limit does not apply).
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/imports",
            post(upload).layer(DefaultBodyLimit::max(
                usize::try_from(state.config.max_import_bytes).unwrap_or(usize::MAX),
            )),
        )
        .route("/imports/{id}", get(read))
}

/// Parses the upload's query string. `map` repeats, which serde_urlencoded cannot express.
fn request_from_query(query: Option<&str>) -> Result<CsvImportRequest, ApiError> {
    let mut req = CsvImportRequest::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "encoding" => {
                req.encoding = v.parse::<Encoding>().map_err(|e| {
                    ApiError::bad_request("invalid_query", e.message).field("encoding")
                })?;
            }
            "list" if !v.trim().is_empty() => req.options.list = Some(v.trim().to_string()),
            "file_name" if !v.trim().is_empty() => {
                req.options.file_name = Some(v.trim().to_string())
            }
            "map" => match v.rsplit_once('=') {
                Some((c, f)) if !c.trim().is_empty() && !f.trim().is_empty() => {
                    req.mappings
                        .push((c.trim().to_string(), f.trim().to_string()));
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!("map={v:?}: expected COLUMN=FIELD"),
                    )
                    .field("map"));
                }
            },
            "skip_invalid" => req.skip_invalid = parse_bool(&v, "skip_invalid")?,
            "overwrite" => req.options.overwrite = parse_bool(&v, "overwrite")?,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter {other:?} (encoding, list, map, skip_invalid, overwrite, file_name)"),
                )
                .field(other.to_string()));
            }
        }
    }
    Ok(req)
}

fn parse_bool(v: &str, name: &str) -> Result<bool, ApiError> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(
            ApiError::bad_request("invalid_query", format!("{name} must be true or false"))
                .field(name.to_string()),
        ),
    }
}

async fn upload(
    _: Auth<Write>,
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<impl IntoResponse> {
    let req = request_from_query(uri.query())?;
    let limit = s.config.max_import_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let spool = tempfile::NamedTempFile::new_in(&s.config.spool_dir).map_err(internal)?;
    let (file, path) = spool.into_parts();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut written: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if e.to_string().contains("length limit") {
                too_large(limit)
            } else {
                ApiError::bad_request("invalid_body", format!("the upload broke off: {e}"))
            }
        })?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(too_large(limit));
        }
        // Small writes into a 1 MiB buffer; the occasional flush is fine on the executor.
        out.write_all(&chunk).map_err(internal)?;
    }
    if written == 0 {
        return Err(ApiError::bad_request(
            "empty_body",
            "send the CSV file as the request body (curl --data-binary @file.csv)",
        ));
    }
    let file = out.into_inner().map_err(|e| internal(e.into_error()))?;
    drop(file);
    let reader = std::fs::File::open(&path).map_err(internal)?;
    let report = s
        .store
        .import_csv(
            std::io::BufReader::with_capacity(1 << 20, reader),
            req,
            s.clock.now(),
            None,
        )
        .await;
    drop(path); // deletes the spool file
    let report = match report {
        Ok(r) => r,
        Err(CsvImportError::File(e)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_file",
                e.to_string(),
            ));
        }
        Err(CsvImportError::Plan(errs)) => return Err(ApiError::invalid(errs)),
        Err(CsvImportError::Store(e)) => return Err(e.into()),
    };
    let details = serde_json::to_value(&report).unwrap_or_default();
    if report.status == "failed" {
        let rows: std::collections::BTreeSet<u64> = report.errors.iter().map(|e| e.row).collect();
        let headline = report
            .errors
            .first()
            .map(|e| format!("; first: {e}"))
            .unwrap_or_default();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rows",
            format!(
                "{} problem(s) in {} row(s); nothing was imported{headline}",
                report.error_count,
                rows.len()
            ),
        )
        .details(details));
    }
    Ok((StatusCode::CREATED, axum::Json(details)))
}

async fn read(
    _: Auth<Read>,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ImportRecord>> {
    let id = parse_id(&id, "import")?;
    match s.store.import_record(id).await {
        Ok(r) => Ok(axum::Json(r)),
        Err(kizuna_store::StoreError::NotFound) => Err(ApiError::not_found("import")),
        Err(e) => Err(e.into()),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the file is larger than this server accepts ({} MiB; see max_import_mib)",
            limit / (1024 * 1024)
        ),
    )
}

fn internal(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "import spool failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the upload could not be stored on the server; it has been logged",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_parsed_and_bad_parameters_named() {
        let r = request_from_query(Some(
            "encoding=shift_jis&list=Trade%20show%202026-10&map=%E4%BC%9A%E7%A4%BE%E5%90%8D%3Dcompany_name&map=a%3Db%3Dc&skip_invalid=true",
        ))
        .unwrap();
        assert_eq!(r.encoding, Encoding::ShiftJis);
        assert_eq!(r.options.list.as_deref(), Some("Trade show 2026-10"));
        assert_eq!(
            r.mappings,
            vec![
                ("会社名".to_string(), "company_name".to_string()),
                ("a=b".to_string(), "c".to_string())
            ]
        );
        assert!(r.skip_invalid && !r.options.overwrite);
        for (q, field) in [
            ("encoding=latin1", "encoding"),
            ("map=nope", "map"),
            ("overwrite=maybe", "overwrite"),
            ("color=red", "color"),
        ] {
            let e = request_from_query(Some(q)).unwrap_err();
            assert_eq!(
                (e.status, e.field.as_deref()),
                (StatusCode::BAD_REQUEST, Some(field)),
                "{q}"
            );
        }
    }
}
