//! A whole CSV import: the file is parsed and validated on a blocking thread (kizuna-core's
//! [`CsvContactReader`]) while batches are written by [`ImportWriter`] in one transaction.
//! If any row is invalid, the transaction is rolled back and every bad row is reported —
//! unless `skip_invalid`, in which case the bad rows are left out and listed.

use crate::imports::{ImportItem, ImportOptions, ImportSummary};
use crate::{Store, StoreError};
use chrono::{DateTime, Utc};
use kizuna_core::ValidationErrors;
use kizuna_core::import::{CsvContactReader, Encoding, ImportError, ImportPlan, RowError};
use serde::Serialize;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

/// What to import and how.
#[derive(Debug, Clone, Default)]
pub struct CsvImportRequest {
    /// File encoding.
    pub encoding: Encoding,
    /// `COLUMN=FIELD` mappings.
    pub mappings: Vec<(String, String)>,
    /// Write options (overwrite, list, file name).
    pub options: ImportOptions,
    /// Leave invalid rows out instead of refusing the whole file.
    pub skip_invalid: bool,
}

/// A note about a row (what was repaired on the way).
#[derive(Debug, Clone, Serialize)]
pub struct RowNote {
    /// Spreadsheet row.
    pub row: u64,
    /// What happened.
    pub note: String,
}

/// The outcome of an import, for the API response and the CLI report.
#[derive(Debug, Clone, Serialize)]
pub struct CsvImportReport {
    /// The import's record id.
    pub import_id: Uuid,
    /// `succeeded` or `failed` (nothing written).
    pub status: &'static str,
    /// Encoding the file was read as.
    pub encoding: &'static str,
    /// Counts.
    pub summary: ImportSummary,
    /// Columns nobody mapped (not imported).
    pub ignored_columns: Vec<String>,
    /// Bad rows (the first [`MAX_REPORTED_ERRORS`]).
    pub errors: Vec<RowError>,
    /// How many problems there were in all.
    pub error_count: u64,
    /// Repairs made (the first [`MAX_REPORTED_ERRORS`]).
    pub notes: Vec<RowNote>,
}

/// Why an import could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CsvImportError {
    /// The file is not a readable CSV.
    #[error(transparent)]
    File(#[from] ImportError),
    /// The column mapping is wrong (each problem names `map.<COLUMN>` or `email`).
    #[error(transparent)]
    Plan(ValidationErrors),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// At most this many row errors and notes are kept in the report (all are counted).
pub const MAX_REPORTED_ERRORS: usize = 1000;
const BATCH: usize = 1000;

struct ParseOutcome {
    errors: Vec<RowError>,
    error_count: u64,
    bad_rows: u64,
    notes: Vec<RowNote>,
}

impl Store {
    /// Runs a CSV import from any reader. `rows_done` (if given) counts parsed rows, for a
    /// progress display.
    pub async fn import_csv<R: Read + Send + 'static>(
        &self,
        reader: R,
        req: CsvImportRequest,
        now: DateTime<Utc>,
        rows_done: Option<Arc<AtomicU64>>,
    ) -> Result<CsvImportReport, CsvImportError> {
        let defs = self.field_map().await?;
        let (plan_tx, plan_rx) = tokio::sync::oneshot::channel();
        let (batch_tx, mut batch_rx) = tokio::sync::mpsc::channel::<Vec<ImportItem>>(4);
        let skip_invalid = req.skip_invalid;
        let mappings = req.mappings.clone();
        let encoding = req.encoding;
        let parser =
            tokio::task::spawn_blocking(move || -> Result<ParseOutcome, CsvImportError> {
                let mut csv = match CsvContactReader::new(reader, encoding) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = plan_tx.send(None);
                        return Err(e.into());
                    }
                };
                let plan = match ImportPlan::build(csv.headers(), &mappings, &defs) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = plan_tx.send(None);
                        return Err(CsvImportError::Plan(e));
                    }
                };
                let _ = plan_tx.send(Some((plan.ignored.clone(), csv.encoding().as_str())));
                let mut out = ParseOutcome {
                    errors: Vec::new(),
                    error_count: 0,
                    bad_rows: 0,
                    notes: Vec::new(),
                };
                let mut batch = Vec::with_capacity(BATCH);
                let mut writing = true;
                while let Some(result) = csv.next_row(&plan)? {
                    if let Some(n) = &rows_done {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    match result {
                        Ok(row) => {
                            for note in row.notes {
                                if out.notes.len() < MAX_REPORTED_ERRORS {
                                    out.notes.push(RowNote { row: row.row, note });
                                }
                            }
                            if writing {
                                batch.push(ImportItem {
                                    row: row.row,
                                    contact: row.contact,
                                    company: row.company,
                                });
                                if batch.len() == BATCH
                                    && batch_tx.blocking_send(std::mem::take(&mut batch)).is_err()
                                {
                                    writing = false;
                                }
                            }
                        }
                        Err(errs) => {
                            out.bad_rows += 1;
                            out.error_count += errs.len() as u64;
                            for e in errs {
                                if out.errors.len() < MAX_REPORTED_ERRORS {
                                    out.errors.push(e);
                                }
                            }
                            if !skip_invalid {
                                // Keep reading to report every bad row, but write nothing more.
                                writing = false;
                                batch.clear();
                            }
                        }
                    }
                }
                if writing && !batch.is_empty() {
                    let _ = batch_tx.blocking_send(batch);
                }
                Ok(out)
            });

        let Ok(Some((ignored_columns, encoding_used))) = plan_rx.await else {
            return Err(match parser.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => {
                    StoreError::Config("the import parser stopped unexpectedly".into()).into()
                }
                Err(e) => StoreError::Config(format!("the import parser failed: {e}")).into(),
            });
        };
        let mut writer = self.begin_import(req.options.clone(), now).await?;
        let mut write_error = None;
        while let Some(batch) = batch_rx.recv().await {
            if let Err(e) = writer.write(batch).await {
                write_error = Some(e);
                break;
            }
        }
        drop(batch_rx); // lets the parser finish if we stopped early
        let parsed = parser
            .await
            .map_err(|e| StoreError::Config(format!("the import parser failed: {e}")))?;
        if let Some(e) = write_error {
            writer.rollback().await;
            return Err(e.into());
        }
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                writer.rollback().await;
                return Err(e);
            }
        };
        let errors_json = serde_json::to_value(&parsed.errors).unwrap_or_default();
        if parsed.error_count > 0 && !req.skip_invalid {
            writer.rollback().await;
            let id = self
                .record_failed_import(&req.options, errors_json, now, now)
                .await?;
            return Ok(CsvImportReport {
                import_id: id,
                status: "failed",
                encoding: encoding_used,
                summary: ImportSummary::default(),
                ignored_columns,
                errors: parsed.errors,
                error_count: parsed.error_count,
                notes: parsed.notes,
            });
        }
        let (id, summary) = writer.commit(now, errors_json, parsed.bad_rows).await?;
        Ok(CsvImportReport {
            import_id: id,
            status: "succeeded",
            encoding: encoding_used,
            summary,
            ignored_columns,
            errors: parsed.errors,
            error_count: parsed.error_count,
            notes: parsed.notes,
        })
    }
}
