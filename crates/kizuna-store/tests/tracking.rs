//! Tracking ingestion against every backend (SQLite always, PostgreSQL when
//! `KIZUNA_TEST_DATABASE_URL` is set): dedupe, identity resolution, merges, first touch,
//! groups, offline events, the group commit and its hook.

use chrono::{DateTime, Duration, TimeZone, Utc};
use kizuna_core::clock::{ManualClock, SharedClock};
use kizuna_core::contact::{ContactInput, LifecycleStage};
use kizuna_core::tracking::offline::{ContactRef, OfflineEvent};
use kizuna_core::tracking::{Endpoint, Message, parse};
use kizuna_store::events::TimelineFilter;
use kizuna_store::ingest::{IngestCache, Ingested, Submission};
use kizuna_store::ingestor::{CommitHook, IngestError, Ingestor, IngestorConfig};
use kizuna_store::offline::{OfflineError, OfflineOptions};
use kizuna_store::{Store, StoreConfig};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

struct Backend {
    store: Store,
    name: &'static str,
    _dir: Option<tempfile::TempDir>,
}

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut out = vec![Backend {
        store: sqlite,
        name: "sqlite",
        _dir: Some(dir),
    }];
    if let Ok(url) = std::env::var("KIZUNA_TEST_DATABASE_URL") {
        let pg = Store::open(&StoreConfig {
            database_url: Some(url),
            pg_schema: Some(format!("t_{}", Uuid::now_v7().simple())),
            max_connections: 4,
            ..Default::default()
        })
        .await
        .expect("KIZUNA_TEST_DATABASE_URL is set but PostgreSQL is not reachable");
        out.push(Backend {
            store: pg,
            name: "postgres",
            _dir: None,
        });
    }
    out
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 10, 14, 9, 0, 0).unwrap()
}

fn msgs(batch: Value, now: DateTime<Utc>) -> Vec<Message> {
    parse(
        Endpoint::Batch,
        &serde_json::to_vec(&json!({ "batch": batch })).unwrap(),
        Some("wk"),
        now,
    )
    .unwrap()
    .messages
}

async fn ingest(s: &Store, key: Uuid, batch: Value, now: DateTime<Utc>) -> Ingested {
    s.ingest(
        &[Submission {
            source_key: key,
            messages: msgs(batch, now),
        }],
        now,
        &mut IngestCache::default(),
    )
    .await
    .unwrap()
}

async fn types(s: &Store, id: Uuid) -> Vec<String> {
    s.timeline(id, &TimelineFilter::default(), None, 1000)
        .await
        .unwrap()
        .data
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

fn page(anon: &str, url: &str, mid: &str) -> Value {
    json!({"type": "page", "anonymousId": anon, "messageId": mid,
           "properties": {"url": url, "path": url.split(".jp").nth(1).unwrap_or("/")},
           "context": {"library": {"name": "analytics.js", "version": "5.2.0"},
                       "page": {"url": url, "referrer": "https://www.google.co.jp/"}}})
}

#[tokio::test]
async fn a_replayed_batch_counts_once() {
    for b in backends().await {
        let s = &b.store;
        let key = Uuid::now_v7();
        let batch = json!([
            page("a1", "https://example.jp/", "m1"),
            {"type": "track", "anonymousId": "a1", "event": "Whitepaper Downloaded", "messageId": "m2"},
            // No messageId but a client time: the content hash dedupes its retry.
            {"type": "track", "anonymousId": "a1", "event": "Video Played", "timestamp": "2026-10-14T08:59:00Z"},
            // The same messageId twice within one batch counts once too.
            {"type": "track", "anonymousId": "a1", "event": "Whitepaper Downloaded", "messageId": "m2"},
        ]);
        let first = ingest(s, key, batch.clone(), t0()).await;
        assert_eq!((first.stored, first.duplicates), (3, 1), "{}", b.name);
        let again = ingest(s, key, batch.clone(), t0() + Duration::seconds(5)).await;
        assert_eq!((again.stored, again.duplicates), (0, 4), "{}", b.name);
        assert!(again.event_ids.is_empty());
        let id = s
            .contact_by_identity("anonymous_id", "a1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            types(s, id).await,
            [
                "Whitepaper Downloaded",
                "page.viewed",
                "contact.created",
                "Video Played"
            ],
            "{}: once each, newest first (the video's client time is a minute earlier)",
            b.name
        );
        // Another source may reuse the same messageIds: those are other events.
        let other = ingest(s, Uuid::now_v7(), batch, t0()).await;
        assert_eq!(other.stored, 3, "{}", b.name);
    }
}

#[tokio::test]
async fn anonymous_history_merges_into_the_imported_contact_on_identify() {
    for b in backends().await {
        let s = &b.store;
        let key = Uuid::now_v7();
        // Imported from a trade-show CSV earlier: known, MQL, no web history.
        let known = s
            .create_contact(
                serde_json::from_value::<ContactInput>(json!({
                    "email": "hanako@sato-kogyo.co.jp", "last_name": "佐藤", "lifecycle_stage": "mql"
                }))
                .unwrap(),
                t0() - Duration::days(30),
                "import",
            )
            .await
            .unwrap();
        // An anonymous visitor arrives from a newsletter and browses (one group)…
        ingest(
            s,
            key,
            json!([
                page("cookie-1", "https://example.jp/?utm_source=newsletter&utm_medium=email&utm_campaign=autumn", "p1"),
                page("cookie-1", "https://example.jp/pricing", "p2"),
            ]),
            t0(),
        )
        .await;
        let anon = s
            .contact_by_identity("anonymous_id", "cookie-1")
            .await
            .unwrap()
            .unwrap();
        let profile = s.contact(anon).await.unwrap();
        assert_eq!(profile.email, None);
        assert_eq!(
            profile.source.channel.as_deref(),
            Some("email"),
            "{}",
            b.name
        );
        assert_eq!(profile.source.utm_campaign.as_deref(), Some("autumn"));

        // …and later fills in a form: identify with the known e-mail (a later group).
        let out = ingest(
            s,
            key,
            json!([{"type": "identify", "anonymousId": "cookie-1", "messageId": "i1",
                    "traits": {"email": "Hanako@Sato-Kogyo.co.jp", "firstName": "花子", "title": "課長"},
                    "context": {"library": {"name": "analytics.js"}}}]),
            t0() + Duration::minutes(3),
        )
        .await;
        assert_eq!(out.merges, 1, "{}", b.name);
        assert!(s.contact(anon).await.is_err(), "the profile is folded in");
        let c = s.contact(known.id).await.unwrap();
        assert_eq!(
            c.lifecycle_stage,
            LifecycleStage::Mql,
            "{}: the known stage stays",
            b.name
        );
        assert_eq!(c.last_name.as_deref(), Some("佐藤"));
        assert_eq!(c.first_name.as_deref(), Some("花子"), "empty fields filled");
        assert_eq!(c.job_title.as_deref(), Some("課長"));
        assert_eq!(
            c.source.channel.as_deref(),
            Some("email"),
            "{}: first touch from the web visit",
            b.name
        );
        let tl = types(s, known.id).await;
        for t in [
            "page.viewed",
            "contact.identified",
            "contact.merged",
            "contact.created",
        ] {
            assert!(tl.iter().any(|x| x == t), "{}: {t} in {tl:?}", b.name);
        }
        assert_eq!(tl.iter().filter(|t| *t == "page.viewed").count(), 2);
        // The cookie now resolves to the known contact.
        assert_eq!(
            s.contact_by_identity("anonymous_id", "cookie-1")
                .await
                .unwrap(),
            Some(known.id)
        );
        let next = ingest(
            s,
            key,
            json!([page("cookie-1", "https://example.jp/case", "p3")]),
            t0() + Duration::minutes(5),
        )
        .await;
        assert_eq!(next.contact_ids, [known.id], "{}", b.name);
        assert_eq!(next.contacts_created, 0);

        // The merge is recorded and undoable: the profile comes back with its cookie.
        let merges: Vec<Value> = s
            .timeline(
                known.id,
                &TimelineFilter {
                    types: vec!["contact.merged".into()],
                },
                None,
                10,
            )
            .await
            .unwrap()
            .data
            .into_iter()
            .map(|e| e.properties)
            .collect();
        let merge_id: Uuid = merges[0]["merge_id"].as_str().unwrap().parse().unwrap();
        s.undo_merge(merge_id, true, t0() + Duration::minutes(6))
            .await
            .unwrap();
        assert_eq!(
            s.contact_by_identity("anonymous_id", "cookie-1")
                .await
                .unwrap(),
            Some(anon),
            "{}: undo moves the cookie back",
            b.name
        );
    }
}

#[tokio::test]
async fn one_group_with_anonymous_pages_and_identify_writes_no_stray_profile() {
    for b in backends().await {
        let s = &b.store;
        // analytics.js queues page, identify, track and sends them in one batch.
        let out = ingest(
            s,
            Uuid::now_v7(),
            json!([
                page("c9", "https://example.jp/?gclid=abc", "x1"),
                {"type": "identify", "userId": "u-9", "anonymousId": "c9", "messageId": "x2",
                 "traits": {"email": "ken@example.co.jp", "name": "Ken Ito"}},
                {"type": "track", "userId": "u-9", "anonymousId": "c9", "event": "Trial Started", "messageId": "x3"},
            ]),
            t0(),
        )
        .await;
        assert_eq!((out.contacts_created, out.merges), (1, 0), "{}", b.name);
        let id = s
            .contact_by_identity("user_id", "u-9")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.contact_by_identity("anonymous_id", "c9").await.unwrap(),
            Some(id)
        );
        let c = s.contact(id).await.unwrap();
        assert_eq!(c.email.as_deref(), Some("ken@example.co.jp"));
        assert_eq!(
            (c.first_name.as_deref(), c.last_name.as_deref()),
            (Some("Ken"), Some("Ito"))
        );
        assert_eq!(
            c.source.channel.as_deref(),
            Some("paid_search"),
            "{}",
            b.name
        );
        assert_eq!(s.count_contacts().await.unwrap(), 1);
        let tl = s
            .timeline(id, &TimelineFilter::default(), None, 50)
            .await
            .unwrap()
            .data;
        assert!(tl.iter().all(|e| !e.source.is_empty()));
        let page = tl.iter().find(|e| e.event_type == "page.viewed").unwrap();
        assert_eq!(page.source, "sdk");
        assert_eq!(page.context.as_ref().unwrap()["anonymous_id"], "c9");
        assert_eq!(page.properties["url"], "https://example.jp/?gclid=abc");
    }
}

#[tokio::test]
async fn user_id_and_email_contacts_are_one_person() {
    for b in backends().await {
        let s = &b.store;
        let key = Uuid::now_v7();
        // A server SDK knows user 42 without an e-mail…
        ingest(
            s,
            key,
            json!([{"type": "track", "userId": 42, "event": "Login", "messageId": "l1"}]),
            t0(),
        )
        .await;
        let by_user = s
            .contact_by_identity("user_id", "42")
            .await
            .unwrap()
            .unwrap();
        // …the CRM knows the e-mail…
        let by_email = s
            .create_contact(
                serde_json::from_value::<ContactInput>(
                    json!({"email": "ito@example.co.jp", "phone": "03-1111-2222"}),
                )
                .unwrap(),
                t0(),
                "api",
            )
            .await
            .unwrap();
        // …and an identify says they are one person.
        let out = ingest(
            s,
            key,
            json!([{"type": "identify", "userId": 42, "messageId": "i42", "traits": {"email": "ito@example.co.jp", "title": "部長"}}]),
            t0() + Duration::hours(1),
        )
        .await;
        assert_eq!(out.merges, 1, "{}", b.name);
        assert!(s.contact(by_user).await.is_err());
        let c = s.contact(by_email.id).await.unwrap();
        assert_eq!(c.phone.as_deref(), Some("03-1111-2222"));
        assert_eq!(
            c.job_title.as_deref(),
            Some("部長"),
            "server traits applied"
        );
        assert_eq!(
            s.contact_by_identity("user_id", "42").await.unwrap(),
            Some(by_email.id)
        );
        assert!(
            types(s, by_email.id).await.contains(&"Login".to_string()),
            "{}: events kept",
            b.name
        );

        // A different user id claiming that e-mail does not take the contact over.
        ingest(
            s,
            key,
            json!([{"type": "identify", "userId": "intruder", "messageId": "i43", "traits": {"email": "ito@example.co.jp", "firstName": "X"}}]),
            t0() + Duration::hours(2),
        )
        .await;
        let other = s
            .contact_by_identity("user_id", "intruder")
            .await
            .unwrap()
            .unwrap();
        assert_ne!(other, by_email.id, "{}", b.name);
        assert_eq!(s.contact(other).await.unwrap().email, None);
        assert_eq!(s.contact(by_email.id).await.unwrap().first_name, None);
    }
}

#[tokio::test]
async fn browser_traits_fill_but_do_not_overwrite() {
    for b in backends().await {
        let s = &b.store;
        let c = s
            .create_contact(
                serde_json::from_value::<ContactInput>(
                    json!({"email": "mika@example.jp", "job_title": "部長"}),
                )
                .unwrap(),
                t0(),
                "api",
            )
            .await
            .unwrap();
        ingest(
            s,
            Uuid::now_v7(),
            json!([{"type": "identify", "anonymousId": "b1", "messageId": "k1",
                    "traits": {"email": "mika@example.jp", "title": "社長", "phone": "090-1234-5678", "email_verified": {"deep": [1]}},
                    "context": {"library": {"name": "kizuna.js"}}}]),
            t0(),
        )
        .await;
        let after = s.contact(c.id).await.unwrap();
        assert_eq!(after.job_title.as_deref(), Some("部長"), "{}", b.name);
        assert_eq!(after.phone.as_deref(), Some("090-1234-5678"));
        let ev = s
            .timeline(
                c.id,
                &TimelineFilter {
                    types: vec!["contact.identified".into()],
                },
                None,
                5,
            )
            .await
            .unwrap();
        assert_eq!(ev.data[0].source, "snippet", "{}", b.name);
    }
}

#[tokio::test]
async fn alias_and_group() {
    for b in backends().await {
        let s = &b.store;
        let key = Uuid::now_v7();
        ingest(
            s,
            key,
            json!([page("anon-z", "https://example.jp/", "z1")]),
            t0(),
        )
        .await;
        let anon = s
            .contact_by_identity("anonymous_id", "anon-z")
            .await
            .unwrap()
            .unwrap();
        ingest(s, key, json!([{"type": "alias", "previousId": "anon-z", "userId": "acct-7", "messageId": "z2"}]), t0()).await;
        assert_eq!(
            s.contact_by_identity("user_id", "acct-7").await.unwrap(),
            Some(anon),
            "{}",
            b.name
        );

        ingest(
            s,
            key,
            json!([{"type": "group", "userId": "acct-7", "groupId": "org-1", "messageId": "z3",
                    "traits": {"name": "株式会社山田商事", "website": "https://www.yamada-shoji.co.jp/", "employees": 350, "industry": "製造業"}}]),
            t0(),
        )
        .await;
        let c = s.contact(anon).await.unwrap();
        let company = s.company(c.company_id.expect("linked")).await.unwrap();
        assert_eq!(
            company.domain.as_deref(),
            Some("yamada-shoji.co.jp"),
            "{}",
            b.name
        );
        assert_eq!(company.employee_count, Some(350));
        // The same group with new traits updates the same company; a name written another
        // way (名寄せ) finds it too.
        ingest(
            s,
            key,
            json!([
                {"type": "group", "userId": "acct-7", "groupId": "org-1", "messageId": "z4", "traits": {"employees": 400}},
                {"type": "group", "anonymousId": "anon-q", "groupId": "org-2", "messageId": "z5", "traits": {"name": "(株)山田商事"}}
            ]),
            t0(),
        )
        .await;
        assert_eq!(
            s.company(company.id).await.unwrap().employee_count,
            Some(400)
        );
        let q = s
            .contact_by_identity("anonymous_id", "anon-q")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.contact(q).await.unwrap().company_id,
            Some(company.id),
            "{}",
            b.name
        );
    }
}

#[tokio::test]
async fn offline_events_attach_by_email_all_or_nothing() {
    for b in backends().await {
        let s = &b.store;
        let c = s
            .create_contact(
                serde_json::from_value::<ContactInput>(json!({"email": "a@example.jp"})).unwrap(),
                t0(),
                "api",
            )
            .await
            .unwrap();
        let ev = |row: u64, email: &str, t: &str| OfflineEvent {
            row,
            contact: ContactRef::Email(email.into()),
            event_type: t.into(),
            occurred_at: t0() - Duration::days(1),
            message_id: None,
            properties: json!({"seminar": "秋のDXセミナー"})
                .as_object()
                .unwrap()
                .clone(),
        };
        let opts = OfflineOptions {
            create_contacts: false,
            source: "import".into(),
            detail: Some("seminar.csv".into()),
        };
        let err = s
            .record_offline_events(
                vec![
                    ev(2, "a@example.jp", "seminar.attended"),
                    ev(3, "nobody@example.jp", "seminar.attended"),
                ],
                &opts,
                t0(),
            )
            .await
            .unwrap_err();
        match err {
            OfflineError::Rows(rows) => {
                assert_eq!(rows.iter().map(|r| r.row).collect::<Vec<_>>(), [3])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.count_events(c.id).await.unwrap(),
            1,
            "{}: nothing recorded",
            b.name
        );

        let ok = s
            .record_offline_events(
                vec![
                    ev(2, "a@example.jp", "seminar.attended"),
                    ev(3, "new@example.jp", "seminar.attended"),
                ],
                &OfflineOptions {
                    create_contacts: true,
                    ..opts.clone()
                },
                t0(),
            )
            .await
            .unwrap();
        assert_eq!((ok.stored, ok.contacts_created), (2, 1), "{}", b.name);
        let created = s.contact_by_email("new@example.jp").await.unwrap().unwrap();
        assert_eq!(created.source.channel.as_deref(), Some("offline"));
        assert_eq!(created.source.detail.as_deref(), Some("seminar.csv"));
        // Importing the same file again records nothing new.
        let again = s
            .record_offline_events(vec![ev(2, "a@example.jp", "seminar.attended")], &opts, t0())
            .await
            .unwrap();
        assert_eq!((again.stored, again.duplicates), (0, 1), "{}", b.name);
        let tl = s
            .timeline(
                c.id,
                &TimelineFilter {
                    types: vec!["seminar.*".into()],
                },
                None,
                10,
            )
            .await
            .unwrap()
            .data;
        assert_eq!(tl.len(), 1);
        assert_eq!(tl[0].source, "import");
        assert_eq!(tl[0].properties["seminar"], "秋のDXセミナー");
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Ingested>>);

impl CommitHook for Recorder {
    fn committed(&self, c: &Ingested) {
        self.0.lock().unwrap().push(c.clone());
    }
}

#[tokio::test]
async fn the_group_commit_answers_after_commit_tells_the_hook_and_sheds_load() {
    for b in backends().await {
        let s = &b.store;
        let clock: SharedClock = Arc::new(ManualClock::new(t0()));
        let hook = Arc::new(Recorder::default());
        let ing = Ingestor::start(
            s.clone(),
            clock,
            IngestorConfig {
                max_group_messages: 10_000,
                max_pending_messages: 1000,
            },
            Some(hook.clone()),
        );
        let key = Uuid::now_v7();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let ing = ing.clone();
            let m: Vec<Value> = (0..10)
                .map(|j| json!({"type": "track", "anonymousId": format!("v{i}"), "event": "Viewed", "messageId": format!("{i}-{j}")}))
                .collect();
            let messages = msgs(json!(m), t0());
            tasks.push(tokio::spawn(async move {
                ing.submit(Submission {
                    source_key: key,
                    messages,
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // Acknowledged means committed: every event is readable now.
        assert_eq!(s.count_all_events().await.unwrap(), 200 + 20, "{}", b.name);
        let told: usize = hook.0.lock().unwrap().iter().map(|c| c.stored).sum();
        assert_eq!(
            told, 200,
            "{}: the hook heard of every stored message",
            b.name
        );
        let contacts: usize = hook
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.contact_ids.len())
            .sum();
        assert_eq!(contacts, 20);

        // While the writer is held up, what waits is bounded: past the limit a request is
        // refused at once (the HTTP layer answers 429), not queued.
        let mut blocker = s.db().begin().await.unwrap();
        kizuna_store::ingest::lock_identities(&mut blocker)
            .await
            .unwrap();
        let batch = |tag: &str| {
            msgs(
                json!((0..600).map(|j| json!({"type": "track", "anonymousId": "x", "event": "E", "messageId": format!("{tag}-{j}")})).collect::<Vec<_>>()),
                t0(),
            )
        };
        let waiting = {
            let ing = ing.clone();
            let messages = batch("first");
            tokio::spawn(async move {
                ing.submit(Submission {
                    source_key: key,
                    messages,
                })
                .await
            })
        };
        while ing.available() == 1000 {
            tokio::task::yield_now().await;
        }
        let refused = ing
            .submit(Submission {
                source_key: key,
                messages: batch("second"),
            })
            .await;
        assert!(
            matches!(refused, Err(IngestError::Overloaded)),
            "{}: {refused:?}",
            b.name
        );
        drop(blocker);
        waiting.await.unwrap().unwrap();
        assert_eq!(ing.available(), 1000, "permits come back after the commit");
        assert_eq!(
            s.count_all_events().await.unwrap(),
            220 + 600 + 1,
            "{}",
            b.name
        );
    }
}
