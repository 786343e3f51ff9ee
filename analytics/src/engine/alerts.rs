//! Alerts: each rule's lifecycle stepped at the closed windows of its
//! views, joined by range (window rules), or by silence (deadman rules);
//! the level windows group comparisons wait for; notifications; the
//! alerts standing.

use smallvec::SmallVec;

use super::spec::CompiledRule;
use super::{Engine, EngineStats, Output, to_ms};
use crate::rule::{
    ActiveAlert, Alert, Input, Inputs, Notice, Phase, Rule, Scope, Term, Test, Truth,
};
use crate::{Aggregates, AlertEvent, AlertState, DeviceLevel, GroupKey, HashMap, WindowResult};

/// Whether an alert holds nothing worth keeping: inactive, not flapping,
/// no recent changes. Such alerts are forgotten.
fn at_rest(alert: &Alert) -> bool {
    alert.phase == Phase::Inactive && !alert.flapping && alert.changes.is_empty()
}

/// A closed window of a rule's level input: (end, rule, input, level
/// label, start). Ordered by end first, so the oldest go first.
pub(super) type LevelKey = (i64, u32, u8, u32, i64);

/// Per view, the (rule, input) it is a hidden view of.
pub(super) fn view_rules(rules: &[CompiledRule], views: usize) -> Vec<Option<(u32, u8)>> {
    let mut of = vec![None; views];
    for (r, c) in rules.iter().enumerate() {
        for (i, &v) in c.views.iter().enumerate() {
            of[v] = Some((r as u32, i as u8));
        }
    }
    of
}

/// The group windows of one rule over one range, closed in one call:
/// a window per metric, `None` where the metric sent nothing (UNKNOWN).
struct Joined {
    end_ms: i64,
    rule: u32,
    label: u32,
    /// The alert's group key: the metric's for a rule over one metric,
    /// [`GroupKey::ALL_METRICS`] for a rule over several.
    metric_key: u32,
    start_ms: i64,
    windows: SmallVec<[Option<Aggregates>; 2]>,
}

/// A call's closed rule windows, joined by (rule, group, range).
///
/// Every group input of a rule has the rule's window, lateness and
/// grouping, so its groups for one label have the same source and the
/// same watermark: all its metrics' windows of a range close in the same
/// call (the one where the watermark passes the range's end). They are
/// joined here, within the call, and nothing waits across calls; a
/// metric without a window then is missing for good.
#[derive(Default)]
pub(super) struct Joins {
    rows: Vec<Joined>,
    /// Row per (rule, label, start, end), for rules over several metrics.
    index: HashMap<(u32, u32, i64, i64), usize>,
}

/// What a rule's expressions read in one evaluation.
struct Reading<'a> {
    inputs: &'a [Input],
    group: &'a [Option<Aggregates>],
    /// Per input, the level window (level inputs only).
    levels: &'a [Option<&'a Aggregates>],
}

impl Inputs for Reading<'_> {
    fn term(&self, term: &Term) -> Option<f64> {
        let window = match term.scope {
            Scope::Group => self.group.get(usize::from(term.metric))?.as_ref()?,
            scope => {
                let i = self
                    .inputs
                    .iter()
                    .position(|x| x.metric == term.metric && x.scope == scope)?;
                (*self.levels.get(i)?)?
            }
        };
        Some(window.get(term.aggregate))
    }
}

impl Engine {
    /// Takes a closed window of rule `rule`'s input `input`: a group
    /// window into this call's joins, a level window into the state kept
    /// until the devices' windows of its range closed.
    pub(super) fn collect(
        &mut self,
        rule: u32,
        input: u8,
        window: WindowResult,
        joins: &mut Joins,
    ) {
        let Some(compiled) = self.rules.get(rule as usize) else {
            return;
        };
        let Some(&Input { metric, scope }) = compiled.inputs.get(usize::from(input)) else {
            return;
        };
        if scope != Scope::Group {
            if self.st.levels.len() >= self.config.max_series.max(1) {
                self.st.levels.pop_first();
                self.st.stats.level_windows_dropped += 1;
            }
            self.st.levels.insert(
                (
                    window.end_ms,
                    rule,
                    input,
                    window.key.label,
                    window.start_ms,
                ),
                window.aggregates,
            );
            return;
        }
        let metrics = compiled.rule.metrics.len();
        let key = (rule, window.key.label, window.start_ms, window.end_ms);
        let row = match joins.index.get(&key) {
            Some(&row) if metrics > 1 => row,
            _ => {
                joins.rows.push(Joined {
                    end_ms: window.end_ms,
                    rule,
                    label: window.key.label,
                    metric_key: if metrics > 1 {
                        GroupKey::ALL_METRICS
                    } else {
                        window.key.metric
                    },
                    start_ms: window.start_ms,
                    windows: (0..metrics).map(|_| None).collect(),
                });
                if metrics > 1 {
                    joins.index.insert(key, joins.rows.len() - 1);
                }
                joins.rows.len() - 1
            }
        };
        if let Some(slot) = joins.rows[row].windows.get_mut(usize::from(metric)) {
            *slot = Some(window.aggregates);
        }
    }

    /// Steps each rule's alert once per joined (group, range), in order
    /// of window end, then rule, group and start, with the window's end
    /// as the clock; then forgets the level windows every device has read.
    ///
    /// The condition is three-valued ([`Truth`]): TRUE is in alarm;
    /// FALSE (or the `clear` condition TRUE) clears; UNKNOWN (a metric or
    /// a level window missing) does neither: a pending alert goes back to
    /// inactive (its `for` was not shown to hold), a firing one keeps
    /// firing (its clearing was not shown).
    pub(super) fn evaluate_joins(&mut self, joins: Joins, out: &mut Output) {
        let mut rows = joins.rows;
        rows.sort_by_key(|r| (r.end_ms, r.rule, r.label, r.metric_key, r.start_ms));
        for row in rows {
            let index = row.rule;
            let Some(compiled) = self.rules.get(index as usize) else {
                continue;
            };
            let Test::Window {
                condition,
                clear,
                value,
            } = &compiled.rule.test
            else {
                continue;
            };
            // The device's label at each level input's level.
            let level_labels: SmallVec<[Option<u32>; 2]> = compiled
                .inputs
                .iter()
                .map(|input| match input.scope {
                    Scope::Group => None,
                    Scope::Level(n) => {
                        let device = self.st.labels.name(row.label);
                        self.st
                            .labels
                            .get(&self.label_for(device, DeviceLevel::Level(n)))
                    }
                })
                .collect();
            let levels: SmallVec<[Option<&Aggregates>; 2]> = level_labels
                .iter()
                .enumerate()
                .map(|(i, label)| {
                    self.st
                        .levels
                        .get(&(row.end_ms, index, i as u8, (*label)?, row.start_ms))
                })
                .collect();
            let reading = Reading {
                inputs: &compiled.inputs,
                group: &row.windows,
                levels: &levels,
            };
            let truth = condition.eval(&reading);
            let alarm = truth.is_true();
            let cleared = match clear {
                Some(c) => c.eval(&reading).is_true(),
                None => truth == Truth::False,
            };
            let v = value.value(&reading).unwrap_or(f64::NAN);
            let key = GroupKey {
                label: row.label,
                metric: row.metric_key,
            };
            let rule = &compiled.rule;
            let alert = self.st.alerts.entry((index, key)).or_default();
            let notice = alert.step(&rule.lifecycle, alarm, cleared, row.end_ms, v);
            if at_rest(alert) {
                self.st.alerts.remove(&(index, key));
            }
            if let Some(n) = notice {
                notify(
                    &mut self.st.stats,
                    rule,
                    key,
                    n,
                    v,
                    out,
                    (row.start_ms, row.end_ms),
                );
            }
        }
        self.forget_read_levels();
    }

    /// Drops the level windows whose range every device window has
    /// passed: a device's watermark is never more than `max_source_skew`
    /// behind the newest one's (nor behind the idle watermark), so once
    /// that bound passes a range's end, every device window of the range
    /// closed (in this call or before) and read it.
    fn forget_read_levels(&mut self) {
        if self.st.levels.is_empty() {
            return;
        }
        let skew = to_ms(self.config.max_source_skew_ms);
        let idle = self.st.idle_watermark;
        let due: Vec<i64> = self
            .rules
            .iter()
            .map(|c| {
                self.global_watermark(c.view())
                    .saturating_sub(skew)
                    .max(idle)
            })
            .collect();
        self.st
            .levels
            .retain(|&(end, rule, ..), _| due.get(rule as usize).is_some_and(|&d| end > d));
    }

    /// Steps deadman rules: a group silent for the rule's `no_data` (by
    /// its watermark) is in alarm; data clears it.
    pub(super) fn evaluate_silence(&mut self, out: &mut Output) {
        for index in 0..self.rules.len() {
            let Test::NoData { silent_ms } = self.rules[index].rule.test else {
                continue;
            };
            let v = self.rules[index].view();
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
                if at_rest(alert) {
                    self.st.alerts.remove(&(index as u32, key));
                }
                if let Some(n) = notice {
                    let window = (wm.saturating_sub(silent), wm);
                    notify(&mut self.st.stats, rule, key, n, secs, out, window);
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
}

/// Counts a notice and hands it out as an [`AlertEvent`] of `window`
/// (start, end).
fn notify(
    stats: &mut EngineStats,
    rule: &Rule,
    key: GroupKey,
    notice: Notice,
    value: f64,
    out: &mut Output,
    (start_ms, end_ms): (i64, i64),
) {
    match notice.state {
        AlertState::Firing if !notice.repeat => stats.alerts_fired += 1,
        AlertState::Resolved => stats.alerts_resolved += 1,
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
        since_ms: end_ms,
        window_start_ms: start_ms,
        window_end_ms: end_ms,
    });
}
