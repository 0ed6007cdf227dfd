//! The outbox and broadcasts on every backend: idempotent enqueue, exclusive claims by two
//! workers, crash recovery (never-handed → queued, handed → ambiguous, never resent), and a
//! throttled broadcast paused and resumed without a duplicate or a skip.

use chrono::{DateTime, Duration, TimeZone, Utc};
use kizuna_store::email::broadcasts::{Audience, BroadcastInput};
use kizuna_store::email::outbox::{NewMessage, Outcome, SendResult};
use kizuna_store::email::senders::SenderInput;
use kizuna_store::email::templates::TemplateInput;
use kizuna_store::{Store, StoreConfig};
use serde_json::json;
use std::collections::HashSet;
use uuid::Uuid;

async fn backends(dir: &std::path::Path) -> Vec<(&'static str, Store)> {
    let mut v = vec![(
        "sqlite",
        Store::open(&StoreConfig {
            data_dir: dir.to_path_buf(),
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
                pg_schema: Some(format!("t_{}", Uuid::now_v7().simple())),
                max_connections: 6,
                ..Default::default()
            })
            .await
            .unwrap(),
        ));
    }
    v
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap()
}

async fn contacts(s: &Store, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let c = s
            .create_contact(
                serde_json::from_value(json!({"email": format!("u{i}@example.jp")})).unwrap(),
                t0(),
                "api",
            )
            .await
            .unwrap();
        ids.push(c.id);
    }
    ids
}

async fn template(s: &Store) -> Uuid {
    s.create_template(
        TemplateInput {
            name: "t".into(),
            kind: "marketing".into(),
            subject: "s".into(),
            mjml: None,
            html: Some("<p>x</p>".into()),
            text: None,
        },
        t0(),
    )
    .await
    .unwrap()
    .id
}

fn msg(key: &str, contact: Uuid, template: Uuid) -> NewMessage {
    NewMessage {
        idempotency_key: key.into(),
        contact_id: contact,
        template_id: template,
        sender_id: None,
        author: "identity".into(),
        kind: "marketing".into(),
        subscription_type: Some("newsletter".into()),
        broadcast_id: None,
        variant: None,
        subject_override: None,
        source: "program".into(),
        payload: json!({}),
        due_at: t0(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_exclusive_and_a_crash_never_resends() {
    let dir = tempfile::tempdir().unwrap();
    for (b, s) in backends(dir.path()).await {
        let people = contacts(&s, 40).await;
        let t = template(&s).await;
        let msgs: Vec<NewMessage> = people
            .iter()
            .map(|c| msg(&format!("p:{c}"), *c, t))
            .collect();
        assert_eq!(s.enqueue_emails(&msgs, t0()).await.unwrap(), 40, "{b}");
        assert_eq!(
            s.enqueue_emails(&msgs, t0()).await.unwrap(),
            0,
            "{b}: a second enqueue is a no-op"
        );
        // Two workers claim at once: no message is claimed twice.
        let lease = t0() + Duration::seconds(60);
        let (a, c) = tokio::join!(
            s.claim_due_emails("a", t0(), lease, 25),
            s.claim_due_emails("b", t0(), lease, 25)
        );
        let (a, c) = (a.unwrap(), c.unwrap());
        let ids_a: HashSet<Uuid> = a.iter().map(|m| m.id).collect();
        let ids_c: HashSet<Uuid> = c.iter().map(|m| m.id).collect();
        assert!(ids_a.is_disjoint(&ids_c), "{b}");
        assert_eq!(ids_a.len() + ids_c.len(), 40, "{b}");
        // Worker a hands 10 to SMTP, records 5 as sent, then dies; b records everything.
        let handed: Vec<Uuid> = a.iter().take(10).map(|m| m.id).collect();
        assert_eq!(
            s.mark_emails_handed("a", &handed, t0(), lease)
                .await
                .unwrap()
                .len(),
            10
        );
        let sent: Vec<SendResult> = a
            .iter()
            .take(5)
            .map(|m| SendResult {
                message: m.clone(),
                outcome: Outcome::Sent {
                    smtp_reply: "250 ok".into(),
                    to_address: "x@example.jp".into(),
                    subject: "s".into(),
                    link_count: 0,
                },
            })
            .collect();
        s.record_email_results("a", &sent, t0()).await.unwrap();
        // Another node cannot mark a's messages.
        assert!(
            s.mark_emails_handed("b", &handed, t0(), lease)
                .await
                .unwrap()
                .is_empty(),
            "{b}"
        );
        // Before the lease expires nothing is recovered; after it, never-handed ones are queued
        // again and handed-but-unrecorded ones are ambiguous.
        assert_eq!(
            s.recover_email_leases(t0(), None).await.unwrap(),
            (0, 0),
            "{b}"
        );
        let after = t0() + Duration::seconds(61);
        let (requeued, ambiguous) = s.recover_email_leases(after, None).await.unwrap();
        assert_eq!(
            (requeued, ambiguous),
            (a.len() as u64 - 10 + c.len() as u64, 5),
            "{b}"
        );
        let counts = s.email_state_counts(None).await.unwrap();
        assert_eq!(counts.get("sent"), Some(&5), "{b}");
        assert_eq!(counts.get("ambiguous"), Some(&5), "{b}");
        // Ambiguous messages are never claimed again; only the queued ones are.
        let again = s
            .claim_due_emails("c", after, after + Duration::seconds(60), 100)
            .await
            .unwrap();
        assert_eq!(again.len(), 30, "{b}");
        assert!(again.iter().all(|m| !handed.contains(&m.id)), "{b}");
        // A node restarting under the same name recovers its own leases at once.
        let (q, _) = s.recover_email_leases(after, Some("c")).await.unwrap();
        assert_eq!(q, 30, "{b}");
        // An operator resolves an ambiguous one after checking the relay.
        let amb = handed[5];
        assert_eq!(
            s.resolve_ambiguous_email(amb, "resend", after)
                .await
                .unwrap()
                .state,
            "queued",
            "{b}"
        );
        assert!(
            s.resolve_ambiguous_email(amb, "sent", after).await.is_err(),
            "{b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_broadcast_pauses_and_resumes_without_duplicate_or_skip() {
    let dir = tempfile::tempdir().unwrap();
    for (b, s) in backends(dir.path()).await {
        let people = contacts(&s, 25).await;
        let t = template(&s).await;
        let list = s.create_list("news", None, t0()).await.unwrap();
        s.add_to_list(list.id, &people, t0()).await.unwrap();
        let sender = s
            .create_sender(
                SenderInput {
                    name: "n".into(),
                    email: "n@example.jp".into(),
                    organization: "o".into(),
                    postal_address: "a".into(),
                    reply_to: None,
                },
                t0(),
            )
            .await
            .unwrap();
        let bc = s
            .create_broadcast(
                BroadcastInput {
                    name: "weekly".into(),
                    template_id: t,
                    sender_id: sender.id,
                    author: "identity".into(),
                    subscription_type: "newsletter".into(),
                    audience: Audience::list(list.id),
                    throttle_per_minute: Some(60),
                    ab: None,
                },
                t0(),
            )
            .await
            .unwrap();
        s.schedule_broadcast(bc.id, t0(), t0()).await.unwrap();
        // Start, then batches of 10: pause after the first batch.
        s.advance_broadcast(bc.id, "marketing", 10, t0())
            .await
            .unwrap();
        let e = s
            .advance_broadcast(bc.id, "marketing", 10, t0())
            .await
            .unwrap();
        assert_eq!(e.inserted, 10, "{b}");
        s.pause_broadcast(bc.id, t0()).await.unwrap();
        assert_eq!(
            s.advance_broadcast(bc.id, "marketing", 10, t0())
                .await
                .unwrap()
                .inserted,
            0,
            "{b}: paused"
        );
        let held = s.email_state_counts(Some(bc.id)).await.unwrap();
        assert_eq!(held.get("held"), Some(&10), "{b}");
        assert!(
            s.claim_due_emails(
                "w",
                t0() + Duration::hours(1),
                t0() + Duration::hours(2),
                100
            )
            .await
            .unwrap()
            .is_empty(),
            "{b}: held messages are not sent"
        );
        // Resume an hour later: the rest is enqueued, each contact exactly once, 1/s apart.
        let later = t0() + Duration::hours(1);
        s.resume_broadcast(bc.id, later).await.unwrap();
        while s
            .advance_broadcast(bc.id, "marketing", 10, later)
            .await
            .unwrap()
            .more
        {}
        s.advance_broadcast(bc.id, "marketing", 10, later)
            .await
            .unwrap();
        let all = s
            .list_emails(
                &kizuna_store::email::outbox::EmailFilter {
                    broadcast_id: Some(bc.id),
                    ..Default::default()
                },
                None,
                100,
            )
            .await
            .unwrap()
            .data;
        let recipients: HashSet<Uuid> = all.iter().map(|m| m.contact_id).collect();
        assert_eq!(
            (all.len(), recipients.len()),
            (25, 25),
            "{b}: no duplicate, no skip"
        );
        let mut due: Vec<DateTime<Utc>> = all.iter().map(|m| m.due_at).collect();
        due.sort();
        assert!(
            due.windows(2).all(|w| w[1] - w[0] >= Duration::seconds(1)),
            "{b}: throttled"
        );
        assert!(due[0] >= later, "{b}: shifted by the pause");
        // Only what is due by now can be claimed: throttling holds.
        let first = s
            .claim_due_emails(
                "w",
                later + Duration::milliseconds(4500),
                later + Duration::hours(1),
                100,
            )
            .await
            .unwrap();
        assert_eq!(first.len(), 5, "{b}");
    }
}
