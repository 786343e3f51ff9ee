//! Live queries: open windows answered from memory.

use std::sync::Arc;

use super::Engine;
use crate::Aggregates;

/// A live query: the open windows of groups whose label starts with
/// `prefix`, of one view or all published ones, of one metric or all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveQuery {
    /// Only this view (by name), else every published view.
    pub view: Option<String>,
    /// Groups whose label starts with this (`""` for all).
    pub prefix: String,
    /// Only this metric, else all.
    pub metric: Option<String>,
    /// Most rows returned.
    pub limit: usize,
}

/// One open window, as a live query returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRow {
    /// The view's name.
    pub view: Arc<str>,
    /// The group's label (a device, a hierarchy prefix, or `*`).
    pub label: String,
    /// `None` when the view does not group by metric.
    pub metric: Option<String>,
    /// Start of the window (event time, ms).
    pub start_ms: i64,
    /// End of the window, exclusive.
    pub end_ms: i64,
    /// Its aggregates so far.
    pub aggregates: Aggregates,
}

impl Engine {
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
}
