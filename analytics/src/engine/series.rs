//! Series: admission under the cap (names interned, each view's group
//! joined), hierarchy paths, names of keys, and idle eviction.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::{Engine, Group, NONE, to_ms};
use crate::rule::Scope;
use crate::state::WindowState;
use crate::{DeviceLevel, GroupKey, SeriesFull, SeriesKey};

/// A live series: its names' ids and the group it feeds in each view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SeriesEntry {
    pub(super) device: u32,
    pub(super) metric: u32,
    /// Group slot per view, or [`NONE`] (inline for up to four views).
    pub(super) groups: SmallVec<[u32; 4]>,
    pub(super) last_seen_ms: i64,
}

impl Engine {
    /// Number of live series.
    pub fn series_count(&self) -> usize {
        self.st.series_index.len()
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
    pub(super) fn label_for(&self, device: &str, level: DeviceLevel) -> String {
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
    /// allows. At the cap idle series are evicted first (by the same scan
    /// as [`evict_due`](Self::evict_due), at most every quarter of the
    /// idle timeout of event time, so a stream of new names at the cap
    /// costs a lookup each, not a scan of every series); if none is idle
    /// the new series is refused (and counted), the others keep working.
    ///
    /// Keys (series and groups) in an [`Output`](super::Output) stay
    /// valid until the next call that takes `&mut self`: eviction happens
    /// at the start of calls.
    pub fn series_key(&mut self, device: &str, metric: &str) -> Result<SeriesKey, SeriesFull> {
        if let (Some(d), Some(m)) = (self.st.devices.get(device), self.st.metrics.get(metric))
            && let Some(&id) = self.st.series_index.get(&(d, m))
        {
            return Ok(SeriesKey(id));
        }
        if self.series_count() >= self.config.max_series {
            self.evict_due();
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

    /// The group slot a series of `device` (id `d`) and `metric` (id `m`)
    /// feeds in view `v`, opened if new; [`NONE`] when the view does not
    /// read it, shares another view's state, or is at its group cap.
    pub(super) fn join_group(
        &mut self,
        v: usize,
        device: &str,
        d: u32,
        metric: &str,
        m: u32,
    ) -> u32 {
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

    /// Evicts idle series at most every quarter of the idle timeout. Runs
    /// at the start of a call, so the keys of the previous call's output
    /// stay valid until the caller made the next one.
    pub(super) fn evict_due(&mut self) {
        let Some(now) = self.st.max_event_ms else {
            return;
        };
        let every = to_ms(self.config.idle_timeout_ms / 4).max(1);
        if now.saturating_sub(self.st.last_evict_ms) >= every {
            self.st.last_evict_ms = now;
            self.evict_idle();
        }
    }

    /// Removes a group of view `v` (fed by no series, no window open),
    /// with its label reference, the alerts of rules reading it (for a
    /// rule over several metrics, any of them) and the level windows kept
    /// of it: keys hold label ids, which another name may take next.
    pub(super) fn remove_group(&mut self, v: usize, slot: u32) {
        let groups = &mut self.st.views[v];
        if let Some(g) = groups.slots[slot as usize].take() {
            groups.index.remove(&g.key);
            groups.free.push(slot);
            self.st.labels.release(g.key.label);
            let (rules, owner) = (&self.rules, &self.sharing.owner);
            let reads = |r: u32, group: bool| {
                rules.get(r as usize).is_some_and(|c| {
                    c.views
                        .iter()
                        .zip(&c.inputs)
                        .any(|(&view, i)| owner[view] == v && (i.scope == Scope::Group) == group)
                })
            };
            self.st.alerts.retain(|&(r, k), _| {
                let same = k.label == g.key.label
                    && (k.metric == g.key.metric || k.metric == GroupKey::ALL_METRICS);
                !(same && reads(r, true))
            });
            self.st
                .levels
                .retain(|&(_, r, _, label, _), _| !(label == g.key.label && reads(r, false)));
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
}
