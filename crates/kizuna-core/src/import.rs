//! CSV import of contact lists (R-DATA-4). Being written: see the module plan in the issue.
