//! The engine: keyed tumbling windows over event time, and rule evaluation.

use std::collections::HashMap;
use std::sync::Arc;

use crate::series::Symbols;
use crate::{
    Aggregates, AlertEvent, AlertState, SeriesFull, SeriesKey, ThresholdRule, WindowResult,
};

/// One reading of one series at an event time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub series: SeriesKey,
    /// Event time, Unix milliseconds.
    pub ts_ms: i64,
    pub value: f64,
}

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Size of the tumbling window whose results are published as aggregates.
    pub window_ms: u64,
    /// How far behind the newest event time a sample may be and still count.
    pub allowed_lateness_ms: u64,
    /// Most live series; samples of new series beyond it are refused and counted.
    pub max_series: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            window_ms: 10_000,
            allowed_lateness_ms: 2_000,
            max_series: 100_000,
        }
    }
}

/// A rule or configuration the engine cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("window size must be at least 1 ms")]
    ZeroWindow,
    #[error("rule `{rule}`: window size must be at least 1 ms")]
    ZeroRuleWindow { rule: Arc<str> },
    #[error("rule `{rule}`: threshold must be a finite number")]
    NonFiniteThreshold { rule: Arc<str> },
    #[error("rule name `{0}` is used twice")]
    DuplicateRule(Arc<str>),
    #[error("too many distinct metric names in rules: {0}")]
    Metrics(#[from] SeriesFull),
}

/// Counters since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub samples: u64,
    pub late: u64,
    pub refused_series_cap: u64,
    pub windows_closed: u64,
    pub alerts_fired: u64,
    pub alerts_resolved: u64,
}

/// What one call produced. Reused across calls to avoid allocation.
#[derive(Debug, Default)]
pub struct Output {
    /// Closed windows of the published aggregate window, oldest first.
    pub windows: Vec<WindowResult>,
    /// Alert state changes, in the order they happened.
    pub alerts: Vec<AlertEvent>,
    /// Samples older than the watermark, not merged into any window.
    pub late: Vec<Sample>,
}

impl Output {
    pub fn clear(&mut self) {
        self.windows.clear();
        self.alerts.clear();
        self.late.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.alerts.is_empty() && self.late.is_empty()
    }
}

#[derive(Debug)]
struct CompiledRule {
    rule: ThresholdRule,
    metric: u32,
    spec: usize,
}

/// Open windows of one series for one window size: (start, aggregates),
/// sorted by start. Usually one or two entries.
type OpenWindows = Vec<(i64, Aggregates)>;

/// The stream engine. Single threaded by design: shard by series to scale.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    devices: Symbols,
    metrics: Symbols,
    /// Window sizes; index 0 is the published aggregate window, the others
    /// are the distinct sizes rules need.
    specs: Vec<i64>,
    rules: Vec<CompiledRule>,
    series: HashMap<SeriesKey, Vec<OpenWindows>>,
    firing: HashMap<(usize, SeriesKey), bool>,
    max_event_ms: Option<i64>,
    watermark_ms: i64,
    /// Earliest end of any open window: nothing closes before it.
    next_close_ms: i64,
    stats: EngineStats,
}

impl Engine {
    pub fn new(config: EngineConfig, rules: Vec<ThresholdRule>) -> Result<Self, EngineError> {
        let window = i64::try_from(config.window_ms)
            .ok()
            .filter(|w| *w > 0)
            .ok_or(EngineError::ZeroWindow)?;
        // Metric names of rules are interned first, so they never count
        // against devices' series; the cap applies to them as to any name.
        let mut metrics = Symbols::new(config.max_series);
        let mut specs = vec![window];
        let mut compiled: Vec<CompiledRule> = Vec::with_capacity(rules.len());
        for rule in rules {
            if compiled.iter().any(|c| c.rule.name == rule.name) {
                return Err(EngineError::DuplicateRule(rule.name));
            }
            let size = i64::try_from(rule.window_ms)
                .ok()
                .filter(|w| *w > 0)
                .ok_or_else(|| EngineError::ZeroRuleWindow {
                    rule: rule.name.clone(),
                })?;
            if !rule.condition.threshold().is_finite() {
                return Err(EngineError::NonFiniteThreshold { rule: rule.name });
            }
            let spec = match specs.iter().position(|s| *s == size) {
                Some(i) => i,
                None => {
                    specs.push(size);
                    specs.len() - 1
                }
            };
            let metric = metrics.intern(&rule.metric)?;
            compiled.push(CompiledRule { rule, metric, spec });
        }
        Ok(Self {
            devices: Symbols::new(config.max_series),
            metrics,
            specs,
            rules: compiled,
            series: HashMap::new(),
            firing: HashMap::new(),
            max_event_ms: None,
            watermark_ms: i64::MIN,
            next_close_ms: i64::MAX,
            stats: EngineStats::default(),
            config,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Number of live series.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The current watermark: windows ending at or before it are closed.
    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    /// The newest event time seen.
    pub fn max_event_ms(&self) -> Option<i64> {
        self.max_event_ms
    }

    /// Resolves names to a series key, admitting a new series while the
    /// cap allows. At the cap a new series is refused (and counted); the
    /// existing series keep working.
    pub fn series_key(&mut self, device: &str, metric: &str) -> Result<SeriesKey, SeriesFull> {
        if let (Some(device), Some(metric)) = (self.devices.get(device), self.metrics.get(metric)) {
            let key = SeriesKey { device, metric };
            if self.series.contains_key(&key) {
                return Ok(key);
            }
        }
        if self.series.len() >= self.config.max_series {
            self.stats.refused_series_cap += 1;
            return Err(SeriesFull {
                max: self.config.max_series,
            });
        }
        let key = SeriesKey {
            device: self.devices.intern(device)?,
            metric: self.metrics.intern(metric)?,
        };
        self.series
            .insert(key, vec![OpenWindows::new(); self.specs.len()]);
        Ok(key)
    }

    pub fn device_name(&self, series: SeriesKey) -> &str {
        self.devices.name(series.device)
    }

    pub fn metric_name(&self, series: SeriesKey) -> &str {
        self.metrics.name(series.metric)
    }

    /// Adds samples to their windows, then advances the watermark to the
    /// newest event time less the allowed lateness, closing what it passes.
    pub fn ingest(&mut self, samples: &[Sample], out: &mut Output) {
        let lateness = i64::try_from(self.config.allowed_lateness_ms).unwrap_or(i64::MAX);
        for sample in samples {
            let Some(windows) = self.series.get_mut(&sample.series) else {
                // Keys come from `series_key`; an unknown one was never admitted.
                self.stats.refused_series_cap += 1;
                continue;
            };
            if sample.ts_ms < self.watermark_ms {
                self.stats.late += 1;
                out.late.push(*sample);
                continue;
            }
            self.stats.samples += 1;
            for (open, &size) in windows.iter_mut().zip(&self.specs) {
                let start = sample.ts_ms.div_euclid(size) * size;
                let agg = match open.binary_search_by_key(&start, |(s, _)| *s) {
                    Ok(i) => &mut open[i].1,
                    Err(i) => {
                        open.insert(i, (start, Aggregates::default()));
                        self.next_close_ms = self.next_close_ms.min(start.saturating_add(size));
                        &mut open[i].1
                    }
                };
                agg.add(sample.value);
            }
            self.max_event_ms = Some(
                self.max_event_ms
                    .map_or(sample.ts_ms, |m| m.max(sample.ts_ms)),
            );
        }
        if let Some(max) = self.max_event_ms {
            self.advance_to(max.saturating_sub(lateness), out);
        }
    }

    /// Moves the watermark forward to `watermark_ms` (never backwards) and
    /// closes every window that ends at or before it. Sources call this
    /// when event time advances without samples (an idle fleet).
    pub fn advance_to(&mut self, watermark_ms: i64, out: &mut Output) {
        if watermark_ms <= self.watermark_ms {
            return;
        }
        self.watermark_ms = watermark_ms;
        if watermark_ms < self.next_close_ms {
            return;
        }
        let mut closed: Vec<(usize, WindowResult)> = Vec::new();
        let mut next_close = i64::MAX;
        for (key, windows) in &mut self.series {
            for (spec, (open, &size)) in windows.iter_mut().zip(&self.specs).enumerate() {
                let n = open.partition_point(|(start, _)| start + size <= watermark_ms);
                closed.extend(open.drain(..n).map(|(start, aggregates)| {
                    (
                        spec,
                        WindowResult {
                            series: *key,
                            start_ms: start,
                            end_ms: start + size,
                            aggregates,
                        },
                    )
                }));
                if let Some((start, _)) = open.first() {
                    next_close = next_close.min(start + size);
                }
            }
        }
        self.next_close_ms = next_close;
        closed.sort_by_key(|(spec, w)| (w.end_ms, *spec, w.series));
        self.stats.windows_closed += closed.len() as u64;
        for (spec, window) in closed {
            self.evaluate_rules(spec, &window, out);
            if spec == 0 {
                out.windows.push(window);
            }
        }
    }

    fn evaluate_rules(&mut self, spec: usize, window: &WindowResult, out: &mut Output) {
        for (index, compiled) in self.rules.iter().enumerate() {
            if compiled.spec != spec || compiled.metric != window.series.metric {
                continue;
            }
            let rule = &compiled.rule;
            let value = window.aggregates.get(rule.aggregate);
            let now_firing = rule.condition.holds(value);
            let was_firing = self
                .firing
                .get(&(index, window.series))
                .copied()
                .unwrap_or(false);
            if now_firing == was_firing {
                continue;
            }
            self.firing.insert((index, window.series), now_firing);
            let state = if now_firing {
                self.stats.alerts_fired += 1;
                AlertState::Firing
            } else {
                self.stats.alerts_resolved += 1;
                AlertState::Resolved
            };
            out.alerts.push(AlertEvent {
                rule: rule.name.clone(),
                series: window.series,
                state,
                value,
                threshold: rule.condition.threshold(),
                window_start_ms: window.start_ms,
                window_end_ms: window.end_ms,
            });
        }
    }
}
