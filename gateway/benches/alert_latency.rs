//! Alert latency: from publishing a sample that crosses a threshold to
//! the alert's arrival at a subscriber, through the whole gateway
//! (embedded broker, decode, engine, durable redb commit, local publish)
//! with fsync per commit, under group commit (the default, `batch_delay =
//! 0s`: a batch is what queued during the last commit) and, as the
//! reference in the same run, at the former default of 20 ms (a batch
//! waits that long for more messages). The rule uses count windows of one sample
//! (`GROUP BY device, COUNT(1)`), so the crossing sample itself closes
//! its window; with time windows the window's end adds its wait.
//! Crossings are sent one at a time (no queueing), alternating up and
//! down over 10 devices, so every sample fires or resolves one alert.
//!
//! `cargo bench -p eddy-gateway --bench alert_latency` (500 crossings;
//! 20 under `cargo test --benches`).

use std::time::{Duration, Instant};

use anyhow::Context;
use eddy_gateway::Gateway;
use eddy_gateway::config::demo_config;
use eddy_mqtt::{Connector, Delivery, Discard, Pump, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const RULE: &str = "[[rules]]\nname = \"crossing\"\n\
    sql = \"SELECT device, max(temperature) FROM telemetry GROUP BY device, COUNT(1) HAVING max(temperature) > 50\"\n";

fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let crossings = if full { 500 } else { 20 };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            for delay in [Duration::ZERO, Duration::from_millis(20)] {
                run(crossings, delay).await?;
            }
            Ok(())
        })
}

async fn run(crossings: usize, batch_delay: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = demo_config(dir.path().join("data"));
    config.ingest.batch_delay = batch_delay;
    config.rules = eddy_gateway::rules::parse_file("bench", RULE)?;
    let gateway = Gateway::start(config).await?;
    let broker = gateway.broker().clone();

    // Both clients end with this run, or at their first connection error.
    let stop = CancellationToken::new();
    let _stop_clients = stop.clone().drop_guard();
    let (tx, mut alerts) = mpsc::unbounded_channel();
    let subscriber = Pump::new()
        .subscribe("eddy/v1/alerts/#", QoS::AtLeastOnce)
        .stop_on_error();
    let (_, sub) = Connector::new(&broker, "latency-sub").spawn(
        &subscriber,
        move |delivery: Delivery| {
            if let Delivery::Message(p) = delivery
                && !p.retain
            {
                let _ = tx.send((Instant::now(), p.payload.to_vec()));
            }
        },
        stop.clone(),
    );
    sub.ready
        .wait(Duration::from_secs(10))
        .await
        .context("subscribed")?;
    let (publisher, _) = Connector::new(&broker, "latency-pub").spawn(
        &Pump::new().stop_on_error(),
        Discard,
        stop.clone(),
    );

    let mut latencies = Vec::with_capacity(crossings);
    let t0 = 1_700_000_000_000i64;
    for i in 0..crossings {
        let device = format!("lat-{}", i % 10);
        let hot = (i / 10) % 2 == 0;
        let payload = serde_json::json!({
            "temperature": if hot { 80.0 } else { 20.0 },
            "ts": t0 + i as i64 * 100,
        });
        let sent = Instant::now();
        publisher
            .publish(
                format!("eddy/v1/{device}/telemetry"),
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await?;
        let want = if hot { "firing" } else { "resolved" };
        loop {
            let (at, body) = tokio::time::timeout(Duration::from_secs(10), alerts.recv())
                .await
                .context("alert in time")?
                .context("subscriber alive")?;
            let alert: serde_json::Value = serde_json::from_slice(&body)?;
            if alert["device"] == device.as_str() && alert["state"] == want {
                latencies.push(at.duration_since(sent));
                break;
            }
        }
    }
    gateway.shutdown().await?;
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "batch delay {batch_delay:?}: alert latency over {} crossings: p50 {:.2?}, p90 {:.2?}, \
         p99 {:.2?}, max {:.2?}",
        latencies.len(),
        pick(0.5),
        pick(0.9),
        pick(0.99),
        pick(1.0)
    );
    Ok(())
}
