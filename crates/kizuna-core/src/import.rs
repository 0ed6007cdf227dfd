//! CSV import of contact lists (R-DATA-4): trade-show business cards, seminar attendee lists,
//! paper surveys typed into Excel.
//!
//! [`CsvContactReader`] decodes the file as it streams (UTF-8 with or without BOM, or Shift_JIS as
//! Windows writes it, i.e. cp932), reads the header row, and then yields one [`ImportRow`] or the
//! list of [`RowError`]s per data row, mapped and validated with an [`ImportPlan`]. Nothing is
//! stored here: the caller decides what to do with invalid rows (the CLI imports nothing unless
//! `--skip-invalid`).
//!
//! ```
//! use kizuna_core::import::{CsvContactReader, Encoding, ImportPlan};
//! use std::collections::HashMap;
//!
//! let csv = "会社名,氏名,メールアドレス\n株式会社山田商事,山田 太郎,Taro@Yamada-Shoji.co.jp\n";
//! let mut reader = CsvContactReader::new(csv.as_bytes(), Encoding::Auto).unwrap();
//! let plan = ImportPlan::build(reader.headers(), &[], &HashMap::new()).unwrap();
//! while let Some(row) = reader.next_row(&plan).unwrap() {
//!     let row = row.unwrap();
//!     assert_eq!(row.row, 2);
//!     assert_eq!(row.email(), "taro@yamada-shoji.co.jp");
//! }
//! ```

mod plan;
mod row;

pub(crate) use plan::standard_target;
pub use plan::{ImportPlan, PlannedColumn, Target, header_key};
pub(crate) use row::is_formula_trigger;
pub use row::{ImportRow, RowError};

use crate::error::ValidationError;
use csv::{ByteRecord, StringRecord};
use encoding_rs_io::{DecodeReaderBytes, DecodeReaderBytesBuilder};
use std::fmt;
use std::io::{self, Chain, Cursor, Read};
use std::str::FromStr;

/// The character encoding of an imported file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// A UTF-8 BOM means UTF-8; otherwise UTF-8 if the start of the file (64 KiB) is valid
    /// UTF-8, Shift_JIS (cp932) if it is valid Shift_JIS.
    #[default]
    Auto,
    /// UTF-8, with or without BOM ("CSV UTF-8" in Excel).
    Utf8,
    /// Shift_JIS as Windows and Excel write it (cp932 / Windows-31J, with NEC and IBM extensions
    /// such as 髙 and 﨑). A UTF-8 BOM still wins: such a file is UTF-8 whatever was said.
    ShiftJis,
}

impl Encoding {
    /// The name, as accepted by `--encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Auto => "auto",
            Encoding::Utf8 => "utf-8",
            Encoding::ShiftJis => "shift_jis",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encoding {
    type Err = ValidationError;
    /// `utf-8`/`utf8`, `shift_jis`/`shift-jis`/`sjis`/`cp932`/`windows-31j`, or `auto`
    /// (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Encoding::Auto),
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            "shift_jis" | "shift-jis" | "shiftjis" | "sjis" | "cp932" | "ms932" | "windows-31j" => {
                Ok(Encoding::ShiftJis)
            }
            _ => Err(ValidationError::new(
                "encoding",
                "invalid_value",
                format!("{s:?} is not a supported encoding (utf-8, shift_jis or auto)"),
            )),
        }
    }
}

/// Why a file cannot be imported at all (as opposed to a bad row: [`RowError`]).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not a CSV text file (a workbook, a PDF, binary data, UTF-16 text…).
    #[error("this is not a CSV file: {0}")]
    NotCsv(String),
    /// Nothing in the file.
    #[error("the file is empty")]
    Empty,
    /// No usable header row.
    #[error("no header row: {0}")]
    NoHeader(String),
    /// The bytes are not text in a supported encoding.
    #[error("cannot read the text: {0}")]
    Undecodable(String),
    /// Reading failed.
    #[error("could not read the file: {0}")]
    Io(#[from] io::Error),
}

impl From<csv::Error> for ImportError {
    fn from(e: csv::Error) -> Self {
        // Byte records in flexible mode only fail on I/O.
        ImportError::Io(e.into())
    }
}

/// What one data row gave: the row, or every problem found in it.
pub type RowResult = Result<ImportRow, Vec<RowError>>;

/// How much of the file is looked at to guess the encoding and spot non-CSV files.
const SNIFF_LEN: usize = 64 * 1024;

type Prefixed<R> = Chain<Cursor<Vec<u8>>, R>;

/// The byte stream as UTF-8: passed through, or transcoded from Shift_JIS.
enum Source<R: Read> {
    Utf8(Prefixed<R>),
    ShiftJis(Box<DecodeReaderBytes<Prefixed<R>, Vec<u8>>>),
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Utf8(r) => r.read(buf),
            Source::ShiftJis(r) => r.read(buf),
        }
    }
}

/// Streams contact rows out of a CSV file. Memory use is one record, whatever the file size.
pub struct CsvContactReader<R: Read> {
    csv: csv::Reader<Source<R>>,
    headers: Vec<String>,
    encoding: Encoding,
    /// Reused for every record, so reading does not allocate per row.
    record: ByteRecord,
    /// Spreadsheet row number of the last record read.
    last_row: u64,
    /// The reader's line number after the last record.
    line_after: u64,
}

impl<R: Read> fmt::Debug for CsvContactReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvContactReader")
            .field("headers", &self.headers)
            .field("encoding", &self.encoding)
            .field("last_row", &self.last_row)
            .finish_non_exhaustive()
    }
}

impl<R: Read> CsvContactReader<R> {
    /// Decides the encoding (see [`Encoding`]), rejects files that are not CSV text, and reads the
    /// header row. The delimiter is `,` unless the header row has none but has tabs (TSV) or
    /// semicolons.
    pub fn new(mut reader: R, encoding: Encoding) -> Result<Self, ImportError> {
        let (prefix, eof) = read_prefix(&mut reader)?;
        reject_non_text(&prefix)?;
        let bom = prefix.starts_with(b"\xEF\xBB\xBF");
        let encoding = if bom {
            Encoding::Utf8
        } else {
            match encoding {
                Encoding::Auto => detect(&prefix, eof)?,
                e => e,
            }
        };
        let delimiter = sniff_delimiter(&prefix[if bom { 3 } else { 0 }..]);
        let mut cursor = Cursor::new(prefix);
        if bom {
            cursor.set_position(3);
        }
        let chained = cursor.chain(reader);
        let source = match encoding {
            Encoding::ShiftJis => Source::ShiftJis(Box::new(
                DecodeReaderBytesBuilder::new()
                    .encoding(Some(encoding_rs::SHIFT_JIS))
                    .bom_sniffing(false)
                    .build(chained),
            )),
            _ => Source::Utf8(chained),
        };
        let csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(delimiter)
            .buffer_capacity(SNIFF_LEN)
            .from_reader(source);
        let mut this = CsvContactReader {
            csv,
            headers: Vec::new(),
            encoding,
            record: ByteRecord::new(),
            last_row: 0,
            line_after: 1,
        };
        if !this.csv.read_byte_record(&mut this.record)? {
            return Err(ImportError::Empty);
        }
        this.advance_row();
        let mut headers = Vec::with_capacity(this.record.len());
        for field in this.record.iter() {
            let h = std::str::from_utf8(field).map_err(|_| {
                ImportError::Undecodable(
                    "the header row is not valid UTF-8; the file is probably Shift_JIS: \
                     import it with --encoding shift_jis"
                        .into(),
                )
            })?;
            headers.push(h.trim_start_matches('\u{feff}').trim().to_string());
        }
        if encoding == Encoding::ShiftJis && headers.iter().any(|h| h.contains('\u{fffd}')) {
            return Err(ImportError::Undecodable(
                "the header row is not valid Shift_JIS; if the file is UTF-8, import it with \
                 --encoding utf-8"
                    .into(),
            ));
        }
        if headers.iter().all(|h| h.is_empty()) {
            return Err(ImportError::NoHeader(
                "the first row has no column names".into(),
            ));
        }
        if let Some(h) = headers
            .iter()
            .find(|h| crate::email_address::normalize_email(h, "email").is_ok())
        {
            return Err(ImportError::NoHeader(format!(
                "the first row looks like data ({h:?} is an e-mail address): add a header row \
                 naming the columns, e.g. 会社名,氏名,メールアドレス"
            )));
        }
        this.headers = headers;
        Ok(this)
    }

    /// The header row (BOM removed, trimmed), to build an [`ImportPlan`] from.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The encoding in use (never [`Encoding::Auto`]: what auto-detection chose).
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The next data row, mapped and validated with `plan` (built from [`Self::headers`]):
    /// `Ok(Some(Ok(row)))`, `Ok(Some(Err(problems)))` for an invalid row (all of its problems),
    /// `Ok(None)` at the end. Rows whose cells are all empty are skipped. `Err` only when the
    /// file cannot be read further (I/O); stop then.
    pub fn next_row(&mut self, plan: &ImportPlan) -> Result<Option<RowResult>, ImportError> {
        loop {
            if !self.csv.read_byte_record(&mut self.record)? {
                return Ok(None);
            }
            let row = self.advance_row();
            let record = std::mem::take(&mut self.record);
            let (record, errors) = match StringRecord::from_byte_record(record) {
                Ok(r) => {
                    let errors = if self.encoding == Encoding::ShiftJis
                        && r.as_slice().contains('\u{fffd}')
                    {
                        self.undecodable_cells(plan, row, &r)
                    } else {
                        Vec::new()
                    };
                    (r, errors)
                }
                Err(e) => {
                    let bytes = e.into_byte_record();
                    let errors = self.invalid_utf8_cells(plan, row, &bytes);
                    (StringRecord::from_byte_record_lossy(bytes), errors)
                }
            };
            let empty = record.iter().all(|f| f.trim().is_empty());
            let result = if empty {
                None
            } else {
                Some(self.map(plan, row, &record, errors))
            };
            self.record = record.into_byte_record();
            if let Some(r) = result {
                return Ok(Some(r));
            }
        }
    }

    fn map(
        &self,
        plan: &ImportPlan,
        row: u64,
        record: &StringRecord,
        errors: Vec<RowError>,
    ) -> RowResult {
        let want = plan.columns.len();
        if record.len() == want {
            return finish(
                row::map_row(plan, record, row, Vec::new(), Vec::new()),
                errors,
            );
        }
        match row::repair_thousands(plan, record) {
            Some((fixed, note)) => finish(
                row::map_row(plan, &fixed, row, vec![note], Vec::new()),
                errors,
            ),
            None => {
                let mut errors = errors;
                errors.push(row::count_mismatch(row, record.len(), want));
                Err(errors)
            }
        }
    }

    /// Counts the spreadsheet row of the record just read: one more than the last, plus any
    /// blank lines before it (the parser skips them, a spreadsheet shows them as rows), but not
    /// line breaks inside quoted cells.
    fn advance_row(&mut self) -> u64 {
        let line_now = self.csv.position().line();
        let consumed = line_now.saturating_sub(self.line_after);
        let inside = self
            .record
            .as_slice()
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        // The record's own terminator is one of the consumed lines (none at end of file).
        let blank = consumed.saturating_sub(inside).saturating_sub(1);
        self.line_after = line_now;
        self.last_row += 1 + blank;
        self.last_row
    }

    fn column_name(&self, plan: &ImportPlan, i: usize) -> String {
        plan.columns
            .get(i)
            .map(|c| c.header.clone())
            .unwrap_or_else(|| format!("(column {})", i + 1))
    }

    fn invalid_utf8_cells(&self, plan: &ImportPlan, row: u64, rec: &ByteRecord) -> Vec<RowError> {
        rec.iter()
            .enumerate()
            .filter(|(_, f)| std::str::from_utf8(f).is_err())
            .map(|(i, f)| RowError {
                row,
                column: Some(self.column_name(plan, i)),
                value: Some(String::from_utf8_lossy(f).into_owned()),
                reason: "the cell is not valid UTF-8; if the file is Shift_JIS, import it with \
                         --encoding shift_jis"
                    .into(),
            })
            .collect()
    }

    fn undecodable_cells(&self, plan: &ImportPlan, row: u64, rec: &StringRecord) -> Vec<RowError> {
        rec.iter()
            .enumerate()
            .filter(|(_, f)| f.contains('\u{fffd}'))
            .map(|(i, f)| RowError {
                row,
                column: Some(self.column_name(plan, i)),
                value: Some(f.to_string()),
                reason: "the cell has bytes that are not valid Shift_JIS (shown as \u{fffd}); \
                         if the file is UTF-8, import it with --encoding utf-8"
                    .into(),
            })
            .collect()
    }
}

/// Merges decoding errors found before mapping with the mapping's result; a cell already
/// reported as undecodable is not reported again for its (garbled) value.
fn finish(result: RowResult, mut decode_errors: Vec<RowError>) -> RowResult {
    if decode_errors.is_empty() {
        return result;
    }
    if let Err(errs) = result {
        for e in errs {
            let dup = e.column.is_some() && decode_errors.iter().any(|d| d.column == e.column);
            if !dup {
                decode_errors.push(e);
            }
        }
    }
    Err(decode_errors)
}

fn read_prefix<R: Read>(reader: &mut R) -> Result<(Vec<u8>, bool), ImportError> {
    let mut buf = vec![0; SNIFF_LEN];
    let mut len = 0;
    let mut eof = false;
    while len < buf.len() {
        match reader.read(&mut buf[len..]) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(len);
    Ok((buf, eof))
}

fn reject_non_text(prefix: &[u8]) -> Result<(), ImportError> {
    let not = |why: &str| Err(ImportError::NotCsv(why.into()));
    if prefix.is_empty() || prefix == b"\xEF\xBB\xBF" {
        return Err(ImportError::Empty);
    }
    if prefix.starts_with(b"PK\x03\x04") {
        return not("it is an Excel workbook (.xlsx) or another zip file; save it as CSV first");
    }
    if prefix.starts_with(b"\xD0\xCF\x11\xE0") {
        return not("it is an old Excel workbook (.xls); save it as CSV first");
    }
    if prefix.starts_with(b"%PDF") {
        return not("it is a PDF");
    }
    if prefix.starts_with(b"\xFF\xFE") || prefix.starts_with(b"\xFE\xFF") {
        return not("it is UTF-16 text (Excel's \"Unicode text\"); save it as \"CSV UTF-8\"");
    }
    if prefix.contains(&0) {
        return not("it contains NUL bytes, so it is binary data, not text");
    }
    Ok(())
}

fn detect(prefix: &[u8], eof: bool) -> Result<Encoding, ImportError> {
    let utf8_err = match std::str::from_utf8(prefix) {
        Ok(_) => return Ok(Encoding::Utf8),
        // Cut off mid-character at the end of the sniffed part: still UTF-8.
        Err(e) if e.error_len().is_none() && !eof => return Ok(Encoding::Utf8),
        Err(e) => e.valid_up_to(),
    };
    let mut decoder = encoding_rs::SHIFT_JIS.new_decoder_without_bom_handling();
    let mut out = String::with_capacity(
        decoder
            .max_utf8_buffer_length_without_replacement(prefix.len())
            .unwrap_or(prefix.len() * 3),
    );
    // With `last` false, a lead byte cut off at the end of the sniffed part is not an error.
    let (result, _) = decoder.decode_to_string_without_replacement(prefix, &mut out, eof);
    match result {
        encoding_rs::DecoderResult::InputEmpty => Ok(Encoding::ShiftJis),
        _ => Err(ImportError::Undecodable(format!(
            "the file is neither UTF-8 nor Shift_JIS (first byte that is not UTF-8 at offset \
             {utf8_err}); save it as \"CSV UTF-8\", or name its encoding with --encoding"
        ))),
    }
}

/// `,` unless the first line has no comma but has tabs or semicolons. Safe on Shift_JIS bytes:
/// its trail bytes never take these values.
fn sniff_delimiter(prefix: &[u8]) -> u8 {
    let line = prefix.split(|&b| b == b'\n').next().unwrap_or(prefix);
    let count = |d: u8| line.iter().filter(|&&b| b == d).count();
    if count(b',') > 0 {
        b','
    } else if count(b'\t') > 0 {
        b'\t'
    } else if count(b';') > 0 {
        b';'
    } else {
        b','
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::company::normalize_company_name;
    use crate::field::{FieldDefinition, FieldType};
    use crate::patch::Patch;
    use chrono::Utc;
    use proptest::prelude::*;
    use serde_json::Value;
    use std::collections::{BTreeSet, HashMap};

    const SJIS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/tradeshow-2026-10.sjis.csv"
    );
    const UTF8: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/tradeshow-2026-10.utf8.csv"
    );

    fn interest_defs() -> HashMap<String, FieldDefinition> {
        let mut m = HashMap::new();
        m.insert(
            "interest".to_string(),
            FieldDefinition {
                name: "interest".into(),
                label: "Interest".into(),
                field_type: FieldType::SingleSelect,
                options: vec!["高".into(), "中".into(), "低".into()],
                created_at: Utc::now(),
            },
        );
        m
    }

    fn fixture_map() -> Vec<(String, String)> {
        vec![("アンケート:関心度".into(), "interest".into())]
    }

    /// Reads everything; panics on a file-level error.
    fn read_all(
        bytes: &[u8],
        encoding: Encoding,
        map: &[(String, String)],
        defs: &HashMap<String, FieldDefinition>,
    ) -> (Encoding, Vec<RowResult>) {
        let mut r = CsvContactReader::new(bytes, encoding).unwrap();
        let plan = ImportPlan::build(r.headers(), map, defs).unwrap();
        let mut out = Vec::new();
        while let Some(row) = r.next_row(&plan).unwrap() {
            out.push(row);
        }
        (r.encoding(), out)
    }

    fn ok_rows(rows: Vec<RowResult>) -> Vec<ImportRow> {
        rows.into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e:?}")))
            .collect()
    }

    fn val<T: Clone>(p: &Patch<T>) -> Option<T> {
        match p {
            Patch::Value(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// A comparable rendering of an imported row.
    fn summary(r: &ImportRow) -> String {
        format!(
            "{} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            r.row,
            r.contact,
            r.company.as_ref().map(|c| val(&c.name)),
            r.company.as_ref().map(|c| val(&c.domain)),
            r.company.as_ref().map(|c| val(&c.employee_count)),
            r.company.as_ref().map(|c| val(&c.industry)),
            r.notes,
            r.contact.custom,
            r.email(),
            r.contact.address,
        )
    }

    #[test]
    fn fixture_encodings_give_identical_rows() {
        let sjis = std::fs::read(SJIS).unwrap();
        let utf8 = std::fs::read(UTF8).unwrap();
        let (enc_s, rows_s) = read_all(&sjis, Encoding::ShiftJis, &fixture_map(), &interest_defs());
        let (enc_u, rows_u) = read_all(&utf8, Encoding::Utf8, &fixture_map(), &interest_defs());
        assert_eq!((enc_s, enc_u), (Encoding::ShiftJis, Encoding::Utf8));
        let rows_s = ok_rows(rows_s);
        let rows_u = ok_rows(rows_u);
        // The file holds 12 data rows (spreadsheet rows 2–13) of 11 people; its README says 13
        // and 12, counting the header row.
        assert_eq!(rows_s.len(), 12);
        assert_eq!(
            rows_s.iter().map(summary).collect::<Vec<_>>(),
            rows_u.iter().map(summary).collect::<Vec<_>>()
        );

        let rows = rows_u;
        assert_eq!(rows.first().unwrap().row, 2);
        assert_eq!(rows.last().unwrap().row, 13);
        let emails: BTreeSet<&str> = rows.iter().map(|r| r.email()).collect();
        // taro.yamada@… twice, once as "taro.yamada@yamada-shoji.co.jp " with another case.
        assert_eq!(emails.len(), 11, "{emails:?}");
        assert!(emails.contains("yumi.kato@abc-systems.example.jp"));
        let companies: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r.company.as_ref())
            .map(|c| normalize_company_name(&val(&c.name).unwrap()))
            .collect();
        assert_eq!(companies.len(), 7, "{companies:?}");

        // Data row 5 (spreadsheet row 6): `1,200` without quotes.
        let repaired = &rows[4];
        assert_eq!(repaired.row, 6);
        assert_eq!(repaired.email(), "misaki.takahashi@suzuki-ss.jp");
        let co = repaired.company.as_ref().unwrap();
        assert_eq!(co.employee_count, Patch::Value(1200));
        assert_eq!(co.industry, Patch::Value("製造業".into()));
        assert_eq!(
            repaired.notes,
            vec!["repaired an unquoted thousands separator in 従業員数: 1,200".to_string()]
        );
        // Its 関心度 cell is empty, not shifted.
        assert!(repaired.contact.custom.is_empty());
        assert_eq!(rows.iter().filter(|r| !r.notes.is_empty()).count(), 1);

        // cp932-only characters survive.
        let sakiko = rows
            .iter()
            .find(|r| r.email() == "sakiko@takahashi-kensetsu.example.jp")
            .unwrap();
        assert_eq!(sakiko.contact.last_name, Patch::Value("髙橋".into()));
        assert_eq!(sakiko.contact.first_name, Patch::Value("﨑子".into()));
        assert_eq!(
            val(&sakiko.company.as_ref().unwrap().name).as_deref(),
            Some("髙橋建設株式会社")
        );

        // Full-width digits, derived domains, custom single select.
        let sato = &rows[2];
        assert_eq!(
            sato.company.as_ref().unwrap().employee_count,
            Patch::Value(150)
        );
        assert_eq!(sato.contact.phone, Patch::Absent);
        assert_eq!(
            sato.company.as_ref().unwrap().domain,
            Patch::Value("yamada-shoji.co.jp".into())
        );
        assert_eq!(
            rows[0].contact.custom.get("interest"),
            Some(&Value::from("高"))
        );
        let john = &rows[11];
        assert_eq!(john.contact.first_name, Patch::Value("John".into()));
        assert_eq!(john.contact.last_name, Patch::Value("Smith".into()));
        assert_eq!(john.contact.phone, Patch::Value("+81-3-9999-0000".into()));
    }

    #[test]
    fn auto_detection_picks_the_encoding() {
        for (path, want) in [(SJIS, Encoding::ShiftJis), (UTF8, Encoding::Utf8)] {
            let bytes = std::fs::read(path).unwrap();
            let (enc, rows) = read_all(&bytes, Encoding::Auto, &fixture_map(), &interest_defs());
            assert_eq!(enc, want, "{path}");
            assert_eq!(ok_rows(rows).len(), 12, "{path}");
        }
        // UTF-8 without BOM.
        let utf8 = std::fs::read(UTF8).unwrap();
        let (enc, rows) = read_all(&utf8[3..], Encoding::Auto, &fixture_map(), &interest_defs());
        assert_eq!(enc, Encoding::Utf8);
        assert_eq!(ok_rows(rows).len(), 12);
    }

    #[test]
    fn a_shift_jis_file_read_as_utf8_says_what_to_do() {
        let sjis = std::fs::read(SJIS).unwrap();
        let e = CsvContactReader::new(sjis.as_slice(), Encoding::Utf8).unwrap_err();
        assert!(matches!(e, ImportError::Undecodable(_)), "{e}");
        assert!(e.to_string().contains("--encoding shift_jis"), "{e}");
        // Header in ASCII, body in Shift_JIS: cell errors, not garbage.
        let mut bytes = b"email,company\r\na@x.example.jp,".to_vec();
        bytes.extend_from_slice(&sjis[0..6]);
        bytes.extend_from_slice(b"\r\n");
        let (_, rows) = read_all(&bytes, Encoding::Utf8, &[], &HashMap::new());
        let errs = rows.into_iter().next().unwrap().unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].column.as_deref(), Some("company"));
        assert!(errs[0].reason.contains("shift_jis"));
    }

    #[test]
    fn invalid_email_is_reported_with_row_column_value_and_reason() {
        let csv = "会社名,氏名,メールアドレス\r\n\
                   株式会社A,山田 太郎,taro@a.example.jp\r\n\
                   株式会社B,田中 花子,hanako at b.example.jp\r\n\
                   株式会社C,佐藤 一郎,\r\n";
        let (_, rows) = read_all(csv.as_bytes(), Encoding::Auto, &[], &HashMap::new());
        assert_eq!(rows.len(), 3);
        assert!(rows[0].is_ok());
        let errs = rows[1].as_ref().unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let e = &errs[0];
        assert_eq!(e.row, 3);
        assert_eq!(e.column.as_deref(), Some("メールアドレス"));
        assert_eq!(e.value.as_deref(), Some("hanako at b.example.jp"));
        assert!(e.reason.contains("not an e-mail address"), "{}", e.reason);
        assert!(
            e.to_string()
                .starts_with("row 3, column \"メールアドレス\""),
            "{e}"
        );
        let errs = rows[2].as_ref().unwrap_err();
        assert_eq!(errs[0].row, 4);
        assert!(errs[0].reason.contains("no e-mail address"), "{errs:?}");
        let json = serde_json::to_value(&errs[0]).unwrap();
        assert_eq!(json["column"], "メールアドレス");
    }

    #[test]
    fn every_problem_of_a_row_is_reported() {
        let csv = "email,employee_count,lifecycle_stage,phone,interest\n\
                   bad,many,nope,no digits,最高\n";
        let (_, rows) = read_all(csv.as_bytes(), Encoding::Auto, &[], &interest_defs());
        let errs = rows[0].as_ref().unwrap_err();
        let cols: BTreeSet<_> = errs.iter().filter_map(|e| e.column.as_deref()).collect();
        assert_eq!(
            cols,
            BTreeSet::from([
                "email",
                "employee_count",
                "lifecycle_stage",
                "phone",
                "interest"
            ]),
            "{errs:?}"
        );
    }

    #[test]
    fn full_name_column_is_split() {
        let csv = "氏名,email\n山田 太郎,a@x.example.jp\n山田　太郎,b@x.example.jp\n\
                   John Smith,c@x.example.jp\n山田,d@x.example.jp\n";
        let (_, rows) = read_all(csv.as_bytes(), Encoding::Auto, &[], &HashMap::new());
        let names: Vec<_> = ok_rows(rows)
            .iter()
            .map(|r| (val(&r.contact.last_name), val(&r.contact.first_name)))
            .collect();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            names,
            vec![
                (s("山田"), s("太郎")),
                (s("山田"), s("太郎")),
                (s("Smith"), s("John")),
                (s("山田"), None),
            ]
        );
    }

    #[test]
    fn custom_single_select_column() {
        let csv = "メール,アンケート:関心度\na@x.example.jp,中\nb@x.example.jp,すごく高い\n\
                   c@x.example.jp,\n";
        let (_, rows) = read_all(
            csv.as_bytes(),
            Encoding::Auto,
            &fixture_map(),
            &interest_defs(),
        );
        assert_eq!(
            rows[0].as_ref().unwrap().contact.custom.get("interest"),
            Some(&Value::from("中"))
        );
        let e = &rows[1].as_ref().unwrap_err()[0];
        assert_eq!(e.column.as_deref(), Some("アンケート:関心度"));
        assert!(e.reason.contains("高"), "{}", e.reason);
        assert!(rows[2].as_ref().unwrap().contact.custom.is_empty());
    }

    #[test]
    fn column_count_mismatches() {
        let csv = "email,company,employee_count,annual_revenue,industry\n\
                   a@x.example.jp,X社,1,200,300,製造業\n\
                   b@x.example.jp,X社,12,000,5,製造業\n\
                   c@x.example.jp,X社,1,２００,5,製造業\n\
                   d@x.example.jp,X社,5\n\
                   e@x.example.jp,X社,5,6,a,b\n\
                   f@x.example.jp,X社,1,200,000,5,製造業\n";
        let (_, rows) = read_all(csv.as_bytes(), Encoding::Auto, &[], &HashMap::new());
        let counts = |r: &ImportRow| {
            let co = r.company.as_ref().unwrap();
            (val(&co.employee_count), val(&co.annual_revenue))
        };
        // Two numeric columns could each hold the split: ambiguous, so not repaired.
        let a = &rows[0].as_ref().unwrap_err()[0];
        assert!(
            a.reason
                .contains("the row has 6 values but the header has 5 columns")
                && a.reason.contains("double quotes"),
            "{}",
            a.reason
        );
        assert_eq!(a.row, 2);
        let b = rows[1].as_ref().unwrap();
        assert_eq!(counts(b), (Some(12_000), Some(5)));
        assert_eq!(
            b.notes,
            vec!["repaired an unquoted thousands separator in employee_count: 12,000".to_string()]
        );
        // Full-width digits count as digits.
        assert_eq!(counts(rows[2].as_ref().unwrap()), (Some(1200), Some(5)));
        let short = &rows[3].as_ref().unwrap_err()[0];
        assert!(
            short
                .reason
                .contains("3 values but the header has 5 columns"),
            "{}",
            short.reason
        );
        assert!(rows[4].is_err());
        // Two extra fields: 1,200,000, the only place that fits.
        assert_eq!(
            counts(rows[5].as_ref().unwrap()),
            (Some(1_200_000), Some(5))
        );
    }

    #[test]
    fn row_numbers_count_blank_lines_but_not_breaks_inside_cells() {
        let csv = "email,street\n\
                   a@x.example.jp,\"1-2-3\n4F\"\n\
                   \n\
                   b@x.example.jp,x\n\
                   ,\n\
                   bad,y";
        let (_, rows) = read_all(csv.as_bytes(), Encoding::Auto, &[], &HashMap::new());
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].as_ref().unwrap().row, 2);
        assert_eq!(rows[1].as_ref().unwrap().row, 4);
        assert_eq!(rows[2].as_ref().unwrap_err()[0].row, 6);
    }

    #[test]
    fn company_domain_comes_from_work_email_only() {
        let csv = "会社名,email,url\nA社,a@gmail.com,\nB社,b@b-sha.example.jp,https://www.b.example.com/\n";
        let (_, rows) = read_all(csv.as_bytes(), Encoding::Auto, &[], &HashMap::new());
        let rows = ok_rows(rows);
        assert_eq!(rows[0].company.as_ref().unwrap().domain, Patch::Absent);
        assert_eq!(
            rows[1].company.as_ref().unwrap().domain,
            Patch::Value("b-sha.example.jp".into())
        );
        let csv =
            "email,company_domain\na@gmail.com,https://Example.co.jp/x\nb@x.jp,not a domain\n";
        let (_, rows) = read_all(csv.as_bytes(), Encoding::Auto, &[], &HashMap::new());
        let co = rows[0].as_ref().unwrap().company.clone().unwrap();
        assert_eq!(co.domain, Patch::Value("example.co.jp".into()));
        assert_eq!(co.name, Patch::Absent);
        assert_eq!(
            rows[1].as_ref().unwrap_err()[0].column.as_deref(),
            Some("company_domain")
        );
    }

    #[test]
    fn not_csv_and_empty_files() {
        let err = |b: &[u8]| CsvContactReader::new(b, Encoding::Auto).unwrap_err();
        assert!(matches!(err(b""), ImportError::Empty));
        assert!(matches!(err(b"\xEF\xBB\xBF"), ImportError::Empty));
        assert!(matches!(err(b"\n\n\r\n"), ImportError::Empty));
        assert!(matches!(err(b"PK\x03\x04rest"), ImportError::NotCsv(_)));
        assert!(matches!(err(b"\xFF\xFEa\0b\0"), ImportError::NotCsv(_)));
        assert!(matches!(err(b"a,b\0c"), ImportError::NotCsv(_)));
        assert!(matches!(err(b",,,\n"), ImportError::NoHeader(_)));
        assert!(matches!(
            err(b"taro@x.example.jp,Taro\n"),
            ImportError::NoHeader(_)
        ));
        assert!(matches!(
            err(b"\x80\x80\xFF,a\n"),
            ImportError::Undecodable(_)
        ));
    }

    #[test]
    fn tab_separated_files() {
        let csv = "メールアドレス\t会社名\na@x.example.jp\t株式会社A\n";
        let (_, rows) = read_all(csv.as_bytes(), Encoding::Auto, &[], &HashMap::new());
        assert_eq!(
            val(&ok_rows(rows)[0].company.as_ref().unwrap().name).as_deref(),
            Some("株式会社A")
        );
    }

    #[test]
    fn encoding_names() {
        for (s, e) in [
            ("UTF-8", Encoding::Utf8),
            ("utf8", Encoding::Utf8),
            ("Shift_JIS", Encoding::ShiftJis),
            ("sjis", Encoding::ShiftJis),
            ("cp932", Encoding::ShiftJis),
            ("auto", Encoding::Auto),
        ] {
            assert_eq!(s.parse::<Encoding>().unwrap(), e);
        }
        assert_eq!("latin1".parse::<Encoding>().unwrap_err().field, "encoding");
    }

    fn drain(bytes: &[u8], enc: Encoding, map: &[(String, String)]) {
        if let Ok(mut r) = CsvContactReader::new(bytes, enc)
            && let Ok(plan) = ImportPlan::build(r.headers(), map, &interest_defs())
        {
            while let Ok(Some(_)) = r.next_row(&plan) {}
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for enc in [Encoding::Auto, Encoding::Utf8, Encoding::ShiftJis] {
                drain(&bytes, enc, &[]);
                let mut with_header = b"email,\xe5\x90\x8d,employee_count,interest\n".to_vec();
                with_header.extend_from_slice(&bytes);
                drain(&with_header, enc, &[]);
            }
        }

        #[test]
        fn arbitrary_cells_never_panic(
            cells in proptest::collection::vec(proptest::collection::vec(".{0,12}", 0..7), 0..8),
            map_col in ".{0,6}",
            map_field in ".{0,6}",
        ) {
            let mut w = csv::WriterBuilder::new().flexible(true).from_writer(Vec::new());
            w.write_record(["email", "氏名", "従業員数", "売上高", "interest", "会社名"]).unwrap();
            for row in &cells {
                // Rows of any length, as hand-made files have.
                w.write_record(row).unwrap();
            }
            let bytes = w.into_inner().unwrap();
            drain(&bytes, Encoding::Auto, &[(map_col, map_field)]);
            drain(&bytes, Encoding::Auto, &[]);
        }
    }

    #[test]
    fn perf_adhoc() {
        let mut csv = String::from(
            "会社名,部署,役職,姓,名,メールアドレス,電話番号,従業員数,業種,名刺交換日,アンケート:関心度\r\n",
        );
        let n = 200_000;
        for i in 0..n {
            csv.push_str(&format!("株式会社山田商事{},営業部,部長,山田,太郎,Taro.Yamada{}@yamada-shoji{}.co.jp,03-1234-5678,1{},卸売業,2026/10/14,高\r\n", i % 977, i, i % 1000, i % 1000));
        }
        for (label, bytes) in [
            ("utf8", csv.clone().into_bytes()),
            ("sjis", encoding_rs::SHIFT_JIS.encode(&csv).0.into_owned()),
        ] {
            for _ in 0..3 {
                let t = std::time::Instant::now();
                let mut r = CsvContactReader::new(bytes.as_slice(), Encoding::Auto).unwrap();
                let plan =
                    ImportPlan::build(r.headers(), &fixture_map(), &interest_defs()).unwrap();
                let mut ok = 0;
                while let Some(row) = r.next_row(&plan).unwrap() {
                    if row.is_ok() {
                        ok += 1;
                    }
                }
                let el = t.elapsed();
                assert_eq!(ok, n);
                eprintln!(
                    "PERF {label} {} rows in {:?} = {:.0} rows/s ({} MB)",
                    n,
                    el,
                    n as f64 / el.as_secs_f64(),
                    bytes.len() / 1_000_000
                );
            }
        }
    }
}
