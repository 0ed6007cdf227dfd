//! `kizuna bench program`: nurture programs under load, on SQLite.
//!
//! 1. **wave**: N contacts enrolled in a program (`wait 1d → send_email → add_score`) are put
//!    into the wait, then the (manual) clock moves a day so every wait expires at once; the
//!    runner works the wave: step executions/s (each wait resuming, each mail put in the outbox,
//!    each field update), next to the baseline of the same number of outbox rows written by a
//!    plain batched insert (the storage floor), measured in the same run.
//! 2. **latency**: a program triggered by an event sends a mail at once; with a background load
//!    of `--background` events/s, trigger events are committed one by one and the time from the
//!    commit (the event's acknowledgement) to the SMTP sink accepting the mail (the outbox's
//!    `sent_at`) is measured, p50/p99, through the real runner, outbox worker and postfix's
//!    `smtp-sink`.

use anyhow::Context;
use chrono::{Duration, Utc};
use kizuna_core::clock::{Clock, ManualClock, SharedClock, SystemClock};
use kizuna_delivery::{EmailService, EmailSettings, Worker, WorkerConfig};
use kizuna_engine::program::{self, ProgramRunner, RunnerConfig};
use kizuna_mail::smtp::{SmtpConfig, SmtpSender};
use kizuna_store::email::outbox::NewMessage;
use kizuna_store::email::senders::SenderInput;
use kizuna_store::email::templates::TemplateInput;
use kizuna_store::events::NewEvent;
use kizuna_store::{Store, StoreConfig};
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

async fn template(store: &Store, kind: &str) -> anyhow::Result<()> {
    store
        .create_template(
            TemplateInput {
                name: "bench-program".into(),
                kind: kind.into(),
                subject: "{{ contact.last_name | default(\"ご担当者\") }}様へのご案内".into(),
                mjml: None,
                html: Some("<p>{{ contact.last_name | default(\"ご担当者\") }}様</p>".into()),
                text: None,
            },
            Utc::now(),
        )
        .await?;
    Ok(())
}

async fn contacts(store: &Store, n: u64) -> anyhow::Result<Vec<Uuid>> {
    crate::demo::generate(store, n, 7, Utc::now()).await?;
    let mut ids = Vec::with_capacity(n as usize);
    let mut after = None;
    loop {
        let page = store.contact_ids_after(after, 50_000).await?;
        let Some(last) = page.last() else { break };
        after = Some(*last);
        ids.extend(page);
    }
    Ok(ids)
}

/// Runs the benchmark.
pub async fn run(n: u64, background: u32, triggers: u32) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await?;
    println!("kizuna bench program — SQLite, {n} contacts");
    let t = Instant::now();
    let ids = contacts(&store, n).await?;
    println!(
        "  setup: {} contacts in {:.1}s",
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    template(&store, "marketing").await?;
    store
        .create_field(
            kizuna_core::field::FieldInput {
                name: "nurture_score".into(),
                label: None,
                field_type: kizuna_core::field::FieldType::Number,
                options: vec![],
            },
            Utc::now(),
        )
        .await?;
    let clock = ManualClock::new(Utc::now());
    let shared: SharedClock = Arc::new(clock.clone());
    let pid = program::create(
        &store,
        &json!({"name": "Bench wave", "triggers": [{"type": "api"}], "steps": [
            {"id": "wait", "type": "wait", "duration": "1d"},
            {"id": "mail", "type": "send_email", "template": "bench-program"},
            {"id": "wait2", "type": "wait", "duration": "30d"}
        ], "pressure": {"time_zone": "UTC"}}),
        "active",
        kizuna_core::time::micros(clock.now()),
    )
    .await?
    .id;
    let runner = ProgramRunner::new(
        store.clone(),
        shared.clone(),
        RunnerConfig {
            due_batch: 5000,
            ..Default::default()
        },
    );
    runner.run_until_idle().await?;
    let t = Instant::now();
    runner
        .enroll_bulk(pid, &ids, kizuna_core::time::micros(clock.now()))
        .await?;
    let enroll = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let first = runner.run_until_idle().await?;
    let into_wait = t.elapsed().as_secs_f64();
    println!(
        "  enrolled {} in {:.1}s; {} into the wait in {:.1}s ({:.0} steps/s)",
        ids.len(),
        enroll,
        first.steps,
        into_wait,
        first.steps as f64 / into_wait
    );
    clock.advance(Duration::days(1));
    let t = Instant::now();
    let wave = runner.run_until_idle().await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "  wave (every wait expires at once): {} enrollments, {} step executions in {:.1}s = {:.0} step executions/s ({:.0} contacts/s)",
        wave.due,
        wave.steps,
        secs,
        wave.steps as f64 / secs,
        wave.due as f64 / secs
    );
    // Baseline: the same number of outbox rows through a plain batched insert.
    let tid = store
        .templates()
        .await?
        .into_iter()
        .find(|t| t.name == "bench-program")
        .context("template")?
        .id;
    let now = Utc::now();
    let t = Instant::now();
    for chunk in ids.chunks(5000) {
        let rows: Vec<NewMessage> = chunk
            .iter()
            .map(|c| NewMessage {
                idempotency_key: format!("baseline:{c}"),
                contact_id: *c,
                template_id: tid,
                sender_id: None,
                author: "identity".into(),
                kind: "marketing".into(),
                subscription_type: None,
                broadcast_id: None,
                variant: None,
                subject_override: None,
                source: "api".into(),
                payload: json!({}),
                due_at: now,
            })
            .collect();
        store.enqueue_emails(&rows, now).await?;
    }
    let base = t.elapsed().as_secs_f64();
    println!(
        "  baseline: {} outbox rows by a plain batched insert in {:.1}s = {:.0} rows/s",
        ids.len(),
        base,
        ids.len() as f64 / base
    );
    println!(
        "  (Mautic's cron path: ~21 scheduled events/s, mautic/mautic#5423; goal here ≥ 20,000 step executions/s)"
    );
    drop(runner);
    store.close().await;
    drop(dir);
    latency(background, triggers).await?;
    Ok(ExitCode::SUCCESS)
}

async fn latency(background: u32, triggers: u32) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await?;
    let sink = crate::bench_send::start_sink(None)?;
    let ids = contacts(&store, 20_000).await?;
    template(&store, "transactional").await?;
    let s = kizuna_mail::bench::sample_sender();
    store
        .create_sender(
            SenderInput {
                name: s.name,
                email: s.email,
                organization: s.organization,
                postal_address: s.postal_address,
                reply_to: None,
            },
            Utc::now(),
        )
        .await?;
    let clock: SharedClock = Arc::new(SystemClock);
    program::create(
        &store,
        &json!({"name": "Bench trigger", "triggers": [{"type": "event", "event": "bench.trigger"}],
                "steps": [{"id": "mail", "type": "send_email", "template": "bench-program"}],
                "reentry": "always", "pressure": {"time_zone": "UTC"}}),
        "active",
        kizuna_core::time::micros(clock.now()),
    )
    .await?;
    let svc = EmailService::new(
        store.clone(),
        clock.clone(),
        EmailSettings::for_public_url("https://t.kizuna.example.jp"),
    )
    .await?;
    let (host, port) = sink.addr.rsplit_once(':').context("sink")?;
    let mut cfg = SmtpConfig::new(host, port.parse()?);
    cfg.max_connections = 4;
    let worker = Worker::new(
        svc.clone(),
        SmtpSender::new(cfg)?,
        None,
        WorkerConfig {
            node_id: "bench".into(),
            ..WorkerConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let wt = tokio::spawn(worker.run(until(stopped.clone())));
    let runner = ProgramRunner::new(
        store.clone(),
        clock.clone(),
        RunnerConfig {
            recheck: std::time::Duration::from_millis(200),
            idle_poll: std::time::Duration::from_millis(5),
            ..Default::default()
        },
    );
    runner.set_mail_wake(svc.wake().clone()).await;
    let rt = runner.spawn(until(stopped.clone()));
    // Background load.
    let bg_store = store.clone();
    let bg_ids = ids.clone();
    let mut bg_stop = stopped.clone();
    let bg = tokio::spawn(async move {
        let per_tick = (background / 10).max(1) as usize;
        let mut i = 0usize;
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = bg_stop.changed() => break,
                _ = tick.tick() => {}
            }
            let now = Utc::now();
            let evs: Vec<NewEvent> = (0..per_tick)
                .map(|k| {
                    i += 1;
                    NewEvent::new(
                        bg_ids[(i * 7919 + k) % bg_ids.len()],
                        "page.viewed",
                        now,
                        "sdk",
                        json!({"path": "/pricing"}),
                    )
                })
                .collect();
            sent += evs.len() as u64;
            let _ = bg_store.append_events(evs, now).await;
        }
        sent
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let bench_start = Instant::now();
    let mut acks = Vec::new();
    for k in 0..triggers as usize {
        let c = ids[(k * 104_729) % ids.len()];
        let now = Utc::now();
        store
            .append_events(
                vec![NewEvent::new(c, "bench.trigger", now, "sdk", json!({}))],
                now,
            )
            .await?;
        acks.push((c, Utc::now()));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Wait for every mail to be accepted by the sink.
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let mut lat: Vec<f64> = Vec::new();
    loop {
        lat.clear();
        let mut missing = 0;
        for (c, ack) in &acks {
            let page = store
                .list_emails(
                    &kizuna_store::email::outbox::EmailFilter {
                        contact_id: Some(*c),
                        ..Default::default()
                    },
                    None,
                    100,
                )
                .await?;
            let sent: Vec<_> = page
                .data
                .iter()
                .filter_map(|m| m.sent_at)
                .filter(|s| *s >= *ack - Duration::seconds(1))
                .collect();
            match sent.iter().min() {
                Some(s) => lat.push((*s - *ack).num_microseconds().unwrap_or(0) as f64 / 1000.0),
                None => missing += 1,
            }
        }
        if missing == 0 || Instant::now() > deadline {
            if missing > 0 {
                println!("  latency: {missing} mails not accepted within 120 s");
            }
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let elapsed = bench_start.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let bg_sent = bg.await.unwrap_or(0);
    let _ = rt.await;
    let _ = wt.await;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "  latency (trigger event committed → mail accepted by smtp-sink), {} triggers at {:.0} background events/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        bg_sent as f64 / (elapsed + 0.5),
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    store.close().await;
    Ok(())
}
