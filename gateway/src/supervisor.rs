//! Supervision: every long-running part of the gateway (ingest source,
//! pipeline, sinks) runs as a supervised task. A task that returns an
//! error or panics is restarted after an exponential backoff with jitter;
//! the failure is logged with its cause and counted per task, and the
//! other tasks keep running. A task that returns `Ok` is done (shutdown).
//!
//! The gateway's other tasks run in one [`Tasks`] set: one cancellation
//! token stops them, one tracker waits for them, and a panic in any of
//! them is logged and counted (`eddy_task_panics_total`), never dropped.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::sinks::backoff;
use crate::stats::Stats;

/// The gateway's supervised tasks, always listed in `/metrics`.
pub const TASKS: [&str; 6] = ["ingest", "pipeline", "local", "upstream", "serial", "ota"];

/// A set of tasks stopped by one token and awaited together; a task's
/// panic is logged with its name and counted in [`Stats`].
#[derive(Debug, Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
}

impl Tasks {
    /// An empty set stopped by `shutdown`.
    pub fn new(shutdown: CancellationToken, stats: Arc<Stats>) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shutdown,
            stats,
        }
    }

    /// The token that stops the set's tasks.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `task` in the set.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.adopt(name, tokio::spawn(task));
    }

    /// Takes a running task into the set: its end is awaited by
    /// [`Tasks::wait`], its panic reported.
    pub fn adopt(&self, name: &'static str, handle: JoinHandle<()>) {
        let stats = self.stats.clone();
        self.tracker.spawn(async move {
            if let Err(e) = handle.await
                && e.is_panic()
            {
                let panics = stats.task_panicked(name);
                error!(task = name, cause = %panic_message(e), panics, "task panicked");
            }
        });
    }

    /// Cancels the token and waits until every task of the set ended.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// How restarts are spaced.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Backoff bound after the first failure; doubles per failure.
    pub base: Duration,
    /// Largest backoff.
    pub max: Duration,
    /// A task that ran this long before failing starts from `base` again.
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(30),
        }
    }
}

/// Runs `start()` as task `name` until it returns `Ok` or `shutdown` fires,
/// restarting it after every error or panic.
pub fn supervise<F, Fut, E>(
    name: &'static str,
    policy: RestartPolicy,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    mut start: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            // A task of its own, so a panic is caught here as a JoinError.
            let cause = match tokio::spawn(start()).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) if e.is_panic() => {
                    stats.task_panicked(name);
                    format!("panicked: {}", panic_message(e))
                }
                Err(e) => e.to_string(),
            };
            if shutdown.is_cancelled() {
                error!(task = name, %cause, "task failed during shutdown");
                return;
            }
            if started.elapsed() >= policy.reset_after {
                failures = 0;
            }
            let delay = backoff(failures, policy.base, policy.max);
            failures = failures.saturating_add(1);
            let restarts = stats.task_restarted(name);
            error!(task = name, %cause, restarts, retry_in = ?delay, "task failed; restarting");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            info!(task = name, "task restarting");
        }
    })
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RestartPolicy {
        RestartPolicy {
            base: Duration::from_millis(1),
            max: Duration::from_millis(5),
            reset_after: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn failing_and_panicking_tasks_are_restarted_and_counted() {
        let stats = Arc::new(Stats::default());
        let runs = Arc::new(AtomicU32::new(0));
        let task = supervise("flaky", fast(), stats.clone(), CancellationToken::new(), {
            let runs = runs.clone();
            move || {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    match run {
                        0 => Err("disk on fire"),
                        1 => panic!("bug"),
                        _ => Ok(()),
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("finishes")
            .expect("supervisor itself never panics");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(stats.task_restarts().get("flaky"), Some(&2));
        assert_eq!(stats.task_panics().get("flaky"), Some(&1));
    }

    #[tokio::test]
    async fn a_panic_in_the_task_set_is_counted_and_stop_waits_for_every_task() {
        let stats = Arc::new(Stats::default());
        let tasks = Tasks::new(CancellationToken::new(), stats.clone());
        tasks.spawn("webhooks", async { panic!("bad header") });
        let finished = Arc::new(AtomicU32::new(0));
        for _ in 0..3 {
            let (token, finished) = (tasks.shutdown().clone(), finished.clone());
            tasks.spawn("http", async move {
                token.cancelled().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        tokio::time::timeout(Duration::from_secs(5), tasks.stop())
            .await
            .expect("stops");
        assert_eq!(finished.load(Ordering::SeqCst), 3, "stop waited for all");
        assert_eq!(stats.task_panics().get("webhooks"), Some(&1));
        assert_eq!(stats.task_panics().get("http"), None);
    }

    #[tokio::test]
    async fn one_task_failing_forever_leaves_the_others_running_and_stops_on_shutdown() {
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let broken = supervise(
            "broken",
            fast(),
            stats.clone(),
            shutdown.clone(),
            || async { Err::<(), _>("upstream refused") },
        );
        let ticks = Arc::new(AtomicU32::new(0));
        let healthy = supervise("healthy", fast(), stats.clone(), shutdown.clone(), {
            let ticks = ticks.clone();
            let shutdown = shutdown.clone();
            move || {
                let ticks = ticks.clone();
                let shutdown = shutdown.clone();
                async move {
                    while !shutdown.is_cancelled() {
                        ticks.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok::<(), String>(())
                }
            }
        });
        while stats.task_restarts().get("broken").copied().unwrap_or(0) < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            ticks.load(Ordering::SeqCst) > before,
            "healthy task stalled"
        );
        shutdown.cancel();
        for t in [broken, healthy] {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("stops on shutdown")
                .expect("no panic");
        }
        assert_eq!(stats.task_restarts().get("healthy"), None);
    }
}
