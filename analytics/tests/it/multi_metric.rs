//! Rules over several metrics and comparisons with the group: windows of
//! the metrics joined by range, three-valued logic for missing metrics
//! (UNKNOWN never fires, never resolves), late samples, the device's
//! aggregate against its site's, all against a batch model.

use std::collections::BTreeMap;

use eddy_analytics::sql;
use eddy_analytics::{
    Aggregates, AlertState, Engine, EngineConfig, Output, Rule, Sample, SeriesKey, Truth,
    WindowKind,
};
use proptest::prelude::*;

fn rule(name: &str, text: &str) -> Rule {
    Rule::from_query(name, sql::parse(text).expect("valid SQL"))
}

fn at(series: SeriesKey, ts_ms: i64, value: f64) -> Sample {
    Sample {
        series,
        ts_ms,
        value,
    }
}

fn config(lateness: u64, skew: u64) -> EngineConfig {
    EngineConfig {
        window_ms: 1_000_000,
        allowed_lateness_ms: lateness,
        max_source_skew_ms: skew,
        max_series: 1000,
        ..EngineConfig::default()
    }
}

/// (rule, group label, state, window end) of each notification.
fn notes(e: &Engine, out: &Output) -> Vec<(String, String, AlertState, i64)> {
    out.alerts
        .iter()
        .map(|a| {
            (
                a.rule.to_string(),
                e.label(a.key).to_string(),
                a.state,
                a.window_end_ms,
            )
        })
        .collect()
}

const MUGGY: &str = "SELECT device, avg(temperature) FROM telemetry \
                     GROUP BY device, TUMBLING(INTERVAL '1' SECOND) \
                     HAVING avg(temperature) > 30 AND avg(humidity) > 80";

#[test]
fn a_rule_over_two_metrics_fires_when_both_hold_in_the_same_window() {
    let mut e = Engine::new(config(0, 10_000), vec![rule("muggy", MUGGY)]).expect("valid");
    let t = e.series_key("d1", "temperature").expect("admitted");
    let h = e.series_key("d1", "humidity").expect("admitted");
    let mut out = Output::default();
    // [0, 1 s): hot but dry; [1 s, 2 s): hot and humid; [2 s, 3 s): cool.
    e.ingest(&[at(t, 0, 35.0), at(h, 100, 50.0)], &mut out);
    e.ingest(&[at(t, 1000, 35.0), at(h, 1100, 90.0)], &mut out);
    e.ingest(&[at(t, 2000, 20.0), at(h, 2100, 90.0)], &mut out);
    e.advance_to(10_000, &mut out);
    assert_eq!(
        notes(&e, &out),
        vec![
            ("muggy".into(), "d1".into(), AlertState::Firing, 2000),
            ("muggy".into(), "d1".into(), AlertState::Resolved, 3000),
        ]
    );
    // Once per window, not once per metric: two inputs, one evaluation.
    let value = out.alerts[0].value;
    assert_eq!(value, 35.0, "the first aggregate is the reported value");
    assert_eq!(e.group_metric(out.alerts[0].key), None, "about the device");
}

#[test]
fn a_missing_metric_is_unknown_it_neither_fires_nor_resolves() {
    let any = "SELECT device FROM telemetry GROUP BY device, TUMBLING(INTERVAL '1' SECOND) \
               HAVING avg(temperature) > 30 OR avg(humidity) > 80";
    let mut e = Engine::new(
        config(0, 10_000),
        vec![rule("muggy", MUGGY), rule("any", any)],
    )
    .expect("valid");
    let t = e.series_key("d1", "temperature").expect("admitted");
    let h = e.series_key("d1", "humidity").expect("admitted");
    let mut out = Output::default();
    // Hot, no humidity at all: `muggy` is UNKNOWN (no alert, never a
    // false positive), `any` is TRUE (unknown OR true).
    e.ingest(&[at(t, 0, 35.0)], &mut out);
    e.ingest(&[at(t, 1000, 35.0)], &mut out);
    assert_eq!(
        notes(&e, &out),
        vec![("any".into(), "d1".into(), AlertState::Firing, 1000)]
    );
    out.clear();
    // Both: `muggy` fires.
    e.ingest(&[at(h, 1500, 90.0), at(t, 2000, 35.0)], &mut out);
    assert_eq!(
        notes(&e, &out),
        vec![("muggy".into(), "d1".into(), AlertState::Firing, 2000)]
    );
    out.clear();
    // Humidity gone again while hot: `muggy` is UNKNOWN and keeps firing
    // (its clearing was not shown); a cool window (unknown AND false is
    // false) resolves it. For `any`, false OR unknown is UNKNOWN: it
    // resolves only once humidity is known to be low too.
    e.ingest(&[at(t, 3000, 20.0)], &mut out);
    assert!(notes(&e, &out).is_empty(), "{:?}", notes(&e, &out));
    e.ingest(&[at(t, 4000, 20.0)], &mut out);
    assert_eq!(
        notes(&e, &out),
        vec![("muggy".into(), "d1".into(), AlertState::Resolved, 4000)],
        "[2 s, 3 s) hot and humidity missing: still firing; [3 s, 4 s) cool: resolved"
    );
    assert_eq!(
        e.alerts().len(),
        1,
        "`any` (20 OR missing: UNKNOWN) still fires"
    );
    out.clear();
    e.ingest(&[at(h, 4500, 10.0), at(t, 5000, 20.0)], &mut out);
    assert_eq!(
        notes(&e, &out),
        vec![("any".into(), "d1".into(), AlertState::Resolved, 5000)]
    );
}

#[test]
fn a_late_sample_of_one_metric_does_not_join_a_window_already_evaluated() {
    let mut e = Engine::new(config(0, 10_000), vec![rule("muggy", MUGGY)]).expect("valid");
    let t = e.series_key("d1", "temperature").expect("admitted");
    let h = e.series_key("d1", "humidity").expect("admitted");
    let mut out = Output::default();
    e.ingest(&[at(t, 0, 35.0), at(t, 1000, 35.0)], &mut out);
    // Humidity for [0, 1 s) after the window closed: late, not merged,
    // and the window is not evaluated again.
    e.ingest(&[at(h, 500, 90.0)], &mut out);
    assert!(!out.late.is_empty(), "{:?}", out.late);
    assert_eq!(e.stats().late, 1);
    e.advance_to(10_000, &mut out);
    assert!(out.alerts.is_empty(), "{:?}", out.alerts);
}

#[test]
fn power_from_two_metrics_selected_under_an_alias() {
    let power = "SELECT device, avg(voltage) * avg(current) AS power FROM telemetry \
                 GROUP BY device, TUMBLING(INTERVAL '1' SECOND) HAVING power > 2000";
    let mut e = Engine::new(config(0, 10_000), vec![rule("power", power)]).expect("valid");
    let v = e.series_key("m1", "voltage").expect("admitted");
    let i = e.series_key("m1", "current").expect("admitted");
    let mut out = Output::default();
    e.ingest(
        &[
            at(v, 0, 230.0),
            at(i, 10, 8.0),
            at(v, 1000, 230.0),
            at(i, 1010, 10.0),
        ],
        &mut out,
    );
    e.advance_to(10_000, &mut out);
    let got: Vec<(AlertState, i64, f64)> = out
        .alerts
        .iter()
        .map(|a| (a.state, a.window_end_ms, a.value))
        .collect();
    assert_eq!(got, vec![(AlertState::Firing, 2000, 2300.0)]);
}

#[test]
fn the_outlier_device_fires_not_the_whole_site() {
    let outlier = "SELECT device, avg(temperature) FROM telemetry \
                   GROUP BY device, TUMBLING(INTERVAL '1' SECOND) \
                   HAVING avg(temperature) > site.avg(temperature) + 10";
    let mut e = Engine::new(config(0, 10_000), vec![rule("outlier", outlier)]).expect("valid");
    let mut keys = Vec::new();
    for d in ["a1", "a2", "a3", "b1"] {
        let site = if d.starts_with('a') {
            "plant-a"
        } else {
            "plant-b"
        };
        assert!(e.set_path(d, &format!("{site}/hall")));
        keys.push(e.series_key(d, "temperature").expect("admitted"));
    }
    let mut out = Output::default();
    // plant-a: 20, 21 and 50 (site mean 30.33): a3 is 19.7 above. b1 is
    // alone in plant-b: never above its own mean.
    e.ingest(
        &[
            at(keys[0], 0, 20.0),
            at(keys[1], 0, 21.0),
            at(keys[2], 0, 50.0),
            at(keys[3], 0, 99.0),
        ],
        &mut out,
    );
    e.advance_to(5_000, &mut out);
    assert_eq!(
        notes(&e, &out),
        vec![("outlier".into(), "a3".into(), AlertState::Firing, 1000)]
    );
    assert_eq!(out.alerts[0].value, 50.0);
}

#[test]
fn a_lagging_device_reads_its_sites_window_kept_until_it_closes() {
    let outlier = "SELECT device FROM telemetry GROUP BY device, TUMBLING(INTERVAL '1' SECOND) \
                   HAVING avg(t) > site.avg(t) + 10";
    let mut e = Engine::new(config(0, 5_000), vec![rule("outlier", outlier)]).expect("valid");
    e.set_path("fast", "s");
    e.set_path("slow", "s");
    let fast = e.series_key("fast", "t").expect("admitted");
    let slow = e.series_key("slow", "t").expect("admitted");
    let mut out = Output::default();
    e.ingest(&[at(fast, 0, 10.0), at(slow, 0, 40.0)], &mut out);
    // The fast device runs ahead: the site's [0, 1 s) closes at once, the
    // slow device's only when the skew bound passes it.
    for ts in (1000..=4000).step_by(1000) {
        e.ingest(&[at(fast, ts, 10.0)], &mut out);
    }
    assert!(out.alerts.is_empty(), "slow's window still open");
    e.ingest(&[at(fast, 6500, 10.0)], &mut out);
    assert_eq!(
        notes(&e, &out),
        vec![("outlier".into(), "slow".into(), AlertState::Firing, 1000)],
        "40 > site mean 25 + 10, read when slow's window closed"
    );
}

// ---- the batch model ----

const LATENESS: i64 = 20;
const SKEW: i64 = 30;

/// A sample as the model sees it, and whether it was late for the
/// device's windows and for the site's.
#[derive(Debug, Clone, Copy)]
struct M {
    device: usize,
    metric: usize,
    ts: i64,
    v: f64,
    late_device: bool,
    late_site: bool,
}

const SITE: [usize; 3] = [0, 0, 1];

fn ranges(kind: WindowKind, ts: i64) -> Vec<(i64, i64)> {
    match kind {
        WindowKind::Tumbling { size_ms } => {
            let s = ts.div_euclid(size_ms as i64) * size_ms as i64;
            vec![(s, s + size_ms as i64)]
        }
        WindowKind::Hopping { size_ms, hop_ms } => {
            let (size, hop) = (size_ms as i64, hop_ms as i64);
            let mut out = Vec::new();
            let mut start = ts.div_euclid(hop) * hop;
            while start > ts - size {
                out.push((start, start + size));
                start -= hop;
            }
            out
        }
        _ => unreachable!("aligned windows only"),
    }
}

/// The mean of the samples admitted, in arrival order (as the engine
/// adds them), or `None` for none.
fn mean<'a>(xs: impl Iterator<Item = &'a M>) -> Option<f64> {
    let mut a = Aggregates::new(false);
    for m in xs {
        a.add(m.ts, m.v);
    }
    (a.count > 0).then(|| a.mean())
}

fn cmp(v: Option<f64>, above: bool, t: f64) -> Truth {
    match v {
        None => Truth::Unknown,
        Some(v) if above => (v > t).into(),
        Some(v) => (v < t).into(),
    }
}

/// Fires at TRUE, resolves at FALSE, UNKNOWN changes nothing: the
/// notifications (device, state, window end) of a stream of evaluations.
fn lifecycle(evals: Vec<(usize, i64, Truth)>) -> Vec<(usize, AlertState, i64)> {
    let mut firing = [false; 3];
    let mut out = Vec::new();
    for (d, end, truth) in evals {
        match truth {
            Truth::True if !firing[d] => {
                firing[d] = true;
                out.push((d, AlertState::Firing, end));
            }
            Truth::False if firing[d] => {
                firing[d] = false;
                out.push((d, AlertState::Resolved, end));
            }
            _ => {}
        }
    }
    out
}

fn aligned() -> impl Strategy<Value = (String, WindowKind)> {
    prop_oneof![
        (5u64..60).prop_map(|s| (
            format!("TUMBLING(INTERVAL '{s}' MILLISECOND)"),
            WindowKind::Tumbling { size_ms: s }
        )),
        (1u64..4, 5u64..30).prop_map(|(k, h)| (
            format!(
                "HOPPING(INTERVAL '{}' MILLISECOND, INTERVAL '{h}' MILLISECOND)",
                h * k
            ),
            WindowKind::Hopping {
                size_ms: h * k,
                hop_ms: h
            }
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Three devices (two in one site), two metrics, samples out of order
    /// and some late, in random batches: the alerts of a two-metric rule
    /// (AND or OR) and of a site comparison equal the batch model's,
    /// which joins each device's windows by range with three-valued
    /// logic and takes lateness from the watermark rule (a device's
    /// newest less the lateness, at most the skew behind the newest
    /// device's; the site's by the newest device's).
    #[test]
    fn several_metrics_and_site_comparisons_match_the_batch_model(
        raw in proptest::collection::vec(
            (0usize..3, 0usize..2, 0i64..15, 0i64..40, -20i32..20),
            1..120,
        ),
        (window_sql, kind) in aligned(),
        and in any::<bool>(),
        ta in -5i32..5,
        tb in -5i32..5,
        offset in 0i32..8,
        batch in 1usize..12,
    ) {
        let op = if and { "AND" } else { "OR" };
        let (ta, tb, offset) = (f64::from(ta) + 0.5, f64::from(tb) + 0.5, f64::from(offset));
        let both = rule(
            "both",
            &format!("SELECT device FROM telemetry GROUP BY device, {window_sql} \
                      HAVING avg(a) > {ta} {op} avg(b) < {tb}"),
        );
        let outlier = rule(
            "outlier",
            &format!("SELECT device FROM telemetry GROUP BY device, {window_sql} \
                      HAVING avg(a) > site.avg(a) + {offset}"),
        );
        let mut e = Engine::new(config(LATENESS as u64, SKEW as u64), vec![both, outlier])
            .expect("valid");
        let names = ["d0", "d1", "d2"];
        for (d, name) in names.iter().enumerate() {
            e.set_path(name, &format!("s{}/b", SITE[d]));
        }
        let keys: Vec<Vec<SeriesKey>> = names
            .iter()
            .map(|d| ["a", "b"].iter().map(|m| e.series_key(d, m).expect("admitted")).collect())
            .collect();
        // Per device a clock that moves forward; each sample displaced
        // back by up to twice the lateness, so some are late.
        let mut clock = [0i64; 3];
        let mut samples = Vec::new();
        for (d, m, step, back, v) in raw {
            clock[d] += step;
            samples.push((d, m, clock[d] - back, f64::from(v)));
        }
        // The model's lateness: watermarks as of the batch's start for
        // the newest device, each device's own as it goes.
        let mut model = Vec::new();
        let mut newest = [i64::MIN; 3];
        let mut max_event: Option<i64> = None;
        let mut out = Output::default();
        for chunk in samples.chunks(batch) {
            let global = max_event.map_or(i64::MIN, |m| m - LATENESS);
            for &(d, m, ts, v) in chunk {
                let own = newest[d].saturating_sub(LATENESS).max(global.saturating_sub(SKEW));
                model.push(M { device: d, metric: m, ts, v, late_device: ts < own, late_site: ts < global });
                newest[d] = newest[d].max(ts);
                max_event = Some(max_event.map_or(ts, |x| x.max(ts)));
            }
            let batch: Vec<Sample> = chunk.iter().map(|&(d, m, ts, v)| at(keys[d][m], ts, v)).collect();
            e.ingest(&batch, &mut out);
        }
        e.advance_to(i64::MAX / 2, &mut out);

        // Per device, the ranges it has a window of (of `metrics`), by end.
        let windows = |d: usize, metrics: &[usize]| -> Vec<(i64, i64)> {
            let mut rs: Vec<(i64, i64)> = model
                .iter()
                .filter(|s| s.device == d && metrics.contains(&s.metric) && !s.late_device)
                .flat_map(|s| ranges(kind, s.ts))
                .collect();
            rs.sort_by_key(|&(s, e)| (e, s));
            rs.dedup();
            rs
        };
        let own_mean = |d: usize, m: usize, (s, e): (i64, i64)| {
            mean(model.iter().filter(|x| x.device == d && x.metric == m && !x.late_device && x.ts >= s && x.ts < e))
        };
        let site_mean = |d: usize, (s, e): (i64, i64)| {
            mean(model.iter().filter(|x| SITE[x.device] == SITE[d] && x.metric == 0 && !x.late_site && x.ts >= s && x.ts < e))
        };
        let mut want: BTreeMap<&str, Vec<(usize, AlertState, i64)>> = BTreeMap::new();
        let mut evals = Vec::new();
        for d in 0..3 {
            for r in windows(d, &[0, 1]) {
                let a = cmp(own_mean(d, 0, r), true, ta);
                let b = cmp(own_mean(d, 1, r), false, tb);
                evals.push((d, r.1, if and { a.and(b) } else { a.or(b) }));
            }
        }
        want.insert("both", lifecycle(evals));
        let mut evals = Vec::new();
        for d in 0..3 {
            for r in windows(d, &[0]) {
                let truth = match (own_mean(d, 0, r), site_mean(d, r)) {
                    (Some(own), Some(site)) => (own > site + offset).into(),
                    _ => Truth::Unknown,
                };
                evals.push((d, r.1, truth));
            }
        }
        want.insert("outlier", lifecycle(evals));

        let mut got: BTreeMap<&str, Vec<(usize, AlertState, i64)>> = BTreeMap::new();
        got.insert("both", Vec::new());
        got.insert("outlier", Vec::new());
        for a in &out.alerts {
            let d: usize = e.label(a.key)[1..].parse().expect("d<n>");
            let list = got.get_mut(&*a.rule).expect("a known rule");
            list.push((d, a.state, a.window_end_ms));
        }
        for list in got.values_mut() {
            list.sort_by_key(|&(d, _, end)| (d, end));
        }
        for list in want.values_mut() {
            list.sort_by_key(|&(d, _, end)| (d, end));
        }
        let late = model.iter().filter(|m| m.late_device).count();
        prop_assert_eq!(&got, &want, "{} late of {}, {:?}", late, model.len(), kind);
    }
}
