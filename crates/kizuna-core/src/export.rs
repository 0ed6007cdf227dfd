//! CSV export of contacts. Being written.
