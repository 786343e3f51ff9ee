//! Threshold rules and the alert changes they produce.

use std::sync::Arc;

use crate::{Aggregate, GroupKey};

/// When a rule's aggregate is in alarm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Above(f64),
    Below(f64),
}

impl Condition {
    pub fn holds(self, value: f64) -> bool {
        match self {
            Condition::Above(t) => value > t,
            Condition::Below(t) => value < t,
        }
    }

    pub fn threshold(self) -> f64 {
        match self {
            Condition::Above(t) | Condition::Below(t) => t,
        }
    }
}

/// "Alert when the `aggregate` of `metric` over a tumbling `window_ms`
/// window is above/below a threshold", for every device.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRule {
    pub name: Arc<str>,
    pub metric: String,
    pub window_ms: u64,
    pub aggregate: Aggregate,
    pub condition: Condition,
    /// How late a sample may be and still count for this rule (the
    /// engine's `allowed_lateness_ms` when `None`).
    pub allowed_lateness_ms: Option<u64>,
}

/// An alert's state after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// A change of one rule's alert for one series. Emitted on changes only.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEvent {
    pub rule: Arc<str>,
    /// The series (a per-series group) the alert is about.
    pub key: GroupKey,
    pub state: AlertState,
    /// The aggregate value that caused the change.
    pub value: f64,
    pub threshold: f64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
}
