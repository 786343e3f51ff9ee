//! `eddy-query` while `eddy run` holds the store: over the gateway's
//! `GET /api/samples` (found through the config, or given with `--url`)
//! it answers what it answers over the stopped store, with the filters
//! pushed to the gateway; polars over the samples in memory agrees.

use eddy_gateway::samples::BATCH_ROWS;
use eddy_gateway::store::StoredSample;

use crate::common::{GatewayConfig, fixture, oracle, query, stdout, store, terminate};

/// The queries compared, as CSV.
const SQL: [&str; 3] = [
    "SELECT device, metric, count(*) AS n, avg(value) AS mean, max(seq) AS last_seq \
     FROM samples GROUP BY device, metric ORDER BY device, metric",
    "SELECT count(*) AS n, min(ts) AS first, max(ts_ms) AS last FROM samples",
    "SELECT * FROM samples ORDER BY device, ts_ms",
];

/// Filter options and the samples they keep.
fn filtered(samples: &[StoredSample]) -> (Vec<&'static str>, Vec<StoredSample>) {
    let since = crate::common::now_ms() - 3_600_000;
    let kept = samples
        .iter()
        .filter(|s| s.device != "dev-1" && s.metric == "temperature" && s.ts_ms >= since)
        .cloned()
        .collect();
    (
        vec![
            "--since",
            "1h",
            "--device",
            "dev-0,dev-2",
            "--metric",
            "temperature",
        ],
        kept,
    )
}

fn csv(args: &[&str], sql: &str, filters: &[&str]) -> (String, String) {
    let out = query(&[args, &["--sql", sql, "--format", "csv"][..], filters].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (stdout(&out), stderr)
}

#[test]
fn live_query_of_a_running_gateway_equals_the_stopped_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let samples = fixture(50);
    store(&dir.path().join("data"), &samples);
    let config = GatewayConfig::write(dir.path());
    let (filters, kept) = filtered(&samples);
    let by_config = ["--config", config.path()];

    // Stopped: the store file, as polars computes it in memory.
    let mut stopped = Vec::new();
    for sql in SQL {
        let (all, _) = csv(&by_config, sql, &[]);
        assert_eq!(all, oracle(&samples, sql), "{sql}");
        let (some, _) = csv(&by_config, sql, &filters);
        assert_eq!(some, oracle(&kept, sql), "{sql}");
        stopped.push((sql, all, some));
    }

    let mut gateway = config.run();
    let url = config.url();
    let token = config.admin_token();
    let by_url = ["--url", url.as_str(), "--token-file", token.as_str()];
    for (sql, all, some) in &stopped {
        // The config names the store, locked now: its HTTP port instead.
        let (running, note) = csv(&by_config, sql, &[]);
        assert_eq!(&running, all, "{sql}");
        assert!(note.contains("in use by a running gateway"), "{note}");
        assert!(note.contains(&url), "{note}");
        let (running, _) = csv(&by_config, sql, &filters);
        assert_eq!(&running, some, "{sql}");
        // --url: straight to the gateway.
        let (running, note) = csv(&by_url, sql, &[]);
        assert_eq!(&running, all, "{sql}");
        assert!(note.is_empty(), "{note}");
        let (running, _) = csv(&by_url, sql, &filters);
        assert_eq!(&running, some, "{sql}");
    }
    // Nothing kept is an empty table, not an error.
    let (none, _) = csv(&by_url, SQL[0], &["--device", "nobody"]);
    assert_eq!(none.lines().count(), 1, "{none}");
    terminate(&mut gateway);
}

#[test]
fn live_query_streams_a_range_of_many_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Over five batches of the stream per device.
    let samples = fixture(5 * BATCH_ROWS / 3 + 100);
    store(&dir.path().join("data"), &samples);
    let config = GatewayConfig::write(dir.path());
    let mut gateway = config.run();
    let url = config.url();
    let token = config.admin_token();
    let by_url = ["--url", url.as_str(), "--token-file", token.as_str()];
    let sql = "SELECT device, count(*) AS n, sum(value) AS total, min(ts_ms) AS first, \
               max(ts) AS last FROM samples GROUP BY device ORDER BY device";
    let (running, _) = csv(&by_url, sql, &[]);
    assert_eq!(running, oracle(&samples, sql));
    let kept: Vec<StoredSample> = samples
        .iter()
        .filter(|s| s.device == "dev-2")
        .cloned()
        .collect();
    let (running, _) = csv(&by_url, sql, &["--device", "dev-2"]);
    assert_eq!(running, oracle(&kept, sql));
    terminate(&mut gateway);
}

#[test]
fn live_query_without_a_token_is_refused_saying_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    store(&dir.path().join("data"), &fixture(2));
    let config = GatewayConfig::write(dir.path());
    let mut gateway = config.run();
    let url = config.url();
    let empty = tempfile::tempdir().expect("tempdir");
    let out = query(&[
        "--url",
        &url,
        "--data-dir",
        empty.path().to_str().expect("utf-8"),
        "--sql",
        "SELECT 1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    terminate(&mut gateway);
}

#[test]
fn live_query_of_no_gateway_is_a_clear_error() {
    let port = eddy_test_support::free_port().expect("a free port");
    let url = format!("http://127.0.0.1:{port}");
    let out = query(&["--url", &url, "--sql", "SELECT 1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach"), "{err}");
}
