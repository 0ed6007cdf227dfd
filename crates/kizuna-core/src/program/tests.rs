//! Program definitions: validation paths, the step machine, quiet hours.

use super::*;
use crate::field::FieldType;
use serde_json::json;
use uuid::Uuid;

struct R;
impl Resolver for R {
    fn list(&self, r: &str) -> Option<Uuid> {
        (r == "VIP").then(|| Uuid::from_u128(1))
    }
    fn segment(&self, r: &str) -> Option<Uuid> {
        (r == "Hot").then(|| Uuid::from_u128(2))
    }
    fn scoring_model(&self, r: &str) -> Option<Uuid> {
        (r == "seed-001").then(|| Uuid::from_u128(3))
    }
    fn custom_field(&self, n: &str) -> Option<FieldType> {
        (n == "renewal_date").then_some(FieldType::Date)
    }
}

struct E {
    cond: bool,
    sample: f64,
    check: SendCheck,
    renewal: Option<i64>,
}

impl Env for E {
    fn condition(&mut self, _: usize, _: &Cond) -> bool {
        self.cond
    }
    fn date_field(&self, _: &str) -> Option<i64> {
        self.renewal
    }
    fn time_zone(&self) -> Option<Zone> {
        None
    }
    fn sample(&self, _: usize) -> f64 {
        self.sample
    }
    fn send_check(&mut self, _: &str) -> SendCheck {
        self.check.clone()
    }
}

fn env() -> E {
    E {
        cond: true,
        sample: 0.5,
        check: SendCheck::Send,
        renewal: None,
    }
}

const H: i64 = 3_600_000_000;
const DAY: i64 = 86_400_000_000;

#[test]
fn bad_nodes_are_named_by_path() {
    let def = json!({
        "name": "x",
        "triggers": [{"type": "segment_entered", "segment": "Nope"}, {"type": "warp"}],
        "steps": [
            {"id": "a", "type": "send_email"},
            {"id": "a", "type": "wait", "duration": "3 days"},
            {"id": "b", "type": "branch", "condition": {"attribute": "job_level", "op": "zz", "value": 1}, "then": "nowhere"},
            {"id": "c", "type": "split", "paths": [{"percent": 50, "next": "a"}], "holdout": 10}
        ]
    });
    let e = compile(&def, &R).unwrap_err();
    let fields: Vec<&str> = e.0.iter().map(|x| x.field.as_str()).collect();
    for f in [
        "triggers[0].segment",
        "triggers[1].type",
        "steps[0].template",
        "steps[1].id",
        "steps[1].duration",
        "steps[2].then",
        "steps[3].paths",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    assert!(fields.iter().any(|f| f.starts_with("steps[2].condition")));
}

#[test]
fn a_loop_without_a_wait_is_refused() {
    let def = json!({"name": "loop", "triggers": [{"type": "api"}], "steps": [
        {"id": "a", "type": "add_score", "points": 1},
        {"id": "b", "type": "branch", "condition": {"sales_cycle": true}, "then": "end", "else": "a"}
    ]});
    let e = compile(&def, &R).unwrap_err();
    assert_eq!(e.0[0].code, "loop_without_wait");
    let ok = json!({"name": "loop", "triggers": [{"type": "api"}], "steps": [
        {"id": "a", "type": "add_score", "points": 1},
        {"id": "w", "type": "wait", "duration": "14d"},
        {"id": "b", "type": "branch", "condition": {"sales_cycle": true}, "then": "end", "else": "a"}
    ]});
    compile(&ok, &R).unwrap();
}

fn renewal() -> Program {
    compile(
        &json!({"name": "renewal", "triggers": [{"type": "date", "field": "custom.renewal_date", "offset": "-90d"}],
            "steps": [
                {"id": "m90", "type": "send_email", "template": "r90"},
                {"id": "w60", "type": "wait_until", "field": "custom.renewal_date", "offset": "-60d"},
                {"id": "m60", "type": "send_email", "template": "r60"},
                {"id": "w30", "type": "wait_until", "field": "custom.renewal_date", "offset": "-30d"},
                {"id": "m30", "type": "send_email", "template": "r30"}
            ],
            "pressure": {"time_zone": "UTC"}}),
        &R,
    )
    .unwrap()
}

#[test]
fn the_machine_waits_and_resumes() {
    let p = renewal();
    let d = 100 * DAY;
    let mut e = env();
    e.renewal = Some(d);
    let mut pos = Position {
        step: Some(0),
        ..Default::default()
    };
    let mut out = vec![];
    advance(&p, &mut pos, d - 90 * DAY, false, &mut e, &mut out);
    assert_eq!(out[0], Action::Ran { step: 0, seq: 1 });
    assert_eq!(pos.step, Some(1));
    assert!(pos.waiting);
    assert_eq!(pos.due_at, Some(d - 60 * DAY));
    out.clear();
    advance(&p, &mut pos, d - 61 * DAY, false, &mut e, &mut out);
    assert!(out.is_empty());
    advance(&p, &mut pos, d - 60 * DAY, false, &mut e, &mut out);
    assert_eq!(out[0], Action::Ran { step: 2, seq: 3 });
    assert_eq!(pos.due_at, Some(d - 30 * DAY));
    out.clear();
    advance(&p, &mut pos, d - 30 * DAY, false, &mut e, &mut out);
    assert!(out.contains(&Action::Ran { step: 4, seq: 5 }));
    assert_eq!(
        out.last(),
        Some(&Action::Ended {
            reason: "completed".into(),
            move_to: None
        })
    );
}

#[test]
fn wait_for_event_takes_either_path() {
    let p = compile(
        &json!({"name": "w", "triggers": [{"type": "api"}], "steps": [
            {"id": "wait", "type": "wait_for_event", "event": "demo.booked", "timeout": "7d", "on_timeout": "nudge"},
            {"id": "thanks", "type": "create_task", "title": "Call {name}", "next": "end"},
            {"id": "nudge", "type": "send_email", "template": "t"}
        ]}),
        &R,
    )
    .unwrap();
    let mut e = env();
    let mut pos = Position {
        step: Some(0),
        ..Default::default()
    };
    let mut out = vec![];
    advance(&p, &mut pos, 0, false, &mut e, &mut out);
    assert!(pos.waiting);
    let mut a = pos.clone();
    out.clear();
    advance(&p, &mut a, DAY, true, &mut e, &mut out);
    assert!(out.contains(&Action::Ran { step: 1, seq: 2 }));
    assert!(!out.iter().any(|x| matches!(x, Action::Ran { step: 2, .. })));
    out.clear();
    advance(&p, &mut pos, 7 * DAY, false, &mut e, &mut out);
    assert!(out.contains(&Action::Ran { step: 2, seq: 2 }));
    assert!(!out.iter().any(|x| matches!(x, Action::Ran { step: 1, .. })));
}

#[test]
fn quiet_hours_defer_to_the_window_in_the_contacts_zone() {
    let p = compile(
        &json!({"name": "q", "triggers": [{"type": "api"}], "steps": [{"id": "m", "type": "send_email", "template": "t"}],
                "pressure": {"quiet_hours": {"start": "21:00", "end": "08:00"}, "time_zone": "Asia/Tokyo"}}),
        &R,
    )
    .unwrap();
    // 14:00 UTC = 23:00 JST: deferred to 08:00 JST = 23:00 UTC.
    let t = 10 * DAY + 14 * H;
    let mut pos = Position {
        step: Some(0),
        ..Default::default()
    };
    let mut out = vec![];
    advance(&p, &mut pos, t, false, &mut env(), &mut out);
    assert_eq!(
        out,
        vec![Action::Deferred {
            step: 0,
            until: 10 * DAY + 23 * H,
            reason: "quiet_hours"
        }]
    );
    out.clear();
    advance(&p, &mut pos, 10 * DAY + 23 * H, false, &mut env(), &mut out);
    assert_eq!(out[0], Action::Ran { step: 0, seq: 1 });
}

#[test]
fn send_window_days_skip_the_weekend() {
    let pr = compile(
        &json!({"name": "q", "triggers": [{"type": "api"}], "steps": [{"id": "m", "type": "send_email", "template": "t"}],
                "pressure": {"send_window": {"start": "09:00", "end": "18:00", "days": ["mon","tue","wed","thu","fri"]}, "time_zone": "UTC"}}),
        &R,
    )
    .unwrap()
    .pressure;
    // 1970-01-03 was a Saturday: next allowed is Monday 1970-01-05 09:00.
    let sat_noon = 2 * DAY + 12 * H;
    assert_eq!(pr.next_allowed(sat_noon, Zone::Fixed(0)), 4 * DAY + 9 * H);
    assert_eq!(
        pr.next_allowed(4 * DAY + 10 * H, Zone::Fixed(0)),
        4 * DAY + 10 * H
    );
}

#[test]
fn split_holdout_and_cap() {
    let p = compile(
        &json!({"name": "s", "triggers": [{"type": "api"}], "steps": [
            {"id": "s", "type": "split", "paths": [{"percent": 45, "next": "a"}, {"percent": 45, "next": "b"}], "holdout": 10},
            {"id": "a", "type": "send_email", "template": "A", "next": "end"},
            {"id": "b", "type": "send_email", "template": "B"}
        ]}),
        &R,
    )
    .unwrap();
    let mut e = env();
    e.sample = 0.95;
    let mut pos = Position {
        step: Some(0),
        ..Default::default()
    };
    let mut out = vec![];
    advance(&p, &mut pos, 0, false, &mut e, &mut out);
    assert!(matches!(out.last(), Some(Action::Ended { reason, .. }) if reason == "holdout"));
    let mut e = env();
    e.sample = 0.5;
    e.check = SendCheck::Defer(5 * DAY);
    let mut pos = Position {
        step: Some(0),
        ..Default::default()
    };
    out.clear();
    advance(&p, &mut pos, 0, false, &mut e, &mut out);
    assert_eq!(pos.step, Some(2));
    assert_eq!(pos.due_at, Some(5 * DAY));
    // Samples are stable and spread.
    let n = (0..1000)
        .filter(|i| stable_sample(&format!("e{i}")) < 0.1)
        .count();
    assert!((60..140).contains(&n), "{n}");
}

#[test]
fn time_zones_and_offsets() {
    let tokyo = parse_time_zone("Asia/Tokyo").unwrap();
    assert_eq!(tokyo.offset_at(0), 9 * 3600);
    assert_eq!(
        parse_time_zone("-05:30"),
        Some(Zone::Fixed(-(5 * 3600 + 1800)))
    );
    assert_eq!(parse_time_zone("JST"), Some(Zone::JST));
    assert_eq!(parse_time_zone("Mars/Olympus"), None);
    assert_eq!(parse_time_zone("+15:00"), None);
    // New York keeps daylight saving time: -5 h in January, -4 h in July.
    let ny = parse_time_zone("America/New_York").unwrap();
    let jan = chrono::DateTime::parse_from_rfc3339("2026-01-15T12:00:00Z")
        .unwrap()
        .timestamp_micros();
    let jul = chrono::DateTime::parse_from_rfc3339("2026-07-15T12:00:00Z")
        .unwrap()
        .timestamp_micros();
    assert_eq!(ny.offset_at(jan), -5 * 3600);
    assert_eq!(ny.offset_at(jul), -4 * 3600);
    assert_eq!(parse_offset("-90d"), Some(-90 * DAY));
    assert_eq!(parse_offset("0d"), Some(0));
    assert_eq!(parse_offset("x"), None);
}

/// Quiet hours follow the contact's wall clock across a daylight-saving change: mail held
/// overnight in New York goes at 08:00 local on the morning after the clocks moved, which is
/// 13:00 UTC in winter and 12:00 UTC in summer.
#[test]
fn quiet_hours_follow_daylight_saving_time() {
    let pr = compile(
        &json!({"name": "q", "triggers": [{"type": "api"}], "steps": [{"id": "m", "type": "send_email", "template": "t"}],
                "pressure": {"quiet_hours": {"start": "21:00", "end": "08:00"}, "time_zone": "America/New_York"}}),
        &R,
    )
    .unwrap()
    .pressure;
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_micros()
    };
    let ny = pr.time_zone;
    // 2026-03-08 02:00 local: clocks spring forward. 23:00 local on the 7th (EST) = 04:00Z on the 8th.
    assert_eq!(
        pr.next_allowed(at("2026-03-08T04:00:00Z"), ny),
        at("2026-03-08T12:00:00Z"),
        "08:00 EDT"
    );
    // The evening before, still winter: 08:00 EST = 13:00Z.
    assert_eq!(
        pr.next_allowed(at("2026-03-07T03:00:00Z"), ny),
        at("2026-03-07T13:00:00Z"),
        "08:00 EST"
    );
    // 2026-11-01 02:00 local: clocks fall back. 23:00 EDT on Oct 31 = 03:00Z Nov 1.
    assert_eq!(
        pr.next_allowed(at("2026-11-01T03:00:00Z"), ny),
        at("2026-11-01T13:00:00Z"),
        "08:00 EST after the change"
    );
    // Daytime is allowed as is.
    assert_eq!(
        pr.next_allowed(at("2026-07-15T16:00:00Z"), ny),
        at("2026-07-15T16:00:00Z")
    );
    // A fixed offset stays fixed.
    assert_eq!(
        pr.next_allowed(at("2026-03-08T04:00:00Z"), Zone::Fixed(-5 * 3600)),
        at("2026-03-08T13:00:00Z")
    );
}
