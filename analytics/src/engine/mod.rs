//! The engine: views (a window kind, a grouping, aggregates) over keyed
//! event-time state, watermarks per source, rules on closed windows,
//! live queries, idle eviction and snapshots.
//!
//! This file holds the [`Engine`], its state and the hot path: samples
//! into their groups' windows ([`Engine::ingest`]), windows closing as
//! the watermarks pass them, closed windows out in order. The rest, one
//! concern a file:
//!
//! - `spec`: views and settings, validated; the hidden view each rule reads.
//! - `sharing`: views over the same windows share one group state.
//! - `series`: admission of series under the cap (names interned, groups
//!   joined), hierarchy paths, names of keys, idle eviction.
//! - `watermark`: a view's and a group's watermark; event time moved on
//!   without data.
//! - `alerts`: rules stepped at closed windows and by silence; the
//!   alerts standing.
//! - `swap`: a new rule set installed, keeping the state it still reads.
//! - `live`: live queries over open windows.
//! - `snapshot`: the snapshot format, its fingerprint, restore.

mod alerts;
mod live;
mod series;
mod sharing;
mod snapshot;
mod spec;
mod swap;
mod watermark;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use live::{LiveQuery, LiveRow};
pub use spec::{DeviceLevel, EngineConfig, GroupBy, ViewSpec};

use crate::rule::{Alert, Rule};
use crate::series::Symbols;
use crate::state::{Emitted, WindowState};
use crate::{Aggregates, AlertEvent, GroupKey, HashMap, SeriesKey, WindowKind, WindowResult};
use alerts::{Joins, LevelKey, view_rules};
use series::SeriesEntry;
use sharing::Sharing;
use spec::{CompiledRule, base_views, compile_rules};
use watermark::source_watermark;

/// One reading of one series at an event time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The series, as [`Engine::series_key`] admitted it.
    pub series: SeriesKey,
    /// Event time, Unix milliseconds.
    pub ts_ms: i64,
    /// The reading.
    pub value: f64,
}

/// A rule or configuration the engine cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("window size must be at least 1 ms")]
    ZeroWindow,
    #[error("rule `{rule}`: {reason}")]
    BadRule { rule: Arc<str>, reason: String },
    #[error("rule name `{0}` is used twice")]
    DuplicateRule(Arc<str>),
    #[error("view name `{0}` is used twice")]
    DuplicateView(Arc<str>),
    #[error("view `{view}`: {reason}")]
    BadView { view: Arc<str>, reason: String },
    /// A snapshot that cannot be restored: another format version, taken
    /// with other views, or damaged.
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Counters since the engine started (kept in snapshots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Samples ingested.
    pub samples: u64,
    /// Samples late for at least one view.
    pub late: u64,
    /// Series refused at the series cap (or ingested with an unknown key).
    pub refused_series_cap: u64,
    /// Groups a view could not open at its cap (samples not analysed there).
    pub refused_group_cap: u64,
    /// Idle series evicted.
    pub series_evicted: u64,
    /// Samples dropped from sliding and count windows at their retention cap.
    pub retained_dropped: u64,
    /// Windows closed, once per view reading them.
    pub windows_closed: u64,
    /// Alerts that started firing (not repeats).
    pub alerts_fired: u64,
    /// Alerts that resolved.
    pub alerts_resolved: u64,
    /// Closed level windows of group comparisons dropped at their cap
    /// before every device read them (those devices' comparisons were
    /// UNKNOWN).
    pub level_windows_dropped: u64,
}

/// A sample that was older than a view's watermark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Late {
    /// The view (index into [`Engine::views`]).
    pub view: usize,
    /// The sample, not merged into that view's windows.
    pub sample: Sample,
}

/// What one call produced. Reused across calls to avoid allocation.
#[derive(Debug, Default)]
pub struct Output {
    /// Closed windows of published views, by end time.
    pub windows: Vec<WindowResult>,
    /// Alert state changes, in the order they happened.
    pub alerts: Vec<AlertEvent>,
    /// Samples older than a view's watermark, not merged into its windows.
    pub late: Vec<Late>,
}

impl Output {
    /// Empties every list, keeping their capacity.
    pub fn clear(&mut self) {
        self.windows.clear();
        self.alerts.clear();
        self.late.clear();
    }

    /// Whether the call produced nothing.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.alerts.is_empty() && self.late.is_empty()
    }
}

/// Not in this view.
const NONE: u32 = u32::MAX;

/// A group of a view and its open windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Group {
    key: GroupKey,
    state: WindowState,
    /// Series feeding it.
    members: u32,
    /// The device whose watermark closes it, when it is one device's.
    source: Option<u32>,
    /// Newest event time of a sample in it (deadman rules).
    #[serde(default)]
    last_ms: i64,
}

/// The groups of one view (of an owner: see [`Sharing`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ViewGroups {
    slots: Vec<Option<Group>>,
    free: Vec<u32>,
    index: HashMap<GroupKey, u32>,
    /// No window of this view closes before this event time.
    next_close: i64,
}

impl ViewGroups {
    /// No groups, nothing to close.
    fn empty() -> Self {
        ViewGroups {
            next_close: i64::MAX,
            ..ViewGroups::default()
        }
    }
}

/// Everything that changes while the engine runs, and what a snapshot
/// holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    devices: Symbols,
    metrics: Symbols,
    labels: Symbols,
    /// Hierarchy path per device name (`site/building/line`).
    paths: HashMap<String, String>,
    series: Vec<Option<SeriesEntry>>,
    free_series: Vec<u32>,
    series_index: HashMap<(u32, u32), u32>,
    views: Vec<ViewGroups>,
    /// Newest event time per device id.
    source_max: Vec<i64>,
    max_event_ms: Option<i64>,
    /// Set by [`Engine::advance_to`]: every watermark is at least this.
    idle_watermark: i64,
    /// Alert per (rule index, group).
    alerts: HashMap<(u32, GroupKey), Alert>,
    /// Closed windows of rules' level inputs (`site.avg(...)`), until the
    /// device windows of the same range have closed too (see
    /// `alerts.rs`); at most `max_series`, the oldest dropped.
    levels: BTreeMap<LevelKey, Aggregates>,
    last_evict_ms: i64,
    stats: EngineStats,
}

impl State {
    /// Nothing seen yet, for `views` views.
    fn new(max_series: usize, views: usize) -> Self {
        State {
            devices: Symbols::new(max_series),
            metrics: Symbols::new(max_series),
            labels: Symbols::new(max_series.saturating_mul(views.max(1))),
            paths: HashMap::default(),
            series: Vec::new(),
            free_series: Vec::new(),
            series_index: HashMap::default(),
            views: (0..views).map(|_| ViewGroups::empty()).collect(),
            source_max: Vec::new(),
            max_event_ms: None,
            idle_watermark: i64::MIN,
            alerts: HashMap::default(),
            levels: BTreeMap::new(),
            last_evict_ms: i64::MIN,
            stats: EngineStats::default(),
        }
    }
}

/// The stream engine. Single threaded by design: shard by series to scale.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    views: Vec<ViewSpec>,
    rules: Vec<CompiledRule>,
    /// Per view, the rule and input it is a hidden view of.
    view_rule: Vec<Option<(u32, u8)>>,
    /// Views before the rules' hidden views: the default and configured.
    base_views: usize,
    /// Which views share window state (see [`Sharing`]).
    sharing: Sharing,
    st: State,
    /// Scratch for emitted windows.
    emitted: Vec<Emitted>,
}

/// A duration setting as event-time milliseconds (saturating).
#[inline]
fn to_ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Engine {
    /// An engine running `config`'s views and `rules`, with no state.
    /// Fails if a view or rule is invalid, or names repeat.
    pub fn new(config: EngineConfig, rules: Vec<Rule>) -> Result<Self, EngineError> {
        let mut views = base_views(&config)?;
        let base_views = views.len();
        let compiled = compile_rules(&config, rules, &mut views)?;
        let st = State::new(config.max_series, views.len());
        Ok(Self {
            config,
            sharing: Sharing::of(&views),
            view_rule: view_rules(&compiled, views.len()),
            views,
            rules: compiled,
            base_views,
            st,
            emitted: Vec::new(),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Every view: the default (0), the configured ones, then one hidden
    /// view per rule. [`WindowResult::view`] and [`Late::view`] index this.
    pub fn views(&self) -> &[ViewSpec] {
        &self.views
    }

    /// Counters since the engine started.
    pub fn stats(&self) -> EngineStats {
        self.st.stats
    }

    /// Bytes of engine state, roughly (for the memory-per-series figure).
    pub fn heap_bytes(&self) -> usize {
        let st = &self.st;
        let groups: usize = st
            .views
            .iter()
            .map(|v| {
                v.slots.capacity() * std::mem::size_of::<Option<Group>>()
                    + v.index.capacity() * 16
                    + v.slots
                        .iter()
                        .flatten()
                        .map(|g| g.state.heap_bytes())
                        .sum::<usize>()
            })
            .sum();
        let series = st.series.capacity() * std::mem::size_of::<Option<SeriesEntry>>()
            + st.series
                .iter()
                .flatten()
                .map(|e| {
                    if e.groups.spilled() {
                        e.groups.capacity() * 4
                    } else {
                        0
                    }
                })
                .sum::<usize>()
            + st.series_index.capacity() * 16;
        let levels = st.levels.len()
            * (std::mem::size_of::<LevelKey>() + std::mem::size_of::<Aggregates>())
            + st.levels
                .values()
                .map(Aggregates::heap_bytes)
                .sum::<usize>();
        groups
            + series
            + levels
            + st.devices.heap_bytes()
            + st.metrics.heap_bytes()
            + st.labels.heap_bytes()
    }

    /// Adds samples to their windows, then advances the watermarks and
    /// closes what they passed. Count windows emit as they fill.
    pub fn ingest(&mut self, samples: &[Sample], out: &mut Output) {
        self.evict_due();
        let mut emitted = std::mem::take(&mut self.emitted);
        let mut immediate: Vec<(usize, GroupKey, Emitted)> = Vec::new();
        // Watermarks as of the start of the batch.
        let globals: Vec<i64> = (0..self.views.len())
            .map(|v| self.global_watermark(v))
            .collect();
        for sample in samples {
            let Some(entry) = self
                .st
                .series
                .get_mut(sample.series.0 as usize)
                .and_then(Option::as_mut)
            else {
                // Keys come from `series_key`; an unknown one was never admitted.
                self.st.stats.refused_series_cap += 1;
                continue;
            };
            entry.last_seen_ms = entry.last_seen_ms.max(sample.ts_ms);
            let device = entry.device;
            let mut late = false;
            for (v, &slot) in entry.groups.iter().enumerate() {
                if slot == NONE {
                    continue;
                }
                let spec = &self.views[v];
                let groups = &mut self.st.views[v];
                let Some(group) = groups.slots[slot as usize].as_mut() else {
                    continue;
                };
                if !spec.filter.value.contains(sample.value) {
                    continue;
                }
                if !matches!(spec.window, WindowKind::Count { .. }) {
                    let wm = match group.source {
                        None => globals[v],
                        Some(d) => source_watermark(
                            self.st.source_max[d as usize],
                            to_ms(spec.allowed_lateness_ms),
                            globals[v],
                            to_ms(self.config.max_source_skew_ms),
                            self.st.idle_watermark,
                        ),
                    };
                    if sample.ts_ms < wm {
                        late = true;
                        for &view in std::iter::once(&v).chain(&self.sharing.followers[v]) {
                            out.late.push(Late {
                                view,
                                sample: *sample,
                            });
                        }
                        continue;
                    }
                }
                group.last_ms = group.last_ms.max(sample.ts_ms);
                let (close, dropped) = group.state.add(
                    &spec.window,
                    self.sharing.quantiles[v],
                    sample.ts_ms,
                    sample.value,
                    &mut emitted,
                );
                groups.next_close = groups.next_close.min(close);
                if dropped {
                    self.st.stats.retained_dropped += 1;
                }
                let key = group.key;
                immediate.extend(emitted.drain(..).map(|e| (v, key, e)));
            }
            if late {
                self.st.stats.late += 1;
            }
            self.st.stats.samples += 1;
            let src = &mut self.st.source_max[device as usize];
            *src = (*src).max(sample.ts_ms);
            self.st.max_event_ms = Some(
                self.st
                    .max_event_ms
                    .map_or(sample.ts_ms, |m| m.max(sample.ts_ms)),
            );
        }
        self.emitted = emitted;
        let mut closed: Vec<Option<WindowResult>> = Vec::new();
        for (view, key, (start_ms, end_ms, aggregates)) in immediate {
            self.fan_out(
                WindowResult {
                    view,
                    key,
                    start_ms,
                    end_ms,
                    aggregates,
                },
                &mut closed,
            );
        }
        self.close_all(&mut closed);
        self.finish(closed, out);
    }

    /// A closed window of an owner's state, for the owner and each view
    /// sharing it.
    fn fan_out(&self, window: WindowResult, closed: &mut Vec<Option<WindowResult>>) {
        for &view in &self.sharing.followers[window.view] {
            closed.push(Some(WindowResult {
                view,
                ..window.clone()
            }));
        }
        closed.push(Some(window));
    }

    /// Closes, in every view, the windows its groups' watermarks passed;
    /// drops groups left empty.
    fn close_all(&mut self, closed: &mut Vec<Option<WindowResult>>) {
        let mut emitted = std::mem::take(&mut self.emitted);
        for v in 0..self.views.len() {
            let global = self.global_watermark(v);
            if global < self.st.views[v].next_close {
                continue;
            }
            let spec = self.views[v].clone();
            let mut next = i64::MAX;
            let mut empties = Vec::new();
            for slot in 0..self.st.views[v].slots.len() {
                let Some(source) = self.st.views[v].slots[slot].as_ref().map(|g| g.source) else {
                    continue;
                };
                let wm = self.group_watermark(v, source, global);
                let Some(group) = self.st.views[v].slots[slot].as_mut() else {
                    continue;
                };
                next = next.min(group.state.close(
                    &spec.window,
                    self.sharing.quantiles[v],
                    wm,
                    &mut emitted,
                ));
                let key = group.key;
                if group.members == 0 && group.state.is_empty() {
                    empties.push(slot as u32);
                }
                for (start_ms, end_ms, aggregates) in emitted.drain(..) {
                    self.fan_out(
                        WindowResult {
                            view: v,
                            key,
                            start_ms,
                            end_ms,
                            aggregates,
                        },
                        closed,
                    );
                }
            }
            self.st.views[v].next_close = next;
            for slot in empties {
                self.remove_group(v, slot);
            }
        }
        self.emitted = emitted;
    }

    /// Hands the closed windows out in order; the rules' windows are
    /// joined by range and the rules stepped in order of window end, then
    /// the deadman rules.
    fn finish(&mut self, mut slots: Vec<Option<WindowResult>>, out: &mut Output) {
        // Order by end time, then view, group and start; sorting keys,
        // not the (large) results, which then move once.
        let mut order: Vec<(i64, usize, GroupKey, i64, usize)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.as_ref().map(|w| (w.end_ms, w.view, w.key, w.start_ms, i)))
            .collect();
        order.sort_unstable();
        self.st.stats.windows_closed += slots.len() as u64;
        out.windows.reserve(slots.len());
        let mut joins = Joins::default();
        for (.., i) in order {
            let Some(window) = slots[i].take() else {
                continue;
            };
            match self.view_rule[window.view] {
                Some((rule, input)) => self.collect(rule, input, window, &mut joins),
                None if self.views[window.view].publish => out.windows.push(window),
                None => {}
            }
        }
        self.evaluate_joins(joins, out);
        self.evaluate_silence(out);
    }
}
