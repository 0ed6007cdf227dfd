//! The crate's one error type.

use crate::template::TemplatePart;
use std::path::PathBuf;

/// Everything that can go wrong in this crate. SMTP delivery results are not errors: they are
/// [`crate::smtp::SendOutcome`]s.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// A template does not compile or does not render; names the part and, when known, the line.
    #[error("{part}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Template {
        /// Which part of the template.
        part: TemplatePart,
        /// 1-based line in that part, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// An e-mail address that cannot be put in a header or an envelope.
    #[error("invalid e-mail address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A link token that is malformed, truncated, forged or for another kind of link.
    #[error("invalid link token")]
    InvalidToken,
    /// A link token that was genuine but whose validity has ended.
    #[error("link token expired")]
    TokenExpired,
    /// A DKIM key that cannot be read or used.
    #[error("DKIM key: {0}")]
    DkimKey(String),
    /// A message that cannot be DKIM-signed (no header/body separator, …).
    #[error("DKIM signing: {0}")]
    DkimSign(String),
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Invalid configuration (SMTP, links, composer).
    #[error("configuration: {0}")]
    Config(String),
    /// A bounce/complaint report or webhook body that cannot be understood.
    #[error("feedback: {0}")]
    Feedback(String),
}
