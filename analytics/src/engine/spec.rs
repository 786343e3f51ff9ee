//! What the engine runs: views and settings, validated once; the hidden
//! view each rule reads.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::EngineError;
use crate::WindowKind;
use crate::rule::{Input, Rule, Scope, SeriesFilter, Test};

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
    /// By device, by a level of the hierarchy, or all together.
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
    /// Unique among the engine's views; rules' views are `rule:{name}`.
    pub name: Arc<str>,
    /// The windows each group keeps.
    pub window: WindowKind,
    /// What a group is.
    pub group_by: GroupBy,
    /// Only this metric (all metrics when `None`).
    pub metric: Option<String>,
    /// Keep a quantile sketch per window (p50, p99, ... available).
    pub quantiles: bool,
    /// How far behind its source's newest event time a sample may be and
    /// still count.
    pub allowed_lateness_ms: u64,
    /// Closed windows go to [`Output::windows`](super::Output::windows)
    /// (otherwise only rules see them).
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

/// A rule and the views it reads.
#[derive(Debug)]
pub(super) struct CompiledRule {
    pub(super) rule: Rule,
    /// The windows it reads ([`Rule::inputs`]).
    pub(super) inputs: Vec<Input>,
    /// The hidden view of each input, in the same order; consecutive, the
    /// rule's first is after the previous rule's last.
    pub(super) views: Vec<usize>,
}

impl CompiledRule {
    /// The view of the rule's first metric in its own group (the one a
    /// deadman rule reads).
    pub(super) fn view(&self) -> usize {
        self.views[0]
    }
}

/// The views `config` declares, validated: the default view, then the
/// configured ones (the engine's base views, before the rules').
pub(super) fn base_views(config: &EngineConfig) -> Result<Vec<ViewSpec>, EngineError> {
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
    Ok(views)
}

/// The hidden view of a rule's input: `rule:{name}` for its first metric
/// in its group, `rule:{name}:{metric}` and `rule:{name}:{level}:{metric}`
/// for the others.
fn rule_view(config: &EngineConfig, rule: &Rule, index: usize, input: Input) -> ViewSpec {
    let metric = rule.metrics[usize::from(input.metric)].clone();
    let (name, device) = match input.scope {
        Scope::Group if index == 0 => (format!("rule:{}", rule.name), rule.group_by.device),
        Scope::Group => (format!("rule:{}:{metric}", rule.name), rule.group_by.device),
        Scope::Level(n) => (
            format!("rule:{}:level{n}:{metric}", rule.name),
            DeviceLevel::Level(n),
        ),
    };
    let window = match rule.test {
        // Keeps the groups of silent series alive; its windows are unused.
        Test::NoData { silent_ms } => WindowKind::Tumbling {
            size_ms: silent_ms.max(1),
        },
        Test::Window { .. } => rule.window,
    };
    ViewSpec {
        name: name.into(),
        window,
        group_by: GroupBy {
            device,
            metric: true,
        },
        metric: Some(metric),
        quantiles: rule.needs_quantiles(input),
        allowed_lateness_ms: rule
            .allowed_lateness_ms
            .unwrap_or(config.allowed_lateness_ms),
        publish: false,
        filter: rule.filter.clone(),
    }
}

/// Validates `rules` and appends their hidden views to `views`.
pub(super) fn compile_rules(
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
        let inputs = rule.inputs();
        let mut rule_views = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            views.push(rule_view(config, &rule, i, *input));
            rule_views.push(views.len() - 1);
        }
        compiled.push(CompiledRule {
            rule,
            inputs,
            views: rule_views,
        });
    }
    Ok(compiled)
}
