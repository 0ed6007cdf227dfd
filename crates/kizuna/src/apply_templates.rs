//! `kizuna apply` for e-mail templates: `{"kind": "email_template", "name", "type"?,
//! "subject", "mjml" | "html", "text"?}`. Templates are checked by the mail library (every
//! error names the document and the part) and written before the other definitions of the
//! run, so programs applied with them can name them.

use chrono::Utc;
use kizuna_core::error::{ValidationError, ValidationErrors};
use kizuna_engine::apply::{Applied, DocError};
use kizuna_mail::template::CompileOptions;
use kizuna_store::Store;
use kizuna_store::email::templates::TemplateInput;
use serde_json::Value;

/// The kind of an e-mail template document.
pub const KIND: &str = "email_template";

const KEYS: [&str; 7] = ["kind", "name", "type", "subject", "mjml", "html", "text"];

fn doc_error(
    source: &str,
    field: &str,
    code: &'static str,
    message: impl Into<String>,
) -> DocError {
    DocError {
        source: source.to_string(),
        errors: ValidationErrors::from(ValidationError::new(field, code, message.into())),
    }
}

/// Reads and checks one template document.
fn input_of(source: &str, d: &Value, fields: &[String]) -> Result<TemplateInput, DocError> {
    let Some(o) = d.as_object() else {
        return Err(doc_error(source, "", "invalid_value", "a JSON object"));
    };
    if let Some(k) = o.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(doc_error(
            source,
            k,
            "unknown_field",
            format!("an e-mail template has {}", KEYS[1..].join(", ")),
        ));
    }
    let text = |k: &str| -> Result<Option<String>, DocError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(doc_error(source, k, "invalid_value", "a string")),
        }
    };
    let input = TemplateInput {
        name: text("name")?.unwrap_or_default(),
        kind: text("type")?.unwrap_or_else(|| "marketing".into()),
        subject: text("subject")?
            .ok_or_else(|| doc_error(source, "subject", "required", "a subject is required"))?,
        mjml: text("mjml")?,
        html: text("html")?,
        text: text("text")?,
    };
    if input.name.trim().is_empty() {
        return Err(doc_error(source, "name", "required", "a name is required"));
    }
    if !matches!(input.kind.as_str(), "marketing" | "transactional") {
        return Err(doc_error(
            source,
            "type",
            "invalid_value",
            "marketing or transactional",
        ));
    }
    let opts = CompileOptions {
        custom_fields: Some(fields.to_vec()),
        ..CompileOptions::default()
    };
    kizuna_delivery::service::template_of(&input)
        .compile_with(&opts)
        .map_err(|e| doc_error(source, "template", "invalid_template", e.to_string()))?;
    Ok(input)
}

/// Takes the template documents out of `docs`, checks them all, and writes them (created, or
/// updated by name when the content changed). Nothing is written if any is wrong.
pub async fn apply(
    store: &Store,
    docs: &mut Vec<(String, Value)>,
) -> anyhow::Result<Result<Vec<Applied>, Vec<DocError>>> {
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(docs)
        .into_iter()
        .partition(|(_, d)| d.get("kind").and_then(Value::as_str) == Some(KIND));
    *docs = rest;
    if mine.is_empty() {
        return Ok(Ok(vec![]));
    }
    let fields: Vec<String> = store.fields().await?.into_iter().map(|f| f.name).collect();
    let mut inputs = Vec::new();
    let mut errors = Vec::new();
    for (src, d) in &mine {
        match input_of(src, d, &fields) {
            Ok(i) => inputs.push(i),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    let existing = store.templates().await?;
    let mut done = Vec::new();
    for input in inputs {
        let name = input.name.trim().to_string();
        let (outcome, t) = match existing.iter().find(|t| t.name == name) {
            Some(t)
                if t.kind == input.kind
                    && t.subject == input.subject
                    && t.mjml == input.mjml
                    && t.html == input.html
                    && t.text == input.text =>
            {
                ("unchanged", t.clone())
            }
            Some(t) => (
                "updated",
                store.update_template(t.id, input, Utc::now()).await?,
            ),
            None => ("created", store.create_template(input, Utc::now()).await?),
        };
        done.push(Applied {
            kind: KIND.into(),
            name,
            outcome,
            id: Some(t.id),
        });
    }
    Ok(Ok(done))
}
