//! The Eddy stream engine: samples in, window results and alert changes out.
//!
//! Keyed processing in the manner of S4: a view (a window kind, a
//! grouping, an optional metric filter) keeps window state per group —
//! a series, a device, a level of the device hierarchy as in Rainbird's
//! hierarchical counters — and samples are the only way in. Time is event
//! time: each source's watermark trails its newest event time by the
//! view's allowed lateness; a window closes once the watermark passes its
//! end, and a sample older than the watermark is late: counted and handed
//! back on [`Output::late`], never merged silently.
//!
//! Windows: tumbling, hopping, sliding (per sample), session and count.
//! Aggregates: count, sum, mean, min, max, first, last, stddev and
//! variance (Welford), rate, delta, and quantiles through a mergeable
//! sketch with a relative-error bound ([`sketch`]). Open windows answer
//! live queries from memory; idle series are evicted; the whole state
//! snapshots and restores.
//!
//! The engine does no I/O and knows nothing of MQTT, serial links or
//! storage, so it is tested and benchmarked alone.

#![forbid(unsafe_code)]

pub mod anomaly;
mod engine;
mod rule;
mod series;
pub mod sketch;
pub mod sql;
mod state;
mod window;

pub use engine::{
    DeviceLevel, Engine, EngineConfig, EngineError, EngineStats, GroupBy, Late, LiveQuery, LiveRow,
    Output, Sample, ViewSpec,
};
pub use rule::{
    ActiveAlert, Alert, AlertEvent, AlertState, Arith, Cmp, Condition, Expr, Field, Flap, Input,
    Inputs, Lifecycle, MAX_RULE_METRICS, Match, Notice, Phase, Rule, Scope, SeriesFilter, Severity,
    Term, Test, Truth, ValueRange, glob,
};
pub use series::{GroupKey, SeriesFull, SeriesKey};
pub use state::MAX_RETAINED;
pub use window::{Aggregate, Aggregates, GroupingWord, WindowKind, WindowName, WindowResult};

/// The engine's maps: foldhash, seeded per process (names come from the
/// network, so the seed matters), several times faster than SipHash on
/// the short keys looked up per sample.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
