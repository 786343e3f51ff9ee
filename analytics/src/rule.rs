//! Alert rules as the engine runs them, and the alert lifecycle.
//!
//! A [`Rule`] is the one plan both rule forms compile to (the TOML
//! threshold shorthand and the SQL-like language of [`crate::sql`]): a
//! window kind and grouping over the series a [`SeriesFilter`] admits, the
//! metrics it reads, a condition over their windows' aggregates (a
//! [`Term`] names a metric and whose window: the group's, or its level's
//! for a comparison with the group) in three-valued logic ([`Truth`]: a
//! metric missing in a window is UNKNOWN), and the lifecycle options. The
//! engine keeps an [`Alert`] per (rule, group) and steps it once per
//! window range the rule's views close, in event time, so the lifecycle
//! is as deterministic as the windows: replaying the same samples gives
//! the same notifications.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::{Aggregate, Aggregates, DeviceLevel, GroupBy, GroupKey, WindowKind};

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Cmp {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Eq => "=",
            Cmp::Ne => "<>",
        }
    }
}

/// Arithmetic between aggregates and numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

/// Most metrics one rule reads.
pub const MAX_RULE_METRICS: usize = 16;

/// Whose window a [`Term`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// The rule's own group (a device, a site, ...).
    Group,
    /// The same window of the device's hierarchy level `n` (1 is the
    /// site, 2 the building, 3 the line): every device there that the
    /// rule's filter admits, together. Only in rules grouped per device.
    Level(u8),
}

/// An aggregate of one metric's window, as a condition reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Term {
    /// Index into [`Rule::metrics`].
    pub metric: u8,
    pub aggregate: Aggregate,
    pub scope: Scope,
}

impl Term {
    /// `aggregate` of the rule's first (or only) metric, in its own group.
    pub fn of(aggregate: Aggregate) -> Self {
        Term {
            metric: 0,
            aggregate,
            scope: Scope::Group,
        }
    }
}

/// One window a rule reads: a metric, in the group or at a level above
/// it. The engine keeps a (hidden) view per input and joins their closed
/// windows by range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Input {
    /// Index into [`Rule::metrics`].
    pub metric: u8,
    pub scope: Scope,
}

/// A truth value of three-valued (Kleene, SQL) logic. A term whose
/// window is missing (the metric sent nothing in that window) is
/// UNKNOWN, and so is every comparison and arithmetic it takes part in;
/// `AND` is false if either side is, `OR` true if either side is,
/// otherwise UNKNOWN propagates; `NOT UNKNOWN` is UNKNOWN. As in SQL's
/// `HAVING`, only `True` fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Truth {
    False,
    Unknown,
    True,
}

impl Truth {
    /// Kleene `AND`: the lesser of the two (`False < Unknown < True`).
    pub fn and(self, other: Truth) -> Truth {
        self.min(other)
    }

    /// Kleene `OR`: the greater of the two.
    pub fn or(self, other: Truth) -> Truth {
        self.max(other)
    }

    /// `NOT`: true and false swap, UNKNOWN stays.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Truth {
        match self {
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
            Truth::True => Truth::False,
        }
    }

    pub fn is_true(self) -> bool {
        self == Truth::True
    }
}

impl From<bool> for Truth {
    fn from(b: bool) -> Self {
        if b { Truth::True } else { Truth::False }
    }
}

/// What an expression reads: each term's value in the windows being
/// evaluated, `None` when the term's window is missing (UNKNOWN).
///
/// One window's [`Aggregates`] answer every term (a rule over one
/// metric); the engine answers from the windows it joined.
pub trait Inputs {
    fn term(&self, term: &Term) -> Option<f64>;
}

impl Inputs for Aggregates {
    fn term(&self, term: &Term) -> Option<f64> {
        Some(self.get(term.aggregate))
    }
}

/// A condition (or a value) over the aggregates of a rule's windows.
///
/// Terms are per series (one metric's window, in the group or at a
/// level above it); a future per-series function (an anomaly score of
/// a metric) is another term kind beside [`Expr::Agg`], read through
/// [`Inputs`] the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    Num(f64),
    Agg(Term),
    Neg(Box<Expr>),
    Arith(Box<Expr>, Arith, Box<Expr>),
    Cmp(Box<Expr>, Cmp, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

impl Expr {
    /// `aggregate` of the rule's first metric, in its own group.
    pub fn agg(aggregate: Aggregate) -> Self {
        Expr::Agg(Term::of(aggregate))
    }

    /// `aggregate cmp threshold`, of the rule's first metric.
    pub fn compare(aggregate: Aggregate, cmp: Cmp, threshold: f64) -> Self {
        Expr::Cmp(
            Box::new(Expr::agg(aggregate)),
            cmp,
            Box::new(Expr::Num(threshold)),
        )
    }

    /// The numeric value (conditions are 1 or 0), `None` when UNKNOWN.
    pub fn value(&self, a: &impl Inputs) -> Option<f64> {
        match self {
            Expr::Num(n) => Some(*n),
            Expr::Agg(t) => a.term(t),
            Expr::Neg(e) => e.value(a).map(|v| -v),
            Expr::Arith(l, op, r) => {
                let (l, r) = (l.value(a)?, r.value(a)?);
                Some(match op {
                    Arith::Add => l + r,
                    Arith::Sub => l - r,
                    Arith::Mul => l * r,
                    Arith::Div => l / r,
                })
            }
            _ => match self.eval(a) {
                Truth::True => Some(1.0),
                Truth::False => Some(0.0),
                Truth::Unknown => None,
            },
        }
    }

    /// The condition's truth. A comparison with an UNKNOWN side is
    /// UNKNOWN; one with NaN (an aggregate of an empty window, a division
    /// by zero) is false, as it always was.
    pub fn eval(&self, a: &impl Inputs) -> Truth {
        match self {
            Expr::Cmp(l, op, r) => match (l.value(a), r.value(a)) {
                (Some(l), Some(r)) => op.holds(l, r).into(),
                _ => Truth::Unknown,
            },
            Expr::And(l, r) => {
                let l = l.eval(a);
                if l == Truth::False {
                    return Truth::False;
                }
                l.and(r.eval(a))
            }
            Expr::Or(l, r) => {
                let l = l.eval(a);
                if l == Truth::True {
                    return Truth::True;
                }
                l.or(r.eval(a))
            }
            Expr::Not(e) => e.eval(a).not(),
            other => match other.value(a) {
                None => Truth::Unknown,
                Some(v) => (v != 0.0 && !v.is_nan()).into(),
            },
        }
    }

    /// Whether the condition is true (neither false nor UNKNOWN).
    pub fn holds(&self, a: &impl Inputs) -> bool {
        self.eval(a).is_true()
    }

    /// Whether this is a condition (true/false) rather than a number.
    pub fn is_condition(&self) -> bool {
        matches!(
            self,
            Expr::Cmp(..) | Expr::And(..) | Expr::Or(..) | Expr::Not(..)
        )
    }

    /// Every term the expression reads, each once, in order.
    pub fn terms(&self, out: &mut Vec<Term>) {
        match self {
            Expr::Num(_) => {}
            Expr::Agg(t) => {
                if !out.contains(t) {
                    out.push(*t);
                }
            }
            Expr::Neg(e) | Expr::Not(e) => e.terms(out),
            Expr::Arith(l, _, r) | Expr::Cmp(l, _, r) | Expr::And(l, r) | Expr::Or(l, r) => {
                l.terms(out);
                r.terms(out);
            }
        }
    }

    /// The first number a comparison holds the aggregate against (the
    /// threshold of a shorthand rule), for display.
    pub fn threshold(&self) -> Option<f64> {
        match self {
            Expr::Cmp(l, _, r) => match (&**l, &**r) {
                (_, Expr::Num(n)) | (Expr::Num(n), _) => Some(*n),
                _ => None,
            },
            Expr::And(l, r) | Expr::Or(l, r) => l.threshold().or_else(|| r.threshold()),
            Expr::Not(e) => e.threshold(),
            _ => None,
        }
    }

    /// Numbers that are not finite make a rule meaningless.
    pub fn all_finite(&self) -> bool {
        match self {
            Expr::Num(n) => n.is_finite(),
            Expr::Agg(_) => true,
            Expr::Neg(e) | Expr::Not(e) => e.all_finite(),
            Expr::Arith(l, _, r) | Expr::Cmp(l, _, r) | Expr::And(l, r) | Expr::Or(l, r) => {
                l.all_finite() && r.all_finite()
            }
        }
    }
}

/// The part of a device's identity a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    Device,
    /// Level 1 of the hierarchy path (`site/building/line`).
    Site,
    Building,
    Line,
    /// The whole path, without the device.
    Path,
}

impl Field {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "device" => Field::Device,
            "site" => Field::Site,
            "building" => Field::Building,
            "line" => Field::Line,
            "path" => Field::Path,
            _ => return None,
        })
    }
}

/// `field` matches a glob (`*` any run, `?` one character), or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    pub field: Field,
    pub pattern: String,
    pub negate: bool,
}

impl Match {
    fn admits(&self, device: &str, path: Option<&str>) -> bool {
        let level = |n: usize| path.and_then(|p| p.split('/').nth(n)).unwrap_or("");
        let subject = match self.field {
            Field::Device => device,
            Field::Site => level(0),
            Field::Building => level(1),
            Field::Line => level(2),
            Field::Path => path.unwrap_or(""),
        };
        glob(&self.pattern, subject) != self.negate
    }
}

/// Matches `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Bounds on a sample's value; samples outside do not count.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ValueRange {
    /// (bound, inclusive)
    pub min: Option<(f64, bool)>,
    pub max: Option<(f64, bool)>,
}

impl ValueRange {
    #[inline]
    pub fn contains(&self, v: f64) -> bool {
        let above = match self.min {
            None => true,
            Some((m, true)) => v >= m,
            Some((m, false)) => v > m,
        };
        let below = match self.max {
            None => true,
            Some((m, true)) => v <= m,
            Some((m, false)) => v < m,
        };
        above && below
    }

    pub fn is_all(&self) -> bool {
        self.min.is_none() && self.max.is_none()
    }

    /// Narrows the range by `value cmp bound`; `false` for `<>`, which a
    /// range cannot hold.
    pub fn narrow(&mut self, cmp: Cmp, bound: f64) -> bool {
        let tighter_min = |cur: Option<(f64, bool)>, new: (f64, bool)| match cur {
            Some(c) if c.0 > new.0 || (c.0 == new.0 && !c.1) => Some(c),
            _ => Some(new),
        };
        let tighter_max = |cur: Option<(f64, bool)>, new: (f64, bool)| match cur {
            Some(c) if c.0 < new.0 || (c.0 == new.0 && !c.1) => Some(c),
            _ => Some(new),
        };
        match cmp {
            Cmp::Gt => self.min = tighter_min(self.min, (bound, false)),
            Cmp::Ge => self.min = tighter_min(self.min, (bound, true)),
            Cmp::Lt => self.max = tighter_max(self.max, (bound, false)),
            Cmp::Le => self.max = tighter_max(self.max, (bound, true)),
            Cmp::Eq => {
                self.min = tighter_min(self.min, (bound, true));
                self.max = tighter_max(self.max, (bound, true));
            }
            Cmp::Ne => return false,
        }
        true
    }
}

/// Which series a view (or rule) reads: every term must hold, a term
/// holds when any of its matches does; samples outside `value` are
/// skipped.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SeriesFilter {
    pub all: Vec<Vec<Match>>,
    pub value: ValueRange,
}

impl SeriesFilter {
    /// Whether a series of `device` (at hierarchy `path`) is read.
    pub fn admits(&self, device: &str, path: Option<&str>) -> bool {
        self.all
            .iter()
            .all(|any| any.iter().any(|m| m.admits(device, path)))
    }
}

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Flap detection: `changes` state changes within `window_ms` mark an
/// alert flapping; its notifications pause until it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flap {
    pub window_ms: u64,
    pub changes: u32,
}

/// When notifications go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lifecycle {
    /// The condition must hold this long (event time) before firing.
    pub for_ms: u64,
    /// A firing alert resolves only after being clear this long.
    pub keep_firing_for_ms: u64,
    /// Notify again while firing, this often.
    pub repeat_ms: Option<u64>,
    pub flap: Option<Flap>,
}

/// What a rule tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Test {
    /// `condition` over each closed window; firing alerts resolve when
    /// `clear` holds (hysteresis), or when `condition` no longer does.
    Window {
        condition: Expr,
        clear: Option<Expr>,
        /// The value an alert reports.
        value: Expr,
    },
    /// Deadman: fires when a series sent nothing for this long (event
    /// time, by its watermark), resolves on data.
    NoData { silent_ms: u64 },
}

/// An alert rule, compiled: what the engine runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub name: Arc<str>,
    pub window: WindowKind,
    pub group_by: GroupBy,
    /// The metrics the rule reads (at least one, at most
    /// [`MAX_RULE_METRICS`]); terms name them by index.
    pub metrics: Vec<String>,
    pub filter: SeriesFilter,
    pub test: Test,
    pub lifecycle: Lifecycle,
    pub severity: Severity,
    /// How late a sample may be and still count for this rule (the
    /// engine's `allowed_lateness_ms` when `None`).
    pub allowed_lateness_ms: Option<u64>,
}

/// When a rule's aggregate is in alarm (the shorthand's two forms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Above(f64),
    Below(f64),
}

impl Rule {
    /// "Alert when the `aggregate` of `metric` over a tumbling `window_ms`
    /// window is above/below a threshold", per series, notifying at once.
    pub fn threshold(
        name: &str,
        metric: &str,
        window_ms: u64,
        aggregate: Aggregate,
        condition: Condition,
    ) -> Self {
        let condition = match condition {
            Condition::Above(t) => Expr::compare(aggregate, Cmp::Gt, t),
            Condition::Below(t) => Expr::compare(aggregate, Cmp::Lt, t),
        };
        Rule {
            name: name.into(),
            window: WindowKind::Tumbling { size_ms: window_ms },
            group_by: GroupBy::SERIES,
            metrics: vec![metric.to_string()],
            filter: SeriesFilter::default(),
            test: Test::Window {
                condition,
                clear: None,
                value: Expr::agg(aggregate),
            },
            lifecycle: Lifecycle::default(),
            severity: Severity::Warning,
            allowed_lateness_ms: None,
        }
    }

    /// The rule a parsed SQL query describes, notifying at once, with
    /// severity `warning` (set the other fields after).
    pub fn from_query(name: &str, q: crate::sql::Query) -> Self {
        Rule {
            name: name.into(),
            window: q.window,
            group_by: q.group_by,
            metrics: q.metrics,
            filter: q.filter,
            test: Test::Window {
                condition: q.condition,
                clear: None,
                value: q.value,
            },
            lifecycle: Lifecycle::default(),
            severity: Severity::Warning,
            allowed_lateness_ms: None,
        }
    }

    /// Every term the rule's expressions read.
    fn terms(&self) -> Vec<Term> {
        let mut terms = Vec::new();
        if let Test::Window {
            condition,
            clear,
            value,
        } = &self.test
        {
            condition.terms(&mut terms);
            if let Some(c) = clear {
                c.terms(&mut terms);
            }
            value.terms(&mut terms);
        }
        terms
    }

    /// The windows the rule reads: each metric in the rule's group (in
    /// the order of [`Rule::metrics`]), then each (metric, level) a group
    /// comparison names, in the order the expressions name them.
    pub fn inputs(&self) -> Vec<Input> {
        let mut inputs: Vec<Input> = (0..self.metrics.len().min(MAX_RULE_METRICS))
            .map(|m| Input {
                metric: m as u8,
                scope: Scope::Group,
            })
            .collect();
        for t in self.terms() {
            let input = Input {
                metric: t.metric,
                scope: t.scope,
            };
            if !inputs.contains(&input) {
                inputs.push(input);
            }
        }
        inputs
    }

    /// Whether the windows of `input` need a quantile sketch.
    pub fn needs_quantiles(&self, input: Input) -> bool {
        self.terms().iter().any(|t| {
            t.metric == input.metric
                && t.scope == input.scope
                && matches!(t.aggregate, Aggregate::Quantile(_))
        })
    }

    /// The threshold shown with alerts, when the condition has one.
    pub fn threshold_value(&self) -> Option<f64> {
        match &self.test {
            Test::Window { condition, .. } => condition.threshold(),
            Test::NoData { silent_ms } => Some(*silent_ms as f64 / 1000.0),
        }
    }

    /// Checks what the types do not; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        self.window.validate()?;
        if self.metrics.is_empty() {
            return Err("a rule reads at least one metric".into());
        }
        if self.metrics.len() > MAX_RULE_METRICS {
            return Err(format!(
                "a rule reads at most {MAX_RULE_METRICS} metrics, this one {}",
                self.metrics.len()
            ));
        }
        if let Some(m) = self
            .metrics
            .iter()
            .enumerate()
            .find_map(|(i, m)| self.metrics[..i].contains(m).then_some(m))
        {
            return Err(format!("metric `{m}` is named twice"));
        }
        let terms = self.terms();
        if terms
            .iter()
            .any(|t| usize::from(t.metric) >= self.metrics.len())
        {
            return Err("a term names a metric the rule does not read".into());
        }
        if terms.iter().any(|t| t.scope == Scope::Level(0)) {
            return Err("hierarchy levels start at 1 (the site)".into());
        }
        if terms.iter().any(|t| t.scope != Scope::Group)
            && self.group_by.device != DeviceLevel::Device
        {
            return Err(
                "a comparison with the group (site.avg(...)) needs a rule grouped per device"
                    .into(),
            );
        }
        if self.inputs().len() > 1 && !self.window.is_aligned() {
            return Err(format!(
                "a rule over several metrics or with a group comparison joins windows by their \
                 range: use a tumbling or hopping window, not {}",
                self.window.name()
            ));
        }
        match &self.test {
            Test::Window {
                condition,
                clear,
                value,
            } => {
                if !condition.all_finite()
                    || !value.all_finite()
                    || !clear.as_ref().is_none_or(Expr::all_finite)
                {
                    return Err("thresholds must be finite numbers".into());
                }
                if !condition.is_condition() {
                    return Err("the condition must compare (>, <, =, ...)".into());
                }
            }
            Test::NoData { silent_ms } if *silent_ms == 0 => {
                return Err("no_data must be at least 1 ms".into());
            }
            Test::NoData { .. } => {}
        }
        if let Some(f) = self.lifecycle.flap
            && (f.window_ms == 0 || f.changes < 2)
        {
            return Err("flap detection needs a window and at least 2 changes".into());
        }
        if self.lifecycle.repeat_ms == Some(0) {
            return Err("repeat must be at least 1 ms".into());
        }
        Ok(())
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Condition false (or never seen true).
    Inactive,
    /// Condition true, for less than the rule's `for`.
    Pending,
    Firing,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Inactive => "inactive",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
        }
    }
}

/// What a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertState {
    Firing,
    Resolved,
    /// Changing state too often; notifications pause until it settles.
    Flapping,
}

impl AlertState {
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
            AlertState::Flapping => "flapping",
        }
    }
}

/// One rule's alert for one group: the lifecycle state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub phase: Phase,
    /// Event time the current phase started.
    pub since_ms: i64,
    /// Firing but clear since then (within `keep_firing_for`).
    pub clear_since_ms: Option<i64>,
    pub last_notified_ms: i64,
    /// The value at the last evaluation.
    pub value: f64,
    /// Event times of the recent fire/resolve changes (flap detection).
    pub changes: SmallVec<[i64; 4]>,
    pub flapping: bool,
}

impl Default for Alert {
    fn default() -> Self {
        Self {
            phase: Phase::Inactive,
            since_ms: i64::MIN,
            clear_since_ms: None,
            last_notified_ms: i64::MIN,
            value: f64::NAN,
            changes: SmallVec::new(),
            flapping: false,
        }
    }
}

/// A notification to send: a state change, a repeat, or flapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    pub state: AlertState,
    pub repeat: bool,
}

impl Alert {
    /// Steps the machine at event time `t`: `alarm` is the condition,
    /// `clear` the resolve condition (the negated condition without
    /// hysteresis). Returns the notification due, if any.
    pub fn step(
        &mut self,
        life: &Lifecycle,
        alarm: bool,
        clear: bool,
        t: i64,
        value: f64,
    ) -> Option<Notice> {
        self.value = value;
        let changed = match self.phase {
            Phase::Inactive | Phase::Pending if !alarm => {
                self.phase = Phase::Inactive;
                None
            }
            Phase::Inactive if life.for_ms > 0 => {
                self.phase = Phase::Pending;
                self.since_ms = t;
                None
            }
            Phase::Pending if t.saturating_sub(self.since_ms) < ms(life.for_ms) => None,
            Phase::Inactive | Phase::Pending => {
                self.phase = Phase::Firing;
                self.since_ms = t;
                self.clear_since_ms = None;
                Some(AlertState::Firing)
            }
            Phase::Firing if clear => {
                let since = *self.clear_since_ms.get_or_insert(t);
                if t.saturating_sub(since) >= ms(life.keep_firing_for_ms) {
                    self.phase = Phase::Inactive;
                    self.since_ms = t;
                    self.clear_since_ms = None;
                    Some(AlertState::Resolved)
                } else {
                    None
                }
            }
            Phase::Firing => {
                self.clear_since_ms = None;
                None
            }
        };
        self.notice(life, changed, t)
    }

    fn notice(&mut self, life: &Lifecycle, changed: Option<AlertState>, t: i64) -> Option<Notice> {
        if let Some(flap) = life.flap {
            let horizon = t.saturating_sub(ms(flap.window_ms));
            self.changes.retain(|c| *c > horizon);
            if changed.is_some() {
                self.changes.push(t);
            }
            let flapping = self.changes.len() >= flap.changes as usize;
            if flapping && !self.flapping {
                self.flapping = true;
                return self.sent(t, AlertState::Flapping, false);
            }
            if self.flapping {
                if self.changes.is_empty() {
                    // Settled: say where it ended up.
                    self.flapping = false;
                    let state = match self.phase {
                        Phase::Firing => AlertState::Firing,
                        _ => AlertState::Resolved,
                    };
                    return self.sent(t, state, false);
                }
                return None;
            }
        }
        match changed {
            Some(state) => self.sent(t, state, false),
            None if self.phase == Phase::Firing
                && life
                    .repeat_ms
                    .is_some_and(|r| t.saturating_sub(self.last_notified_ms) >= ms(r)) =>
            {
                self.sent(t, AlertState::Firing, true)
            }
            None => None,
        }
    }

    fn sent(&mut self, t: i64, state: AlertState, repeat: bool) -> Option<Notice> {
        self.last_notified_ms = t;
        Some(Notice { state, repeat })
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A notification of one rule's alert for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    pub rule: Arc<str>,
    /// The group (a series, a device, a hierarchy level) it is about.
    pub key: GroupKey,
    pub state: AlertState,
    /// A reminder of a long-firing alert.
    pub repeat: bool,
    pub severity: Severity,
    /// The value that caused it.
    pub value: f64,
    pub threshold: Option<f64>,
    /// Event time the alert entered its phase.
    pub since_ms: i64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
}

/// A pending or firing alert, as [`crate::Engine::alerts`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    pub rule: Arc<str>,
    pub label: String,
    pub metric: Option<String>,
    pub phase: Phase,
    pub since_ms: i64,
    pub value: f64,
    pub severity: Severity,
    pub flapping: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("pump-*", "pump-12"));
        assert!(glob("*", ""));
        assert!(glob("p?mp", "pump"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("pump", "pump-1"));
    }

    /// Reads each metric's mean from a list; `None` is a missing window.
    struct Means(Vec<Option<f64>>);

    impl Inputs for Means {
        fn term(&self, t: &Term) -> Option<f64> {
            *self.0.get(usize::from(t.metric))?
        }
    }

    fn mean_of(metric: u8, cmp: Cmp, n: f64) -> Expr {
        Expr::Cmp(
            Box::new(Expr::Agg(Term {
                metric,
                aggregate: Aggregate::Mean,
                scope: Scope::Group,
            })),
            cmp,
            Box::new(Expr::Num(n)),
        )
    }

    #[test]
    fn three_valued_logic_follows_kleene() {
        use Truth::*;
        let all = [False, Unknown, True];
        for a in all {
            for b in all {
                let and = match (a, b) {
                    (False, _) | (_, False) => False,
                    (True, True) => True,
                    _ => Unknown,
                };
                let or = match (a, b) {
                    (True, _) | (_, True) => True,
                    (False, False) => False,
                    _ => Unknown,
                };
                assert_eq!(a.and(b), and, "{a:?} AND {b:?}");
                assert_eq!(a.or(b), or, "{a:?} OR {b:?}");
            }
        }
        assert_eq!(Unknown.not(), Unknown);
        assert_eq!(True.not(), False);
        assert_eq!(False.not(), True);
    }

    #[test]
    fn a_missing_metric_makes_its_terms_unknown() {
        let hot = mean_of(0, Cmp::Gt, 30.0);
        let humid = mean_of(1, Cmp::Gt, 80.0);
        let and = Expr::And(Box::new(hot.clone()), Box::new(humid.clone()));
        let or = Expr::Or(Box::new(hot.clone()), Box::new(humid.clone()));
        let not = Expr::Not(Box::new(humid.clone()));
        // Humidity missing, temperature hot: AND unknown, OR true.
        let hot_only = Means(vec![Some(35.0), None]);
        assert_eq!(humid.eval(&hot_only), Truth::Unknown);
        assert_eq!(and.eval(&hot_only), Truth::Unknown);
        assert!(!and.holds(&hot_only), "UNKNOWN does not fire");
        assert_eq!(or.eval(&hot_only), Truth::True);
        assert_eq!(not.eval(&hot_only), Truth::Unknown);
        // Temperature cool: unknown AND false is false; OR unknown.
        let cool = Means(vec![Some(20.0), None]);
        assert_eq!(and.eval(&cool), Truth::False);
        assert_eq!(or.eval(&cool), Truth::Unknown);
        // Arithmetic with a missing side is unknown, as is its value.
        let power = Expr::Arith(
            Box::new(Expr::Agg(Term {
                metric: 0,
                aggregate: Aggregate::Mean,
                scope: Scope::Group,
            })),
            Arith::Mul,
            Box::new(Expr::Agg(Term {
                metric: 1,
                aggregate: Aggregate::Mean,
                scope: Scope::Group,
            })),
        );
        assert_eq!(power.value(&hot_only), None);
        let over = Expr::Cmp(
            Box::new(power.clone()),
            Cmp::Gt,
            Box::new(Expr::Num(2000.0)),
        );
        assert_eq!(over.eval(&hot_only), Truth::Unknown);
        assert_eq!(
            over.eval(&Means(vec![Some(230.0), Some(10.0)])),
            Truth::True
        );
        // NaN (an empty window's aggregate) stays false, as before.
        assert_eq!(hot.eval(&Means(vec![Some(f64::NAN)])), Truth::False);
    }

    #[test]
    fn value_ranges_narrow() {
        let mut r = ValueRange::default();
        assert!(r.narrow(Cmp::Gt, 0.0));
        assert!(r.narrow(Cmp::Le, 10.0));
        assert!(r.narrow(Cmp::Ge, -5.0));
        assert!(!r.contains(0.0));
        assert!(r.contains(10.0));
        assert!(!r.contains(10.5));
        assert!(!r.narrow(Cmp::Ne, 3.0));
    }
}
