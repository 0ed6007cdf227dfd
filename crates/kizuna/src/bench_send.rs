//! `kizuna bench send`: messages per second to a local SMTP sink, three ways, in one run.
//!
//! 1. **ceiling**: one pre-rendered, signed message sent N times through the pooled SMTP client;
//! 2. **personalized**: N sample contacts, each rendered from MJML (personalization, footer,
//!    tracking links, MIME) and DKIM-signed on every core, streamed into the same client;
//! 3. **outbox**: the durable path — N contacts with consent in a list, a broadcast, and the
//!    delivery worker (leases, suppression and consent checks, handed/result records and
//!    `email.sent` events in SQLite) until every message is sent.
//!
//! CPU time of this process and of the sink is printed for each, to show which side saturates.

use anyhow::{Context, bail};
use chrono::Utc;
use futures_util::StreamExt;
use kizuna_core::clock::{SharedClock, SystemClock};
use kizuna_delivery::{EmailService, EmailSettings, Worker, WorkerConfig};
use kizuna_mail::bench::{sample_composer, sample_contacts, sample_sender, sample_template};
use kizuna_mail::compose::{Author, BuiltMessage, MessageSpec};
use kizuna_mail::dkim::DkimSigner;
use kizuna_mail::links::TrackingOptions;
use kizuna_mail::smtp::{SendOutcome, SmtpConfig, SmtpSender};
use kizuna_store::email::broadcasts::{Audience, BroadcastInput};
use kizuna_store::email::consents::{ConsentStatus, NewConsent, SubscriptionType};
use kizuna_store::email::senders::SenderInput;
use kizuna_store::email::templates::TemplateInput;
use kizuna_store::{Store, StoreConfig};
use std::process::{Child, ExitCode};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

pub(crate) struct Sink {
    pub(crate) addr: String,
    child: Option<Child>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn start_sink(given: Option<String>) -> anyhow::Result<Sink> {
    if let Some(a) = given {
        return Ok(Sink {
            addr: a,
            child: None,
        });
    }
    let bin = ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .context(
            "postfix's smtp-sink not found: run scripts/test-peers (or pass --smtp HOST:PORT)",
        )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = std::process::Command::new(bin);
    // As root smtp-sink needs a user to switch to.
    if std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
    {
        cmd.args(["-u", "nobody"]);
    }
    let child = cmd
        .args([addr.as_str(), "1024"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting smtp-sink")?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return Ok(Sink {
                addr,
                child: Some(child),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("smtp-sink did not start on {addr}")
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

struct Meter {
    start: Instant,
    me: f64,
    sink: f64,
    sink_pid: Option<u32>,
}

impl Meter {
    fn new(sink: &Sink) -> Self {
        let sink_pid = sink.child.as_ref().map(|c| c.id());
        Self {
            start: Instant::now(),
            me: cpu_seconds(None).unwrap_or(0.0),
            sink: sink_pid.and_then(|p| cpu_seconds(Some(p))).unwrap_or(0.0),
            sink_pid,
        }
    }
    /// (seconds, our CPU %, sink CPU %).
    fn stop(&self) -> (f64, f64, Option<f64>) {
        let secs = self.start.elapsed().as_secs_f64();
        let me = cpu_seconds(None).unwrap_or(0.0) - self.me;
        let sink = self
            .sink_pid
            .and_then(|p| cpu_seconds(Some(p)))
            .map(|s| 100.0 * (s - self.sink) / secs);
        (secs, 100.0 * me / secs, sink)
    }
}

fn dkim_signer(kind: &str, dir: &std::path::Path) -> anyhow::Result<DkimSigner> {
    match kind {
        "ed25519" => Ok(DkimSigner::generate_ed25519("kizuna.example.jp", "bench")?.0),
        "rsa" => {
            let key = dir.join("dkim.pem");
            let st = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&key)
                .stderr(std::process::Stdio::null())
                .status()
                .context("openssl is needed to make an RSA key (or use --dkim ed25519)")?;
            anyhow::ensure!(st.success(), "openssl genpkey failed");
            Ok(DkimSigner::from_pem_file(
                "kizuna.example.jp",
                "bench",
                &key,
            )?)
        }
        other => bail!("--dkim is rsa or ed25519, not {other:?}"),
    }
}

async fn send_all(
    sender: &SmtpSender,
    concurrency: usize,
    messages: impl futures_util::Stream<Item = Arc<BuiltMessage>>,
) -> (usize, usize) {
    messages
        .map(|m| {
            let s = sender.clone();
            async move {
                matches!(
                    s.send(&m.envelope, &m.bytes).await,
                    SendOutcome::Sent { .. }
                )
            }
        })
        .buffer_unordered(concurrency)
        .fold((0usize, 0usize), |(ok, bad), r| async move {
            if r { (ok + 1, bad) } else { (ok, bad + 1) }
        })
        .await
}

fn line(name: &str, n: usize, ok: usize, m: (f64, f64, Option<f64>)) -> f64 {
    let rate = ok as f64 / m.0;
    println!(
        "{name:<13} {n:>9} {ok:>9} {rate:>12.0} {:>9.2} {:>11.0}% {:>10}",
        m.0,
        m.1,
        m.2.map(|s| format!("{s:.0}%"))
            .unwrap_or_else(|| "-".into())
    );
    rate
}

pub async fn run(
    n: usize,
    smtp: Option<String>,
    connections: usize,
    dkim: &str,
    outbox_n: usize,
) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let sink = start_sink(smtp)?;
    let (host, port) = sink.addr.rsplit_once(':').context("--smtp is HOST:PORT")?;
    let mut cfg = SmtpConfig::new(host, port.parse()?);
    cfg.max_connections = connections;
    cfg.max_messages_per_connection = 100_000;
    let sender = SmtpSender::new(cfg)?;
    let signer = dkim_signer(dkim, tmp.path())?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    println!(
        "kizuna bench send — {n} messages, {connections} SMTP connections to {} ({}), DKIM {dkim}, {cores} cores",
        sink.addr,
        if sink.child.is_some() {
            "postfix smtp-sink"
        } else {
            "given sink"
        }
    );
    let per = kizuna_mail::bench::render_and_sign_per_second(
        2000.min(n.max(1)),
        (dkim == "rsa").then_some(&signer),
    )?;
    println!(
        "per message on one core: render {:.1} µs (MJML {:?}; {:.1} µs re-rendering MJML each time), DKIM rsa {} µs, ed25519 {:.1} µs, {} bytes",
        per.render_us,
        per.mjml_strategy,
        per.render_mjml_per_message_us,
        per.dkim_rsa_us
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "-".into()),
        per.dkim_ed25519_us,
        per.message_bytes
    );
    println!(
        "{:<13} {:>9} {:>9} {:>12} {:>9} {:>12} {:>10}",
        "path", "messages", "accepted", "messages/s", "seconds", "kizuna CPU", "sink CPU"
    );
    let composer = Arc::new(sample_composer(vec![signer.clone()])?);
    let template = Arc::new(sample_template().compile()?);
    let people = Arc::new(sample_contacts(n));
    let sender_id = Arc::new(sample_sender());
    let date = Utc::now();

    // 1. Ceiling: one pre-rendered message.
    let (c0, co0) = &people[0];
    let one = Arc::new(composer.build(
        &template,
        &MessageSpec {
            message_id: Uuid::now_v7(),
            contact: c0,
            company: Some(co0),
            owner: None,
            sender: &sender_id,
            author: Author::Identity,
            date,
            campaign: Some("bench"),
            tracking: TrackingOptions::default(),
        },
    )?);
    let m = Meter::new(&sink);
    let (ok, _) = send_all(
        &sender,
        connections * 4,
        futures_util::stream::iter((0..n).map(|_| one.clone())),
    )
    .await;
    let ceiling = line("ceiling", n, ok, m.stop());

    // 2. Personalized: render + sign on every core, streamed into the client.
    let m = Meter::new(&sink);
    let (tx, rx) = tokio::sync::mpsc::channel::<Arc<BuiltMessage>>(4096);
    let mut threads = Vec::new();
    for t in 0..cores {
        let (tx, composer, template, people, s) = (
            tx.clone(),
            composer.clone(),
            template.clone(),
            people.clone(),
            sender_id.clone(),
        );
        threads.push(std::thread::spawn(move || {
            for (c, co) in people.iter().skip(t).step_by(cores) {
                let built = composer.build(
                    &template,
                    &MessageSpec {
                        message_id: Uuid::now_v7(),
                        contact: c,
                        company: Some(co),
                        owner: None,
                        sender: &s,
                        author: Author::Identity,
                        date,
                        campaign: Some("bench"),
                        tracking: TrackingOptions::default(),
                    },
                );
                if let Ok(b) = built
                    && tx.blocking_send(Arc::new(b)).is_err()
                {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let (ok, _) = send_all(&sender, connections * 4, tokio_stream_of(rx)).await;
    for t in threads {
        let _ = t.join();
    }
    let personalized = line("personalized", n, ok, m.stop());

    // 3. The durable outbox.
    let outbox = if outbox_n > 0 {
        Some(bench_outbox(outbox_n, &sink, connections, signer, tmp.path()).await?)
    } else {
        None
    };
    println!(
        "personalized / ceiling = {:.0}%{}",
        100.0 * personalized / ceiling,
        outbox
            .map(|o| format!("; outbox / ceiling = {:.0}%", 100.0 * o / ceiling))
            .unwrap_or_default()
    );
    println!(
        "ceiling = one pre-rendered signed message sent N times through the same pooled SMTP client to the same sink"
    );
    println!(
        "personalized = MJML template personalized per contact + legal footer + click/open tracking + MIME + DKIM, rendered on {cores} threads while sending"
    );
    println!(
        "outbox = broadcast to a list in SQLite: batches enqueued, leases, suppression + consent checks, handed/result commits, email.sent events"
    );
    sender.close().await;
    Ok(ExitCode::SUCCESS)
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn bench_outbox(
    n: usize,
    sink: &Sink,
    connections: usize,
    signer: DkimSigner,
    dir: &std::path::Path,
) -> anyhow::Result<f64> {
    let store = Store::open(&StoreConfig {
        data_dir: dir.join("outbox"),
        sqlite_synchronous: "normal".into(),
        ..Default::default()
    })
    .await?;
    let clock: SharedClock = Arc::new(SystemClock);
    let now = clock.now();
    let people = sample_contacts(n);
    let list = store.create_list("bench", None, now).await?;
    let mut tx = store.db().begin().await?;
    let mut batch = Vec::new();
    for (i, (c, _)) in people.iter().enumerate() {
        let mut c = c.clone();
        c.company_id = None;
        batch.push(c);
        if batch.len() == 1000 || i + 1 == n {
            crate::bench::insert_plain(&mut tx, &batch).await?;
            let mut sql =
                String::from("INSERT INTO list_members (contact_id, list_id, added_at) VALUES ");
            let mut a = Vec::new();
            for (k, c) in batch.iter().enumerate() {
                if k > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${},${},${})",
                    a.len() + 1,
                    a.len() + 2,
                    a.len() + 3
                ));
                a.extend(kizuna_store::args![c.id, list.id, now]);
            }
            tx.execute(kizuna_store::db::assert_sql_safe(sql), a)
                .await?;
            batch.clear();
        }
    }
    tx.commit().await?;
    store
        .put_subscription_type(
            &SubscriptionType {
                name: "newsletter".into(),
                label: "メールマガジン".into(),
                description: None,
            },
            now,
        )
        .await?;
    let consents: Vec<NewConsent> = people
        .iter()
        .map(|(c, _)| NewConsent {
            contact_id: c.id,
            channel: "email".into(),
            subscription_type: "newsletter".into(),
            status: ConsentStatus::Granted,
            source: "import".into(),
            wording: Some("メールマガジンを受け取る".into()),
            wording_version: Some("v1".into()),
            ip: None,
            user_agent: None,
            request_id: None,
            message_id: None,
            occurred_at: now,
        })
        .collect();
    for chunk in consents.chunks(5000) {
        store.record_consents(chunk, now).await?;
    }
    let t = sample_template();
    let template = store
        .create_template(
            TemplateInput {
                name: "bench".into(),
                kind: "marketing".into(),
                subject: t.subject,
                mjml: t.mjml,
                html: None,
                text: None,
            },
            now,
        )
        .await?;
    let s = sample_sender();
    let sender = store
        .create_sender(
            SenderInput {
                name: s.name,
                email: s.email,
                organization: s.organization,
                postal_address: s.postal_address,
                reply_to: None,
            },
            now,
        )
        .await?;
    let b = store
        .create_broadcast(
            BroadcastInput {
                name: "bench".into(),
                template_id: template.id,
                sender_id: sender.id,
                author: "identity".into(),
                subscription_type: "newsletter".into(),
                audience: Audience::list(list.id),
                throttle_per_minute: None,
                ab: None,
            },
            now,
        )
        .await?;
    let mut settings = EmailSettings::for_public_url("https://t.kizuna.example.jp");
    settings.dkim = vec![signer];
    let svc = EmailService::new(store.clone(), clock.clone(), settings).await?;
    let (host, port) = sink.addr.rsplit_once(':').context("sink address")?;
    let mut cfg = SmtpConfig::new(host, port.parse()?);
    cfg.max_connections = connections;
    cfg.max_messages_per_connection = 100_000;
    let worker = Worker::new(
        svc,
        SmtpSender::new(cfg)?,
        None,
        WorkerConfig {
            node_id: "bench".into(),
            ..WorkerConfig::default()
        },
    );
    let m = Meter::new(sink);
    store
        .schedule_broadcast(b.id, clock.now(), clock.now())
        .await?;
    let mut sent = 0u64;
    loop {
        let r = worker.tick().await?;
        sent += r.sent;
        if r.handled() == 0 && r.enqueued == 0 {
            break;
        }
    }
    let rate = line("outbox", n, sent as usize, m.stop());
    let states = store.email_state_counts(Some(b.id)).await?;
    anyhow::ensure!(
        states.get("sent").copied().unwrap_or(0) == n as i64,
        "outbox bench: not every message was sent: {states:?}"
    );
    store.close().await;
    Ok(rate)
}
