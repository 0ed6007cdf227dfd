//! A real SMTP server for tests: Debian's aiosmtpd (installed by `scripts/test-peers`),
//! delivering into a Maildir. Shared by the test crates of kizuna-web and kizuna.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};

/// The interpreter `scripts/test-peers` installs the Python peers into.
pub const PY: &str = "/usr/bin/python3";

/// A peer process, killed when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts aiosmtpd on a free port, delivering into the Maildir `dir`; waits until it accepts
/// connections (polling the real peer).
pub fn start_aiosmtpd(dir: &Path) -> (Peer, u16) {
    let port = free_port();
    let child = Command::new(PY)
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(dir)
        .spawn()
        .expect("aiosmtpd: run scripts/test-peers");
    let peer = Peer(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (peer, port);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("aiosmtpd did not start");
}

/// The raw messages in a Maildir.
pub fn maildir_messages(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                out.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}
