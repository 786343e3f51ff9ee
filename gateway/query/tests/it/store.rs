//! `eddy-query` over a store file (no gateway running): polars SQL as a
//! table, CSV and Parquet; filters; bad SQL and bad options are clear
//! errors.

use std::path::Path;

use eddy_gateway::store::StoredSample;

use crate::common::{fixture, now_ms, oracle, query_dir, stdout, store};

/// Three devices, 10 temperature samples each (values 0..9 plus 10 x the
/// device number), the first five of each two hours old.
fn ten_each(dir: &Path) {
    let now = now_ms();
    let samples: Vec<StoredSample> = (0..3)
        .flat_map(|d| {
            (0..10).map(move |i| StoredSample {
                device: format!("dev-{d}"),
                metric: "temperature".into(),
                ts_ms: if i < 5 { now - 7_200_000 } else { now } + i,
                value: f64::from(10 * d + i as i32),
                frame: (d == 0).then_some((1, i as u32)),
            })
        })
        .collect();
    store(dir, &samples);
}

#[test]
fn store_sql_over_stored_samples_as_csv_table_and_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    ten_each(dir.path());
    let sql = "SELECT device, count(*) AS n, avg(value) AS mean, max(seq) AS last_seq \
               FROM samples WHERE metric = 'temperature' GROUP BY device ORDER BY device";
    let csv = stdout(&query_dir(dir.path(), &["--sql", sql, "--format", "csv"]));
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        [
            "device,n,mean,last_seq",
            "dev-0,10,4.5,9",
            "dev-1,10,14.5,",
            "dev-2,10,24.5,"
        ]
    );
    let table = stdout(&query_dir(dir.path(), &["--sql", sql]));
    assert!(table.starts_with("device"), "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("dev-2"))
        .expect("a dev-2 row")
        .split_whitespace()
        .collect();
    assert_eq!(row, ["dev-2", "10", "24.5"], "{table}");
    assert!(table.ends_with("(3 rows)\n"), "{table}");
    // --since keeps the recent half.
    let recent = stdout(&query_dir(
        dir.path(),
        &[
            "--sql",
            "SELECT count(*) AS n FROM samples",
            "--since",
            "1h",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(recent.lines().nth(1), Some("15"));
    // Parquet needs a file; it is one.
    let out = query_dir(
        dir.path(),
        &["--sql", "SELECT * FROM samples", "--format", "parquet"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
    let file = dir.path().join("samples.parquet");
    stdout(&query_dir(
        dir.path(),
        &[
            "--sql",
            "SELECT * FROM samples",
            "--format",
            "parquet",
            "--out",
            file.to_str().expect("utf-8"),
        ],
    ));
    let bytes = std::fs::read(&file).expect("written");
    assert_eq!(&bytes[..4], b"PAR1");
}

#[test]
fn store_filters_by_device_and_metric_as_polars_does_in_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let samples = fixture(40);
    store(dir.path(), &samples);
    let sql = "SELECT device, metric, count(*) AS n, sum(value) AS total, min(ts) AS first, \
               max(seq) AS last_seq FROM samples GROUP BY device, metric ORDER BY device, metric";
    let kept: Vec<StoredSample> = samples
        .iter()
        .filter(|s| s.device != "dev-1" && s.metric == "temperature")
        .cloned()
        .collect();
    let csv = stdout(&query_dir(
        dir.path(),
        &[
            "--sql",
            sql,
            "--format",
            "csv",
            "--device",
            "dev-0,dev-2",
            "--metric",
            "temperature",
        ],
    ));
    assert_eq!(csv, oracle(&kept, sql));
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let all = stdout(&query_dir(dir.path(), &["--sql", sql, "--format", "csv"]));
    assert_eq!(all, oracle(&samples, sql));
}

#[test]
fn store_bad_sql_and_options_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    ten_each(dir.path());
    for (args, expected) in [
        (vec!["--sql", "SELEC nonsense"], "query:"),
        (vec!["--sql", "SELECT nope FROM samples"], "nope"),
        (vec!["--sql", "SELECT 1", "--format", "xml"], "--format xml"),
        (vec!["--sql", "SELECT 1", "--since", "5 parsecs"], "unit"),
        (vec!["--sql", "SELECT 1", "--device", "a,,b"], "--device"),
    ] {
        let out = query_dir(dir.path(), &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let empty = tempfile::tempdir().expect("tempdir");
    let out = query_dir(empty.path(), &["--sql", "SELECT 1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store"));
}
