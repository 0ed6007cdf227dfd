//! Kizuna's domain model and pure logic.
//!
//! Everything in this crate is deterministic and free of I/O: no HTTP, no SQL, no system time
//! (time comes in through [`clock::Clock`]). The outer crates (`kizuna-store`, `kizuna-web`,
//! the `kizuna` binary) move data in and out; the rules live here.
//!
//! Layout, in the marketer's vocabulary:
//! - [`contact`]: a lead or customer — one person — with lifecycle stage, temperature, owner and
//!   first-touch source.
//! - [`company`]: accounts, and 名寄せ (record matching) of company names and e-mail domains.
//! - [`field`]: typed custom fields and their validation.
//! - [`email_address`]: e-mail normalization.
//! - [`merge`]: folding two records of one person into one, with a report of every conflict.
//! - [`import`]: reading CSV lists (UTF-8 or Shift_JIS), mapping columns to fields, validating rows.
//! - [`patch`]: the three-state value (absent / null / value) that partial updates need.
//! - [`export`]: writing contacts to CSV for spreadsheets.
//! - [`tracking`]: parsing and checking Segment-spec tracking messages; attribution.
//! - [`clock`]: the source of time for all logic.
//! - [`filter`]: the filter language of segments (and of fit and owner-assignment rules).
//! - [`scoring`]: scoring models — behaviour and fit rules, grades, decay, thresholds, MQL.
//! - [`lifecycle`]: stage history, the sales handoff policy and BANT.
//! - [`program`]: nurture program definitions and the step machine.
//! - [`span`], [`time`], [`title`]: durations, instants, job levels from titles.
//! - [`error`]: validation errors that name the offending field.
#![deny(missing_docs)]

pub mod clock;
pub mod company;
pub mod contact;
pub mod email_address;
pub mod error;
pub mod export;
pub mod field;
pub mod filter;
pub mod import;
pub mod lifecycle;
pub mod merge;
pub mod patch;
pub mod program;
pub mod scoring;
pub mod span;
pub mod time;
pub mod title;
pub mod tracking;

pub use error::{ValidationError, ValidationErrors};
