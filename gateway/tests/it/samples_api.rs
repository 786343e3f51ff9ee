//! `GET /api/samples`: the stored samples as an Arrow IPC stream, with
//! filters by time, device and metric; bad parameters are `400`.

use std::net::SocketAddr;
use std::time::Duration;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt32Type};
use arrow_ipc::reader::StreamReader;
use eddy_gateway::Gateway;
use eddy_gateway::samples::{BATCH_ROWS, CONTENT_TYPE};
use eddy_gateway::store::{Batch, Limits, Store, StoredSample};

use eddy_test_support::http::admin_token;

use crate::common::{start_subscribed, test_config};

const T0: i64 = 1_709_294_400_000; // 2024-03-01T12:00:00Z

/// `n` samples of devices `a`, `b`, `c` and metrics `temperature`,
/// `humidity`, one second apart from [`T0`]; device `a` sends Eddy
/// frames (boot 1, seq i).
fn samples(n: usize) -> Vec<StoredSample> {
    (0..n)
        .map(|i| StoredSample {
            device: ["a", "b", "c"][i % 3].to_string(),
            metric: ["temperature", "humidity"][i % 2].to_string(),
            ts_ms: T0 + 1000 * i as i64,
            value: i as f64 / 4.0,
            frame: (i % 3 == 0).then_some((1, i as u32)),
        })
        .collect()
}

/// A running gateway whose store holds [`samples`]`(n)`, its HTTP
/// address and its admin token.
async fn gateway_with(n: usize) -> (tempfile::TempDir, Gateway, SocketAddr, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start_subscribed(test_config(dir.path().to_path_buf(), None)).await;
    let http = gateway.http_addr().expect("http");
    let batch = Batch {
        samples: samples(n),
        ..Batch::default()
    };
    gateway
        .store()
        .commit_batch(&batch, Limits::NONE)
        .expect("committed");
    let token = admin_token(dir.path());
    (dir, gateway, http, token)
}

fn stored(store: &Store) -> Vec<StoredSample> {
    let mut all = Vec::new();
    store
        .for_each_sample(|_, s| all.push(s))
        .expect("store reads");
    all
}

/// What the gateway answers `token`: status, content type, body.
async fn get(http: SocketAddr, token: &str, path: &str) -> (u16, String, Vec<u8>) {
    let authorization = format!("Bearer {token}");
    let answer = eddy_gateway::client::send(
        &http.to_string(),
        hyper::Method::GET,
        path,
        &[("authorization", authorization.as_str())],
        Vec::new(),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let content_type = answer
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (answer.status, content_type, answer.body)
}

/// The samples of an Arrow IPC stream, and the size of each batch.
fn decode(stream: &[u8]) -> (Vec<StoredSample>, Vec<usize>) {
    let reader = StreamReader::try_new(stream, None).expect("an Arrow IPC stream");
    let names: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["device", "metric", "ts_ms", "value", "boot", "seq"]);
    let (mut out, mut sizes) = (Vec::new(), Vec::new());
    for batch in reader {
        let batch = batch.expect("a batch");
        sizes.push(batch.num_rows());
        let device = batch.column(0).as_string::<i32>();
        let metric = batch.column(1).as_string::<i32>();
        let ts = batch.column(2).as_primitive::<Int64Type>();
        let value = batch.column(3).as_primitive::<Float64Type>();
        let boot = batch.column(4).as_primitive::<UInt32Type>();
        let seq = batch.column(5).as_primitive::<UInt32Type>();
        for i in 0..batch.num_rows() {
            let frame = match (boot.is_valid(i), seq.is_valid(i)) {
                (true, true) => Some((boot.value(i), seq.value(i))),
                (false, false) => None,
                other => panic!("boot and seq disagree: {other:?}"),
            };
            out.push(StoredSample {
                device: device.value(i).to_string(),
                metric: metric.value(i).to_string(),
                ts_ms: ts.value(i),
                value: value.value(i),
                frame,
            });
        }
    }
    (out, sizes)
}

/// The samples `path` answers, checked to be a `200` Arrow stream.
async fn streamed(http: SocketAddr, token: &str, path: &str) -> (Vec<StoredSample>, Vec<usize>) {
    let (status, content_type, body) = get(http, token, path).await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, CONTENT_TYPE, "{path}");
    decode(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_api_streams_the_stored_samples_filtered_by_time_device_and_metric() {
    let (_dir, gateway, http, token) = gateway_with(300).await;
    let all = stored(gateway.store());
    assert_eq!(all.len(), 300);
    let only = |keep: &dyn Fn(&StoredSample) -> bool| -> Vec<StoredSample> {
        all.iter().filter(|s| keep(s)).cloned().collect()
    };
    let (from, to) = (T0 + 100_000, T0 + 200_000);
    let cases: Vec<(String, Vec<StoredSample>)> = vec![
        ("/api/samples".into(), all.clone()),
        (
            format!("/api/samples?from={from}&to={to}"),
            only(&|s| (from..to).contains(&s.ts_ms)),
        ),
        (
            // The same instants in RFC 3339, `+` encoded.
            "/api/samples?from=2024-03-01T12:01:40Z&to=2024-03-01T13:03:20%2B01:00".into(),
            only(&|s| (from..to).contains(&s.ts_ms)),
        ),
        (
            format!("/api/samples?from={from}"),
            only(&|s| s.ts_ms >= from),
        ),
        (
            "/api/samples?to=2024-03-01T12:00:10Z".into(),
            only(&|s| s.ts_ms < T0 + 10_000),
        ),
        (
            "/api/samples?device=a,c".into(),
            only(&|s| s.device == "a" || s.device == "c"),
        ),
        (
            "/api/samples?metric=humidity".into(),
            only(&|s| s.metric == "humidity"),
        ),
        (
            format!("/api/samples?device=b&metric=temperature,humidity&from={from}"),
            only(&|s| s.device == "b" && s.ts_ms >= from),
        ),
        ("/api/samples?device=nobody".into(), Vec::new()),
        (format!("/api/samples?from={}", T0 + 10_000_000), Vec::new()),
    ];
    for (path, expected) in cases {
        let (got, sizes) = streamed(http, &token, &path).await;
        assert!(
            !expected.is_empty() || sizes.is_empty(),
            "{path}: {sizes:?}"
        );
        assert_eq!(got.len(), expected.len(), "{path}");
        assert_eq!(got, expected, "{path}");
    }
    gateway.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_api_streams_a_range_of_many_batches() {
    let n = 5 * BATCH_ROWS + 123;
    let (_dir, gateway, http, token) = gateway_with(n).await;
    let (got, sizes) = streamed(http, &token, "/api/samples").await;
    assert_eq!(sizes.len(), 6, "{sizes:?}");
    assert!(sizes.iter().all(|s| *s <= BATCH_ROWS), "{sizes:?}");
    assert_eq!(got, stored(gateway.store()));
    // Filtered down, the batches are still full ones of the kept rows.
    let (a, sizes) = streamed(http, &token, "/api/samples?device=a").await;
    assert_eq!(a.len(), n.div_ceil(3));
    assert_eq!(sizes.len(), a.len().div_ceil(BATCH_ROWS), "{sizes:?}");
    gateway.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_api_refuses_bad_parameters_naming_them() {
    let (_dir, gateway, http, token) = gateway_with(10).await;
    for (query, named) in [
        ("from=yesterday", "from"),
        ("to=12:00", "to"),
        ("from=20&to=10", "from"),
        ("device=a,,b", "device"),
        ("metric=", "metric"),
        ("frm=1", "frm"),
    ] {
        let (status, content_type, body) =
            get(http, &token, &format!("/api/samples?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(content_type, "application/json", "{query}");
        let error: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let message = error["error"].as_str().expect("an error message");
        assert!(message.contains(named), "{query}: {message}");
    }
    gateway.shutdown().await.expect("clean stop");
}
