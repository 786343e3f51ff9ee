//! Alert rules in a running gateway: hot reload from a rules directory
//! while ingest goes on, the rules API and its persistence, alert state
//! across a restart without a second notification, webhooks against a
//! server that is down and then up, and a device command acted on by a
//! simulated device.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{json_publisher, send_reading, test_config, wait_committed};
use eddy_firmware_host::{FleetConfig, run_fleet};
use eddy_gateway::Gateway;
use eddy_gateway::config::{BrokerUrl, Config};
use eddy_test_support::http::{admin_token, api_call, http_get_as};
use eddy_test_support::mqtt::Collector;
use eddy_test_support::mqtt::{Publisher, send_json};
use eddy_test_support::{Mosquitto, free_port, wait_until};
use hyper::Method;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const HOT_SQL: &str = "SELECT device, avg(temperature) FROM telemetry \
                       GROUP BY device, TUMBLING(INTERVAL '1' SECOND) HAVING avg(temperature) > 50";

/// Sends `value` as `device`'s temperature at wall-clock time, every
/// 50 ms, until stopped; counts what it sent.
struct Feeder {
    value: Arc<Mutex<f64>>,
    sent: Arc<Mutex<u64>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Feeder {
    fn start(client: Publisher, device: &'static str, value: f64) -> Self {
        let value = Arc::new(Mutex::new(value));
        let sent = Arc::new(Mutex::new(0));
        let stop = CancellationToken::new();
        let (v, n, s) = (value.clone(), sent.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.is_cancelled() {
                let current = *v.lock().expect("value");
                send_reading(&client, device, "temperature", now_ms(), current).await;
                *n.lock().expect("count") += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self {
            value,
            sent,
            stop,
            task,
        }
    }

    fn set(&self, v: f64) {
        *self.value.lock().expect("value") = v;
    }

    async fn stop(self) -> u64 {
        self.stop.cancel();
        let _ = self.task.await;
        *self.sent.lock().expect("count")
    }
}

/// Alert notifications on the collector: (rule, device, state).
fn notifications(collector: &mut Collector) -> Vec<(String, String, String)> {
    collector
        .json()
        .iter()
        .map(|v| {
            (
                v["rule"].as_str().unwrap_or("").to_string(),
                v["device"].as_str().unwrap_or("").to_string(),
                v["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn wait_for(collector: &mut Collector, rule: &str, state: &str, at_least: usize) -> bool {
    wait_until(Duration::from_secs(15), || {
        notifications(collector)
            .iter()
            .filter(|(r, _, s)| r == rule && s == state)
            .count()
            >= at_least
    })
    .await
}

/// An API call with the gateway's admin token.
async fn api(gateway: &Gateway, method: Method, path: &str, body: &str) -> (u16, Value) {
    let addr = gateway.http_addr().expect("http");
    let token = admin_token(gateway.data_dir());
    let (status, body) = api_call(addr, method, path, &token, body.as_bytes()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn base_config(dir: &Path) -> Config {
    let mut config = test_config(dir.join("data"), None);
    config.rules.clear();
    config.engine.allowed_lateness = Duration::from_millis(500);
    config.alerts.reload_every = Duration::from_millis(200);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_files_reload_while_ingest_goes_on_and_an_invalid_change_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("rules dir");
    std::fs::write(
        rules.join("cold.toml"),
        "[[rules]]\nname = \"cold\"\nmetric = \"temperature\"\nwindow = \"1s\"\naggregate = \"mean\"\nbelow = -100\n",
    )
    .expect("write");
    let mut config = base_config(dir.path());
    config.alerts.rules_dir = Some(rules.clone());
    let gateway = Gateway::start(config).await.expect("starts");
    let broker = gateway.broker().clone();
    let url = format!("mqtt://{}:{}", broker.host, broker.port);
    let mut alerts = Collector::start(&url, "alerts", "eddy/v1/alerts/#").await;
    let feeder = Feeder::start(json_publisher(&broker, "feeder"), "d1", 60.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(notifications(&mut alerts).is_empty(), "no rule for 60 yet");

    // A valid new file: its rule runs without a restart.
    std::fs::write(
        rules.join("hot.toml"),
        format!("[[rules]]\nname = \"hot\"\nsql = \"{HOT_SQL}\"\n"),
    )
    .expect("write");
    assert!(wait_for(&mut alerts, "hot", "firing", 1).await, "hot fired");
    assert!(gateway.stats().snapshot().rules_reloaded >= 1);

    // An invalid change is refused; the running rules keep firing.
    std::fs::write(
        rules.join("broken.toml"),
        "[[rules]]\nname = \"broken\"\nsql = \"SELECT nonsense\"\n",
    )
    .expect("write");
    let stats = gateway.stats().clone();
    assert!(
        wait_until(Duration::from_secs(5), || stats.snapshot().rules_refused
            >= 1)
        .await,
        "the broken file was refused"
    );
    let (status, listed) = api(&gateway, Method::GET, "/api/rules", "").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, vec!["cold", "hot"], "{listed}");
    feeder.set(10.0);
    assert!(wait_for(&mut alerts, "hot", "resolved", 1).await);
    feeder.set(70.0);
    assert!(
        wait_for(&mut alerts, "hot", "firing", 2).await,
        "the old set still fires after the refused change"
    );
    // Fixing the file applies it; removing one drops its rule.
    std::fs::remove_file(rules.join("broken.toml")).expect("rm");
    std::fs::remove_file(rules.join("cold.toml")).expect("rm");
    let addr = gateway.http_addr().expect("http");
    let token = admin_token(gateway.data_dir());
    assert!(
        wait_until(Duration::from_secs(5), || {
            let body = rules_listing(addr, &token);
            body.contains("\"hot\"") && !body.contains("\"cold\"")
        })
        .await
    );

    let sent = feeder.stop().await;
    wait_committed(&gateway, sent).await;
    assert_eq!(
        gateway.stats().snapshot().samples_committed,
        sent,
        "no sample lost or doubled across the reloads"
    );
    gateway.shutdown().await.expect("clean shutdown");
}

/// `GET /api/rules` from a sync closure (a blocking thread).
fn rules_listing(addr: std::net::SocketAddr, token: &str) -> String {
    let token = token.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(http_get_as(addr, "/api/rules", &token)).1)
            .unwrap_or_default()
    })
    .join()
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rules_persist_and_a_firing_alert_survives_a_restart_without_a_second_notification() {
    let mut mosquitto = Mosquitto::start().expect("mosquitto starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = base_config(dir.path());
    config.broker.url = Some(mosquitto.url());
    config.rules = vec![eddy_gateway::config::RuleConfig::above(
        "from-config",
        "humidity",
        Duration::from_secs(1),
        eddy_analytics::Aggregate::Max,
        99.0,
    )];
    let gateway = Gateway::start(config.clone()).await.expect("starts");
    let mut alerts = Collector::start(&mosquitto.url(), "alerts", "eddy/v1/alerts/#").await;

    // The API: create, refuse invalid ones with their place, protect
    // rules defined in files.
    let body = serde_json::json!({ "sql": HOT_SQL, "severity": "critical", "for": "1s" });
    let (status, created) = api(&gateway, Method::PUT, "/api/rules/hot", &body.to_string()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["origin"], "api");
    let bad = serde_json::json!({ "sql": "SELECT avg(t) FROM telemetry GROUP BY TUMBLING(INTERVAL '1' SECOND) HAVING avg(t) >>> 3" });
    let (status, refused) = api(&gateway, Method::PUT, "/api/rules/bad", &bad.to_string()).await;
    assert_eq!(status, 400);
    let message = refused["error"].as_str().unwrap_or("");
    assert!(
        message.contains("rule `bad`") && message.contains("sql: line 1, column 85"),
        "{refused}"
    );
    let (status, _) = api(&gateway, Method::PUT, "/api/rules/x", "{\"abov\": 3}").await;
    assert_eq!(status, 400);
    let (status, conflict) = api(
        &gateway,
        Method::PUT,
        "/api/rules/from-config",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    let (status, _) = api(&gateway, Method::DELETE, "/api/rules/from-config", "").await;
    assert_eq!(status, 409);
    let (status, _) = api(&gateway, Method::DELETE, "/api/rules/nothing", "").await;
    assert_eq!(status, 404);

    let broker = BrokerUrl::parse(&mosquitto.url()).expect("url");
    let feeder = Feeder::start(json_publisher(&broker, "feeder"), "d1", 80.0);
    assert!(wait_for(&mut alerts, "hot", "firing", 1).await);
    let (_, active) = api(&gateway, Method::GET, "/api/alerts", "").await;
    let rows = active.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{active}");
    assert_eq!(rows[0]["rule"], "hot");
    assert_eq!(rows[0]["group"], "d1");
    assert_eq!(rows[0]["state"], "firing");
    assert_eq!(rows[0]["severity"], "critical");
    gateway.shutdown().await.expect("clean shutdown");

    // Down for a while, data keeps coming (the broker holds it), then up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gateway = Gateway::start(config).await.expect("restarts");
    let (_, listed) = api(&gateway, Method::GET, "/api/rules/hot", "").await;
    assert_eq!(listed["origin"], "api", "the API rule persisted: {listed}");
    let (_, active) = api(&gateway, Method::GET, "/api/alerts", "").await;
    assert_eq!(active[0]["state"], "firing", "restored: {active}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let firing = notifications(&mut alerts)
        .iter()
        .filter(|(r, _, s)| r == "hot" && s == "firing")
        .count();
    assert_eq!(firing, 1, "no second notification after the restart");
    feeder.set(20.0);
    assert!(wait_for(&mut alerts, "hot", "resolved", 1).await);
    let (_, history) = api(&gateway, Method::GET, "/api/alerts/history?limit=10", "").await;
    let states: Vec<&str> = history
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["state"].as_str())
        .collect();
    assert_eq!(
        states,
        vec!["resolved", "firing"],
        "newest first: {history}"
    );

    let (status, _) = api(&gateway, Method::DELETE, "/api/rules/hot", "").await;
    assert_eq!(status, 204);
    feeder.stop().await;
    gateway.shutdown().await.expect("clean shutdown");
    mosquitto.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_retry_while_the_server_is_down_and_deliver_once_it_is_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("a free port");
    let mut config = base_config(dir.path());
    config.alerts.webhook_backoff = Duration::from_millis(200);
    config.alerts.webhook_max_backoff = Duration::from_millis(400);
    config.alerts.webhook_attempts = 50;
    config.alerts.webhook_allow = vec![format!("http://127.0.0.1:{port}/hooks/")];
    config.rules = eddy_gateway::rules::parse_file(
        "inline",
        &format!(
            "[[rules]]\nname = \"hot\"\nsql = \"{HOT_SQL}\"\n\
             actions = [{{ type = \"webhook\", url = \"http://127.0.0.1:{port}/hooks/eddy\" }}]\n"
        ),
    )
    .expect("rule");
    let gateway = Gateway::start(config).await.expect("starts");
    let feeder = Feeder::start(json_publisher(gateway.broker(), "feeder"), "d1", 90.0);
    let stats = gateway.stats().clone();
    assert!(
        wait_until(Duration::from_secs(15), || stats
            .snapshot()
            .webhooks_retried
            >= 3)
        .await,
        "retrying while nothing listens"
    );
    assert_eq!(stats.snapshot().webhooks_sent, 0);

    // The server comes up.
    let received: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hooks/{name}",
        axum::routing::post(
            move |axum::extract::Path(name): axum::extract::Path<String>, body: String| {
                let sink = sink.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    sink.lock().expect("sink").push((name, v));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    assert!(
        wait_until(Duration::from_secs(10), || !received
            .lock()
            .expect("received")
            .is_empty())
        .await,
        "delivered once the server is up"
    );
    {
        let got = received.lock().expect("received");
        let (path, alert) = &got[0];
        assert_eq!(path, "eddy");
        assert_eq!(alert["rule"], "hot");
        assert_eq!(alert["device"], "d1");
        assert_eq!(alert["state"], "firing");
        assert_eq!(alert["value"].as_f64(), Some(90.0));
    }
    assert_eq!(stats.snapshot().webhooks_sent, 1);
    assert_eq!(stats.snapshot().webhooks_failed, 0);
    feeder.stop().await;
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_command_reaches_a_simulated_device_which_switches_its_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = base_config(dir.path());
    // The fan (pin 3) goes on while the device runs hot, off after.
    config.rules = eddy_gateway::rules::parse_file(
        "inline",
        "[[rules]]\nname = \"fan\"\nmetric = \"temperature\"\nwindow = \"1s\"\n\
         aggregate = \"mean\"\nabove = 50\nclear_below = 45\n\
         actions = [\n\
           { type = \"mqtt\" },\n\
           { type = \"command\", command = \"set_output\", pin = 3, on = true },\n\
           { type = \"command\", command = \"set_output\", pin = 3, on = false, when = \"resolved\" },\n\
         ]\n",
    )
    .expect("rule");
    let gateway = Gateway::start(config).await.expect("starts");
    let broker = gateway.broker().clone();
    // Device 0 runs hot from 1 s to 4 s; device 1 never.
    let fleet = FleetConfig {
        devices: 2,
        rate_hz: 20.0,
        duration: Duration::from_secs(8),
        host: broker.host.clone(),
        port: broker.port,
        hot_every: Some(2),
        ..FleetConfig::default()
    };
    let report = run_fleet(fleet, CancellationToken::new())
        .await
        .expect("fleet ran");
    wait_committed(&gateway, report.readings_sent()).await;
    assert!(gateway.stats().snapshot().commands_sent >= 2);
    // The outputs each device reported, in order.
    let mut outputs: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    gateway
        .store()
        .for_each_sample(|_, s| {
            if s.metric == "outputs" {
                outputs.entry(s.device.clone()).or_default().push(s.value);
            }
        })
        .expect("read");
    let hot = &outputs["sim-0000"];
    let on = hot.iter().position(|v| *v == 8.0).expect("the fan went on");
    assert!(
        hot[on..].contains(&0.0),
        "and off once the device cooled: {hot:?}"
    );
    assert!(
        outputs["sim-0001"].iter().all(|v| *v == 0.0),
        "the healthy device was left alone"
    );
    let applied: u32 = report.devices.iter().map(|d| d.commands_applied).sum();
    assert_eq!(applied, 2, "on, then off");
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_over_two_metrics_fires_for_the_device_that_sends_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = base_config(dir.path());
    // The shorthand in eddy.toml: hot and humid in the same window.
    config.rules = vec![
        toml::from_str(
            r#"
name = "muggy"
window = "1s"
aggregate = "mean"
all = [
  { metric = "temperature", above = 30 },
  { metric = "humidity", above = 80 },
]
"#,
        )
        .expect("a rule"),
    ];
    let gateway = Gateway::start(config).await.expect("starts");
    let broker = gateway.broker().clone();
    let url = format!("mqtt://{}:{}", broker.host, broker.port);
    let mut alerts = Collector::start(&url, "alerts", "eddy/v1/alerts/#").await;
    // And SQL through the API: power from two metrics.
    let power = serde_json::json!({
        "sql": "SELECT device, avg(voltage) * avg(current) AS power FROM telemetry \
                GROUP BY device, TUMBLING(INTERVAL '1' SECOND) HAVING power > 2000"
    });
    let (status, created) = api(
        &gateway,
        Method::PUT,
        "/api/rules/power",
        &power.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{created}");

    // d1 is hot and humid, d2 hot with no humidity at all (UNKNOWN: no
    // alert), m1 draws 230 V x 10 A.
    let client = json_publisher(&broker, "feeder");
    let stop = CancellationToken::new();
    let feeding = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let ts = now_ms();
                let readings = [
                    (
                        "d1",
                        serde_json::json!({ "temperature": 35.0, "humidity": 90.0, "ts": ts }),
                    ),
                    ("d2", serde_json::json!({ "temperature": 35.0, "ts": ts })),
                    (
                        "m1",
                        serde_json::json!({ "voltage": 230.0, "current": 10.0, "ts": ts }),
                    ),
                ];
                for (device, payload) in &readings {
                    send_json(&client, device, payload).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    assert!(
        wait_for(&mut alerts, "muggy", "firing", 1).await,
        "muggy fired"
    );
    assert!(
        wait_for(&mut alerts, "power", "firing", 1).await,
        "power fired"
    );
    // A few more windows: d2 never fires.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.cancel();
    let _ = feeding.await;
    let fired: Vec<(String, String)> = notifications(&mut alerts)
        .into_iter()
        .filter(|(_, _, s)| s == "firing")
        .map(|(r, d, _)| (r, d))
        .collect();
    assert!(
        fired.iter().all(|(r, d)| match r.as_str() {
            "muggy" => d == "d1",
            "power" => d == "m1",
            _ => false,
        }),
        "{fired:?}"
    );
    let (_, standing) = api(&gateway, Method::GET, "/api/alerts", "").await;
    assert!(standing.to_string().contains("muggy"), "{standing}");
    gateway.shutdown().await.expect("clean shutdown");
}
