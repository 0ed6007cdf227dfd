//! The store's behaviour, run against every backend: SQLite always, PostgreSQL when
//! `KIZUNA_TEST_DATABASE_URL` is set (CI sets it). Each test gets a fresh database (a temp dir
//! for SQLite, a fresh schema for PostgreSQL).

use chrono::{DateTime, Duration, TimeZone, Utc};
use kizuna_core::company::CompanyInput;
use kizuna_core::contact::{ContactInput, LifecycleStage};
use kizuna_core::field::{FieldInput, FieldType};
use kizuna_core::patch::Patch;
use kizuna_store::contacts::ContactFilter;
use kizuna_store::events::TimelineFilter;
use kizuna_store::imports::{ImportItem, ImportOptions};
use kizuna_store::keys::Scope;
use kizuna_store::users::UserInput;
use kizuna_store::{Store, StoreConfig, StoreError};
use serde_json::json;

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
        let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
        let pg = Store::open(&StoreConfig {
            database_url: Some(url),
            pg_schema: Some(schema),
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

fn input(v: serde_json::Value) -> ContactInput {
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn contacts_are_created_read_changed_and_listed() {
    for b in backends().await {
        let s = &b.store;
        let c = s.create_contact(input(json!({"email": " Taro.Yamada@Yamada-Shoji.co.jp ", "last_name": "山田", "first_name": "太郎"})), t0(), "api").await.unwrap();
        assert_eq!(
            c.email.as_deref(),
            Some("taro.yamada@yamada-shoji.co.jp"),
            "{}",
            b.name
        );
        assert_eq!(
            s.contact(c.id).await.unwrap(),
            c,
            "{}: read back equals written",
            b.name
        );
        assert_eq!(
            s.contact_by_email("TARO.YAMADA@yamada-shoji.co.jp")
                .await
                .unwrap()
                .map(|c| c.id),
            Some(c.id)
        );

        // The same address, typed differently, is the same person.
        let dup = s
            .create_contact(
                input(json!({"email": "taro.yamada@YAMADA-SHOJI.co.jp"})),
                t0(),
                "api",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(dup, StoreError::Conflict { ref field, .. } if field == "email"),
            "{}: {dup:?}",
            b.name
        );

        let later = t0() + Duration::hours(1);
        let changed = s
            .update_contact(
                c.id,
                input(json!({"job_title": "部長", "first_name": null, "lifecycle_stage": "mql"})),
                later,
                "api",
            )
            .await
            .unwrap();
        assert_eq!(changed.job_title.as_deref(), Some("部長"));
        assert_eq!(changed.first_name, None, "null clears");
        assert_eq!(changed.last_name.as_deref(), Some("山田"), "absent stays");
        assert_eq!(changed.lifecycle_stage, LifecycleStage::Mql);
        assert_eq!(changed.updated_at, later);

        let tl = s
            .timeline(c.id, &TimelineFilter::default(), None, 50)
            .await
            .unwrap();
        let types: Vec<_> = tl.data.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            ["stage.changed", "contact.updated", "contact.created"],
            "{}: newest first",
            b.name
        );
        assert_eq!(tl.data[0].properties["from"], "lead");
        assert_eq!(tl.data[0].properties["to"], "mql");
        let only = s
            .timeline(
                c.id,
                &TimelineFilter {
                    types: vec!["contact.*".into()],
                },
                None,
                50,
            )
            .await
            .unwrap();
        assert_eq!(only.data.len(), 2);

        let err = s
            .update_contact(
                c.id,
                input(json!({"email": "not-an-address"})),
                later,
                "api",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid(e) if e.first().unwrap().field == "email"),
            "{err:?}"
        );
        assert_eq!(
            s.contact(c.id).await.unwrap(),
            changed,
            "{}: bad input changes nothing",
            b.name
        );
    }
}

#[tokio::test]
async fn lists_paginate_and_filter() {
    for b in backends().await {
        let s = &b.store;
        let mut ids = Vec::new();
        for i in 0..7 {
            let stage = if i % 2 == 0 { "lead" } else { "customer" };
            let c = s
                .create_contact(
                    input(json!({"email": format!("p{i}@example.jp"), "lifecycle_stage": stage})),
                    t0() + Duration::minutes(i),
                    "api",
                )
                .await
                .unwrap();
            ids.push(c.id);
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = s
                .list_contacts(&ContactFilter::default(), cursor, 3)
                .await
                .unwrap();
            seen.extend(page.data.iter().map(|c| c.id));
            match page.next_cursor {
                Some(c) => cursor = kizuna_store::Cursor::decode(&c),
                None => break,
            }
        }
        assert_eq!(
            seen, ids,
            "{}: every contact once, in creation order",
            b.name
        );

        let customers = s
            .list_contacts(
                &ContactFilter {
                    stage: Some(LifecycleStage::Customer),
                    ..Default::default()
                },
                None,
                50,
            )
            .await
            .unwrap();
        assert_eq!(customers.data.len(), 3);
        let recent = s
            .list_contacts(
                &ContactFilter {
                    updated_since: Some(t0() + Duration::minutes(5)),
                    ..Default::default()
                },
                None,
                50,
            )
            .await
            .unwrap();
        assert_eq!(
            recent.data.iter().map(|c| c.id).collect::<Vec<_>>(),
            ids[5..].to_vec()
        );
        let by_email = s
            .list_contacts(
                &ContactFilter {
                    email: Some("P3@EXAMPLE.JP".into()),
                    ..Default::default()
                },
                None,
                50,
            )
            .await
            .unwrap();
        assert_eq!(by_email.data.len(), 1);
        assert_eq!(s.count_contacts().await.unwrap(), 7);
    }
}

#[tokio::test]
async fn custom_fields_are_typed() {
    for b in backends().await {
        let s = &b.store;
        let f: FieldInput = serde_json::from_value(json!({"name": "interest", "label": "関心度", "type": "single_select", "options": ["高", "中", "低"]})).unwrap();
        s.create_field(f.clone(), t0()).await.unwrap();
        assert!(matches!(
            s.create_field(f, t0()).await,
            Err(StoreError::Conflict { .. })
        ));
        let c = s
            .create_contact(
                input(json!({"email": "a@x.jp", "custom": {"interest": "高"}})),
                t0(),
                "api",
            )
            .await
            .unwrap();
        assert_eq!(c.custom["interest"], "高");
        let err = s
            .update_contact(
                c.id,
                input(json!({"custom": {"interest": "最高"}})),
                t0(),
                "api",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid(e) if e.first().unwrap().field == "custom.interest"),
            "{err:?}"
        );
        let err = s
            .update_contact(c.id, input(json!({"custom": {"nope": 1}})), t0(), "api")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid(e) if e.first().unwrap().code == "unknown_field"),
            "{err:?}"
        );
        let cleared = s
            .update_contact(
                c.id,
                input(json!({"custom": {"interest": null}})),
                t0(),
                "api",
            )
            .await
            .unwrap();
        assert!(!cleared.custom.contains_key("interest"));
        assert_eq!(
            s.fields().await.unwrap()[0].field_type,
            FieldType::SingleSelect
        );
    }
}

#[tokio::test]
async fn contacts_join_their_company_by_domain_but_not_by_free_mail() {
    for b in backends().await {
        let s = &b.store;
        let co: CompanyInput = serde_json::from_value(json!({"name": "株式会社山田商事", "domain": "https://www.yamada-shoji.co.jp/", "employee_count": 150})).unwrap();
        let co = s.create_company(co, t0()).await.unwrap();
        assert_eq!(co.domain.as_deref(), Some("yamada-shoji.co.jp"));
        let c = s
            .create_contact(
                input(json!({"email": "hanako@yamada-shoji.co.jp"})),
                t0(),
                "api",
            )
            .await
            .unwrap();
        assert_eq!(c.company_id, Some(co.id), "{}", b.name);
        let g = s
            .create_contact(input(json!({"email": "someone@gmail.com"})), t0(), "api")
            .await
            .unwrap();
        assert_eq!(g.company_id, None);
        let found = s
            .list_companies(
                &kizuna_store::companies::CompanyFilter {
                    name: Some("(株)山田商事".into()),
                    ..Default::default()
                },
                None,
                10,
            )
            .await
            .unwrap();
        assert_eq!(
            found.data.len(),
            1,
            "名寄せ finds the company however it is written"
        );
        let bad = s
            .create_contact(
                input(json!({"email": "x@y.jp", "company_id": uuid::Uuid::now_v7()})),
                t0(),
                "api",
            )
            .await
            .unwrap_err();
        assert!(matches!(&bad, StoreError::Invalid(e) if e.first().unwrap().field == "company_id"));
        let dup: CompanyInput =
            serde_json::from_value(json!({"name": "Other", "domain": "yamada-shoji.co.jp"}))
                .unwrap();
        assert!(matches!(
            s.create_company(dup, t0()).await,
            Err(StoreError::Conflict { .. })
        ));
        s.delete_company(co.id).await.unwrap();
        assert_eq!(
            s.contact(c.id).await.unwrap().company_id,
            None,
            "contacts stay, unlinked"
        );
    }
}

#[tokio::test]
async fn erasure_leaves_only_a_fingerprint() {
    for b in backends().await {
        let s = &b.store;
        let c = s
            .create_contact(
                input(json!({"email": "erase.me@example.jp", "last_name": "消去"})),
                t0(),
                "api",
            )
            .await
            .unwrap();
        let l = s.create_list("Seminar 2026-11", None, t0()).await.unwrap();
        s.add_to_list(l.id, &[c.id], t0()).await.unwrap();
        s.erase_contact(c.id, t0()).await.unwrap();
        assert!(matches!(s.contact(c.id).await, Err(StoreError::NotFound)));
        assert_eq!(
            s.count_events(c.id).await.unwrap(),
            0,
            "{}: events gone",
            b.name
        );
        assert_eq!(s.list(l.id).await.unwrap().member_count, 0);
        assert_eq!(
            s.suppression_reason("Erase.Me@example.jp".trim().to_lowercase().as_str())
                .await
                .unwrap()
                .as_deref(),
            Some("erased")
        );
        assert!(matches!(
            s.erase_contact(c.id, t0()).await,
            Err(StoreError::NotFound)
        ));
    }
}

#[tokio::test]
async fn merge_keeps_the_union_and_can_be_undone() {
    for b in backends().await {
        let s = &b.store;
        let a = s
            .create_contact(
                input(json!({"email": "taro@yamada-shoji.co.jp", "job_title": "課長"})),
                t0(),
                "api",
            )
            .await
            .unwrap();
        let o = s.create_contact(input(json!({"email": "t.yamada@gmail.com", "phone": "090-1111-2222", "job_title": "部長"})), t0() + Duration::days(1), "api").await.unwrap();
        let l = s
            .create_list("Trade show 2026-10", None, t0())
            .await
            .unwrap();
        s.add_to_list(l.id, &[o.id], t0()).await.unwrap();
        let events_before =
            s.count_events(a.id).await.unwrap() + s.count_events(o.id).await.unwrap();

        let m = s
            .merge_contacts(a.id, o.id, t0() + Duration::days(2), "api")
            .await
            .unwrap();
        let merged = s.contact(a.id).await.unwrap();
        assert_eq!(merged.email.as_deref(), Some("taro@yamada-shoji.co.jp"));
        assert_eq!(
            merged.phone.as_deref(),
            Some("090-1111-2222"),
            "{}: empty field filled",
            b.name
        );
        assert_eq!(merged.job_title.as_deref(), Some("部長"), "newest wins");
        assert!(m.conflicts.iter().any(|c| c.field == "job_title"));
        assert!(matches!(s.contact(o.id).await, Err(StoreError::NotFound)));
        assert_eq!(
            s.count_events(a.id).await.unwrap(),
            events_before + 1,
            "events moved, plus contact.merged"
        );
        let members = s
            .list_contacts(
                &ContactFilter {
                    list_id: Some(l.id),
                    ..Default::default()
                },
                None,
                10,
            )
            .await
            .unwrap();
        assert_eq!(members.data[0].id, a.id, "list membership moved");

        let undone = s
            .undo_merge(m.id, false, t0() + Duration::days(3))
            .await
            .unwrap();
        assert!(undone.undone_at.is_some());
        assert_eq!(
            s.contact(o.id).await.unwrap().phone.as_deref(),
            Some("090-1111-2222")
        );
        assert_eq!(
            s.contact(a.id).await.unwrap().job_title.as_deref(),
            Some("課長")
        );
        assert_eq!(
            s.count_events(o.id).await.unwrap(),
            2,
            "the merged contact's own events (contact.created, list.added) went back"
        );
        let members = s
            .list_contacts(
                &ContactFilter {
                    list_id: Some(l.id),
                    ..Default::default()
                },
                None,
                10,
            )
            .await
            .unwrap();
        assert_eq!(members.data[0].id, o.id);
        assert!(matches!(
            s.undo_merge(m.id, false, t0()).await,
            Err(StoreError::Conflict { .. })
        ));
    }
}

#[tokio::test]
async fn api_keys_are_hashed_scoped_and_revocable() {
    for b in backends().await {
        let s = &b.store;
        let (key, secret) = s
            .create_api_key("crm sync", &[Scope::Write], t0())
            .await
            .unwrap();
        let found = s
            .verify_api_key(&secret, t0())
            .await
            .unwrap()
            .expect("valid key");
        assert_eq!(found.id, key.id);
        assert!(found.allows(Scope::Read) && !found.allows(Scope::Admin));
        let mut forged = secret.clone();
        forged.pop();
        forged.push(if secret.ends_with('A') { 'B' } else { 'A' });
        assert!(
            s.verify_api_key(&forged, t0()).await.unwrap().is_none(),
            "{}",
            b.name
        );
        s.revoke_api_key(key.id, t0()).await.unwrap();
        assert!(s.verify_api_key(&secret, t0()).await.unwrap().is_none());
        let wk = s.create_write_key("www.example.jp", t0()).await.unwrap();
        assert!(s.verify_write_key(&wk).await.unwrap().is_some());
        assert!(s.verify_write_key("wk_nope").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn owners_must_exist() {
    for b in backends().await {
        let s = &b.store;
        let rep = s
            .create_user(
                UserInput {
                    email: "sato@kizuna.example".into(),
                    name: "佐藤".into(),
                    role: None,
                    territory: Some("関東".into()),
                },
                t0(),
            )
            .await
            .unwrap();
        assert_eq!(rep.role, "sales");
        let c = s
            .create_contact(
                input(json!({"email": "a@x.jp", "owner_id": rep.id})),
                t0(),
                "api",
            )
            .await
            .unwrap();
        assert_eq!(c.owner_id, Some(rep.id));
        let err = s
            .create_contact(
                input(json!({"email": "b@x.jp", "owner_id": uuid::Uuid::now_v7()})),
                t0(),
                "api",
            )
            .await
            .unwrap_err();
        assert!(matches!(&err, StoreError::Invalid(e) if e.first().unwrap().field == "owner_id"));
    }
}

fn item(row: u64, v: serde_json::Value, company: Option<serde_json::Value>) -> ImportItem {
    ImportItem {
        row,
        contact: input(v).validate().unwrap(),
        company: company.map(|c| {
            serde_json::from_value::<CompanyInput>(c)
                .unwrap()
                .validate(true)
                .unwrap()
        }),
    }
}

#[tokio::test]
async fn imports_merge_by_email_and_company_and_are_all_or_nothing() {
    for b in backends().await {
        let s = &b.store;
        // Sales typed a title by hand; the import must not clobber it.
        s.create_contact(
            input(json!({"email": "taro.yamada@yamada-shoji.co.jp", "job_title": "営業部長"})),
            t0(),
            "api",
        )
        .await
        .unwrap();
        let opts = ImportOptions {
            list: Some("Trade show 2026-10".into()),
            file_name: Some("cards.csv".into()),
            overwrite: false,
        };
        let mut w = s.begin_import(opts.clone(), t0()).await.unwrap();
        w.write(vec![
            item(2, json!({"email": "taro.yamada@yamada-shoji.co.jp", "job_title": "部長", "phone": "03-1234-5678"}), Some(json!({"name": "株式会社山田商事", "domain": "yamada-shoji.co.jp", "employee_count": 150}))),
            item(3, json!({"email": "hanako.tanaka@yamada-shoji.co.jp"}), Some(json!({"name": "(株)山田商事", "domain": "yamada-shoji.co.jp"}))),
            item(4, json!({"email": "jiro@suzuki-ss.jp"}), Some(json!({"name": "㈱鈴木製作所", "domain": "suzuki-ss.jp", "industry": "製造業"}))),
        ])
        .await
        .unwrap();
        w.write(vec![
            item(5, json!({"email": "misaki@suzuki-ss.jp"}), Some(json!({"name": "株式会社 鈴木製作所", "employee_count": 1200}))),
            item(6, json!({"email": "hanako.tanaka@yamada-shoji.co.jp", "department": "マーケティング部"}), None),
        ])
        .await
        .unwrap();
        let (id, sum) = w.commit(t0(), json!([]), 0).await.unwrap();
        assert_eq!(
            (sum.rows, sum.created, sum.updated, sum.duplicates_in_file),
            (5, 3, 1, 1),
            "{}: {sum:?}",
            b.name
        );
        assert_eq!(sum.companies_created, 2);
        let taro = s
            .contact_by_email("taro.yamada@yamada-shoji.co.jp")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(taro.job_title.as_deref(), Some("営業部長"), "fill only");
        assert_eq!(taro.phone.as_deref(), Some("03-1234-5678"));
        let hanako = s
            .contact_by_email("hanako.tanaka@yamada-shoji.co.jp")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            hanako.department.as_deref(),
            Some("マーケティング部"),
            "a later row of the same person fills in"
        );
        assert_eq!(hanako.company_id, taro.company_id);
        assert_eq!(hanako.source.channel.as_deref(), Some("offline"));
        let suzuki = s
            .company(
                s.contact_by_email("misaki@suzuki-ss.jp")
                    .await
                    .unwrap()
                    .unwrap()
                    .company_id
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            suzuki.employee_count,
            Some(1200),
            "an empty company field is filled by a later row"
        );
        assert_eq!(suzuki.industry.as_deref(), Some("製造業"));
        let list = s.list_by_name("Trade show 2026-10").await.unwrap().unwrap();
        assert_eq!(list.member_count, 4);
        assert_eq!(s.import_record(id).await.unwrap().status, "succeeded");

        // A rolled-back import leaves nothing behind.
        let before = s.count_contacts().await.unwrap();
        let mut w = s
            .begin_import(
                ImportOptions {
                    list: Some("Never".into()),
                    ..opts
                },
                t0(),
            )
            .await
            .unwrap();
        w.write(vec![item(
            2,
            json!({"email": "ghost@example.jp"}),
            Some(json!({"name": "幽霊商事"})),
        )])
        .await
        .unwrap();
        w.rollback().await;
        assert_eq!(s.count_contacts().await.unwrap(), before, "{}", b.name);
        assert!(s.list_by_name("Never").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let s = Store::open(&cfg).await.unwrap();
    s.create_contact(input(json!({"email": "keep@example.jp"})), t0(), "api")
        .await
        .unwrap();
    s.close().await;
    let s = Store::open(&cfg).await.unwrap();
    assert_eq!(
        kizuna_store::migrate::current_version(s.db())
            .await
            .unwrap(),
        kizuna_store::migrate::latest_version()
    );
    assert_eq!(s.count_contacts().await.unwrap(), 1);
}

#[tokio::test]
async fn unsupported_urls_are_refused_clearly() {
    let err = Store::open(&StoreConfig {
        database_url: Some("mysql://x".into()),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("unsupported database URL"),
        "{err}"
    );
}

#[allow(dead_code)]
fn unused(_: Patch<()>) {}
