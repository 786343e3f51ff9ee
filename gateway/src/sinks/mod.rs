//! Sinks: where results leave the gateway.

pub mod local;
pub mod upstream;

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter: attempt 0 waits up to `base`,
/// each failure doubles the bound, up to `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let bound = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}
