//! Readings posted over HTTP and line protocol over MQTT: answered only
//! after the commit, each bad line or record named, a body limit, a
//! token, and back-pressure answered `503` with `Retry-After`.

use std::time::Duration;

use crate::common::*;
use eddy_gateway::Gateway;
use eddy_gateway::config::Config;
use eddy_mqtt::QoS;
use eddy_test_support::http::{http_post, scrape};

/// 2024-03-01T12:00:00Z in Unix milliseconds.
const T: i64 = 1_709_294_400_000;

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("JSON answer ({e}): {}", String::from_utf8_lossy(body));
    })
}

/// (device, metric, ts_ms, value) of everything stored now, sorted.
async fn stored(gateway: &Gateway) -> Vec<(String, String, i64, f64)> {
    let mut rows: Vec<_> = stored_samples(gateway)
        .await
        .into_iter()
        .map(|s| (s.device, s.metric, s.ts_ms, s.value))
        .collect();
    rows.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    rows
}

fn row(d: &str, m: &str, ts: i64, v: f64) -> (String, String, i64, f64) {
    (d.into(), m.into(), ts, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_readings_are_answered_after_their_commit() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(data.path().to_path_buf(), None);
    config.http.max_body_bytes = 4096;
    config.http.path_tags = vec!["site".into()];
    config.ingest.topics.push(
        toml::from_str(
            r#"filter = "telegraf/+"
format = "line_protocol"
device_level = 1
device_tag = "host"
precision = "ms""#,
        )
        .expect("mapping"),
    );
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let http = gateway.http_addr().expect("http");
    let json_type = [("content-type", "application/json")];

    // JSON for one device: stored when the answer comes, not later.
    let a = http_post(
        http,
        "/api/devices/st-1/telemetry",
        &json_type,
        format!(r#"{{"temperature": 21.5, "state": "ok", "ts": {T}}}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let reply = json(&a.body);
    assert_eq!(reply["stored"], 1);
    assert_eq!(reply["dropped"][0]["reason"], "not_a_number");
    assert_eq!(
        stored(&gateway).await,
        vec![row("st-1", "temperature", T, 21.5)]
    );

    // SenML by its content type.
    let a = http_post(
        http,
        "/api/devices/meter-2/telemetry",
        &[("content-type", "application/senml+json")],
        format!(r#"[{{"bt": {}, "n": "voltage", "v": 230.5}}]"#, T / 1000),
    )
    .await;
    assert_eq!(a.status, 200);

    // InfluxDB 1.x: a partial write names each line not taken.
    let a = http_post(
        http,
        "/write?db=x&precision=s",
        &[],
        format!(
            "env,device=st-3,site=north,probe=a temp=19.5 {s}\nenv,device=st-3 temp=\nenv temp=3 {s}\n",
            s = T / 1000
        ),
    )
    .await;
    assert_eq!(a.status, 400);
    let reply = json(&a.body);
    assert_eq!(reply["stored"], 1);
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("partial write")),
        "{reply}"
    );
    let dropped: Vec<(String, String, String)> = reply["dropped"]
        .as_array()
        .expect("dropped")
        .iter()
        .map(|d| {
            (
                d["field"].as_str().unwrap_or("").into(),
                d["reason"].as_str().unwrap_or("").into(),
                d["text"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        dropped,
        vec![
            (
                "line 2".into(),
                "bad_line".into(),
                "env,device=st-3 temp=".into()
            ),
            (
                "line 3".into(),
                "no_device".into(),
                format!("env temp=3 {}", T / 1000)
            ),
        ]
    );

    // InfluxDB 2.x: all good, 204.
    let a = http_post(
        http,
        "/api/v2/write?org=o&bucket=b&precision=ms",
        &[],
        format!("env,device=st-4 temp=18,hum=40i {T}"),
    )
    .await;
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));

    // Refused whole: bad JSON, a body over the limit, a bad precision.
    let a = http_post(http, "/api/devices/st-1/telemetry", &json_type, "{not json").await;
    assert_eq!(a.status, 400);
    assert!(
        json(&a.body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("JSON"))
    );
    let big = format!(r#"{{"t": 1, "pad": "{}"}}"#, "x".repeat(5000));
    let a = http_post(http, "/api/devices/st-1/telemetry", &json_type, big).await;
    assert_eq!(a.status, 413);
    let a = http_post(http, "/write?precision=h", &[], "m,device=x v=1").await;
    assert_eq!(a.status, 400);

    // Line protocol over MQTT: the tag names the device, the topic's
    // device serves lines without it.
    let client = json_publisher(gateway.broker(), "telegraf");
    client
        .publish(
            "telegraf/gw-7",
            QoS::AtLeastOnce,
            false,
            format!("cpu,host=box-1,cpu=cpu0 usage=12.5 {T}\ncpu,cpu=cpu1 usage=3 {T}")
                .into_bytes(),
        )
        .await
        .expect("queued");
    wait_committed(&gateway, 7).await;

    let mut want = vec![
        row("st-1", "temperature", T, 21.5),
        row("meter-2", "voltage", T, 230.5),
        row("st-3", "env.a.temp", T, 19.5),
        row("st-4", "env.temp", T, 18.0),
        row("st-4", "env.hum", T, 40.0),
        row("box-1", "cpu.cpu0.usage", T, 12.5),
        row("gw-7", "cpu.cpu1.usage", T, 3.0),
    ];
    want.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    assert_eq!(stored(&gateway).await, want);

    for (name, n) in [
        ("eddy_http_ingest_ok_total", 3),
        ("eddy_http_ingest_bad_total", 4),
        ("eddy_values_dropped_total{reason=\"bad_line\"}", 1),
        ("eddy_values_dropped_total{reason=\"no_device\"}", 1),
        ("eddy_messages_refused_total{reason=\"bad_json\"}", 1),
    ] {
        assert_eq!(scrape(http, name).await, Some(n), "{name}");
    }
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_needs_its_token_and_pushes_back() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(data.path().to_path_buf(), None);
    let token = "s3cret-token-of-the-line";
    config.http.ingest_token = Some(token.into());
    config.http.max_pending_requests = 1;
    config.ingest.batch_delay = Duration::from_millis(1500);
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let http = gateway.http_addr().expect("http");
    let line = format!("m,device=d v=1 {T}");

    for auth in [None, Some("Bearer wrong-token-of-the-line")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let a = http_post(http, "/api/telemetry?precision=ms", &headers, line.clone()).await;
        assert_eq!(a.status, 401);
        assert!(a.headers.contains_key("www-authenticate"));
    }
    assert!(stored(&gateway).await.is_empty());

    // One request waits for its batch (1.5 s); a second one meanwhile is
    // told to come back.
    let bearer = format!("Bearer {token}");
    let first = {
        let (line, bearer) = (line.clone(), bearer.clone());
        tokio::spawn(async move {
            http_post(
                http,
                "/api/telemetry?precision=ms",
                &[("authorization", bearer.as_str())],
                line,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = http_post(
        http,
        "/api/v2/write?precision=ms",
        &[("authorization", &format!("Token {token}"))],
        format!("m,device=e v=2 {T}"),
    )
    .await;
    assert_eq!(second.status, 503);
    assert_eq!(
        second
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let first = first.await.expect("first request");
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(stored(&gateway).await, vec![row("d", "m.v", T, 1.0)]);
    assert_eq!(
        scrape(http, "eddy_http_ingest_unauthorized_total").await,
        Some(2)
    );
    assert_eq!(scrape(http, "eddy_http_ingest_busy_total").await, Some(1));
    gateway.shutdown().await.expect("clean shutdown");

    // Reachable from the network without a token: refused at start.
    let refused = Config::parse("[http]\nlisten = \"0.0.0.0:8080\"\n").expect_err("refused");
    assert!(
        refused.to_string().contains("http.ingest_token"),
        "{refused}"
    );
    Config::parse("[http]\nlisten = \"0.0.0.0:8080\"\ningest = false\n").expect("explicitly off");
}
