//! Render: the engine's outputs as the JSON messages people read.
//!
//! Input: closed windows, late samples, alert notifications, live query
//! rows, alert states. Output: [`Rendered`] messages (a topic relative to
//! the prefix and a JSON payload). The same rendering serves local
//! publishing, the outbox, alert history and the HTTP API, so every
//! consumer sees the same fields.

use eddy_analytics::{Aggregate, Aggregates, AlertEvent, Late, LiveQuery, WindowResult};
use serde_json::json;
use tracing::warn;

use super::{MAX_LATE_PUBLISHED, Pipeline, wall_ms};

/// A result ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Relative to the topic prefix: `agg/{device}/{metric}`, ...
    pub topic: String,
    /// JSON.
    pub payload: Vec<u8>,
    /// Published retained (alert states).
    pub retain: bool,
}

impl Pipeline {
    /// Pending and firing alerts.
    pub(super) fn alerts(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .engine
            .alerts()
            .iter()
            .map(|a| {
                json!({
                    "rule": &*a.rule, "group": a.label, "metric": a.metric,
                    "state": a.phase.name(), "since": a.since_ms, "value": finite(a.value),
                    "severity": a.severity.name(), "flapping": a.flapping,
                })
            })
            .collect();
        json!(rows)
    }

    /// Answers a live query from the engine's open windows.
    pub(super) fn live(&self, query: &LiveQuery) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .engine
            .live(query)
            .iter()
            .map(|row| {
                let mut v = json!({
                    "view": &*row.view, "group": row.label, "metric": row.metric,
                    "start": row.start_ms, "end": row.end_ms,
                });
                self.put_aggregates(&mut v, &row.view, &row.aggregates);
                v
            })
            .collect();
        json!({ "watermark": self.engine.watermark_ms(), "windows": rows })
    }

    /// The aggregates a view publishes, into a JSON object.
    fn put_aggregates(&self, v: &mut serde_json::Value, view: &str, a: &Aggregates) {
        let configured = self
            .parts
            .engine_section
            .views
            .iter()
            .find(|c| c.name == view)
            .map(|c| c.aggregates.as_slice());
        let standard = [
            Aggregate::Count,
            Aggregate::Mean,
            Aggregate::Min,
            Aggregate::Max,
        ];
        if let Some(obj) = v.as_object_mut() {
            for agg in configured.unwrap_or(&standard) {
                let value = a.get(*agg);
                obj.insert(agg.name(), json!(value));
            }
        }
    }

    pub(super) fn render_window(&self, w: &WindowResult) -> Rendered {
        let label = self.engine.label(w.key);
        let metric = self.engine.group_metric(w.key);
        if w.view == 0 {
            let a = &w.aggregates;
            let metric = metric.unwrap_or("*");
            let payload = json!({
                "device": label, "metric": metric,
                "start": w.start_ms, "end": w.end_ms,
                "count": a.count, "mean": a.mean(), "min": a.min, "max": a.max,
            });
            return Rendered {
                topic: format!("agg/{label}/{metric}"),
                payload: payload.to_string().into_bytes(),
                retain: false,
            };
        }
        let view = &*self.engine.views()[w.view].name;
        let mut payload = json!({
            "view": view, "group": label, "metric": metric,
            "start": w.start_ms, "end": w.end_ms,
        });
        self.put_aggregates(&mut payload, view, &w.aggregates);
        Rendered {
            topic: format!("view/{view}/{label}/{}", metric.unwrap_or("all")),
            payload: payload.to_string().into_bytes(),
            retain: false,
        }
    }

    /// The late output: each sample older than a view's watermark, on
    /// `{prefix}/late/{device}/{metric}` (QoS 0; the sample itself is in
    /// the store). At most `MAX_LATE_PUBLISHED` a batch; all are counted.
    pub(super) fn render_late(&self, late: &[Late]) -> Vec<Rendered> {
        if late.len() > MAX_LATE_PUBLISHED {
            warn!(
                late = late.len(),
                published = MAX_LATE_PUBLISHED,
                "many late samples in one batch; the rest are counted, not published"
            );
        }
        late.iter()
            .take(MAX_LATE_PUBLISHED)
            .map(|l| {
                let device = self.engine.device_name(l.sample.series);
                let metric = self.engine.metric_name(l.sample.series);
                let payload = json!({
                    "device": device, "metric": metric, "ts": l.sample.ts_ms,
                    "value": l.sample.value, "view": &*self.engine.views()[l.view].name,
                });
                Rendered {
                    topic: format!("late/{device}/{metric}"),
                    payload: payload.to_string().into_bytes(),
                    retain: false,
                }
            })
            .collect()
    }

    pub(super) fn render_alert(&self, a: &AlertEvent) -> Rendered {
        let device = self.engine.label(a.key);
        let payload = json!({
            "rule": &*a.rule, "device": device, "metric": self.engine.group_metric(a.key),
            "state": a.state.name(), "repeat": a.repeat, "severity": a.severity.name(),
            "value": finite(a.value), "threshold": a.threshold,
            "since": a.since_ms, "window_start": a.window_start_ms, "window_end": a.window_end_ms,
            "at": wall_ms(),
        });
        Rendered {
            topic: format!("alerts/{}/{device}", a.rule),
            payload: payload.to_string().into_bytes(),
            retain: true,
        }
    }
}

/// A number for JSON: NaN and infinities become null.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}
