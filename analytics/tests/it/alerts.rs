//! The alert lifecycle, driven by event time (the controllable clock):
//! pending and `for`, hysteresis, keep-firing-for, repeats, flapping,
//! deadman, rules in SQL, live rule swaps and restarts.

use eddy_analytics::sql;
use eddy_analytics::{
    Aggregate, AlertState, Condition, Engine, EngineConfig, Expr, Flap, Output, Phase, Rule,
    Sample, SeriesKey, Test,
};

fn config() -> EngineConfig {
    EngineConfig {
        window_ms: 1000,
        allowed_lateness_ms: 0,
        max_series: 1000,
        ..EngineConfig::default()
    }
}

/// Mean temperature over 1 s above 50.
fn hot() -> Rule {
    Rule::threshold(
        "hot",
        "temperature",
        1000,
        Aggregate::Mean,
        Condition::Above(50.0),
    )
}

/// Feeds one sample per second with these values (from t = 0, or a
/// second after the newest event); each sample closes the window before
/// it, so the last value's window stays open. Returns the notifications
/// as (state, repeat, window end).
fn run(engine: &mut Engine, key: SeriesKey, values: &[f64]) -> Vec<(AlertState, bool, i64)> {
    let mut out = Output::default();
    let mut notes = Vec::new();
    let start = engine.max_event_ms().map_or(0, |m| m + 1000);
    for (i, v) in values.iter().enumerate() {
        let ts = start + i as i64 * 1000;
        engine.ingest(
            &[Sample {
                series: key,
                ts_ms: ts,
                value: *v,
            }],
            &mut out,
        );
        notes.extend(
            out.alerts
                .drain(..)
                .map(|a| (a.state, a.repeat, a.window_end_ms)),
        );
        out.clear();
    }
    notes
}

fn engine_with(rule: Rule) -> (Engine, SeriesKey) {
    let mut e = Engine::new(config(), vec![rule]).expect("valid rule");
    let k = e.series_key("d1", "temperature").expect("admitted");
    (e, k)
}

fn firing_count(notes: &[(AlertState, bool, i64)]) -> usize {
    notes
        .iter()
        .filter(|n| n.0 == AlertState::Firing && !n.1)
        .count()
}

#[test]
fn without_for_an_alert_fires_at_the_first_window_over_and_resolves_at_the_first_under() {
    let (mut e, k) = engine_with(hot());
    let notes = run(&mut e, k, &[10.0, 60.0, 60.0, 10.0, 10.0]);
    assert_eq!(
        notes,
        vec![
            (AlertState::Firing, false, 2000),
            (AlertState::Resolved, false, 4000)
        ]
    );
}

#[test]
fn pending_never_fires_if_the_condition_clears_before_for() {
    let mut rule = hot();
    rule.lifecycle.for_ms = 3000;
    let (mut e, k) = engine_with(rule);
    // Over for windows ending 1000..3000 (2 s), then clear: never fires.
    let notes = run(&mut e, k, &[60.0, 60.0, 60.0, 10.0, 10.0]);
    assert!(notes.is_empty(), "{notes:?}");
    assert!(e.alerts().is_empty(), "cleared pending alerts are gone");
    // Over long enough: pending at the first window, firing 3 s later.
    let notes = run(&mut e, k, &[60.0, 60.0, 60.0, 60.0, 60.0, 60.0]);
    assert_eq!(notes.len(), 1, "{notes:?}");
    let first_over_end = 6000;
    assert_eq!(notes[0], (AlertState::Firing, false, first_over_end + 3000));
}

#[test]
fn a_pending_alert_is_listed_as_pending() {
    let mut rule = hot();
    rule.lifecycle.for_ms = 10_000;
    let (mut e, k) = engine_with(rule);
    run(&mut e, k, &[60.0, 60.0, 60.0]);
    let alerts = e.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].phase, Phase::Pending);
    assert_eq!(alerts[0].label, "d1");
    assert_eq!(alerts[0].value, 60.0);
}

/// A signal oscillating around the threshold: 49, 51, 49, 51, ...
fn oscillating(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| if i % 2 == 0 { 49.0 } else { 51.0 })
        .collect()
}

#[test]
fn hysteresis_stops_chatter_on_a_signal_oscillating_around_the_threshold() {
    let (mut plain, k) = engine_with(hot());
    let chatter = run(&mut plain, k, &oscillating(20));
    assert!(
        chatter.len() >= 18,
        "without hysteresis every crossing notifies: {chatter:?}"
    );

    let mut rule = hot();
    if let Test::Window { clear, .. } = &mut rule.test {
        *clear = Some(Expr::compare(
            Aggregate::Mean,
            eddy_analytics::Cmp::Lt,
            45.0,
        ));
    }
    let (mut e, k) = engine_with(rule);
    let mut values = oscillating(20);
    values.extend([40.0, 40.0]);
    let notes = run(&mut e, k, &values);
    assert_eq!(
        notes.iter().map(|n| n.0).collect::<Vec<_>>(),
        vec![AlertState::Firing, AlertState::Resolved],
        "fires once, resolves once the value falls below 45: {notes:?}"
    );
}

#[test]
fn keep_firing_for_holds_a_firing_alert_through_short_clear_spells() {
    let mut rule = hot();
    rule.lifecycle.keep_firing_for_ms = 3000;
    let (mut e, k) = engine_with(rule);
    // Clear for 2 windows (shorter than 3 s), over again, then clear long.
    let notes = run(
        &mut e,
        k,
        &[60.0, 10.0, 10.0, 60.0, 10.0, 10.0, 10.0, 10.0, 10.0],
    );
    assert_eq!(
        notes,
        vec![
            (AlertState::Firing, false, 1000),
            // Clear from the window ending 5000; 3 s later it resolves.
            (AlertState::Resolved, false, 8000),
        ]
    );
}

#[test]
fn a_long_firing_alert_repeats_at_its_interval() {
    let mut rule = hot();
    rule.lifecycle.repeat_ms = Some(3000);
    let (mut e, k) = engine_with(rule);
    let notes = run(&mut e, k, &[60.0; 8]);
    assert_eq!(firing_count(&notes), 1);
    let repeats: Vec<i64> = notes.iter().filter(|n| n.1).map(|n| n.2).collect();
    assert_eq!(repeats, vec![4000, 7000], "{notes:?}");
}

#[test]
fn a_flapping_alert_says_so_once_and_then_goes_quiet_until_it_settles() {
    let mut rule = hot();
    rule.lifecycle.flap = Some(Flap {
        window_ms: 5000,
        changes: 4,
    });
    let (mut e, k) = engine_with(rule);
    let mut values = oscillating(12);
    values.extend([60.0; 8]);
    let notes = run(&mut e, k, &values);
    let states: Vec<AlertState> = notes.iter().map(|n| n.0).collect();
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == AlertState::Flapping)
            .count(),
        1,
        "{notes:?}"
    );
    // Three changes notify before the fourth marks it flapping; once
    // settled (no change for 5 s) it says it is firing.
    assert_eq!(
        states,
        vec![
            AlertState::Firing,
            AlertState::Resolved,
            AlertState::Firing,
            AlertState::Flapping,
            AlertState::Firing,
        ],
        "{notes:?}"
    );
    assert!(!e.alerts()[0].flapping);
}

#[test]
fn a_deadman_fires_on_silence_and_resolves_on_data() {
    let mut rule = hot();
    rule.name = "silent".into();
    rule.test = Test::NoData { silent_ms: 5000 };
    let mut e = Engine::new(config(), vec![rule]).expect("valid");
    let quiet = e.series_key("quiet", "temperature").expect("admitted");
    let chatty = e.series_key("chatty", "temperature").expect("admitted");
    let mut out = Output::default();
    let at = |series, ts_ms| Sample {
        series,
        ts_ms,
        value: 1.0,
    };
    e.ingest(&[at(quiet, 0), at(chatty, 0)], &mut out);
    for t in (1000..=4000).step_by(1000) {
        e.ingest(&[at(chatty, t)], &mut out);
    }
    assert!(out.alerts.is_empty(), "4 s of silence is not 5");
    e.ingest(&[at(chatty, 5000)], &mut out);
    assert_eq!(out.alerts.len(), 1, "{:?}", out.alerts);
    assert_eq!(out.alerts[0].state, AlertState::Firing);
    assert_eq!(e.label(out.alerts[0].key), "quiet");
    assert_eq!(out.alerts[0].value, 5.0, "seconds of silence");
    out.clear();
    // Silence of the whole fleet: the idle watermark keeps the clock.
    e.advance_to(20_000, &mut out);
    assert_eq!(out.alerts.len(), 1, "chatty fell silent too");
    assert_eq!(e.label(out.alerts[0].key), "chatty");
    out.clear();
    e.ingest(&[at(quiet, 20_500)], &mut out);
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(out.alerts[0].state, AlertState::Resolved);
    assert_eq!(e.label(out.alerts[0].key), "quiet");
}

#[test]
fn a_deadman_longer_than_the_idle_timeout_is_refused() {
    let mut rule = hot();
    rule.test = Test::NoData {
        silent_ms: 3_600_000,
    };
    let err = Engine::new(config(), vec![rule]).expect_err("refused");
    assert!(err.to_string().contains("idle timeout"), "{err}");
}

fn sql_rule(name: &str, text: &str) -> Rule {
    let mut rule = Rule::from_query(name, sql::parse(text).expect("valid SQL"));
    rule.severity = eddy_analytics::Severity::Critical;
    rule
}

#[test]
fn an_sql_rule_filters_groups_by_site_and_tests_a_compound_condition() {
    let rule = sql_rule(
        "plant",
        "SELECT site, avg(temperature) AS t FROM telemetry \
         WHERE site = 'plant-1' AND device LIKE 'press-%' AND value > -40 \
         GROUP BY site, TUMBLING(INTERVAL '2' SECOND) \
         HAVING t > 30 AND (max(temperature) - min(temperature) < 50 OR count(*) >= 10)",
    );
    let mut e = Engine::new(config(), vec![rule]).expect("valid");
    e.set_path("press-1", "plant-1/hall-a");
    e.set_path("press-2", "plant-1/hall-b");
    e.set_path("press-3", "plant-2/hall-a");
    e.set_path("oven-1", "plant-1/hall-a");
    let keys: Vec<SeriesKey> = ["press-1", "press-2", "press-3", "oven-1"]
        .iter()
        .map(|d| e.series_key(d, "temperature").expect("admitted"))
        .collect();
    let mut out = Output::default();
    let s = |series, ts_ms, value| Sample {
        series,
        ts_ms,
        value,
    };
    // plant-1 presses: 35 and 33 (mean 34 > 30); -100 is filtered out by
    // value > -40; press-3 (plant-2) and oven-1 (not a press) are too hot
    // but not read.
    e.ingest(
        &[
            s(keys[0], 0, 35.0),
            s(keys[1], 500, 33.0),
            s(keys[1], 600, -100.0),
            s(keys[2], 700, 90.0),
            s(keys[3], 800, 90.0),
        ],
        &mut out,
    );
    e.ingest(&[s(keys[0], 2000, 20.0)], &mut out);
    assert_eq!(out.alerts.len(), 1, "{:?}", out.alerts);
    let a = &out.alerts[0];
    assert_eq!(e.label(a.key), "plant-1");
    assert_eq!(a.value, 34.0, "the SELECTed aggregate is reported");
    assert_eq!(a.severity, eddy_analytics::Severity::Critical);
}

#[test]
fn a_rate_of_change_rule_fires_on_a_fast_rise() {
    let rule = sql_rule(
        "rising",
        "SELECT device, rate(pressure) FROM telemetry \
         GROUP BY device, SLIDING(INTERVAL '2' SECOND) HAVING rate(pressure) > 5",
    );
    let mut e = Engine::new(config(), vec![rule]).expect("valid");
    let k = e.series_key("p1", "pressure").expect("admitted");
    let mut out = Output::default();
    // +1/s for a while, then +10/s.
    let values = [0.0, 1.0, 2.0, 3.0, 13.0, 23.0, 33.0];
    for (i, v) in values.iter().enumerate() {
        e.ingest(
            &[Sample {
                series: k,
                ts_ms: i as i64 * 1000,
                value: *v,
            }],
            &mut out,
        );
    }
    e.advance_to(10_000, &mut out);
    let firing: Vec<i64> = out
        .alerts
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .map(|a| a.window_end_ms)
        .collect();
    assert_eq!(
        firing,
        vec![4001],
        "(ts - 2 s, ts] ends at ts + 1: {:?}",
        out.alerts
    );
}

#[test]
fn swapping_rules_keeps_unchanged_ones_running_and_starts_changed_ones_afresh() {
    let mut e = Engine::new(config(), vec![hot()]).expect("valid");
    let k = e.series_key("d1", "temperature").expect("admitted");
    let notes = run(&mut e, k, &[60.0, 60.0]);
    assert_eq!(firing_count(&notes), 1);
    // Same rule plus a new one: `hot` keeps firing, no second notification.
    let mut cold = hot();
    cold.name = "cold".into();
    cold.test = Test::Window {
        condition: Expr::compare(Aggregate::Mean, eddy_analytics::Cmp::Lt, 0.0),
        clear: None,
        value: Expr::agg(Aggregate::Mean),
    };
    e.set_rules(vec![hot(), cold.clone()]).expect("valid set");
    assert_eq!(e.alerts().len(), 1);
    let notes = run(&mut e, k, &[60.0, -5.0, -5.0]);
    assert_eq!(
        notes,
        vec![
            (AlertState::Resolved, false, 4000),
            (AlertState::Firing, false, 4000)
        ],
        "hot resolves, cold fires; hot never re-fired"
    );
    // A changed `hot` (threshold 70) starts without state.
    let mut hotter = hot();
    hotter.test = Test::Window {
        condition: Expr::compare(Aggregate::Mean, eddy_analytics::Cmp::Gt, 70.0),
        clear: None,
        value: Expr::agg(Aggregate::Mean),
    };
    e.set_rules(vec![hotter, cold]).expect("valid set");
    // An invalid set changes nothing.
    let mut broken = hot();
    broken.window = eddy_analytics::WindowKind::Tumbling { size_ms: 0 };
    assert!(e.set_rules(vec![broken]).is_err());
    assert_eq!(e.rules().count(), 2);
    let notes = run(&mut e, k, &[80.0, 80.0]);
    assert_eq!(
        notes,
        vec![
            (AlertState::Firing, false, 6000),
            (AlertState::Resolved, false, 6000)
        ],
        "the changed rule fires afresh; cold resolves"
    );
}

#[test]
fn a_restored_engine_keeps_firing_alerts_without_notifying_again() {
    let mut rule = hot();
    rule.lifecycle.repeat_ms = None;
    let mut e = Engine::new(config(), vec![rule.clone()]).expect("valid");
    let k = e.series_key("d1", "temperature").expect("admitted");
    let notes = run(&mut e, k, &[60.0, 60.0]);
    assert_eq!(firing_count(&notes), 1);
    let bytes = e.snapshot().expect("snapshot");
    let mut restored = Engine::restore(config(), vec![rule], &bytes).expect("restores");
    assert_eq!(restored.alerts().len(), 1);
    assert_eq!(restored.alerts()[0].phase, Phase::Firing);
    let notes = run(&mut restored, k, &[60.0, 60.0, 10.0, 10.0]);
    assert_eq!(
        notes,
        vec![(AlertState::Resolved, false, 5000)],
        "still firing after the restore: no second firing"
    );
    // Restored with an extra rule: the old one keeps its state.
    let mut e2 = Engine::restore(
        config(),
        vec![hot(), {
            let mut r = hot();
            r.name = "other".into();
            r
        }],
        &bytes,
    )
    .expect("restores with other rules");
    assert_eq!(e2.alerts().len(), 1);
    let notes = run(&mut e2, k, &[60.0, 60.0]);
    assert_eq!(notes.len(), 1, "only `other` fires: {notes:?}");
}
