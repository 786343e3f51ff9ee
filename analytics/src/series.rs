//! Series identity: device and metric names interned to small integers.

use std::collections::HashMap;
use std::sync::Arc;

/// A series: one metric of one device, as interned ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub device: u32,
    pub metric: u32,
}

/// The live-series cap was reached; the sample was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("series cap of {max} reached")]
pub struct SeriesFull {
    pub max: usize,
}

/// Interns names to dense ids, up to a fixed number of names.
#[derive(Debug)]
pub(crate) struct Symbols {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
    max: usize,
}

impl Symbols {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            names: Vec::new(),
            ids: HashMap::new(),
            max,
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    pub(crate) fn intern(&mut self, name: &str) -> Result<u32, SeriesFull> {
        if let Some(id) = self.get(name) {
            return Ok(id);
        }
        if self.names.len() >= self.max {
            return Err(SeriesFull { max: self.max });
        }
        let id = u32::try_from(self.names.len()).map_err(|_| SeriesFull { max: self.max })?;
        let name: Arc<str> = name.into();
        self.names.push(name.clone());
        self.ids.insert(name, id);
        Ok(id)
    }

    pub(crate) fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("?", |n| n)
    }
}
