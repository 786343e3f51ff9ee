//! The Eddy stream engine: samples in, window results and alert changes out.
//!
//! Keyed processing in the manner of S4: every series (device, metric) owns
//! its window state, and samples are the only way in. Time is event time:
//! a watermark trails the newest event time by the allowed lateness; a
//! window closes once the watermark passes its end, and a sample older than
//! the watermark is late: counted and handed back on [`Output::late`],
//! never merged silently.
//!
//! The engine does no I/O and knows nothing of MQTT, serial links or
//! storage, so it is tested and benchmarked alone.

#![forbid(unsafe_code)]

mod engine;
mod rule;
mod series;
mod window;

pub use engine::{Engine, EngineConfig, EngineError, EngineStats, Output, Sample};
pub use rule::{AlertEvent, AlertState, Condition, ThresholdRule};
pub use series::{SeriesFull, SeriesKey};
pub use window::{Aggregate, Aggregates, WindowResult};
