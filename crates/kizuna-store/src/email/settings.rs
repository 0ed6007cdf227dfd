//! Installation-wide mail settings kept in the database, so that every node shares them.

use crate::db::One;
use crate::{Store, StoreError, args};

impl Store {
    /// The value of a mail setting; when absent, `init` is stored and returned. Safe when several
    /// nodes start at once: the first writer wins and everyone reads its value.
    pub async fn mail_setting_or_init(&self, key: &str, init: &str) -> Result<String, StoreError> {
        let mut tx = self.db().begin().await?;
        tx.execute(
            "INSERT INTO mail_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            args![key, init],
        )
        .await?;
        let v: One<String> = tx
            .fetch_one("SELECT value FROM mail_settings WHERE key = $1", args![key])
            .await?;
        tx.commit().await?;
        Ok(v.0)
    }
}
