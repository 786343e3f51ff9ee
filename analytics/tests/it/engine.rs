//! The engine against its contract: window kinds against a batch model
//! (property-tested with out-of-order samples within the lateness),
//! lateness, rules, grouping by hierarchy, live queries, caps and
//! eviction, per-source watermarks, snapshots.

use std::collections::BTreeMap;

use eddy_analytics::{
    Aggregate, Aggregates, AlertState, Condition, DeviceLevel, Engine, EngineConfig, EngineError,
    GroupBy, LiveQuery, Output, Rule, Sample, ViewSpec, WindowKind, WindowResult, sketch,
};
use proptest::prelude::*;

fn config(window_ms: u64, lateness: u64) -> EngineConfig {
    EngineConfig {
        window_ms,
        allowed_lateness_ms: lateness,
        max_series: 1000,
        ..EngineConfig::default()
    }
}

fn view(name: &str, window: WindowKind, group_by: GroupBy, lateness: u64) -> ViewSpec {
    ViewSpec {
        name: name.into(),
        window,
        group_by,
        metric: None,
        quantiles: true,
        allowed_lateness_ms: lateness,
        publish: true,
        filter: Default::default(),
    }
}

fn hot_rule(window_ms: u64) -> Rule {
    Rule::threshold(
        "hot",
        "temperature",
        window_ms,
        Aggregate::Mean,
        Condition::Above(50.0),
    )
}

fn at(series: eddy_analytics::SeriesKey, ts_ms: i64, value: f64) -> Sample {
    Sample {
        series,
        ts_ms,
        value,
    }
}

#[test]
fn tumbling_windows_close_when_the_watermark_passes_their_end() {
    let mut e = Engine::new(config(1000, 0), vec![]).expect("valid");
    let k = e.series_key("d1", "t").expect("admitted");
    let mut out = Output::default();
    e.ingest(&[at(k, 0, 1.0), at(k, 400, 3.0), at(k, 999, 2.0)], &mut out);
    assert!(
        out.windows.is_empty(),
        "[0,1000) still open at watermark 999"
    );
    e.ingest(&[at(k, 1000, 9.0)], &mut out);
    assert_eq!(out.windows.len(), 1);
    let w = &out.windows[0];
    assert_eq!((w.start_ms, w.end_ms), (0, 1000));
    let a = &w.aggregates;
    assert_eq!(a.count, 3);
    assert_eq!(a.mean(), 2.0);
    assert_eq!((a.min, a.max), (1.0, 3.0));
    assert_eq!(
        (a.get(Aggregate::First), a.get(Aggregate::Last)),
        (1.0, 2.0)
    );
    assert_eq!(a.get(Aggregate::Delta), 1.0);
    assert!((a.get(Aggregate::Rate) - 1000.0 / 999.0).abs() < 1e-12);
    assert_eq!(a.get(Aggregate::Variance), 1.0);
    assert_eq!(e.device_name(k), "d1");
    assert_eq!(e.label(w.key), "d1");
    assert_eq!(e.group_metric(w.key), Some("t"));
}

#[test]
fn samples_within_the_lateness_count_and_older_ones_go_to_the_late_output() {
    let mut e = Engine::new(config(1000, 500), vec![]).expect("valid");
    let k = e.series_key("d1", "t").expect("admitted");
    let mut out = Output::default();
    e.ingest(&[at(k, 900, 1.0), at(k, 1400, 1.0)], &mut out); // watermark 900
    e.ingest(&[at(k, 950, 5.0)], &mut out); // within lateness: merged
    e.ingest(&[at(k, 1600, 1.0)], &mut out); // watermark 1100 closes [0,1000)
    e.ingest(&[at(k, 990, 7.0)], &mut out); // beyond lateness
    assert_eq!(out.windows.len(), 1);
    assert_eq!(out.windows[0].aggregates.count, 2);
    assert_eq!(out.windows[0].aggregates.sum, 6.0);
    assert_eq!(out.late.len(), 1);
    assert_eq!(out.late[0].sample, at(k, 990, 7.0));
    assert_eq!(e.stats().late, 1);
}

#[test]
fn an_alert_fires_once_and_resolves_once_per_series() {
    let mut e = Engine::new(config(1000, 0), vec![hot_rule(1000)]).expect("valid");
    let hot = e.series_key("hot-dev", "temperature").expect("admitted");
    let cool = e.series_key("cool-dev", "temperature").expect("admitted");
    let other_metric = e.series_key("hot-dev", "humidity").expect("admitted");
    let mut out = Output::default();
    for second in 0..6i64 {
        let hot_value = if (1..4).contains(&second) { 80.0 } else { 20.0 };
        let ts = second * 1000;
        e.ingest(
            &[
                at(hot, ts, hot_value),
                at(cool, ts, 20.0),
                at(other_metric, ts, 99.0),
            ],
            &mut out,
        );
    }
    let changes: Vec<_> = out
        .alerts
        .iter()
        .map(|a| (e.label(a.key).to_string(), a.state, a.window_start_ms))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("hot-dev".to_string(), AlertState::Firing, 1000),
            ("hot-dev".to_string(), AlertState::Resolved, 4000),
        ]
    );
    assert_eq!(out.alerts[0].value, 80.0);
    assert_eq!(out.alerts[0].threshold, Some(50.0));
}

#[test]
fn a_rule_with_its_own_window_size_is_evaluated_on_that_size() {
    let rule = Rule::threshold(
        "hot",
        "temperature",
        3000,
        Aggregate::Max,
        Condition::Above(50.0),
    );
    let mut e = Engine::new(config(1000, 0), vec![rule]).expect("valid");
    let k = e.series_key("d", "temperature").expect("admitted");
    let mut out = Output::default();
    for (ts, v) in [(0, 10.0), (1500, 60.0), (2500, 10.0), (3000, 10.0)] {
        e.ingest(&[at(k, ts, v)], &mut out);
    }
    assert_eq!(out.windows.len(), 3, "published windows are the 1 s ones");
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(
        (out.alerts[0].window_start_ms, out.alerts[0].window_end_ms),
        (0, 3000)
    );
}

#[test]
fn an_idle_watermark_closes_open_windows() {
    let mut e = Engine::new(config(1000, 0), vec![]).expect("valid");
    let k = e.series_key("d", "t").expect("admitted");
    let mut out = Output::default();
    e.ingest(&[at(k, 10, 1.0)], &mut out);
    assert!(out.windows.is_empty());
    e.advance_to(1000, &mut out);
    assert_eq!(out.windows.len(), 1);
    e.advance_to(500, &mut out);
    assert_eq!(e.watermark_ms(), 1000, "the watermark never goes back");
}

#[test]
fn invalid_rules_and_views_are_refused_with_their_name() {
    assert_eq!(
        Engine::new(config(1000, 0), vec![hot_rule(0)])
            .err()
            .map(|e| e.to_string()),
        Some("rule `hot`: window size must be at least 1".into())
    );
    let nan = Rule::threshold(
        "hot",
        "temperature",
        1000,
        Aggregate::Mean,
        Condition::Below(f64::NAN),
    );
    assert!(matches!(
        Engine::new(config(1000, 0), vec![nan]),
        Err(EngineError::BadRule { .. })
    ));
    assert!(matches!(
        Engine::new(config(1000, 0), vec![hot_rule(1000), hot_rule(2000)]),
        Err(EngineError::DuplicateRule(_))
    ));
    let bad = EngineConfig {
        views: vec![view(
            "hops",
            WindowKind::Hopping {
                size_ms: 1000,
                hop_ms: 0,
            },
            GroupBy::SERIES,
            0,
        )],
        ..config(1000, 0)
    };
    assert_eq!(
        Engine::new(bad, vec![]).err(),
        Some(EngineError::BadView {
            view: "hops".into(),
            reason: "hop must be at least 1".into()
        })
    );
}

#[test]
fn hierarchy_levels_group_devices_and_live_queries_answer_by_prefix() {
    let level = |n| GroupBy {
        device: DeviceLevel::Level(n),
        metric: true,
    };
    let cfg = EngineConfig {
        views: vec![
            view(
                "site",
                WindowKind::Tumbling { size_ms: 10_000 },
                level(1),
                0,
            ),
            view(
                "line",
                WindowKind::Tumbling { size_ms: 10_000 },
                level(3),
                0,
            ),
        ],
        ..config(10_000, 0)
    };
    let mut e = Engine::new(cfg, vec![]).expect("valid");
    e.set_path("m1", "plant-1/hall-a/line-1");
    e.set_path("m2", "plant-1/hall-a/line-2");
    e.set_path("m3", "plant-2/hall-b/line-1");
    let mut out = Output::default();
    let keys: Vec<_> = ["m1", "m2", "m3"]
        .iter()
        .map(|d| e.series_key(d, "power").expect("admitted"))
        .collect();
    e.ingest(
        &[
            at(keys[0], 100, 10.0),
            at(keys[1], 200, 20.0),
            at(keys[2], 300, 40.0),
        ],
        &mut out,
    );
    // Live, before anything closed: the plant-1 site sums two machines.
    let site = e.live(&LiveQuery {
        view: Some("site".into()),
        prefix: "plant-1".into(),
        metric: Some("power".into()),
        limit: 100,
    });
    assert_eq!(site.len(), 1);
    assert_eq!(site[0].label, "plant-1");
    assert_eq!(site[0].aggregates.sum, 30.0);
    let lines = e.live(&LiveQuery {
        view: Some("line".into()),
        prefix: "plant-1/hall-a/".into(),
        metric: None,
        limit: 100,
    });
    let mut labels: Vec<_> = lines.iter().map(|r| r.label.as_str()).collect();
    labels.sort();
    assert_eq!(labels, ["plant-1/hall-a/line-1", "plant-1/hall-a/line-2"]);
    // All published views, prefix "m": the default per-series view.
    let all = e.live(&LiveQuery {
        prefix: "m".into(),
        limit: 100,
        ..LiveQuery::default()
    });
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|r| &*r.view == "default"));
    // Limits are honoured.
    let one = e.live(&LiveQuery {
        prefix: String::new(),
        limit: 1,
        ..LiveQuery::default()
    });
    assert_eq!(one.len(), 1);
}

#[test]
fn at_the_series_cap_idle_series_are_evicted_and_busy_ones_refuse_newcomers() {
    let mut e = Engine::new(
        EngineConfig {
            max_series: 2,
            idle_timeout_ms: 5_000,
            max_source_skew_ms: 1_000,
            ..config(1000, 0)
        },
        vec![],
    )
    .expect("valid");
    let mut out = Output::default();
    let a = e.series_key("a", "t").expect("admitted");
    let b = e.series_key("b", "t").expect("admitted");
    e.ingest(&[at(a, 0, 1.0), at(b, 0, 1.0)], &mut out);
    assert!(e.series_key("c", "t").is_err(), "both busy: refused");
    assert_eq!(
        e.series_key("a", "t"),
        Ok(a),
        "existing series still resolve"
    );
    assert_eq!(e.stats().refused_series_cap, 1);
    // `a` keeps sending; `b` goes quiet for longer than the idle timeout.
    e.ingest(&[at(a, 8_000, 1.0)], &mut out);
    // b's window closed (by the newest source's watermark less the skew)
    // before b went: nothing was lost.
    let closed: Vec<&str> = out.windows.iter().map(|w| e.label(w.key)).collect();
    assert_eq!(closed, ["a", "b"], "{:?}", out.windows);
    let c = e.series_key("c", "t").expect("admitted in b's place");
    assert_eq!(e.series_count(), 2);
    assert_eq!(e.stats().series_evicted, 1);
    assert_eq!(e.device_name(c), "c");
    assert_eq!(e.device_name(a), "a");
}

#[test]
fn a_source_whose_clock_lags_is_not_late_against_the_others() {
    let cfg = EngineConfig {
        max_source_skew_ms: 60_000,
        ..config(1000, 100)
    };
    let mut e = Engine::new(cfg, vec![]).expect("valid");
    let mut out = Output::default();
    let fast = e.series_key("fast", "t").expect("admitted");
    let slow = e.series_key("slow", "t").expect("admitted");
    // The slow device's clock is 30 s behind, within the skew allowed.
    e.ingest(&[at(fast, 100_000, 1.0)], &mut out);
    e.ingest(&[at(slow, 70_000, 2.0), at(slow, 70_500, 3.0)], &mut out);
    assert!(out.late.is_empty(), "{:?}", out.late);
    e.ingest(&[at(slow, 71_200, 3.0)], &mut out);
    let slow_windows: Vec<&WindowResult> = out
        .windows
        .iter()
        .filter(|w| e.label(w.key) == "slow")
        .collect();
    assert_eq!(slow_windows.len(), 1, "closed by its own watermark");
    assert_eq!(slow_windows[0].aggregates.count, 2);
    // Beyond the allowed skew, the lagging source's samples are late.
    e.ingest(&[at(slow, 10_000, 1.0)], &mut out);
    assert_eq!(out.late.len(), 1);
}

#[test]
fn a_snapshot_resumes_open_windows_and_alert_state() {
    let cfg = || EngineConfig {
        views: vec![view(
            "sessions",
            WindowKind::Session {
                gap_ms: 500,
                max_ms: None,
            },
            GroupBy::SERIES,
            0,
        )],
        ..config(1000, 0)
    };
    let mut e = Engine::new(cfg(), vec![hot_rule(1000)]).expect("valid");
    let k = e.series_key("d", "temperature").expect("admitted");
    let mut out = Output::default();
    e.ingest(
        &[at(k, 0, 80.0), at(k, 1000, 80.0), at(k, 1200, 30.0)],
        &mut out,
    );
    assert_eq!(out.alerts.len(), 1, "fired on [0,1000)");
    let bytes = e.snapshot().expect("snapshot");
    let mut resumed = Engine::restore(cfg(), vec![hot_rule(1000)], &bytes).expect("restores");
    let mut fresh = Output::default();
    let k2 = resumed
        .series_key("d", "temperature")
        .expect("the series is still there");
    assert_eq!(k2, k);
    resumed.ingest(&[at(k, 1900, 80.0), at(k, 3000, 20.0)], &mut fresh);
    let default: Vec<_> = fresh.windows.iter().filter(|w| w.view == 0).collect();
    assert_eq!(default[0].start_ms, 1000);
    assert_eq!(
        default[0].aggregates.count, 3,
        "samples from before the restart"
    );
    // Still firing from before: [1000, 2000) mean is 63: no new alert.
    assert!(
        fresh.alerts.iter().all(|a| a.window_start_ms >= 2000),
        "{:?}",
        fresh.alerts
    );
    let session = fresh
        .windows
        .iter()
        .find(|w| w.view == 1)
        .expect("a session closed");
    assert_eq!(
        (session.start_ms, session.aggregates.count),
        (1000, 2),
        "the session open at the snapshot, continued"
    );
    // Other views or rules: refused.
    assert!(matches!(
        Engine::restore(config(1000, 0), vec![], &bytes),
        Err(EngineError::Snapshot(_))
    ));
    assert!(Engine::restore(cfg(), vec![hot_rule(1000)], &bytes[..bytes.len() / 2]).is_err());
}

#[test]
fn quantiles_are_within_the_sketch_bound() {
    let cfg = EngineConfig {
        views: vec![view(
            "q",
            WindowKind::Tumbling { size_ms: 100_000 },
            GroupBy::SERIES,
            0,
        )],
        ..config(100_000, 0)
    };
    let mut e = Engine::new(cfg, vec![]).expect("valid");
    let k = e.series_key("d", "latency").expect("admitted");
    let mut values: Vec<f64> = (0..5000).map(|i| 1.0 + ((i * 37) % 1000) as f64).collect();
    let samples: Vec<Sample> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| at(k, i as i64, v))
        .collect();
    let mut out = Output::default();
    e.ingest(&samples, &mut out);
    e.advance_to(200_000, &mut out);
    let w = out.windows.iter().find(|w| w.view == 1).expect("closed");
    values.sort_by(f64::total_cmp);
    for (agg, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        let want = values[(q * (values.len() - 1) as f64).floor() as usize];
        let got = w.aggregates.get(Aggregate::parse(agg).expect("parses"));
        assert!(
            (got - want).abs() <= sketch::ALPHA * want,
            "{agg}: {got} vs {want}"
        );
    }
    assert!(Aggregate::parse("p101").is_none());
    assert_eq!(
        Aggregate::parse("p99.9").map(Aggregate::name),
        Some("p99.9".into())
    );
}

// ---- the batch model ----

/// A sample as the model sees it: group label, arrival index, ts, value.
#[derive(Debug, Clone, Copy)]
struct M {
    device: u8,
    ts: i64,
    v: f64,
}

/// A window's expected aggregates and its samples.
type Want = (Aggregates, Vec<M>);

fn agg_of<'a>(xs: impl Iterator<Item = &'a M>) -> Want {
    let members: Vec<M> = xs.copied().collect();
    let mut a = Aggregates::new(true);
    for m in &members {
        a.add(m.ts, m.v);
    }
    (a, members)
}

/// Expected (device, start, end) -> windows, computed in batch.
fn model(kind: WindowKind, samples: &[M]) -> BTreeMap<(u8, i64, i64), Vec<Want>> {
    let mut out: BTreeMap<(u8, i64, i64), Vec<Want>> = BTreeMap::new();
    for device in 0..3u8 {
        let arrival: Vec<M> = samples
            .iter()
            .copied()
            .filter(|m| m.device == device)
            .collect();
        let mut sorted = arrival.clone();
        sorted.sort_by_key(|m| m.ts);
        let mut put = |start: i64, end: i64, a: Want| {
            out.entry((device, start, end)).or_default().push(a);
        };
        match kind {
            WindowKind::Tumbling { size_ms } => {
                let size = size_ms as i64;
                let mut starts: Vec<i64> = arrival
                    .iter()
                    .map(|m| m.ts.div_euclid(size) * size)
                    .collect();
                starts.sort();
                starts.dedup();
                for s in starts {
                    put(
                        s,
                        s + size,
                        agg_of(arrival.iter().filter(|m| m.ts.div_euclid(size) * size == s)),
                    );
                }
            }
            WindowKind::Hopping { size_ms, hop_ms } => {
                let (size, hop) = (size_ms as i64, hop_ms as i64);
                let mut starts = Vec::new();
                for m in &arrival {
                    let mut s = m.ts.div_euclid(hop) * hop;
                    while s > m.ts - size {
                        starts.push(s);
                        s -= hop;
                    }
                }
                starts.sort();
                starts.dedup();
                for s in starts {
                    put(
                        s,
                        s + size,
                        agg_of(arrival.iter().filter(|m| m.ts >= s && m.ts < s + size)),
                    );
                }
            }
            WindowKind::Sliding { size_ms } => {
                let size = size_ms as i64;
                for m in &sorted {
                    put(
                        m.ts - size + 1,
                        m.ts + 1,
                        agg_of(sorted.iter().filter(|o| o.ts > m.ts - size && o.ts <= m.ts)),
                    );
                }
            }
            WindowKind::Session { gap_ms, .. } => {
                let gap = gap_ms as i64;
                let mut i = 0;
                while i < sorted.len() {
                    let mut j = i + 1;
                    while j < sorted.len() && sorted[j].ts - sorted[j - 1].ts < gap {
                        j += 1;
                    }
                    put(
                        sorted[i].ts,
                        sorted[j - 1].ts + gap,
                        agg_of(sorted[i..j].iter()),
                    );
                    i = j;
                }
            }
            WindowKind::Count { n, hop } => {
                let n = n as usize;
                let hop = hop.map_or(n, |h| h as usize);
                let mut first = 0;
                while first + n <= arrival.len() {
                    let w = &arrival[first..first + n];
                    let start = w.iter().map(|m| m.ts).min().unwrap_or(0);
                    let end = w.iter().map(|m| m.ts).max().unwrap_or(0) + 1;
                    put(start, end, agg_of(w.iter()));
                    first += hop;
                }
            }
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

fn same(got: &Aggregates, (want, members): &Want) -> Result<(), String> {
    let aggs = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Mean,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Stddev,
    ];
    for a in aggs {
        let (g, w) = (got.get(a), want.get(a));
        if !close(g, w) {
            return Err(format!("{}: {g} vs {w}", a.name()));
        }
    }
    // First and last: a value at the earliest and the latest event time
    // (which of several at the same instant depends on arrival order);
    // delta and rate follow from them.
    let at = |ts: i64, v: f64| members.iter().any(|m| m.ts == ts && m.v == v);
    let (first, last) = (got.first, got.last);
    if first.0 != want.first.0 || !at(first.0, first.1) {
        return Err(format!("first: {first:?} vs {:?}", want.first));
    }
    if last.0 != want.last.0 || !at(last.0, last.1) {
        return Err(format!("last: {last:?} vs {:?}", want.last));
    }
    if !close(got.get(Aggregate::Delta), last.1 - first.1) {
        return Err("delta".into());
    }
    // The sketch's quantile matches the exact one within its bound.
    let g = got.get(Aggregate::Quantile(9000));
    let w = want.get(Aggregate::Quantile(9000));
    if !close(g, w) {
        return Err(format!("p90: {g} vs {w}"));
    }
    Ok(())
}

fn kinds() -> impl Strategy<Value = WindowKind> {
    prop_oneof![
        (1u64..60).prop_map(|size_ms| WindowKind::Tumbling { size_ms }),
        (1u64..20, 1u64..4).prop_map(|(hop, k)| WindowKind::Hopping {
            size_ms: hop * k,
            hop_ms: hop
        }),
        (1u64..60).prop_map(|size_ms| WindowKind::Sliding { size_ms }),
        (1u64..30).prop_map(|gap_ms| WindowKind::Session {
            gap_ms,
            max_ms: None
        }),
        (1u64..8, proptest::option::of(1u64..5)).prop_map(|(n, hop)| WindowKind::Count { n, hop }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every window kind against the batch model: random streams of three
    /// devices, shuffled within the allowed lateness, cut into random
    /// batches; once everything is closed, the streaming results equal
    /// the model's, window by window, aggregate by aggregate.
    #[test]
    fn every_window_kind_matches_the_batch_model(
        raw in proptest::collection::vec((0u8..3, 0i64..15, 0i64..20, -50.0f64..50.0), 1..150),
        kind in kinds(),
        batch in 1usize..20,
    ) {
        const LATENESS: i64 = 20;
        // A second view on the same windows shares the first one's state
        // and must publish exactly its windows.
        let cfg = EngineConfig {
            views: vec![
                view("v", kind, GroupBy::SERIES, LATENESS as u64),
                ViewSpec { quantiles: false, ..view("w", kind, GroupBy::SERIES, LATENESS as u64) },
            ],
            ..config(1_000_000, LATENESS as u64)
        };
        let mut e = Engine::new(cfg, vec![]).expect("valid");
        let keys: Vec<_> = (0..3).map(|d| e.series_key(&format!("d{d}"), "m").expect("admitted")).collect();
        // Per device, a clock that only moves forward, and each sample
        // displaced back by less than the lateness: nothing is late.
        let mut clock = [0i64; 3];
        let mut samples = Vec::new();
        let mut model_in = Vec::new();
        for (d, step, back, v) in raw {
            let c = &mut clock[usize::from(d)];
            *c += step;
            let ts = *c - back.min(LATENESS - 1);
            samples.push(at(keys[usize::from(d)], ts, v));
            model_in.push(M { device: d, ts, v });
        }
        let mut out = Output::default();
        for chunk in samples.chunks(batch) {
            e.ingest(chunk, &mut out);
        }
        e.advance_to(i64::MAX / 2, &mut out);
        prop_assert!(out.late.is_empty(), "late: {:?}", out.late);
        let mut got: BTreeMap<(u8, i64, i64), Vec<Aggregates>> = BTreeMap::new();
        for w in out.windows.iter().filter(|w| w.view == 1) {
            let device: u8 = e.label(w.key)[1..].parse().expect("d<n>");
            got.entry((device, w.start_ms, w.end_ms)).or_default().push(w.aggregates.clone());
        }
        let of_view = |v: usize| -> Vec<(i64, i64, eddy_analytics::GroupKey, &Aggregates)> {
            out.windows
                .iter()
                .filter(|w| w.view == v)
                .map(|w| (w.start_ms, w.end_ms, w.key, &w.aggregates))
                .collect()
        };
        prop_assert_eq!(of_view(2), of_view(1));
        let want = model(kind, &model_in);
        prop_assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "windows differ for {:?}", kind
        );
        for (k, ws) in &want {
            let gs = &got[k];
            prop_assert_eq!(gs.len(), ws.len());
            for (g, w) in gs.iter().zip(ws) {
                if let Err(e) = same(g, w) {
                    prop_assert!(false, "{:?} {:?}: {}", kind, k, e);
                }
            }
        }
    }
}

#[test]
fn views_and_rules_on_the_same_windows_share_one_state() {
    // The default view and a p99 view read tumbling 1 s windows of every
    // series: one state, two readers. Rules read one metric each, so
    // rules on the same metric and windows share another.
    let p99 = ViewSpec {
        allowed_lateness_ms: 0,
        ..view(
            "p99",
            WindowKind::Tumbling { size_ms: 1000 },
            GroupBy::SERIES,
            0,
        )
    };
    let shared = |rules: Vec<Rule>| {
        let config = EngineConfig {
            views: vec![p99.clone()],
            ..config(1000, 0)
        };
        Engine::new(config, rules).expect("valid")
    };
    let alone = {
        let mut e = shared(vec![hot_rule(1000)]);
        let k = e.series_key("d1", "temperature").expect("admitted");
        let mut out = Output::default();
        e.ingest(&[at(k, 0, 60.0), at(k, 500, 70.0)], &mut out);
        e.heap_bytes()
    };
    let mut e = shared(vec![hot_rule(1000)]);
    let k = e.series_key("d1", "temperature").expect("admitted");
    let mut out = Output::default();
    e.ingest(
        &[at(k, 0, 60.0), at(k, 500, 70.0), at(k, 1000, 1.0)],
        &mut out,
    );
    let by_view: BTreeMap<usize, &WindowResult> = out.windows.iter().map(|w| (w.view, w)).collect();
    assert_eq!(by_view.len(), 2, "default and p99 each publish the window");
    for w in by_view.values() {
        assert_eq!((w.start_ms, w.end_ms, w.aggregates.count), (0, 1000, 2));
        assert_eq!(w.aggregates.mean(), 65.0);
    }
    let p99_of = by_view[&1].aggregates.get(Aggregate::Quantile(9900));
    assert!((p99_of - 60.0).abs() <= 60.0 * sketch::ALPHA, "{p99_of}");
    assert_eq!(out.alerts.len(), 1, "the rule read the same window");
    // A late sample is reported to every view that reads the windows.
    out.clear();
    e.ingest(&[at(k, 10, 5.0)], &mut out);
    let mut late: Vec<usize> = out.late.iter().map(|l| l.view).collect();
    late.sort_unstable();
    assert_eq!(late, vec![0, 1, 2]);
    // The p99 view costs no state of its own.
    let one_view = {
        let mut e = Engine::new(config(1000, 0), vec![hot_rule(1000)]).expect("valid");
        let k = e.series_key("d1", "temperature").expect("admitted");
        e.ingest(&[at(k, 0, 60.0), at(k, 500, 70.0)], &mut Output::default());
        e.heap_bytes()
    };
    assert_eq!(alone, one_view);

    // Adding a rule on the same windows keeps the open window and the
    // firing alert; removing the first rule hands the state on.
    out.clear();
    e.ingest(&[at(k, 1200, 80.0)], &mut out);
    let mut warm = hot_rule(1000);
    warm.name = "warm".into();
    e.set_rules(vec![hot_rule(1000), warm.clone()])
        .expect("valid");
    assert_eq!(e.alerts().len(), 1, "hot still firing, warm not yet");
    e.ingest(&[at(k, 1400, 90.0), at(k, 2000, 90.0)], &mut out);
    let window = out
        .windows
        .iter()
        .find(|w| w.start_ms == 1000 && w.view == 0)
        .expect("window [1000, 2000) closed");
    assert_eq!(
        window.aggregates.count, 3,
        "1000, 1200 and 1400 all counted"
    );
    let fired: Vec<&str> = out.alerts.iter().map(|a| &*a.rule).collect();
    assert_eq!(fired, vec!["warm"], "hot fired already; warm fires now");
    e.set_rules(vec![warm]).expect("valid");
    out.clear();
    e.ingest(&[at(k, 2500, 10.0), at(k, 3000, 10.0)], &mut out);
    let resolved: Vec<(&str, AlertState)> =
        out.alerts.iter().map(|a| (&*a.rule, a.state)).collect();
    assert_eq!(resolved, vec![("warm", AlertState::Resolved)]);
    assert_eq!(
        out.windows
            .iter()
            .find(|w| w.view == 0)
            .map(|w| w.aggregates.count),
        Some(2),
        "[2000, 3000) holds 2000 and 2500"
    );
}
