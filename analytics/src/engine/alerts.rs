//! Alerts: each rule's lifecycle stepped at the closed windows of its
//! view (window rules) or by silence (deadman rules), notifications, and
//! the alerts standing.

use super::{Engine, EngineStats, Output, to_ms};
use crate::rule::{ActiveAlert, Alert, Notice, Phase, Rule, Test};
use crate::{Aggregates, AlertEvent, AlertState, GroupKey, WindowResult};

/// Whether an alert holds nothing worth keeping: inactive, not flapping,
/// no recent changes. Such alerts are forgotten.
fn at_rest(alert: &Alert) -> bool {
    alert.phase == Phase::Inactive && !alert.flapping && alert.changes.is_empty()
}

impl Engine {
    /// Steps the alert of the rule reading `window`'s view, if any, for
    /// the window's group, with the window's end as the clock.
    pub(super) fn evaluate_rules(&mut self, window: &WindowResult, out: &mut Output) {
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
            if at_rest(alert) {
                self.st.alerts.remove(&(index as u32, window.key));
            }
            if let Some(n) = notice {
                notify(&mut self.st.stats, rule, window.key, n, v, out, window);
            }
        }
    }

    /// Steps deadman rules: a group silent for the rule's `no_data` (by
    /// its watermark) is in alarm; data clears it.
    pub(super) fn evaluate_silence(&mut self, out: &mut Output) {
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
                if at_rest(alert) {
                    self.st.alerts.remove(&(index as u32, key));
                }
                if let Some(n) = notice {
                    let window = WindowResult {
                        view: v,
                        key,
                        start_ms: wm.saturating_sub(silent),
                        end_ms: wm,
                        aggregates: Aggregates::default(),
                    };
                    notify(&mut self.st.stats, rule, key, n, secs, out, &window);
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

/// Counts a notice and hands it out as an [`AlertEvent`] of `window`.
fn notify(
    stats: &mut EngineStats,
    rule: &Rule,
    key: GroupKey,
    notice: Notice,
    value: f64,
    out: &mut Output,
    window: &WindowResult,
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
        since_ms: window.end_ms,
        window_start_ms: window.start_ms,
        window_end_ms: window.end_ms,
    });
}
