//! The stream engine inside the gateway: configured views published over
//! MQTT, live queries on `/api/live` by hierarchy prefix while ingest
//! goes on, and open windows that survive a restart (snapshot plus the
//! samples stored since).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{json_publisher, send_reading, test_config, wait_committed};
use eddy_gateway::Gateway;
use eddy_gateway::config::{Config, ViewConfig};
use eddy_test_support::http::{admin_token, http_get_as};
use eddy_test_support::mqtt::Collector;
use eddy_test_support::mqtt::Publisher;
use eddy_test_support::wait_until;

/// Event times far from now, so only the samples move the watermark.
const T0: i64 = 1_700_000_000_000;

fn view(name: &str, window: &str, group_by: &[&str], aggregates: &[&str]) -> ViewConfig {
    let toml = format!(
        "name = {name:?}\nwindow = {window:?}\nsize = \"60s\"\ngap = \"2s\"\ncount = 3\n\
         group_by = {group_by:?}\naggregates = {aggregates:?}\n"
    );
    toml::from_str(&toml).expect("view parses")
}

fn config(dir: &Path) -> Config {
    let mut config = test_config(dir.join("data"), None);
    config.engine.window = Duration::from_secs(60);
    config.engine.paths = [
        ("m1", "plant-1/hall-a/line-1"),
        ("m2", "plant-1/hall-a/line-2"),
        ("m3", "plant-2/hall-b/line-1"),
    ]
    .into_iter()
    .map(|(d, p)| (d.to_string(), p.to_string()))
    .collect();
    config.engine.views = vec![
        view(
            "site",
            "tumbling",
            &["site", "metric"],
            &["sum", "count", "p99", "max"],
        ),
        view(
            "bursts",
            "session",
            &["device", "metric"],
            &["count", "first", "last", "rate"],
        ),
        view("triples", "count", &["device"], &["count", "mean"]),
    ];
    config
}

async fn publisher(gateway: &Gateway) -> Publisher {
    json_publisher(gateway.broker(), "json-pub")
}

async fn send(client: &Publisher, device: &str, ts: i64, power: f64) {
    send_reading(client, device, "power", ts, power).await;
}

async fn live(gateway: &Gateway, query: &str) -> serde_json::Value {
    let addr = gateway.http_addr().expect("http");
    let token = admin_token(gateway.data_dir());
    let (status, body) = http_get_as(addr, &format!("/api/live?{query}"), &token).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_queries_answer_open_windows_by_hierarchy_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = Gateway::start(config(dir.path())).await.expect("starts");
    let client = publisher(&gateway).await;
    let mut n = 0;
    for i in 0..100i64 {
        for (device, base) in [("m1", 10.0), ("m2", 20.0), ("m3", 40.0)] {
            send(&client, device, T0 + i * 100, base + (i % 10) as f64).await;
            n += 1;
        }
    }
    wait_committed(&gateway, n).await;

    let started = Instant::now();
    let site = live(&gateway, "view=site&prefix=plant-1&metric=power").await;
    let took = started.elapsed();
    let rows = site["windows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{site}");
    let row = &rows[0];
    assert_eq!(row["group"], "plant-1");
    assert_eq!(row["metric"], "power");
    assert_eq!(row["count"], 200.0);
    // m1 and m2: 100 samples each, (10 + 20) + 2 * (0..10 repeated) = 3000 + 900.
    assert_eq!(row["sum"], 3900.0);
    let p99 = row["p99"].as_f64().expect("p99");
    assert!((p99 - 29.0).abs() <= 0.01 * 29.0, "{p99}");
    assert_eq!(row["max"], 29.0);
    println!("live query over the site level answered in {took:?}");

    // The default view: one open window per series, by device prefix.
    let default = live(&gateway, "view=default&prefix=m").await;
    assert_eq!(default["windows"].as_array().expect("rows").len(), 3);
    // All published views for one device.
    let all = live(&gateway, "prefix=m3").await;
    let views: Vec<&str> = all["windows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["view"].as_str())
        .collect();
    assert!(
        views.contains(&"default") && views.contains(&"bursts"),
        "{views:?}"
    );
    // Bad parameters are refused with a reason.
    let token = admin_token(gateway.data_dir());
    let (status, body) = http_get_as(
        gateway.http_addr().expect("http"),
        "/api/live?limit=0",
        &token,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_publish_sessions_and_count_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = Gateway::start(config(dir.path())).await.expect("starts");
    let url = format!("mqtt://{}:{}", gateway.broker().host, gateway.broker().port);
    let mut views = Collector::start(&url, "views", "eddy/v1/view/#").await;
    let mut late = Collector::start(&url, "late", "eddy/v1/late/#").await;
    let client = publisher(&gateway).await;
    // A burst of four samples, a pause longer than the 2 s gap, then one
    // more to move the watermark.
    for (i, v) in [1.0, 2.0, 4.0, 7.0].iter().enumerate() {
        send(&client, "m1", T0 + i as i64 * 500, *v).await;
    }
    send(&client, "m1", T0 + 10_000, 0.0).await;
    let seen = wait_until(Duration::from_secs(10), || {
        views
            .drain()
            .iter()
            .any(|(t, _)| t.starts_with("eddy/v1/view/bursts/"))
    })
    .await;
    assert!(seen, "no session published");
    let published = views.json();
    let burst = published
        .iter()
        .find(|v| v["view"] == "bursts")
        .expect("session");
    assert_eq!(burst["group"], "m1");
    assert_eq!(burst["count"], 4.0);
    assert_eq!(
        (burst["first"].clone(), burst["last"].clone()),
        (1.0.into(), 7.0.into())
    );
    assert_eq!(burst["rate"], 4.0, "6 over 1.5 s");
    assert_eq!(burst["start"], T0);
    assert_eq!(burst["end"], T0 + 1500 + 2000);
    let triples: Vec<_> = published
        .iter()
        .filter(|v| v["view"] == "triples")
        .collect();
    assert_eq!(triples.len(), 1, "five samples: one window of three");
    assert_eq!(triples[0]["mean"], 7.0 / 3.0);
    assert_eq!(triples[0]["metric"], serde_json::Value::Null);

    // A sample a minute behind its device's watermark: on the late output,
    // counted, and stored all the same.
    send(&client, "m1", T0 - 60_000, 99.0).await;
    assert!(
        wait_until(Duration::from_secs(10), || !late.drain().is_empty()).await,
        "nothing on the late output"
    );
    let first = late.json().remove(0);
    assert_eq!(first["device"], "m1");
    assert_eq!(first["ts"], T0 - 60_000);
    assert_eq!(first["value"], 99.0);
    assert!(gateway.stats().snapshot().samples_late >= 1);
    wait_committed(&gateway, 6).await;
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_windows_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = Gateway::start(config(dir.path())).await.expect("starts");
    let client = publisher(&gateway).await;
    for i in 0..10 {
        send(&client, "m1", T0 + i * 1000, 1.0).await;
    }
    wait_committed(&gateway, 10).await;
    gateway.shutdown().await.expect("clean shutdown");
    drop(client);

    // Restarted: the window [T0, T0 + 60 s) is still open with its ten
    // samples, and new samples join it.
    let gateway = Gateway::start(config(dir.path())).await.expect("restarts");
    let client = publisher(&gateway).await;
    for i in 10..15 {
        send(&client, "m1", T0 + i * 1000, 1.0).await;
    }
    wait_committed(&gateway, 5).await;
    let rows = live(&gateway, "view=default&prefix=m1").await;
    let rows = rows["windows"].as_array().expect("rows").clone();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["count"], 15.0, "{rows:?}");
    gateway.shutdown().await.expect("clean shutdown");

    // A crash (no snapshot at shutdown): the last snapshot plus the
    // samples stored after it rebuild the same state. Simulated by
    // rolling the snapshot back to the one taken before these samples.
    let store_path = dir.path().join("data").join(eddy_gateway::STORE_FILE);
    let store = eddy_gateway::store::Store::open(&store_path).expect("store");
    let (offset, _) = store.load_snapshot().expect("read").expect("a snapshot");
    assert_eq!(offset, 15, "the shutdown snapshot covers every sample");
    let (engine_config, rules) = config(dir.path()).engine();
    let early = eddy_analytics::Engine::new(engine_config, rules)
        .expect("engine")
        .snapshot()
        .expect("empty snapshot");
    store.save_snapshot(0, &early).expect("rolled back");
    drop(store);
    let gateway = Gateway::start(config(dir.path())).await.expect("restarts");
    let rows = live(&gateway, "view=default&prefix=m1").await;
    assert_eq!(rows["windows"][0]["count"], 15.0, "{rows}");
    gateway.shutdown().await.expect("clean shutdown");
}
