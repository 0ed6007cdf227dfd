//! The filter language: checking definitions (with the path of every bad node) and evaluating
//! them, including when windows slide out.

use super::event::FeatureState;
use super::*;
use crate::company::Company;
use crate::contact::{Contact, LifecycleStage};
use crate::scoring::{Decay, Grade, ScoreReading};
use chrono::{TimeZone, Utc};
use serde_json::json;
use std::collections::HashMap;

const DAY: i64 = 86_400_000_000;

struct R;
impl Resolver for R {
    fn list(&self, r: &str) -> Option<Uuid> {
        (r == "Trade show").then(|| Uuid::from_u128(1))
    }
    fn segment(&self, r: &str) -> Option<Uuid> {
        (r == "Hot").then(|| Uuid::from_u128(2))
    }
    fn scoring_model(&self, r: &str) -> Option<Uuid> {
        (r == "seed-001").then(|| Uuid::from_u128(3))
    }
    fn custom_field(&self, n: &str) -> Option<FieldType> {
        match n {
            "budget" => Some(FieldType::Number),
            "renewal_on" => Some(FieldType::Date),
            _ => None,
        }
    }
}

#[derive(Default)]
struct F {
    contact: Option<Contact>,
    company: Option<Company>,
    features: HashMap<String, FeatureState>,
    score: Option<ScoreReading>,
    lists: Vec<Uuid>,
    consent: Option<bool>,
}

impl Facts for F {
    fn contact(&self) -> &Contact {
        self.contact.as_ref().unwrap()
    }
    fn company(&self) -> Option<&Company> {
        self.company.as_ref()
    }
    fn feature(&self, key: &str) -> Option<&FeatureState> {
        self.features.get(key)
    }
    fn score(&self, _: Uuid) -> Option<ScoreReading> {
        self.score
    }
    fn in_list(&self, l: Uuid) -> bool {
        self.lists.contains(&l)
    }
    fn in_segment(&self, _: Uuid) -> bool {
        false
    }
    fn consent(&self, _: &str) -> Option<bool> {
        self.consent
    }
    fn in_sales_cycle(&self) -> bool {
        false
    }
}

fn contact() -> Contact {
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut c = Contact::new(Uuid::from_u128(9), t);
    c.email = Some("hanako@yamada.co.jp".into());
    c.job_title = Some("営業部長".into());
    c.custom.insert("budget".into(), json!(3_000_000));
    c.custom.insert("renewal_on".into(), json!("2026-12-31"));
    c
}

fn company(industry: &str, employees: i64) -> Company {
    let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    Company {
        id: Uuid::from_u128(7),
        name: "山田商事".into(),
        name_key: "山田商事".into(),
        domain: None,
        industry: Some(industry.into()),
        employee_count: Some(employees),
        annual_revenue: None,
        website: None,
        phone: None,
        created_at: t,
        updated_at: t,
    }
}

fn errors(def: serde_json::Value) -> Vec<(String, &'static str)> {
    compile(&def, &R, "filter")
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| (e.field, e.code))
        .collect()
}

#[test]
fn bad_nodes_are_named_by_path() {
    assert_eq!(
        errors(
            json!({"all": [{"attribute": "job_title", "op": "contains", "value": "部長"},
                               {"any": [{"attribute": "nope", "op": "eq", "value": 1}]}]})
        ),
        vec![("filter.all[1].any[0].attribute".into(), "unknown_attribute")]
    );
    assert_eq!(
        errors(json!({"attribute": "company.employee_count", "op": "contains", "value": "1"})),
        vec![("filter.op".into(), "invalid_operator")]
    );
    assert_eq!(
        errors(json!({"not": {"event": "page.viewed", "count": {"gte": -1}}})),
        vec![("filter.not.count.gte".into(), "invalid_value")]
    );
    assert_eq!(
        errors(
            json!({"event": "page.viewed", "where": [{"property": "path", "op": "within_last", "value": "3d"}]})
        ),
        vec![("filter.where[0].op".into(), "invalid_operator")]
    );
    assert_eq!(
        errors(
            json!({"all": [{"list": "Unknown list"}, {"segment": "Nope"}, {"grade": "m", "op": "gte", "value": "B"}]})
        ),
        vec![
            ("filter.all[0].list".into(), "unknown_list"),
            ("filter.all[1].segment".into(), "unknown_segment"),
            ("filter.all[2].grade".into(), "unknown_scoring_model"),
        ]
    );
    assert_eq!(
        errors(json!({"attribute": "job_title", "event": "x"})),
        vec![("filter".into(), "invalid_condition")]
    );
    assert_eq!(
        errors(json!({"attribute": "job_title", "op": "eq", "value": "x", "extra": 1})),
        vec![("filter.extra".into(), "unknown_key")]
    );
    assert_eq!(
        errors(json!({"all": []})),
        vec![("filter.all".into(), "invalid_condition")]
    );
    assert_eq!(
        errors(json!({"attribute": "lifecycle_stage", "op": "in", "value": ["mql", "hot"]})),
        vec![("filter.value[1]".into(), "invalid_value")]
    );
    assert_eq!(
        errors(json!({"email": "read"})),
        vec![("filter.email".into(), "invalid_value")]
    );
    assert_eq!(
        errors(json!({"attribute": "custom.unknown", "op": "exists"})),
        vec![("filter.attribute".into(), "unknown_attribute")]
    );
    assert_eq!(
        errors(json!([1])),
        vec![("filter".into(), "invalid_condition")]
    );
}

#[test]
fn nesting_is_bounded() {
    let mut def = json!({"attribute": "email", "op": "exists"});
    for _ in 0..40 {
        def = json!({ "not": def });
    }
    let errs = errors(def);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].1, "too_deep");
    assert!(errs[0].0.starts_with("filter.not.not."));
}

#[test]
fn attributes_of_contact_and_company() {
    let f = F {
        contact: Some(contact()),
        company: Some(company("製造業", 120)),
        ..Default::default()
    };
    let yes = |def| compile(&def, &R, "").unwrap().eval(&f, 0).value;
    assert!(yes(
        json!({"attribute": "job_level", "op": "gte", "value": "manager"})
    ));
    assert!(!yes(
        json!({"attribute": "job_level", "op": "gte", "value": "director"})
    ));
    assert!(yes(
        json!({"attribute": "company.employee_count", "op": "between", "value": [100, 299]})
    ));
    assert!(yes(
        json!({"attribute": "company.industry", "op": "in", "value": ["製造業", "金融業"]})
    ));
    assert!(yes(
        json!({"attribute": "email_domain", "op": "eq", "value": "YAMADA.co.jp"})
    ));
    assert!(yes(
        json!({"attribute": "custom.budget", "op": "gt", "value": 1000000})
    ));
    assert!(yes(
        json!({"attribute": "lifecycle_stage", "op": "eq", "value": "lead"})
    ));
    assert!(yes(json!({"not": {"attribute": "phone", "op": "exists"}})));
    assert!(yes(
        json!({"any": [{"attribute": "job_title", "op": "starts_with", "value": "x"},
                                {"all": [{"attribute": "job_title", "op": "contains", "value": "部長"},
                                         {"not": {"attribute": "company.industry", "op": "eq", "value": "小売業"}}]}]})
    ));
    let mut c = contact();
    c.lifecycle_stage = LifecycleStage::Mql;
    let f2 = F {
        contact: Some(c),
        ..Default::default()
    };
    assert!(
        !compile(
            &json!({"attribute": "company.industry", "op": "exists"}),
            &R,
            ""
        )
        .unwrap()
        .eval(&f2, 0)
        .value
    );
}

#[test]
fn relative_dates_give_timers() {
    let f = F {
        contact: Some(contact()),
        ..Default::default()
    };
    let renewal = Utc
        .with_ymd_and_hms(2026, 12, 31, 0, 0, 0)
        .unwrap()
        .timestamp_micros();
    let flt = compile(
        &json!({"attribute": "custom.renewal_on", "op": "within_next", "value": "90d"}),
        &R,
        "",
    )
    .unwrap();
    assert!(flt.deps.time);
    let o = flt.eval(&f, renewal - 100 * DAY);
    assert!(!o.value);
    assert_eq!(o.until, Some(renewal - 90 * DAY));
    assert!(flt.eval(&f, renewal - 90 * DAY).value);
}

fn pricing(n: u64, within: &str) -> Filter {
    compile(
        &json!({"event": "page.viewed", "where": [{"property": "path", "op": "starts_with", "value": "/pricing"}],
                "count": {"gte": n}, "within": within}),
        &R,
        "",
    )
    .unwrap()
}

#[test]
fn windows_slide_out_at_the_instant_the_timer_names() {
    let flt = pricing(3, "14d");
    let key = flt.features[0].key.clone();
    let keep = flt.features[0].keep;
    assert_eq!(keep, 4);
    let mut st = FeatureState::default();
    for day in [1, 3, 4, 10] {
        st.record(day * DAY, keep);
    }
    let mut f = F {
        contact: Some(contact()),
        ..Default::default()
    };
    f.features.insert(key, st);
    // At day 12 all four visits are within 14 days; the answer holds until the second-oldest
    // (day 3) leaves the window, leaving 2.
    let o = flt.eval(&f, 12 * DAY);
    assert!(o.value);
    assert_eq!(o.until, Some(17 * DAY + 1));
    assert!(flt.eval(&f, 17 * DAY).value);
    let o = flt.eval(&f, 17 * DAY + 1);
    assert!(!o.value, "only days 4 and 10 remain");
    assert_eq!(o.until, None, "a window only shrinks: no timer while false");
}

#[test]
fn counts_without_window_and_first_last() {
    let flt = compile(
        &json!({"event": ["webinar.attended", "seminar.attended"], "last": {"within_last": "30d"}}),
        &R,
        "",
    )
    .unwrap();
    assert_eq!(flt.features[0].keep, 0);
    let mut st = FeatureState::default();
    st.record(5 * DAY, 0);
    let mut f = F {
        contact: Some(contact()),
        ..Default::default()
    };
    assert!(!flt.eval(&f, 6 * DAY).value);
    f.features.insert(flt.features[0].key.clone(), st);
    let o = flt.eval(&f, 6 * DAY);
    assert!(o.value);
    assert_eq!(o.until, Some(35 * DAY + 1));
    let never = compile(
        &json!({"event": "webinar.attended", "count": {"eq": 0}}),
        &R,
        "",
    )
    .unwrap();
    assert!(never.eval(&f, 0).value, "no webinar.attended state yet");
    let mut w = FeatureState::default();
    w.record(DAY, 0);
    f.features.insert(never.features[0].key.clone(), w);
    assert!(!never.eval(&f, 0).value);
}

#[test]
fn email_engagement_leaves_machine_opens_out() {
    let flt = compile(&json!({"email": "opened", "within": "30d"}), &R, "").unwrap();
    let m = &flt.features[0].matcher;
    assert!(m.matches("email.opened", &json!({"template": "welcome"})));
    assert!(!m.matches("email.opened", &json!({"machine": true})));
    let all = compile(&json!({"email": "opened", "include_machine": true}), &R, "").unwrap();
    assert!(
        all.features[0]
            .matcher
            .matches("email.opened", &json!({"machine": true}))
    );
}

#[test]
fn scores_grades_lists_consent() {
    let reading = ScoreReading {
        behaviour: 40.0,
        fit: 20.0,
        grade: Grade::A,
        decay: Some(Decay::HalfLife(crate::span::Span::days(30))),
        now: 0,
        last_activity: None,
        idle_applied: 0,
    };
    let f = F {
        contact: Some(contact()),
        score: Some(reading),
        lists: vec![Uuid::from_u128(1)],
        consent: Some(true),
        ..Default::default()
    };
    let eval = |def| compile(&def, &R, "").unwrap().eval(&f, 0);
    let o = eval(json!({"score": "seed-001", "op": "gte", "value": 50}));
    assert!(o.value);
    // 40 behaviour points halve every 30 days; total drops under 50 when behaviour < 30:
    // 30 days × log2(40/30) ≈ 12.45 days.
    let t = o.until.unwrap();
    assert!((t - (12.45 * DAY as f64) as i64).abs() < DAY / 50, "{t}");
    assert!(eval(json!({"grade": "seed-001", "op": "gte", "value": "B"})).value);
    assert!(!eval(json!({"grade": "seed-001", "op": "lt", "value": "B"})).value);
    assert!(eval(json!({"score": "seed-001", "part": "fit", "op": "eq", "value": 20})).value);
    assert!(eval(json!({"list": "Trade show"})).value);
    assert!(eval(json!({"consent": "email"})).value);
    assert!(!eval(json!({"consent": "email", "status": "withdrawn"})).value);
    assert!(eval(json!({"sales_cycle": false})).value);
}

#[test]
fn deps_say_what_is_read() {
    let flt = compile(
        &json!({"all": [
            {"event": "page.viewed", "count": 3, "within": "14d"},
            {"attribute": "company.industry", "op": "in", "value": ["製造業"]},
            {"grade": "seed-001", "op": "gte", "value": "B"},
            {"not": {"list": "Trade show"}}
        ]}),
        &R,
        "",
    )
    .unwrap();
    assert!(flt.deps.attributes && flt.deps.time);
    assert_eq!(flt.deps.features.len(), 1);
    assert!(flt.deps.models.contains(&Uuid::from_u128(3)));
    assert!(flt.deps.lists.contains(&Uuid::from_u128(1)));
    assert!(!flt.deps.consent && !flt.deps.sales_cycle);
}

#[test]
fn fit_rules_take_attributes_only() {
    let e = compile_attributes(&json!({"event": "x"}), &R, "fit[0].when").unwrap_err();
    assert_eq!(e.0[0].field, "fit[0].when.event");
    let e = compile_attributes(
        &json!({"attribute": "created_at", "op": "within_last", "value": "3d"}),
        &R,
        "w",
    )
    .unwrap_err();
    assert_eq!(
        (e.0[0].field.as_str(), e.0[0].code),
        ("w.op", "invalid_operator")
    );
}

proptest::proptest! {
    /// The allocation-free path gives what full NFKC folding gives, for any text.
    #[test]
    fn folded_equals_full_folding(s in "\\PC{0,24}|[ A-Za-z0-9/_.-]{0,24}") {
        use unicode_normalization::UnicodeNormalization;
        let full = s.nfkc().collect::<String>().trim().to_lowercase();
        proptest::prop_assert_eq!(super::attribute::folded(&s).into_owned(), full);
    }
}

#[test]
fn folding_examples() {
    use super::attribute::folded;
    assert!(matches!(
        folded("/pricing"),
        std::borrow::Cow::Borrowed("/pricing")
    ));
    assert_eq!(folded("  /Pricing "), "/pricing");
    assert_eq!(folded("ＰＲＩＣＩＮＧ"), "pricing");
}
