//! Rule-set swap: a new set installed at once, handing the open state it
//! still reads to the views that now own it.

use smallvec::SmallVec;

use super::sharing::{Sharing, same_state};
use super::spec::compile_rules;
use super::{Engine, EngineError, NONE, ViewGroups, ViewSpec};
use crate::rule::Rule;

impl Engine {
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
                    .unwrap_or_else(ViewGroups::empty),
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
        let levels = std::mem::take(&mut self.st.levels);
        self.st.levels = levels
            .into_iter()
            .filter_map(|((end, r, input, label, start), a)| {
                let new = same_rule.iter().position(|x| *x == Some(r as usize))?;
                Some(((end, new as u32, input, label, start), a))
            })
            .collect();
        self.view_rule = super::view_rules(&compiled, views.len());
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
}
