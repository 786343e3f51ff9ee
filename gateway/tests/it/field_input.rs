//! Payloads and clocks as real devices send them: every case stores the
//! right values, and what cannot be stored is counted by reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use eddy_gateway::Gateway;
use eddy_gateway::config::Config;
use eddy_gateway::store::StoredSample;
use eddy_mqtt::QoS;
use eddy_test_support::http::scrape;
use eddy_test_support::{Mosquitto, wait_until};

/// 2024-03-01T12:00:00Z in Unix milliseconds.
const T: i64 = 1_709_294_400_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn mapping(config: &mut Config, toml_text: &str) {
    config
        .ingest
        .topics
        .push(toml::from_str(toml_text).expect("mapping"));
}

async fn publish(client: &eddy_test_support::mqtt::Publisher, topic: &str, payload: &str) {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .expect("queued");
}

/// (device, metric, ts_ms, value) of the stored samples, sorted.
fn rows(samples: &[StoredSample]) -> Vec<(String, String, i64, f64)> {
    let mut rows: Vec<_> = samples
        .iter()
        .map(|s| (s.device.clone(), s.metric.clone(), s.ts_ms, s.value))
        .collect();
    rows.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_clock_does_not_stall_the_fleet() {
    let data = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start(test_config(data.path().to_path_buf(), None))
        .await
        .expect("gateway starts");
    let stats = gateway.stats().clone();
    let client = json_publisher(gateway.broker(), "clocks");
    let t = |d: &str| format!("eddy/v1/{d}/telemetry");
    let now = now_ms();
    publish(
        &client,
        &t("a"),
        &format!(r#"{{"temperature": 20, "ts": {now}}}"#),
    )
    .await;
    // Microseconds: the same instant, read as such.
    let now_us = now * 1000;
    publish(
        &client,
        &t("b"),
        &format!(r#"{{"temperature": 22, "ts": {now_us}}}"#),
    )
    .await;
    // A clock a day ahead: refused, counted.
    let tomorrow = now + 86_400_000;
    publish(
        &client,
        &t("c"),
        &format!(r#"{{"temperature": 23, "ts": {tomorrow}}}"#),
    )
    .await;
    // Not an instant in any unit: refused, never reinterpreted.
    publish(&client, &t("d"), r#"{"temperature": 24, "ts": 12345}"#).await;
    // `a` runs hot for 4 s: the rule (mean over 1 s > 50) fires.
    for _ in 0..20 {
        let ts = now_ms();
        publish(
            &client,
            &t("a"),
            &format!(r#"{{"temperature": 80, "ts": {ts}}}"#),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        wait_until(Duration::from_secs(10), || stats.snapshot().alerts_fired
            >= 1)
        .await,
        "the rule never fired: {}",
        stats.snapshot()
    );
    let s = stats.snapshot();
    assert_eq!(s.samples_future_refused, 1, "{s}");
    assert_eq!(stats.refused_by_reason().get("bad_timestamp"), Some(&1));
    wait_committed(&gateway, 22).await;
    let samples = stored_samples(&gateway).await;
    let b: Vec<_> = samples.iter().filter(|s| s.device == "b").collect();
    assert_eq!(b.len(), 1);
    assert!((b[0].ts_ms - now).abs() < 1000, "b at {}", b[0].ts_ms);
    assert!(!samples.iter().any(|s| s.device == "c" || s.device == "d"));
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_as_devices_write_them_store_the_right_values() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(data.path().to_path_buf(), None);
    mapping(
        &mut config,
        r#"filter = "tele/+/SENSOR"
format = "json"
device_level = 1
time_key = "Time"
timezone = "+01:00""#,
    );
    mapping(
        &mut config,
        r#"filter = "sensor/+/+/state"
format = "value"
device_level = 1
metric_level = 2"#,
    );
    mapping(
        &mut config,
        r#"filter = "home/+/+/+/state"
format = "value"
device_level = [1, 2]
metric_level = 3"#,
    );
    mapping(
        &mut config,
        r#"filter = "senml/+"
format = "senml"
device_level = 1"#,
    );
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let client = json_publisher(gateway.broker(), "devices");
    // SenML (RFC 8428): base name, base time in seconds, a relative time.
    publish(
        &client,
        "senml/meter-7",
        &format!(
            r#"[{{"bn": "urn:dev:mac:0024befffe804ff1:", "bt": {}, "n": "voltage", "u": "V", "v": 230.1}}, {{"n": "current", "u": "A", "t": 1, "v": 0.5}}, {{"n": "label", "vs": "hall"}}]"#,
            T / 1000
        ),
    )
    .await;
    // Tasmota: local time without an offset, arrays of phases.
    publish(
        &client,
        "tele/plug-1/SENSOR",
        r#"{"Time": "2024-03-01T13:00:00", "ENERGY": {"Total": 1.25, "Power": [120, 35], "Current": [0.52, 0.15]}}"#,
    )
    .await;
    // Numbers as strings, a status word, an ISO time with its offset.
    publish(
        &client,
        "tele/plug-2/SENSOR",
        r#"{"Time": "2024-03-01T12:00:00Z", "voltage": "236.8", "temperature": 13.9, "state": "ON"}"#,
    )
    .await;
    // A meter with a UUID id and long names; one NaN among them.
    let uuid = "3f2a9c1e-7b4d-4e8a-9c2f-1d5e6a7b8c9d";
    publish(
        &client,
        &format!("eddy/v1/{uuid}/telemetry"),
        &format!(
            r#"{{"ts": {T}, "total_energy_consumption_at_date_kwh": 7.5, "meter": {{"phase_one_active_power_import_watts": 10}}, "bad": "NaN", "ok": 1}}"#
        ),
    )
    .await;
    // One value per topic.
    publish(&client, "sensor/kitchen/temperature/state", "21.5").await;
    publish(&client, "home/kitchen/plug/power/state", "12").await;
    publish(&client, "home/garage/plug/power/state", "13").await;
    // A batch, each reading with its own time.
    let s = T / 1000;
    publish(
        &client,
        "eddy/v1/batch-1/telemetry",
        &format!(r#"[{{"t": 1, "ts": {s}}}, {{"t": 2, "ts": {}}}]"#, s + 1),
    )
    .await;
    wait_committed(&gateway, 17).await;
    let samples = stored_samples(&gateway).await;
    let got = rows(&samples);
    let (_, _, arrival, _) = got
        .iter()
        .find(|r| r.0 == "kitchen")
        .cloned()
        .expect("kitchen stored");
    let row = |d: &str, m: &str, ts: i64, v: f64| (d.to_string(), m.to_string(), ts, v);
    let arrived = |d: &str, m: &str, v: f64| {
        let ts = got.iter().find(|r| r.0 == d && r.1 == m).map_or(0, |r| r.2);
        assert!((ts - arrival).abs() < 10_000, "{d} {m} at {ts}");
        row(d, m, ts, v)
    };
    let mut want = vec![
        row(uuid, "meter.phase_one_active_power_import_watts", T, 10.0),
        row(uuid, "ok", T, 1.0),
        row(uuid, "total_energy_consumption_at_date_kwh", T, 7.5),
        row("batch-1", "t", T, 1.0),
        row("meter-7", "current", T + 1000, 0.5),
        row("meter-7", "voltage", T, 230.1),
        row("batch-1", "t", T + 1000, 2.0),
        arrived("garage.plug", "power", 13.0),
        arrived("kitchen", "temperature", 21.5),
        arrived("kitchen.plug", "power", 12.0),
        row("plug-1", "ENERGY.Current.0", T, 0.52),
        row("plug-1", "ENERGY.Current.1", T, 0.15),
        row("plug-1", "ENERGY.Power.0", T, 120.0),
        row("plug-1", "ENERGY.Power.1", T, 35.0),
        row("plug-1", "ENERGY.Total", T, 1.25),
        row("plug-2", "temperature", T, 13.9),
        row("plug-2", "voltage", T, 236.8),
    ];
    want.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    assert_eq!(got, want);
    let http = gateway.http_addr().expect("http");
    for (reason, n) in [("not_a_number", 2), ("not_finite", 1), ("bad_name", 0)] {
        let name = format!("eddy_values_dropped_total{{reason=\"{reason}\"}}");
        assert_eq!(scrape(http, &name).await, Some(n), "{name}");
    }
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_reading_is_stored_once_across_restarts() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let data = tempfile::tempdir().expect("temp dir");
    let config = || config_on(data.path(), broker.url());
    let gateway = start_subscribed(config()).await;
    let client = json_publisher(gateway.broker(), "retainer");
    client
        .publish(
            "eddy/v1/r-1/telemetry",
            QoS::AtLeastOnce,
            true,
            br#"{"temperature": 21}"#.to_vec(),
        )
        .await
        .expect("queued");
    wait_committed(&gateway, 1).await;
    gateway.shutdown().await.expect("clean shutdown");
    let mut skipped = 0;
    for _ in 0..3 {
        let gateway = Gateway::start(config()).await.expect("gateway restarts");
        let stats = gateway.stats().clone();
        assert!(
            wait_until(Duration::from_secs(10), || stats
                .snapshot()
                .messages_retained_skipped
                >= 1)
            .await,
            "the retained message was not delivered again: {}",
            stats.snapshot()
        );
        skipped += stats.snapshot().messages_retained_skipped;
        let stored = stored_per_device(&gateway).await;
        assert_eq!(stored.get("r-1"), Some(&1), "one real reading");
        gateway.shutdown().await.expect("clean shutdown");
    }
    assert_eq!(skipped, 3);
}
