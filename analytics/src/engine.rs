//! The engine: views (a window kind, a grouping, aggregates) over keyed
//! event-time state, watermarks per source, rules on closed windows,
//! live queries, idle eviction and snapshots.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::rule::{ActiveAlert, Alert, Phase, Rule, SeriesFilter, Test};
use crate::series::Symbols;
use crate::state::{Emitted, WindowState};
use crate::{AlertEvent, GroupKey, HashMap, SeriesFull, SeriesKey, WindowKind, WindowResult};

/// One reading of one series at an event time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub series: SeriesKey,
    /// Event time, Unix milliseconds.
    pub ts_ms: i64,
    pub value: f64,
}

/// Which part of a device's identity a view groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceLevel {
    /// Each device on its own.
    Device,
    /// The first `n` levels of the device's hierarchy path
    /// (`site/building/line/device`): level 1 is the site.
    Level(u8),
    /// All devices together.
    All,
}

/// How a view groups samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupBy {
    pub device: DeviceLevel,
    /// Each metric on its own (otherwise all metrics together).
    pub metric: bool,
}

impl GroupBy {
    /// Per series: each metric of each device.
    pub const SERIES: GroupBy = GroupBy {
        device: DeviceLevel::Device,
        metric: true,
    };
}

/// A continuous query: windows of one kind over groups of series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewSpec {
    pub name: Arc<str>,
    pub window: WindowKind,
    pub group_by: GroupBy,
    /// Only this metric (all metrics when `None`).
    pub metric: Option<String>,
    /// Keep a quantile sketch per window (p50, p99, ... available).
    pub quantiles: bool,
    /// How far behind its source's newest event time a sample may be and
    /// still count.
    pub allowed_lateness_ms: u64,
    /// Closed windows go to [`Output::windows`] (otherwise only rules see them).
    pub publish: bool,
    /// Which series the view reads (all by default).
    #[serde(default)]
    pub filter: SeriesFilter,
}

impl ViewSpec {
    /// A published view of `window` per series, over every metric, with
    /// no quantiles and no lateness: the fields to change from.
    pub fn new(name: &str, window: WindowKind) -> Self {
        Self {
            name: name.into(),
            window,
            group_by: GroupBy::SERIES,
            metric: None,
            quantiles: false,
            allowed_lateness_ms: 0,
            publish: true,
            filter: SeriesFilter::default(),
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Size of the tumbling per-series window whose results are published
    /// as aggregates (view 0, `default`).
    pub window_ms: u64,
    /// The default view's allowed lateness (and that of threshold rules).
    pub allowed_lateness_ms: u64,
    /// Most live series; also the most groups per view.
    pub max_series: usize,
    /// Series without a sample for this long (event time) are evicted
    /// once their windows closed.
    pub idle_timeout_ms: u64,
    /// How far a source's clock may lag the fastest source's and still
    /// close its own windows by its own watermark; beyond it the lagging
    /// source's windows close by the fastest one's, less this.
    pub max_source_skew_ms: u64,
    /// Further views, published.
    pub views: Vec<ViewSpec>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            window_ms: 10_000,
            allowed_lateness_ms: 2_000,
            max_series: 100_000,
            idle_timeout_ms: 600_000,
            max_source_skew_ms: 10_000,
            views: Vec::new(),
        }
    }
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
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Counters since the engine started (kept in snapshots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    pub samples: u64,
    /// Samples late for at least one view.
    pub late: u64,
    pub refused_series_cap: u64,
    /// Groups a view could not open at its cap (samples not analysed there).
    pub refused_group_cap: u64,
    pub series_evicted: u64,
    /// Samples dropped from sliding and count windows at their retention cap.
    pub retained_dropped: u64,
    pub windows_closed: u64,
    pub alerts_fired: u64,
    pub alerts_resolved: u64,
}

/// A sample that was older than a view's watermark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Late {
    pub view: usize,
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
    pub fn clear(&mut self) {
        self.windows.clear();
        self.alerts.clear();
        self.late.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty() && self.alerts.is_empty() && self.late.is_empty()
    }
}

/// A live query: the open windows of groups whose label starts with
/// `prefix`, of one view or all published ones, of one metric or all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveQuery {
    pub view: Option<String>,
    pub prefix: String,
    pub metric: Option<String>,
    /// Most rows returned.
    pub limit: usize,
}

/// One open window, as a live query returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRow {
    pub view: Arc<str>,
    pub label: String,
    /// `None` when the view does not group by metric.
    pub metric: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
    pub aggregates: crate::Aggregates,
}

#[derive(Debug)]
struct CompiledRule {
    rule: Rule,
    view: usize,
}

/// Not in this view.
const NONE: u32 = u32::MAX;

/// Views with the same window, grouping, metric, series filter and
/// lateness hold the same windows over the same samples, so they share
/// one state: the first such view (the owner) keeps the groups, and its
/// closed windows go out once per view. A sample then updates each
/// distinct window once, however many views and rules read it (the
/// default view and a p99 view over the same windows; rules on the same
/// window).
#[derive(Debug, Clone, Default)]
struct Sharing {
    /// The view whose state each view reads (itself for an owner).
    owner: Vec<usize>,
    /// Per owner, the other views reading its state.
    followers: Vec<Vec<usize>>,
    /// Per owner, whether any of its views wants quantiles.
    quantiles: Vec<bool>,
}

/// Whether two views hold the same windows over the same samples.
fn same_state(a: &ViewSpec, b: &ViewSpec) -> bool {
    a.window == b.window
        && a.group_by == b.group_by
        && a.metric == b.metric
        && a.filter == b.filter
        && a.allowed_lateness_ms == b.allowed_lateness_ms
}

impl Sharing {
    fn of(views: &[ViewSpec]) -> Self {
        let mut sharing = Sharing {
            owner: Vec::with_capacity(views.len()),
            followers: vec![Vec::new(); views.len()],
            quantiles: vec![false; views.len()],
        };
        for (v, spec) in views.iter().enumerate() {
            let owner = (0..v)
                .find(|&u| sharing.owner[u] == u && same_state(&views[u], spec))
                .unwrap_or(v);
            sharing.owner.push(owner);
            sharing.quantiles[owner] |= spec.quantiles;
            if owner != v {
                sharing.followers[owner].push(v);
            }
        }
        sharing
    }

    fn owns(&self, v: usize) -> bool {
        self.owner[v] == v
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeriesEntry {
    device: u32,
    metric: u32,
    /// Group slot per view, or [`NONE`] (inline for up to four views).
    groups: SmallVec<[u32; 4]>,
    last_seen_ms: i64,
}

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ViewGroups {
    slots: Vec<Option<Group>>,
    free: Vec<u32>,
    index: HashMap<GroupKey, u32>,
    /// No window of this view closes before this event time.
    next_close: i64,
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
    last_evict_ms: i64,
    stats: EngineStats,
}

/// Format of [`Engine::snapshot`].
const SNAPSHOT_VERSION: u8 = 3;

/// The stream engine. Single threaded by design: shard by series to scale.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    views: Vec<ViewSpec>,
    rules: Vec<CompiledRule>,
    /// Views before the rules' hidden views: the default and configured.
    base_views: usize,
    /// Which views share window state (see [`Sharing`]).
    sharing: Sharing,
    st: State,
    /// Scratch for emitted windows.
    emitted: Vec<Emitted>,
}

fn to_ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The hidden view a rule reads.
fn rule_view(config: &EngineConfig, rule: &Rule) -> ViewSpec {
    let window = match rule.test {
        // Keeps the groups of silent series alive; its windows are unused.
        Test::NoData { silent_ms } => WindowKind::Tumbling {
            size_ms: silent_ms.max(1),
        },
        Test::Window { .. } => rule.window,
    };
    ViewSpec {
        name: format!("rule:{}", rule.name).into(),
        window,
        group_by: rule.group_by,
        metric: Some(rule.metric.clone()),
        quantiles: rule.needs_quantiles(),
        allowed_lateness_ms: rule
            .allowed_lateness_ms
            .unwrap_or(config.allowed_lateness_ms),
        publish: false,
        filter: rule.filter.clone(),
    }
}

/// Validates `rules` and appends their hidden views to `views`.
fn compile_rules(
    config: &EngineConfig,
    rules: Vec<Rule>,
    views: &mut Vec<ViewSpec>,
) -> Result<Vec<CompiledRule>, EngineError> {
    let mut compiled: Vec<CompiledRule> = Vec::with_capacity(rules.len());
    for rule in rules {
        if compiled.iter().any(|c| c.rule.name == rule.name) {
            return Err(EngineError::DuplicateRule(rule.name));
        }
        rule.validate().map_err(|reason| EngineError::BadRule {
            rule: rule.name.clone(),
            reason,
        })?;
        if let Test::NoData { silent_ms } = rule.test
            && silent_ms >= config.idle_timeout_ms
        {
            return Err(EngineError::BadRule {
                rule: rule.name.clone(),
                reason: format!(
                    "no_data ({silent_ms} ms) must be shorter than the engine's idle timeout \
                     ({} ms), after which silent series are forgotten",
                    config.idle_timeout_ms
                ),
            });
        }
        views.push(rule_view(config, &rule));
        compiled.push(CompiledRule {
            rule,
            view: views.len() - 1,
        });
    }
    Ok(compiled)
}

impl Engine {
    pub fn new(config: EngineConfig, rules: Vec<Rule>) -> Result<Self, EngineError> {
        if config.window_ms == 0 {
            return Err(EngineError::ZeroWindow);
        }
        let mut views = vec![ViewSpec {
            allowed_lateness_ms: config.allowed_lateness_ms,
            ..ViewSpec::new(
                "default",
                WindowKind::Tumbling {
                    size_ms: config.window_ms,
                },
            )
        }];
        for v in &config.views {
            if views.iter().any(|o| o.name == v.name) {
                return Err(EngineError::DuplicateView(v.name.clone()));
            }
            v.window.validate().map_err(|reason| EngineError::BadView {
                view: v.name.clone(),
                reason,
            })?;
            views.push(v.clone());
        }
        let base_views = views.len();
        let compiled = compile_rules(&config, rules, &mut views)?;
        let st = State {
            devices: Symbols::new(config.max_series),
            metrics: Symbols::new(config.max_series),
            labels: Symbols::new(config.max_series.saturating_mul(views.len().max(1))),
            paths: HashMap::default(),
            series: Vec::new(),
            free_series: Vec::new(),
            series_index: HashMap::default(),
            views: views
                .iter()
                .map(|_| ViewGroups {
                    next_close: i64::MAX,
                    ..ViewGroups::default()
                })
                .collect(),
            source_max: Vec::new(),
            max_event_ms: None,
            idle_watermark: i64::MIN,
            alerts: HashMap::default(),
            last_evict_ms: i64::MIN,
            stats: EngineStats::default(),
        };
        Ok(Self {
            config,
            sharing: Sharing::of(&views),
            views,
            rules: compiled,
            base_views,
            st,
            emitted: Vec::new(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn views(&self) -> &[ViewSpec] {
        &self.views
    }

    pub fn stats(&self) -> EngineStats {
        self.st.stats
    }

    /// Number of live series.
    pub fn series_count(&self) -> usize {
        self.st.series_index.len()
    }

    /// The newest event time seen.
    pub fn max_event_ms(&self) -> Option<i64> {
        self.st.max_event_ms
    }

    /// The default view's watermark for sources in step with the newest:
    /// windows ending at or before it are closed.
    pub fn watermark_ms(&self) -> i64 {
        self.global_watermark(0)
    }

    /// Places `device` in the hierarchy (`site/building/line`), for views
    /// grouped by level. Applies to series admitted from now on. At most
    /// `max_series` devices have a path; beyond that it returns false and
    /// the device groups as its own name.
    pub fn set_path(&mut self, device: &str, path: &str) -> bool {
        let path = path.trim_matches('/');
        if path.is_empty() {
            self.st.paths.remove(device);
            return true;
        }
        let full = self.st.paths.len() >= self.config.max_series;
        match self.st.paths.get_mut(device) {
            Some(p) if p == path => {}
            Some(p) => *p = path.to_string(),
            None if full => return false,
            None => {
                self.st.paths.insert(device.to_string(), path.to_string());
            }
        }
        true
    }

    /// The label a device has at a grouping level.
    fn label_for(&self, device: &str, level: DeviceLevel) -> String {
        match level {
            DeviceLevel::Device => device.to_string(),
            DeviceLevel::All => "*".to_string(),
            DeviceLevel::Level(n) => {
                let full = match self.st.paths.get(device) {
                    Some(p) => format!("{p}/{device}"),
                    None => device.to_string(),
                };
                full.split('/')
                    .take(usize::from(n.max(1)))
                    .collect::<Vec<_>>()
                    .join("/")
            }
        }
    }

    /// Resolves names to a series, admitting a new one while the cap
    /// allows. At the cap idle series are evicted first; if none is idle
    /// the new series is refused (and counted), the others keep working.
    ///
    /// Keys (series and groups) in an [`Output`] stay valid until the next
    /// call that takes `&mut self`: eviction happens at the start of calls.
    pub fn series_key(&mut self, device: &str, metric: &str) -> Result<SeriesKey, SeriesFull> {
        if let (Some(d), Some(m)) = (self.st.devices.get(device), self.st.metrics.get(metric))
            && let Some(&id) = self.st.series_index.get(&(d, m))
        {
            return Ok(SeriesKey(id));
        }
        if self.series_count() >= self.config.max_series {
            self.evict_idle();
        }
        let full = SeriesFull {
            max: self.config.max_series,
        };
        if self.series_count() >= self.config.max_series {
            self.st.stats.refused_series_cap += 1;
            return Err(full);
        }
        let d = self.st.devices.intern(device)?;
        let m = match self.st.metrics.intern(metric) {
            Ok(m) => m,
            Err(e) => {
                self.st.devices.release(d);
                return Err(e);
            }
        };
        let mut groups = SmallVec::with_capacity(self.views.len());
        for v in 0..self.views.len() {
            groups.push(self.join_group(v, device, d, metric, m));
        }
        let entry = SeriesEntry {
            device: d,
            metric: m,
            groups,
            last_seen_ms: self.st.max_event_ms.unwrap_or(i64::MIN),
        };
        let id = match self.st.free_series.pop() {
            Some(id) => {
                self.st.series[id as usize] = Some(entry);
                id
            }
            None => {
                self.st.series.push(Some(entry));
                (self.st.series.len() - 1) as u32
            }
        };
        self.st.series_index.insert((d, m), id);
        if self.st.source_max.len() <= d as usize {
            self.st.source_max.resize(d as usize + 1, i64::MIN);
        }
        Ok(SeriesKey(id))
    }

    fn join_group(&mut self, v: usize, device: &str, d: u32, metric: &str, m: u32) -> u32 {
        let spec = &self.views[v];
        if !self.sharing.owns(v) {
            return NONE;
        }
        if spec.metric.as_deref().is_some_and(|only| only != metric) {
            return NONE;
        }
        if !spec.filter.all.is_empty()
            && !spec
                .filter
                .admits(device, self.st.paths.get(device).map(String::as_str))
        {
            return NONE;
        }
        let label = self.label_for(device, spec.group_by.device);
        let metric_key = if spec.group_by.metric {
            m
        } else {
            GroupKey::ALL_METRICS
        };
        let source = (spec.group_by.device == DeviceLevel::Device).then_some(d);
        let window = spec.window;
        if let Some(l) = self.st.labels.get(&label) {
            let key = GroupKey {
                label: l,
                metric: metric_key,
            };
            if let Some(&slot) = self.st.views[v].index.get(&key) {
                if let Some(g) = self.st.views[v].slots[slot as usize].as_mut() {
                    g.members += 1;
                }
                return slot;
            }
        }
        let groups = &self.st.views[v];
        if groups.index.len() >= self.config.max_series {
            self.st.stats.refused_group_cap += 1;
            return NONE;
        }
        let Ok(l) = self.st.labels.intern(&label) else {
            self.st.stats.refused_group_cap += 1;
            return NONE;
        };
        let key = GroupKey {
            label: l,
            metric: metric_key,
        };
        let group = Group {
            key,
            state: WindowState::new(&window),
            members: 1,
            source,
            last_ms: i64::MIN,
        };
        let groups = &mut self.st.views[v];
        let slot = match groups.free.pop() {
            Some(s) => {
                groups.slots[s as usize] = Some(group);
                s
            }
            None => {
                groups.slots.push(Some(group));
                (groups.slots.len() - 1) as u32
            }
        };
        groups.index.insert(key, slot);
        slot
    }

    /// The device of a series.
    pub fn device_name(&self, series: SeriesKey) -> &str {
        self.entry(series)
            .map_or("?", |e| self.st.devices.name(e.device))
    }

    /// The metric of a series.
    pub fn metric_name(&self, series: SeriesKey) -> &str {
        self.entry(series)
            .map_or("?", |e| self.st.metrics.name(e.metric))
    }

    /// A group's label (a device, a hierarchy prefix, or `*`).
    pub fn label(&self, key: GroupKey) -> &str {
        self.st.labels.name(key.label)
    }

    /// A group's metric, `None` for groups of all metrics.
    pub fn group_metric(&self, key: GroupKey) -> Option<&str> {
        (key.metric != GroupKey::ALL_METRICS).then(|| self.st.metrics.name(key.metric))
    }

    fn entry(&self, series: SeriesKey) -> Option<&SeriesEntry> {
        self.st.series.get(series.0 as usize)?.as_ref()
    }

    fn global_watermark(&self, view: usize) -> i64 {
        let lateness = to_ms(self.views[view].allowed_lateness_ms);
        let from_events = self
            .st
            .max_event_ms
            .map_or(i64::MIN, |m| m.saturating_sub(lateness));
        from_events.max(self.st.idle_watermark)
    }

    /// The watermark of a group: its source's, within the allowed skew of
    /// the newest source; the newest source's for shared groups.
    fn group_watermark(&self, view: usize, source: Option<u32>, global: i64) -> i64 {
        let Some(d) = source else {
            return global;
        };
        let lateness = to_ms(self.views[view].allowed_lateness_ms);
        let own = self
            .st
            .source_max
            .get(d as usize)
            .copied()
            .unwrap_or(i64::MIN)
            .saturating_sub(lateness);
        let floor = global.saturating_sub(to_ms(self.config.max_source_skew_ms));
        own.max(floor).max(self.st.idle_watermark)
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
                        Some(d) => {
                            let lateness = to_ms(spec.allowed_lateness_ms);
                            let own = self.st.source_max[d as usize].saturating_sub(lateness);
                            let skew = to_ms(self.config.max_source_skew_ms);
                            own.max(globals[v].saturating_sub(skew))
                                .max(self.st.idle_watermark)
                        }
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

    /// Moves every watermark to at least `watermark_ms` (never backwards)
    /// and closes what it passes. Sources call this when event time
    /// advances without samples (an idle fleet).
    pub fn advance_to(&mut self, watermark_ms: i64, out: &mut Output) {
        if watermark_ms <= self.st.idle_watermark {
            return;
        }
        self.st.idle_watermark = watermark_ms;
        self.evict_due();
        let mut closed = Vec::new();
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

    /// Evicts idle series at most every quarter of the idle timeout. Runs
    /// at the start of a call, so the keys of the previous call's output
    /// stay valid until the caller made the next one.
    fn evict_due(&mut self) {
        let Some(now) = self.st.max_event_ms else {
            return;
        };
        let every = to_ms(self.config.idle_timeout_ms / 4).max(1);
        if now.saturating_sub(self.st.last_evict_ms) >= every {
            self.st.last_evict_ms = now;
            self.evict_idle();
        }
    }

    fn remove_group(&mut self, v: usize, slot: u32) {
        let groups = &mut self.st.views[v];
        if let Some(g) = groups.slots[slot as usize].take() {
            groups.index.remove(&g.key);
            groups.free.push(slot);
            self.st.labels.release(g.key.label);
            let (rules, owner) = (&self.rules, &self.sharing.owner);
            self.st.alerts.retain(|(r, k), _| {
                !(*k == g.key && rules.get(*r as usize).is_some_and(|c| owner[c.view] == v))
            });
        }
    }

    /// Evicts series idle for `idle_timeout_ms` of event time; their groups
    /// go once no series feeds them and their windows closed.
    fn evict_idle(&mut self) {
        let Some(now) = self.st.max_event_ms else {
            return;
        };
        let cutoff = now.saturating_sub(to_ms(self.config.idle_timeout_ms));
        // A series admitted before any event starts its idle clock now.
        for e in self.st.series.iter_mut().flatten() {
            if e.last_seen_ms == i64::MIN {
                e.last_seen_ms = now;
            }
        }
        let idle: Vec<u32> = self
            .st
            .series
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                e.as_ref()
                    .filter(|e| e.last_seen_ms < cutoff)
                    .map(|_| i as u32)
            })
            .collect();
        for id in idle {
            let Some(entry) = self.st.series[id as usize].take() else {
                continue;
            };
            self.st.free_series.push(id);
            self.st.series_index.remove(&(entry.device, entry.metric));
            for (v, &slot) in entry.groups.iter().enumerate() {
                if slot == NONE {
                    continue;
                }
                let empty = match self.st.views[v].slots[slot as usize].as_mut() {
                    Some(g) => {
                        g.members = g.members.saturating_sub(1);
                        g.members == 0 && g.state.is_empty()
                    }
                    None => false,
                };
                if empty {
                    self.remove_group(v, slot);
                }
            }
            self.st.devices.release(entry.device);
            self.st.metrics.release(entry.metric);
            self.st.stats.series_evicted += 1;
        }
    }

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
        for (.., i) in order {
            let Some(window) = slots[i].take() else {
                continue;
            };
            self.evaluate_rules(&window, out);
            if self.views[window.view].publish {
                out.windows.push(window);
            }
        }
        self.evaluate_silence(out);
    }

    fn evaluate_rules(&mut self, window: &WindowResult, out: &mut Output) {
        // Rule i reads view base_views + i.
        let Some(index) = window.view.checked_sub(self.base_views) else {
            return;
        };
        if let Some(compiled) = self.rules.get(index) {
            debug_assert_eq!(compiled.view, window.view);
            let rule = &compiled.rule;
            let Test::Window {
                condition,
                clear,
                value,
            } = &rule.test
            else {
                return;
            };
            let a = &window.aggregates;
            let alarm = condition.holds(a);
            let cleared = clear.as_ref().map_or(!alarm, |c| c.holds(a));
            let v = value.value(a);
            let alert = self
                .st
                .alerts
                .entry((index as u32, window.key))
                .or_default();
            let notice = alert.step(&rule.lifecycle, alarm, cleared, window.end_ms, v);
            if alert.phase == Phase::Inactive && !alert.flapping && alert.changes.is_empty() {
                self.st.alerts.remove(&(index as u32, window.key));
            }
            if let Some(n) = notice {
                Self::notify(&mut self.st.stats, rule, window.key, n, v, out, window);
            }
        }
    }

    fn notify(
        stats: &mut EngineStats,
        rule: &Rule,
        key: GroupKey,
        notice: crate::rule::Notice,
        value: f64,
        out: &mut Output,
        window: &WindowResult,
    ) {
        match notice.state {
            crate::AlertState::Firing if !notice.repeat => stats.alerts_fired += 1,
            crate::AlertState::Resolved => stats.alerts_resolved += 1,
            _ => {}
        }
        out.alerts.push(AlertEvent {
            rule: rule.name.clone(),
            key,
            state: notice.state,
            repeat: notice.repeat,
            severity: rule.severity,
            value,
            threshold: rule.threshold_value(),
            since_ms: window.end_ms,
            window_start_ms: window.start_ms,
            window_end_ms: window.end_ms,
        });
    }

    /// Steps deadman rules: a group silent for the rule's `no_data` (by
    /// its watermark) is in alarm; data clears it.
    fn evaluate_silence(&mut self, out: &mut Output) {
        for index in 0..self.rules.len() {
            let Test::NoData { silent_ms } = self.rules[index].rule.test else {
                continue;
            };
            let v = self.rules[index].view;
            let global = self.global_watermark(v);
            let mut due = Vec::new();
            // The fleet's clock, not the silent device's own (which
            // stands still while it is silent).
            let wm = global;
            for g in self.st.views[self.sharing.owner[v]].slots.iter().flatten() {
                if g.last_ms == i64::MIN {
                    continue;
                }
                let silent = wm.saturating_sub(g.last_ms);
                let alarm = silent >= to_ms(silent_ms);
                let known = self.st.alerts.contains_key(&(index as u32, g.key));
                if alarm || known {
                    due.push((g.key, wm, silent, alarm));
                }
            }
            let rule = &self.rules[index].rule;
            for (key, wm, silent, alarm) in due {
                let alert = self.st.alerts.entry((index as u32, key)).or_default();
                let secs = silent as f64 / 1000.0;
                let notice = alert.step(&rule.lifecycle, alarm, !alarm, wm, secs);
                if alert.phase == Phase::Inactive && !alert.flapping && alert.changes.is_empty() {
                    self.st.alerts.remove(&(index as u32, key));
                }
                if let Some(n) = notice {
                    let window = WindowResult {
                        view: v,
                        key,
                        start_ms: wm.saturating_sub(silent),
                        end_ms: wm,
                        aggregates: crate::Aggregates::default(),
                    };
                    Self::notify(&mut self.st.stats, rule, key, n, secs, out, &window);
                }
            }
        }
    }

    /// Pending and firing alerts, by rule then group.
    pub fn alerts(&self) -> Vec<ActiveAlert> {
        let mut rows: Vec<ActiveAlert> = self
            .st
            .alerts
            .iter()
            .filter(|(_, a)| a.phase != Phase::Inactive)
            .filter_map(|((r, key), a)| {
                let rule = &self.rules.get(*r as usize)?.rule;
                Some(ActiveAlert {
                    rule: rule.name.clone(),
                    label: self.label(*key).to_string(),
                    metric: self.group_metric(*key).map(str::to_string),
                    phase: a.phase,
                    since_ms: a.since_ms,
                    value: a.value,
                    severity: rule.severity,
                    flapping: a.flapping,
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.rule, &a.label).cmp(&(&b.rule, &b.label)));
        rows
    }

    /// The rules running.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|c| &c.rule)
    }

    /// Replaces the rules at once. Windows whose plan (window, grouping,
    /// metric, filter, lateness) is still read by some view keep their
    /// open state, so an unchanged rule keeps its windows, and its alerts
    /// too; a rule with a new plan starts empty; state nothing reads any
    /// more goes. On error nothing changes.
    pub fn set_rules(&mut self, rules: Vec<Rule>) -> Result<(), EngineError> {
        let base = self.base_views;
        let mut views: Vec<ViewSpec> = self.views[..base].to_vec();
        let compiled = compile_rules(&self.config, rules, &mut views)?;
        let sharing = Sharing::of(&views);
        // Old rule index per new rule, when the rule is unchanged.
        let same_rule: Vec<Option<usize>> = compiled
            .iter()
            .map(|c| self.rules.iter().position(|o| o.rule == c.rule))
            .collect();
        // The old state each new owner takes over: the old owner of the
        // same windows. The base views keep theirs.
        let mut old_groups: Vec<Option<ViewGroups>> = std::mem::take(&mut self.st.views)
            .into_iter()
            .map(Some)
            .collect();
        let fresh = || ViewGroups {
            next_close: i64::MAX,
            ..ViewGroups::default()
        };
        let mut from: Vec<Option<usize>> = Vec::with_capacity(views.len());
        let mut new_groups = Vec::with_capacity(views.len());
        for (v, spec) in views.iter().enumerate() {
            let taken = if v < base {
                Some(v)
            } else if sharing.owns(v) {
                (base..self.views.len()).find(|&o| {
                    self.sharing.owns(o)
                        && old_groups[o].is_some()
                        && same_state(&self.views[o], spec)
                })
            } else {
                None
            };
            from.push(taken);
            new_groups.push(
                taken
                    .and_then(|o| old_groups[o].take())
                    .unwrap_or_else(fresh),
            );
        }
        // Labels held by groups of state that goes.
        for g in old_groups
            .iter()
            .flatten()
            .flat_map(|v| v.slots.iter().flatten())
        {
            self.st.labels.release(g.key.label);
        }
        let alerts = std::mem::take(&mut self.st.alerts);
        self.st.alerts = alerts
            .into_iter()
            .filter_map(|((r, key), a)| {
                let new = same_rule.iter().position(|x| *x == Some(r as usize))?;
                Some(((new as u32, key), a))
            })
            .collect();
        self.views = views;
        self.sharing = sharing;
        self.st.views = new_groups;
        self.rules = compiled;
        // Re-join every series: state taken over keeps its slots.
        for id in 0..self.st.series.len() {
            let Some(entry) = self.st.series[id].as_ref() else {
                continue;
            };
            let (d, m) = (entry.device, entry.metric);
            let old: SmallVec<[u32; 4]> = entry.groups.clone();
            let device = self.st.devices.name(d).to_string();
            let metric = self.st.metrics.name(m).to_string();
            let mut groups: SmallVec<[u32; 4]> = SmallVec::with_capacity(self.views.len());
            for (v, taken) in from.iter().enumerate() {
                groups.push(match taken {
                    Some(o) => old.get(*o).copied().unwrap_or(NONE),
                    None => self.join_group(v, &device, d, &metric, m),
                });
            }
            if let Some(e) = self.st.series[id].as_mut() {
                e.groups = groups;
            }
        }
        Ok(())
    }

    /// The open windows matching `query`, answered from memory.
    pub fn live(&self, query: &LiveQuery) -> Vec<LiveRow> {
        let mut rows = Vec::new();
        let mut open = Vec::new();
        for (v, spec) in self.views.iter().enumerate() {
            match &query.view {
                Some(name) if *name != *spec.name => continue,
                None if !spec.publish => continue,
                _ => {}
            }
            let owner = self.sharing.owner[v];
            for group in self.st.views[owner].slots.iter().flatten() {
                if rows.len() >= query.limit {
                    return rows;
                }
                let label = self.st.labels.name(group.key.label);
                if !label.starts_with(query.prefix.as_str()) {
                    continue;
                }
                let metric = self.group_metric(group.key);
                if let Some(want) = &query.metric
                    && metric.is_some_and(|m| m != want)
                {
                    continue;
                }
                group
                    .state
                    .open(&spec.window, self.sharing.quantiles[owner], &mut open);
                for (start_ms, end_ms, aggregates) in open.drain(..) {
                    rows.push(LiveRow {
                        view: spec.name.clone(),
                        label: label.to_string(),
                        metric: metric.map(str::to_string),
                        start_ms,
                        end_ms,
                        aggregates,
                    });
                }
            }
        }
        rows.truncate(query.limit);
        rows
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
        groups + series + st.devices.heap_bytes() + st.metrics.heap_bytes() + st.labels.heap_bytes()
    }

    /// The engine's whole state, to resume open windows after a restart.
    pub fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        let rules: Vec<&Rule> = self.rules().collect();
        let body = postcard::to_allocvec(&(rules, &self.st))
            .map_err(|e| EngineError::Snapshot(e.to_string()))?;
        let mut out = Vec::with_capacity(9 + body.len());
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&self.fingerprint().to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// An engine with `config` and `rules` resumed from a snapshot taken
    /// with the same views. Rules may differ: those unchanged since the
    /// snapshot keep their windows and alerts (as [`Engine::set_rules`]).
    pub fn restore(
        config: EngineConfig,
        rules: Vec<Rule>,
        snapshot: &[u8],
    ) -> Result<Self, EngineError> {
        let (&version, rest) = snapshot
            .split_first()
            .ok_or_else(|| EngineError::Snapshot("empty".into()))?;
        if version != SNAPSHOT_VERSION {
            return Err(EngineError::Snapshot(format!("format {version} unknown")));
        }
        let (print, body) = rest
            .split_at_checked(8)
            .ok_or_else(|| EngineError::Snapshot("truncated".into()))?;
        let print = u64::from_le_bytes(print.try_into().unwrap_or_default());
        let (then, st): (Vec<Rule>, State) =
            postcard::from_bytes(body).map_err(|e| EngineError::Snapshot(e.to_string()))?;
        let mut engine = Self::new(config.clone(), then)
            .map_err(|e| EngineError::Snapshot(format!("its rules: {e}")))?;
        if print != engine.fingerprint() {
            return Err(EngineError::Snapshot("taken with other views".into()));
        }
        if st.views.len() != engine.views.len() {
            return Err(EngineError::Snapshot("view count differs".into()));
        }
        engine.st = st;
        engine.set_rules(rules)?;
        Ok(engine)
    }

    /// Identifies the configured views (FNV-1a of their description).
    fn fingerprint(&self) -> u64 {
        let text = format!(
            "{:?}{}",
            &self.views[..self.base_views],
            self.config.max_series
        );
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}
