use std::collections::BTreeMap;

use eddy_analytics::{
    Aggregate, AlertState, Condition, Engine, EngineConfig, EngineError, Output, Sample,
    ThresholdRule,
};
use proptest::prelude::*;

fn config(window_ms: u64, lateness: u64) -> EngineConfig {
    EngineConfig {
        window_ms,
        allowed_lateness_ms: lateness,
        max_series: 1000,
    }
}

fn hot_rule(window_ms: u64) -> ThresholdRule {
    ThresholdRule {
        name: "hot".into(),
        metric: "temperature".into(),
        window_ms,
        aggregate: Aggregate::Mean,
        condition: Condition::Above(50.0),
    }
}

#[test]
fn tumbling_windows_close_when_the_watermark_passes_their_end() {
    let mut e = Engine::new(config(1000, 0), vec![]).expect("valid");
    let k = e.series_key("d1", "t").expect("admitted");
    let mut out = Output::default();
    let samples: Vec<Sample> = [(0, 1.0), (400, 3.0), (999, 2.0)]
        .iter()
        .map(|&(ts_ms, value)| Sample {
            series: k,
            ts_ms,
            value,
        })
        .collect();
    e.ingest(&samples, &mut out);
    assert!(
        out.windows.is_empty(),
        "window [0,1000) still open at watermark 999"
    );
    e.ingest(
        &[Sample {
            series: k,
            ts_ms: 1000,
            value: 9.0,
        }],
        &mut out,
    );
    assert_eq!(out.windows.len(), 1);
    let w = out.windows[0];
    assert_eq!((w.start_ms, w.end_ms), (0, 1000));
    assert_eq!(w.aggregates.count, 3);
    assert_eq!(w.aggregates.mean(), 2.0);
    assert_eq!((w.aggregates.min, w.aggregates.max), (1.0, 3.0));
}

#[test]
fn samples_within_the_lateness_count_and_older_ones_go_to_the_late_output() {
    let mut e = Engine::new(config(1000, 500), vec![]).expect("valid");
    let k = e.series_key("d1", "t").expect("admitted");
    let mut out = Output::default();
    let s = |ts_ms, value| Sample {
        series: k,
        ts_ms,
        value,
    };
    e.ingest(&[s(900, 1.0), s(1400, 1.0)], &mut out); // watermark 900
    e.ingest(&[s(950, 5.0)], &mut out); // within lateness: merged
    e.ingest(&[s(1600, 1.0)], &mut out); // watermark 1100 closes [0,1000)
    e.ingest(&[s(990, 7.0)], &mut out); // beyond lateness
    assert_eq!(out.windows.len(), 1);
    assert_eq!(out.windows[0].aggregates.count, 2);
    assert_eq!(out.windows[0].aggregates.sum, 6.0);
    assert_eq!(out.late, vec![s(990, 7.0)]);
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
        let batch = [
            Sample {
                series: hot,
                ts_ms: second * 1000,
                value: hot_value,
            },
            Sample {
                series: cool,
                ts_ms: second * 1000,
                value: 20.0,
            },
            Sample {
                series: other_metric,
                ts_ms: second * 1000,
                value: 99.0,
            },
        ];
        e.ingest(&batch, &mut out);
    }
    let changes: Vec<_> = out
        .alerts
        .iter()
        .map(|a| {
            (
                e.device_name(a.series).to_string(),
                a.state,
                a.window_start_ms,
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("hot-dev".to_string(), AlertState::Firing, 1000),
            ("hot-dev".to_string(), AlertState::Resolved, 4000),
        ]
    );
    assert_eq!(out.alerts[0].value, 80.0);
    assert_eq!(out.alerts[0].threshold, 50.0);
}

#[test]
fn a_rule_with_its_own_window_size_is_evaluated_on_that_size() {
    let mut rule = hot_rule(3000);
    rule.aggregate = Aggregate::Max;
    let mut e = Engine::new(config(1000, 0), vec![rule]).expect("valid");
    let k = e.series_key("d", "temperature").expect("admitted");
    let mut out = Output::default();
    for (ts, v) in [(0, 10.0), (1500, 60.0), (2500, 10.0), (3000, 10.0)] {
        e.ingest(
            &[Sample {
                series: k,
                ts_ms: ts,
                value: v,
            }],
            &mut out,
        );
    }
    assert_eq!(out.windows.len(), 3, "published windows are the 1 s ones");
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(
        (out.alerts[0].window_start_ms, out.alerts[0].window_end_ms),
        (0, 3000)
    );
}

#[test]
fn the_series_cap_refuses_new_series_and_keeps_old_ones() {
    let mut e = Engine::new(
        EngineConfig {
            max_series: 2,
            ..config(1000, 0)
        },
        vec![],
    )
    .expect("valid");
    let a = e.series_key("a", "t").expect("admitted");
    e.series_key("b", "t").expect("admitted");
    assert!(e.series_key("c", "t").is_err());
    assert_eq!(
        e.series_key("a", "t"),
        Ok(a),
        "existing series still resolve"
    );
    assert_eq!(e.stats().refused_series_cap, 1);
    assert_eq!(e.series_count(), 2);
}

#[test]
fn an_idle_watermark_closes_open_windows() {
    let mut e = Engine::new(config(1000, 0), vec![]).expect("valid");
    let k = e.series_key("d", "t").expect("admitted");
    let mut out = Output::default();
    e.ingest(
        &[Sample {
            series: k,
            ts_ms: 10,
            value: 1.0,
        }],
        &mut out,
    );
    assert!(out.windows.is_empty());
    e.advance_to(1000, &mut out);
    assert_eq!(out.windows.len(), 1);
    e.advance_to(500, &mut out);
    assert_eq!(e.watermark_ms(), 1000, "the watermark never goes back");
}

#[test]
fn invalid_rules_are_refused_with_their_name() {
    let zero = ThresholdRule {
        window_ms: 0,
        ..hot_rule(1000)
    };
    assert_eq!(
        Engine::new(config(1000, 0), vec![zero]).err(),
        Some(EngineError::ZeroRuleWindow { rule: "hot".into() })
    );
    let nan = ThresholdRule {
        condition: Condition::Below(f64::NAN),
        ..hot_rule(1000)
    };
    assert!(matches!(
        Engine::new(config(1000, 0), vec![nan]),
        Err(EngineError::NonFiniteThreshold { .. })
    ));
    assert!(matches!(
        Engine::new(config(1000, 0), vec![hot_rule(1000), hot_rule(2000)]),
        Err(EngineError::DuplicateRule(_))
    ));
}

proptest! {
    /// Against a model: in-order streams (any spacing, several series) give
    /// the same per-window count/sum/min/max as a direct group-by, and every
    /// sample lands in exactly one published window once all are closed.
    #[test]
    fn windows_match_a_direct_group_by(
        raw in proptest::collection::vec((0u8..4, 0i64..50, -100.0f64..100.0), 1..300),
        window in 1u64..40,
    ) {
        let mut e = Engine::new(config(window, 0), vec![]).expect("valid");
        let mut ts = 0i64;
        let mut samples = Vec::new();
        let mut model: BTreeMap<(String, i64), (u64, f64, f64, f64)> = BTreeMap::new();
        for (dev, step, value) in raw {
            ts += step;
            let device = format!("d{dev}");
            let k = e.series_key(&device, "m").expect("admitted");
            samples.push(Sample { series: k, ts_ms: ts, value });
            let start = ts.div_euclid(window as i64) * window as i64;
            let m = model.entry((device, start)).or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
            m.0 += 1; m.1 += value; m.2 = m.2.min(value); m.3 = m.3.max(value);
        }
        let mut out = Output::default();
        for chunk in samples.chunks(7) {
            e.ingest(chunk, &mut out);
        }
        e.advance_to(i64::MAX, &mut out);
        prop_assert!(out.late.is_empty());
        let got: BTreeMap<(String, i64), (u64, f64, f64, f64)> = out.windows.iter().map(|w| {
            let a = w.aggregates;
            ((e.device_name(w.series).to_string(), w.start_ms), (a.count, a.sum, a.min, a.max))
        }).collect();
        prop_assert_eq!(got.len(), model.len());
        for (k, (c, s, lo, hi)) in &model {
            let g = got[k];
            prop_assert_eq!(g.0, *c);
            prop_assert!((g.1 - s).abs() < 1e-9);
            prop_assert_eq!((g.2, g.3), (*lo, *hi));
        }
    }
}
