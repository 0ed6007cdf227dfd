//! Peers and stores the HTTP-level tests share: a real SMTP server (Debian's aiosmtpd,
//! delivering into a Maildir) and the stores every test runs on (SQLite, and PostgreSQL when
//! `KIZUNA_TEST_DATABASE_URL` is set). Each test crate uses part of it.
#![allow(dead_code)]

use kizuna_store::{Store, StoreConfig};
use std::path::Path;

pub mod smtp;

/// A fresh store on every backend: SQLite under `dir`, and a fresh PostgreSQL schema.
pub async fn stores(dir: &Path) -> Vec<(&'static str, Store)> {
    let mut v = vec![(
        "sqlite",
        Store::open(&StoreConfig {
            data_dir: dir.join("db"),
            ..Default::default()
        })
        .await
        .unwrap(),
    )];
    if let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") {
        v.push((
            "postgres",
            Store::open(&StoreConfig {
                database_url: Some(url),
                pg_schema: Some(format!("t_{}", uuid::Uuid::now_v7().simple())),
                max_connections: 4,
                ..Default::default()
            })
            .await
            .expect("PostgreSQL"),
        ));
    }
    v
}
