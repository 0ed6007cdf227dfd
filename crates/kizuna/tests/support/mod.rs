//! The harness the binary-level tests share: a store on SQLite or PostgreSQL (as `kizuna`
//! flags and as a store config) and a running `kizuna serve`.
//! Each test crate uses part of it.
#![allow(dead_code)]

use kizuna_store::{Store, StoreConfig};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use uuid::Uuid;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kizuna");

/// Where a test's data lives, as `kizuna` flags and as a store config.
pub struct Db {
    pub name: &'static str,
    pub dir: tempfile::TempDir,
    pub pg: Option<(String, String)>,
}

impl Db {
    pub fn sqlite() -> Db {
        Db {
            name: "sqlite",
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        }
    }

    pub async fn all() -> Vec<Db> {
        let mut out = vec![Db::sqlite()];
        if let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") {
            let schema = format!("t_{}", Uuid::now_v7().simple());
            // Creates the schema (and migrates it), so the binary can use it by search_path.
            let db = Db {
                name: "postgres",
                dir: tempfile::tempdir().unwrap(),
                pg: Some((url, schema)),
            };
            db.open().await.close().await;
            out.push(db);
        }
        out
    }

    pub fn args(&self) -> Vec<String> {
        match &self.pg {
            None => vec!["--data-dir".into(), self.dir.path().display().to_string()],
            Some((url, schema)) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                vec![
                    "--database-url".into(),
                    format!("{url}{sep}options[search_path]={schema}"),
                ]
            }
        }
    }

    pub async fn open(&self) -> Store {
        Store::open(&match &self.pg {
            None => StoreConfig {
                data_dir: self.dir.path().to_path_buf(),
                ..Default::default()
            },
            Some((url, schema)) => StoreConfig {
                database_url: Some(url.clone()),
                pg_schema: Some(schema.clone()),
                max_connections: 2,
                ..Default::default()
            },
        })
        .await
        .unwrap()
    }

    /// Runs a `kizuna` command on this store.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.args());
        Command::new(BIN)
            .args(&all)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    pub fn last_line(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    }
}

/// A running `kizuna serve`, killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub fn start(db: &Db) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(db.args())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let rest = &line[i + "listening on ".len()..];
                    let url: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(url);
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("kizuna serve did not start");
        Server { child, base }
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real SMTP server the kizuna-web tests use (aiosmtpd into a Maildir).
#[path = "../../../kizuna-web/tests/support/smtp.rs"]
pub mod smtp;
