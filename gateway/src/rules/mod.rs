//! Alert rules as users write them, compiled to the engine's plan.
//!
//! A rule is a TOML table (`[[rules]]` in `eddy.toml` or in a file of the
//! rules directory) or the same object as JSON through the HTTP API. It
//! takes one of two forms, which compile to the same [`Rule`]:
//!
//! - the threshold shorthand: `metric`, `window`, `aggregate`,
//!   `above`/`below`, optional `clear_above`/`clear_below` (hysteresis),
//!   `relative_to` (thresholds as offsets from the device's site's, or
//!   another level's, same aggregate), device and hierarchy filters; or
//!   `all`/`any` instead of `metric`: conditions on several metrics over
//!   the same window; or `no_data` for a deadman rule;
//! - `sql`: a query of the SQL-like language ([`eddy_analytics::sql`]).
//!
//! Both take the lifecycle options (`for`, `keep_firing_for`, `repeat`,
//! `flap`), a `severity` and `actions`. Every error names the file, line
//! and column and what was expected.

pub mod actions;
pub mod api;
pub mod registry;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eddy_analytics::sql::{self, SqlError};
use eddy_analytics::{
    Aggregate, Arith, Cmp, DeviceLevel, Expr, Field, Flap, GroupBy, GroupingWord, Lifecycle,
    MAX_RULE_METRICS, Match, Rule, Scope, SeriesFilter, Severity, Term, Test, WindowKind,
};
use eddy_proto::MAX_DEVICE_ID_LEN;
use serde::{Deserialize, Serialize};

pub use actions::{Action, WebhookAllow, When};

use crate::config::{Config, ConfigError, Document, FieldPath, Placed, PlacedErrors};
pub use registry::{Compiled, Origin, Registry};

/// A rule as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// The SQL form; excludes the shorthand's query fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// With `sql`: the condition that resolves a firing alert
    /// (hysteresis), e.g. `avg(temperature) < 28`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// With `above`: a firing alert resolves only below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_below: Option<f64>,
    /// With `below`: a firing alert resolves only above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_above: Option<f64>,
    /// Compare with the same aggregate of the device's hierarchy level
    /// (`site`, `building`, `line`, `level:N`): thresholds are then
    /// offsets from it (`above = 10`: more than the site's + 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_to: Option<String>,
    /// Conditions on several metrics (or aggregates), all of which must
    /// hold, over the same `window`; instead of `metric`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<ConditionConfig>,
    /// Like `all`, but one of them holding is enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<ConditionConfig>,
    /// Deadman: fire when a series sends nothing for this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub no_data: Option<Duration>,
    /// Device ids or `*` patterns; all devices when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// `device` (per series, the default), `site`, `building`, `line`, `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    #[serde(
        default,
        rename = "for",
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub hold: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_firing_for: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub repeat: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap: Option<FlapConfig>,
    #[serde(default = "default_severity")]
    pub severity: Severity,
    /// How late a sample may arrive and still count for this rule
    /// (`engine.allowed_lateness` when absent).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub allowed_lateness: Option<Duration>,
    /// What happens on a notification; `mqtt` and `upstream` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<actions::ActionConfig>>,
}

fn default_severity() -> Severity {
    Severity::Warning
}

/// One condition of a shorthand rule's `all` or `any`:
/// `{ metric = "humidity", aggregate = "mean", above = 80 }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    pub metric: String,
    /// The rule's `aggregate` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// As the rule's `relative_to`, for this condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_to: Option<String>,
}

/// `flap = { window = "10m", changes = 6 }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlapConfig {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub changes: u32,
}

impl RuleConfig {
    /// The threshold shorthand: `aggregate` of `metric` over tumbling
    /// `window` windows above `threshold`.
    pub fn above(
        name: &str,
        metric: &str,
        window: Duration,
        aggregate: Aggregate,
        threshold: f64,
    ) -> Self {
        Self {
            name: name.into(),
            sql: None,
            clear: None,
            metric: Some(metric.into()),
            window: Some(window),
            aggregate: Some(aggregate),
            above: Some(threshold),
            below: None,
            clear_below: None,
            clear_above: None,
            relative_to: None,
            all: Vec::new(),
            any: Vec::new(),
            no_data: None,
            devices: Vec::new(),
            site: None,
            building: None,
            line: None,
            group_by: None,
            hold: None,
            keep_firing_for: None,
            repeat: None,
            flap: None,
            severity: Severity::Warning,
            allowed_lateness: None,
            actions: None,
        }
    }
}

/// What is wrong with one rule: the field (TOML key) it is about, the
/// key inside one of its list's items (`all[1].metric`), and for SQL the
/// position inside the query text.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub field: Option<&'static str>,
    /// (index, key) within the list `field`.
    pub item: Option<(usize, &'static str)>,
    pub sql: Option<(u64, u64)>,
    pub message: String,
}

impl Problem {
    fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            item: None,
            sql: None,
            message: message.into(),
        }
    }

    fn item(
        field: &'static str,
        index: usize,
        key: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            item: Some((index, key)),
            ..Self::field(field, message)
        }
    }

    fn sql(field: &'static str, e: SqlError) -> Self {
        Self {
            field: Some(field),
            item: None,
            sql: (e.line > 0).then_some((e.line, e.column)),
            message: e.message,
        }
    }
}

/// A rule error with its place: `file:line:column: rule `name`: message`.
pub type RuleError = Placed;

/// Several rule errors, one per line.
pub type RuleErrors = PlacedErrors;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Compiles one rule; `Err` lists every problem found.
pub fn compile(
    r: &RuleConfig,
    allow: WebhookAllow<'_>,
) -> Result<(Rule, Vec<Action>), Vec<Problem>> {
    let mut problems = Vec::new();
    if let Err(e) = eddy_proto::valid_name(&r.name, MAX_DEVICE_ID_LEN) {
        problems.push(Problem::field("name", format!("`{}` {e}", r.name)));
    }
    let query = match &r.sql {
        Some(text) => compile_sql(r, text, &mut problems),
        None => compile_shorthand(r, &mut problems),
    };
    let lifecycle = Lifecycle {
        for_ms: r.hold.map_or(0, ms),
        keep_firing_for_ms: r.keep_firing_for.map_or(0, ms),
        repeat_ms: r.repeat.map(ms),
        flap: r.flap.map(|f| Flap {
            window_ms: ms(f.window),
            changes: f.changes,
        }),
    };
    if r.repeat.is_some_and(|d| d.is_zero()) {
        problems.push(Problem::field("repeat", "must be longer than 0"));
    }
    if let Some(f) = r.flap
        && (f.window.is_zero() || f.changes < 2)
    {
        problems.push(Problem::field(
            "flap",
            "needs a window longer than 0 and at least 2 changes",
        ));
    }
    let actions = match &r.actions {
        None => vec![Action::Mqtt, Action::Upstream],
        Some(list) => list
            .iter()
            .filter_map(|a| match a.compile(allow) {
                Ok(a) => Some(a),
                Err(m) => {
                    problems.push(Problem::field("actions", m));
                    None
                }
            })
            .collect(),
    };
    let Some((window, group_by, metrics, filter, test)) = query else {
        return Err(problems);
    };
    let rule = Rule {
        name: Arc::from(r.name.as_str()),
        window,
        group_by,
        metrics,
        filter,
        test,
        lifecycle,
        severity: r.severity,
        allowed_lateness_ms: r.allowed_lateness.map(ms),
    };
    if problems.is_empty()
        && let Err(m) = rule.validate()
    {
        problems.push(Problem::field(
            if r.sql.is_some() { "sql" } else { "window" },
            m,
        ));
    }
    if problems.is_empty() {
        Ok((rule, actions))
    } else {
        Err(problems)
    }
}

type Plan = (WindowKind, GroupBy, Vec<String>, SeriesFilter, Test);

fn compile_sql(r: &RuleConfig, text: &str, problems: &mut Vec<Problem>) -> Option<Plan> {
    let shorthand = [
        ("metric", r.metric.is_some()),
        ("window", r.window.is_some()),
        ("aggregate", r.aggregate.is_some()),
        ("above", r.above.is_some()),
        ("below", r.below.is_some()),
        ("clear_above", r.clear_above.is_some()),
        ("clear_below", r.clear_below.is_some()),
        ("relative_to", r.relative_to.is_some()),
        ("all", !r.all.is_empty()),
        ("any", !r.any.is_empty()),
        ("no_data", r.no_data.is_some()),
        ("devices", !r.devices.is_empty()),
        ("site", r.site.is_some()),
        ("building", r.building.is_some()),
        ("line", r.line.is_some()),
        ("group_by", r.group_by.is_some()),
    ];
    for (field, set) in shorthand {
        if set {
            problems.push(Problem::field(
                field,
                format!(
                    "`{field}` is part of the threshold shorthand; with `sql` say it in the query"
                ),
            ));
        }
    }
    let q = match sql::parse(text) {
        Ok(q) => q,
        Err(e) => {
            problems.push(Problem::sql("sql", e));
            return None;
        }
    };
    let clear = match &r.clear {
        Some(c) => match sql::parse_condition(&q, c) {
            Ok(e) => Some(e),
            Err(e) => {
                problems.push(Problem::sql("clear", e));
                return None;
            }
        },
        None => None,
    };
    Some((
        q.window,
        q.group_by,
        q.metrics,
        q.filter,
        Test::Window {
            condition: q.condition,
            clear,
            value: q.value,
        },
    ))
}

fn compile_shorthand(r: &RuleConfig, problems: &mut Vec<Problem>) -> Option<Plan> {
    if r.clear.is_some() {
        problems.push(Problem::field(
            "clear",
            "`clear` goes with `sql`; the shorthand uses clear_above/clear_below",
        ));
    }
    let conditions = match (&r.metric, r.all.is_empty(), r.any.is_empty()) {
        (Some(_), true, true) => None,
        (None, false, true) => Some(("all", &r.all)),
        (None, true, false) => Some(("any", &r.any)),
        (None, true, true) => {
            problems.push(Problem::field(
                "name",
                "expected `metric` (and window, aggregate, above or below), `all` or `any` \
                 (conditions on several metrics), or `sql`",
            ));
            return None;
        }
        (Some(_), ..) => {
            let list = if r.all.is_empty() { "any" } else { "all" };
            problems.push(Problem::field(
                list,
                format!("set `metric` or `{list}`, not both: each condition of `{list}` names its metric"),
            ));
            return None;
        }
        (None, false, false) => {
            problems.push(Problem::field(
                "any",
                "set `all` or `any`, not both; for a mix of AND and OR, use `sql`",
            ));
            return None;
        }
    };
    let mut filter = SeriesFilter::default();
    if !r.devices.is_empty() {
        filter.all.push(
            r.devices
                .iter()
                .map(|d| Match {
                    field: Field::Device,
                    pattern: d.clone(),
                    negate: false,
                })
                .collect(),
        );
    }
    for (field, value) in [
        (Field::Site, &r.site),
        (Field::Building, &r.building),
        (Field::Line, &r.line),
    ] {
        if let Some(v) = value {
            filter.all.push(vec![Match {
                field,
                pattern: v.clone(),
                negate: false,
            }]);
        }
    }
    let device = match r.group_by.as_deref().map(GroupingWord::parse) {
        None => DeviceLevel::Device,
        Some(Ok(GroupingWord::Devices(level))) => level,
        Some(Ok(GroupingWord::Metric)) => {
            problems.push(Problem::field(
                "group_by",
                "rules always group by metric: name the devices' level (device, site, building, \
                 line, level:N or all)",
            ));
            DeviceLevel::Device
        }
        Some(Err(message)) => {
            problems.push(Problem::field("group_by", message));
            DeviceLevel::Device
        }
    };
    let group_by = GroupBy {
        device,
        metric: true,
    };
    if let Some(silent) = r.no_data {
        for (field, set) in [
            ("window", r.window.is_some()),
            ("aggregate", r.aggregate.is_some()),
            ("above", r.above.is_some()),
            ("below", r.below.is_some()),
            ("relative_to", r.relative_to.is_some()),
            ("all", !r.all.is_empty()),
            ("any", !r.any.is_empty()),
        ] {
            if set {
                problems.push(Problem::field(
                    field,
                    format!("`{field}` has no meaning in a no_data (deadman) rule"),
                ));
            }
        }
        if silent.is_zero() {
            problems.push(Problem::field("no_data", "must be longer than 0"));
        }
        let metric = r.metric.clone()?;
        if let Err(e) = eddy_proto::valid_name(&metric, eddy_proto::MAX_METRIC_LEN) {
            problems.push(Problem::field("metric", format!("`{metric}` {e}")));
        }
        let size_ms = ms(silent).max(1);
        return Some((
            WindowKind::Tumbling { size_ms },
            group_by,
            vec![metric],
            filter,
            Test::NoData {
                silent_ms: ms(silent),
            },
        ));
    }
    let window = match r.window {
        Some(w) if !w.is_zero() => w,
        Some(_) => {
            problems.push(Problem::field("window", "must be longer than 0"));
            return None;
        }
        None => {
            problems.push(Problem::field(
                "name",
                "expected `window`, e.g. window = \"10s\"",
            ));
            return None;
        }
    };
    let window = WindowKind::Tumbling {
        size_ms: ms(window),
    };
    // A level to compare with: `relative_to = "site"`.
    let level = |text: &Option<String>,
                 place: &dyn Fn(String) -> Problem,
                 problems: &mut Vec<Problem>|
     -> Option<Scope> {
        let text = text.as_deref()?;
        let message = match GroupingWord::parse(text) {
            Ok(GroupingWord::Devices(DeviceLevel::Level(n))) if device == DeviceLevel::Device => {
                return Some(Scope::Level(n));
            }
            Ok(GroupingWord::Devices(DeviceLevel::Level(_))) => {
                "a comparison with the group needs a rule grouped per device (no `group_by`, or \
                 group_by = \"device\")"
                    .to_string()
            }
            Ok(_) => format!(
                "`{text}` is not a level above the device: expected site, building, line or \
                 level:N"
            ),
            Err(m) => m,
        };
        problems.push(place(message));
        None
    };
    let Some((list, conditions)) = conditions else {
        // One metric: `metric`, `aggregate`, `above` or `below`.
        let metric = r.metric.clone()?;
        if let Err(e) = eddy_proto::valid_name(&metric, eddy_proto::MAX_METRIC_LEN) {
            problems.push(Problem::field("metric", format!("`{metric}` {e}")));
        }
        let Some(aggregate) = r.aggregate else {
            problems.push(Problem::field(
                "name",
                "expected `aggregate`, e.g. aggregate = \"mean\"",
            ));
            return None;
        };
        let scope = level(
            &r.relative_to,
            &|m| Problem::field("relative_to", m),
            problems,
        );
        let (cmp, threshold, clear) = match (r.above, r.below) {
            (Some(t), None) => {
                if r.clear_above.is_some() {
                    problems.push(Problem::field(
                        "clear_above",
                        "with `above`, hysteresis is `clear_below`",
                    ));
                }
                if let Some(c) = r.clear_below
                    && c > t
                {
                    problems.push(Problem::field(
                        "clear_below",
                        format!("must be at most `above` ({t})"),
                    ));
                }
                (Cmp::Gt, t, r.clear_below.map(|c| (Cmp::Lt, c)))
            }
            (None, Some(t)) => {
                if r.clear_below.is_some() {
                    problems.push(Problem::field(
                        "clear_below",
                        "with `below`, hysteresis is `clear_above`",
                    ));
                }
                if let Some(c) = r.clear_above
                    && c < t
                {
                    problems.push(Problem::field(
                        "clear_above",
                        format!("must be at least `below` ({t})"),
                    ));
                }
                (Cmp::Lt, t, r.clear_above.map(|c| (Cmp::Gt, c)))
            }
            _ => {
                problems.push(Problem::field(
                    "above",
                    "set exactly one of `above` and `below`",
                ));
                return None;
            }
        };
        if !threshold.is_finite() || clear.is_some_and(|(_, c)| !c.is_finite()) {
            problems.push(Problem::field("above", "thresholds must be finite numbers"));
        }
        return Some((
            window,
            group_by,
            vec![metric],
            filter,
            Test::Window {
                condition: threshold_test(0, aggregate, cmp, threshold, scope),
                clear: clear.map(|(c, t)| threshold_test(0, aggregate, c, t, scope)),
                value: Expr::agg(aggregate),
            },
        ));
    };
    // Several conditions: `all = [{ metric, aggregate, above | below }, ...]`.
    for (field, set) in [
        ("above", r.above.is_some()),
        ("below", r.below.is_some()),
        ("clear_above", r.clear_above.is_some()),
        ("clear_below", r.clear_below.is_some()),
    ] {
        if set {
            problems.push(Problem::field(
                field,
                format!(
                    "with `{list}`, `{field}` goes in each condition (hysteresis over several \
                     conditions: use `sql` with `clear`)"
                ),
            ));
        }
    }
    let mut metrics: Vec<String> = Vec::new();
    let mut tests: Vec<Expr> = Vec::new();
    let mut value = None;
    for (i, c) in conditions.iter().enumerate() {
        if let Err(e) = eddy_proto::valid_name(&c.metric, eddy_proto::MAX_METRIC_LEN) {
            problems.push(Problem::item(
                list,
                i,
                "metric",
                format!("`{}` {e}", c.metric),
            ));
            continue;
        }
        let metric = match metrics.iter().position(|m| *m == c.metric) {
            Some(m) => m,
            None if metrics.len() >= MAX_RULE_METRICS => {
                problems.push(Problem::item(
                    list,
                    i,
                    "metric",
                    format!("a rule reads at most {MAX_RULE_METRICS} metrics"),
                ));
                continue;
            }
            None => {
                metrics.push(c.metric.clone());
                metrics.len() - 1
            }
        } as u8;
        let Some(aggregate) = c.aggregate.or(r.aggregate) else {
            problems.push(Problem::item(
                list,
                i,
                "metric",
                "expected `aggregate` here or in the rule, e.g. aggregate = \"mean\"",
            ));
            continue;
        };
        let own = c.relative_to.is_some();
        let scope = level(
            if own { &c.relative_to } else { &r.relative_to },
            &|m| {
                if own {
                    Problem::item(list, i, "relative_to", m)
                } else {
                    Problem::field("relative_to", m)
                }
            },
            problems,
        );
        let (cmp, threshold, key) = match (c.above, c.below) {
            (Some(t), None) => (Cmp::Gt, t, "above"),
            (None, Some(t)) => (Cmp::Lt, t, "below"),
            _ => {
                problems.push(Problem::item(
                    list,
                    i,
                    "metric",
                    "set exactly one of `above` and `below`",
                ));
                continue;
            }
        };
        if !threshold.is_finite() {
            problems.push(Problem::item(
                list,
                i,
                key,
                "thresholds must be finite numbers",
            ));
            continue;
        }
        value.get_or_insert(Expr::Agg(Term {
            metric,
            aggregate,
            scope: Scope::Group,
        }));
        tests.push(threshold_test(metric, aggregate, cmp, threshold, scope));
    }
    let joined = tests.into_iter().reduce(|a, b| {
        if list == "all" {
            Expr::And(Box::new(a), Box::new(b))
        } else {
            Expr::Or(Box::new(a), Box::new(b))
        }
    })?;
    Some((
        window,
        group_by,
        metrics,
        filter,
        Test::Window {
            condition: joined,
            clear: None,
            value: value?,
        },
    ))
}

/// `aggregate(metric) cmp threshold`, or against the level's aggregate
/// plus the threshold: `avg(t) > site.avg(t) + 10`.
fn threshold_test(
    metric: u8,
    aggregate: Aggregate,
    cmp: Cmp,
    threshold: f64,
    level: Option<Scope>,
) -> Expr {
    let own = Expr::Agg(Term {
        metric,
        aggregate,
        scope: Scope::Group,
    });
    let bound = match level {
        None => Expr::Num(threshold),
        Some(scope) => Expr::Arith(
            Box::new(Expr::Agg(Term {
                metric,
                aggregate,
                scope,
            })),
            Arith::Add,
            Box::new(Expr::Num(threshold)),
        ),
    };
    Expr::Cmp(Box::new(own), cmp, Box::new(bound))
}

/// A rules-directory file: `[[rules]]` tables and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

/// Parses a rules file's text; errors carry `source` and positions. Any
/// table or key other than `[[rules]]` is refused.
pub fn parse_file(source: &str, text: &str) -> Result<Vec<RuleConfig>, RuleErrors> {
    Document::new(source, text)
        .deserialize::<RulesFile>()
        .map(|f| f.rules)
        .map_err(|e| PlacedErrors(vec![e]))
}

/// Compiles the `[[rules]]` of a document (`eddy.toml` or a rules file),
/// each error placed in it: at the field's key, inside the SQL string for
/// SQL errors, at the rule's `name` for a missing field. Names used twice
/// in the document are errors too.
pub fn compile_placed(
    doc: &Document<'_>,
    rules: &[RuleConfig],
    allow: WebhookAllow<'_>,
) -> (Vec<(Rule, Vec<Action>)>, Vec<Placed>) {
    let base = FieldPath::of(&["rules"]);
    compile_each(rules, allow, |i, r, p| {
        let at = base.index(i);
        let (line, column) = match (p.field, p.item, p.sql) {
            (Some(field), Some((index, key)), _) => doc.place(&at.key(field).index(index).key(key)),
            (Some(field), None, Some((l, c))) => doc.place_in_string(
                &at.key(field),
                usize::try_from(l).unwrap_or(1),
                usize::try_from(c).unwrap_or(1),
            ),
            (Some(field), None, None) => doc.place(&at.key(field)),
            (None, ..) => doc.place(&at),
        };
        Placed {
            source: doc.source().to_string(),
            line,
            column,
            rule: Some(r.name.clone()),
            field: None,
            message: p.message,
        }
    })
}

/// Compiles rules that have no text (built in code, from the API): an
/// error names the field, and the place inside the SQL for SQL errors.
pub fn compile_unplaced(
    source: &str,
    rules: &[RuleConfig],
    allow: WebhookAllow<'_>,
) -> (Vec<(Rule, Vec<Action>)>, Vec<Placed>) {
    compile_each(rules, allow, |_, r, p| {
        let field = match (p.field, p.item) {
            (Some(f), Some((i, k))) => format!("{f}[{i}].{k}: "),
            (Some(f), None) => format!("{f}: "),
            (None, _) => String::new(),
        };
        let at = p
            .sql
            .map(|(l, c)| format!("line {l}, column {c}: "))
            .unwrap_or_default();
        Placed::unplaced(source, Some(&r.name), format!("{field}{at}{}", p.message))
    })
}

fn compile_each(
    rules: &[RuleConfig],
    allow: WebhookAllow<'_>,
    place: impl Fn(usize, &RuleConfig, Problem) -> Placed,
) -> (Vec<(Rule, Vec<Action>)>, Vec<Placed>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        match compile(r, allow) {
            Ok(c) => ok.push(c),
            Err(problems) => errors.extend(problems.into_iter().map(|p| place(i, r, p))),
        }
        if rules[..i].iter().any(|o| o.name == r.name) {
            errors.push(place(
                i,
                r,
                Problem::field("name", "the name is used twice"),
            ));
        }
    }
    (ok, errors)
}

/// Compiles the rules of one file's text, each error placed in the file.
pub fn compile_file(
    source: &str,
    text: &str,
    rules: &[RuleConfig],
    allow: WebhookAllow<'_>,
) -> (Vec<(Rule, Vec<Action>)>, Vec<RuleError>) {
    compile_placed(&Document::new(source, text), rules, allow)
}

/// Checks `eddy.toml` or a rules file as the gateway would load it; the
/// number of rules it would run when valid.
///
/// A file with any top-level key besides `rules` is an `eddy.toml`: it is
/// checked whole, as `eddy check` does, with the files of its
/// `[alerts] rules_dir`. Otherwise it is a rules-directory file.
pub fn check_file(path: &Path) -> Result<usize, RuleErrors> {
    let source = path.display().to_string();
    let text = read_text(path)?;
    let is_config = text
        .parse::<toml::Table>()
        .is_ok_and(|t| t.keys().any(|k| k != "rules"));
    if is_config {
        let config = Config::load(path).map_err(config_errors)?;
        return registry::check(&config);
    }
    let doc = Document::new(&source, &text);
    let rules = parse_file(&source, &text)?;
    // Its eddy.toml is not known here: the allow-list is checked when the
    // gateway loads the file (or `eddy rules check eddy.toml`).
    let (ok, errors) = compile_placed(&doc, &rules, WebhookAllow::Unchecked);
    if !errors.is_empty() {
        return Err(PlacedErrors(errors));
    }
    let count = ok.len();
    let plan: Vec<Rule> = ok.into_iter().map(|(r, _)| r).collect();
    eddy_analytics::Engine::new(eddy_analytics::EngineConfig::default(), plan)
        .map_err(|e| PlacedErrors(vec![Placed::unplaced(&source, None, e.to_string())]))?;
    Ok(count)
}

/// A config error as rule errors (every one of them, placed).
pub fn config_errors(e: ConfigError) -> RuleErrors {
    match e {
        ConfigError::Parse(p) => PlacedErrors(vec![p]),
        ConfigError::Invalid(errors) => errors,
        ConfigError::Read { ref path, .. } | ConfigError::TooLarge { ref path } => {
            PlacedErrors(vec![Placed::unplaced(
                &path.display().to_string(),
                None,
                e.to_string(),
            )])
        }
    }
}

/// A file's text, or an error naming it.
pub(crate) fn read_text(path: &Path) -> Result<String, RuleErrors> {
    let source = path.display().to_string();
    std::fs::read_to_string(path).map_err(|e| {
        PlacedErrors(vec![Placed::unplaced(
            &source,
            None,
            format!("cannot read: {e}"),
        )])
    })
}

/// The rules files of a directory: `*.toml`, sorted by name.
pub fn dir_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shorthand's rule, as TOML.
    fn shorthand(text: &str) -> Rule {
        let r: RuleConfig = toml::from_str(text).expect("a rule");
        compile(&r, WebhookAllow::Unchecked).expect("compiles").0
    }

    fn sql_form(name: &str, having: &str) -> Rule {
        let text = format!(
            "SELECT device, avg(temperature) FROM telemetry \
             GROUP BY device, TUMBLING(INTERVAL '1' MINUTE) HAVING {having}"
        );
        let r = RuleConfig {
            sql: Some(text),
            ..RuleConfig::above(name, "x", Duration::from_secs(1), Aggregate::Mean, 0.0)
        };
        let r = RuleConfig {
            metric: None,
            window: None,
            aggregate: None,
            above: None,
            ..r
        };
        compile(&r, WebhookAllow::Unchecked).expect("compiles").0
    }

    #[test]
    fn both_forms_compile_several_metrics_and_group_comparisons_to_one_plan() {
        let all = shorthand(
            "name = \"muggy\"\nwindow = \"1m\"\naggregate = \"mean\"\nall = [\n\
             { metric = \"temperature\", above = 30 },\n\
             { metric = \"humidity\", above = 80 },\n]\n",
        );
        assert_eq!(
            all,
            sql_form("muggy", "avg(temperature) > 30 AND avg(humidity) > 80")
        );
        assert_eq!(all.metrics, vec!["temperature", "humidity"]);
        let any = shorthand(
            "name = \"either\"\nwindow = \"1m\"\nany = [\n\
             { metric = \"temperature\", aggregate = \"mean\", above = 30 },\n\
             { metric = \"humidity\", aggregate = \"mean\", below = 10 },\n]\n",
        );
        assert_eq!(
            any,
            sql_form("either", "avg(temperature) > 30 OR avg(humidity) < 10")
        );
        let outlier = shorthand(
            "name = \"outlier\"\nmetric = \"temperature\"\nwindow = \"1m\"\n\
             aggregate = \"mean\"\nabove = 10\nrelative_to = \"site\"\n",
        );
        assert_eq!(
            outlier,
            sql_form("outlier", "avg(temperature) > site.avg(temperature) + 10")
        );
    }

    #[test]
    fn sql_errors_are_placed_inside_the_file() {
        let text = "[[rules]]\nname = \"a\"\nsql = \"SELECT avg(t) FROM telemetry GROUP BY TUMBLING(INTERVAL '1' SECOND) HAVING avg(t) >\"\n";
        let rules = parse_file("r.toml", text).expect("toml");
        let (_, errors) = compile_file("r.toml", text, &rules, WebhookAllow::Unchecked);
        assert_eq!(errors.len(), 1, "{errors:?}");
        // The SQL ends at column 87 of its line, after `sql = "`.
        assert_eq!(errors[0].line, 3);
        assert!(errors[0].column > 80, "{}", errors[0]);
        let text = "[[rules]]\nname = \"a\"\nsql = \"\"\"\nSELECT avg(t)\nFROM telemetry\nGROUP BY WOBBLY(3)\nHAVING avg(t) > 1\"\"\"\n";
        let rules = parse_file("r.toml", text).expect("toml");
        let (_, errors) = compile_file("r.toml", text, &rules, WebhookAllow::Unchecked);
        assert_eq!((errors[0].line, errors[0].column), (6, 10), "{}", errors[0]);
    }
}
