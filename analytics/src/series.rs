//! Identity: device, metric and group names interned to small integers,
//! released again when nothing refers to them, so churn of names never
//! grows the tables past their caps.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::HashMap;

/// A live series (one metric of one device), as the engine admitted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey(pub u32);

/// A group of a view: a label (a device, a hierarchy prefix, or `*`) and
/// a metric ([`GroupKey::ALL_METRICS`] when the view does not group by
/// metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub label: u32,
    pub metric: u32,
}

impl GroupKey {
    pub const ALL_METRICS: u32 = u32::MAX;
}

/// The live-series cap was reached; the sample was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("series cap of {max} reached")]
pub struct SeriesFull {
    pub max: usize,
}

/// Interns names to dense ids with reference counts, up to `max` names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Symbols {
    names: Vec<Option<Arc<str>>>,
    refs: Vec<u32>,
    ids: HashMap<Arc<str>, u32>,
    free: Vec<u32>,
    max: usize,
}

impl Symbols {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            names: Vec::new(),
            refs: Vec::new(),
            ids: HashMap::default(),
            free: Vec::new(),
            max,
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The id of `name`, taking a reference to it.
    pub(crate) fn intern(&mut self, name: &str) -> Result<u32, SeriesFull> {
        if let Some(id) = self.get(name) {
            self.refs[id as usize] += 1;
            return Ok(id);
        }
        if self.ids.len() >= self.max {
            return Err(SeriesFull { max: self.max });
        }
        let name: Arc<str> = name.into();
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = Some(name.clone());
                self.refs[id as usize] = 1;
                id
            }
            None => {
                let id =
                    u32::try_from(self.names.len()).map_err(|_| SeriesFull { max: self.max })?;
                self.names.push(Some(name.clone()));
                self.refs.push(1);
                id
            }
        };
        self.ids.insert(name, id);
        Ok(id)
    }

    /// Drops a reference; the name goes when none is left.
    pub(crate) fn release(&mut self, id: u32) {
        let i = id as usize;
        let Some(r) = self.refs.get_mut(i) else {
            return;
        };
        *r = r.saturating_sub(1);
        if *r == 0
            && let Some(name) = self.names[i].take()
        {
            self.ids.remove(&name);
            self.free.push(id);
        }
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .and_then(|n| n.as_deref())
            .unwrap_or("?")
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.names.capacity() * 24
            + self.ids.capacity() * 24
            + self
                .names
                .iter()
                .flatten()
                .map(|n| n.len() + 16)
                .sum::<usize>()
    }
}
