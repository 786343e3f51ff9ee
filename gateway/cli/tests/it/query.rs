//! `eddy query`: polars SQL over a store's samples, as a table, CSV and
//! Parquet; bad SQL and bad options are clear errors.

#![cfg(feature = "query")]

use std::path::Path;
use std::process::{Command, Output};

use eddy_gateway::store::{Batch, Limits, Store, StoredSample};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Three devices, 10 temperature samples each (values 0..9 plus 10 x the
/// device number), the first five of each two hours old.
fn store(dir: &Path) {
    let store = Store::open(&dir.join(eddy_gateway::STORE_FILE)).expect("store");
    let now = now_ms();
    let samples = (0..3)
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
    let batch = Batch {
        samples,
        outbox: Vec::new(),
        devices: Vec::new(),
        alerts: Vec::new(),
    };
    store.commit_batch(&batch, Limits::NONE).expect("committed");
}

fn query(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("query")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("eddy runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sql_over_stored_samples_as_csv_table_and_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    store(dir.path());
    let sql = "SELECT device, count(*) AS n, avg(value) AS mean, max(seq) AS last_seq \
               FROM samples WHERE metric = 'temperature' GROUP BY device ORDER BY device";
    let csv = stdout(&query(dir.path(), &["--sql", sql, "--format", "csv"]));
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        [
            "device,n,mean,last_seq",
            "dev-0,10,4.5,9",
            "dev-1,10,14.5,",
            "dev-2,10,24.5,"
        ]
    );
    let table = stdout(&query(dir.path(), &["--sql", sql]));
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
    let recent = stdout(&query(
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
    let out = query(
        dir.path(),
        &["--sql", "SELECT * FROM samples", "--format", "parquet"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
    let file = dir.path().join("samples.parquet");
    stdout(&query(
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
fn bad_sql_and_options_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    store(dir.path());
    for (args, expected) in [
        (vec!["--sql", "SELEC nonsense"], "query:"),
        (vec!["--sql", "SELECT nope FROM samples"], "nope"),
        (vec!["--sql", "SELECT 1", "--format", "xml"], "--format xml"),
        (vec!["--sql", "SELECT 1", "--since", "5 parsecs"], "unit"),
    ] {
        let out = query(dir.path(), &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let empty = tempfile::tempdir().expect("tempdir");
    let out = query(empty.path(), &["--sql", "SELECT 1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store"));
}
