//! Fixtures: a store of known samples, the `eddy-query` binary run on
//! it, the `eddy` binary running a gateway on it, and polars over the
//! same samples in memory as the oracle.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use eddy_gateway::auth::ADMIN_TOKEN_FILE;
use eddy_gateway::store::{Batch, Limits, Store, StoredSample};
use eddy_test_support::free_port;
use eddy_test_support::process::GatewayProcess;
use polars::prelude::*;
use polars::sql::SQLContext;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Three devices, `per_device` temperature samples each (values i/4
/// plus 10 x the device number: sums are exact, whatever the order),
/// the first half of each two hours old; every fourth sample is
/// humidity instead; `dev-0` sends Eddy frames (boot 1, seq i).
pub fn fixture(per_device: usize) -> Vec<StoredSample> {
    let now = now_ms();
    (0..3)
        .flat_map(|d| {
            (0..per_device).map(move |i| StoredSample {
                device: format!("dev-{d}"),
                metric: if i % 4 == 3 {
                    "humidity"
                } else {
                    "temperature"
                }
                .into(),
                ts_ms: if i < per_device / 2 {
                    now - 7_200_000
                } else {
                    now
                } + i as i64,
                value: f64::from(10 * d) + i as f64 / 4.0,
                frame: (d == 0).then_some((1, i as u32)),
            })
        })
        .collect()
}

/// `samples` in a new store in `data_dir`.
pub fn store(data_dir: &Path, samples: &[StoredSample]) {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let store = Store::open(&data_dir.join(eddy_gateway::STORE_FILE)).expect("store");
    let batch = Batch {
        samples: samples.to_vec(),
        ..Batch::default()
    };
    store.commit_batch(&batch, Limits::NONE).expect("committed");
}

/// `eddy-query ARGS`.
pub fn query(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eddy-query"))
        .args(args)
        .output()
        .expect("eddy-query runs")
}

/// `eddy-query --data-dir DIR ARGS`.
pub fn query_dir(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_str().expect("utf-8");
    query(&[&["--data-dir", dir][..], args].concat())
}

/// Standard output of a run that succeeded.
pub fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sql` over `samples` in memory, as CSV: what `eddy query` computed
/// before it spooled (one table in memory, polars' in-memory engine).
pub fn oracle(samples: &[StoredSample], sql: &str) -> String {
    let frame = df!(
        "device" => samples.iter().map(|s| s.device.as_str()).collect::<Vec<_>>(),
        "metric" => samples.iter().map(|s| s.metric.as_str()).collect::<Vec<_>>(),
        "ts_ms" => samples.iter().map(|s| s.ts_ms).collect::<Vec<_>>(),
        "value" => samples.iter().map(|s| s.value).collect::<Vec<_>>(),
        "boot" => samples.iter().map(|s| s.frame.map(|f| f.0)).collect::<Vec<_>>(),
        "seq" => samples.iter().map(|s| s.frame.map(|f| f.1)).collect::<Vec<_>>(),
    )
    .expect("frame")
    .lazy()
    .with_column(
        col("ts_ms")
            .cast(DataType::Datetime(TimeUnit::Milliseconds, None))
            .alias("ts"),
    );
    let mut ctx = SQLContext::new();
    ctx.register("samples", frame);
    let mut result = ctx
        .execute(sql)
        .and_then(LazyFrame::collect)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut csv = Vec::new();
    CsvWriter::new(&mut csv)
        .finish(&mut result)
        .expect("csv written");
    String::from_utf8(csv).expect("utf-8")
}

/// A gateway's config in `dir`: the store in `dir/data`, the embedded
/// broker and the HTTP port on free ports.
pub struct GatewayConfig {
    pub path: PathBuf,
    pub broker: SocketAddr,
    pub http: SocketAddr,
}

impl GatewayConfig {
    pub fn write(dir: &Path) -> Self {
        let port = || free_port().expect("a free port");
        let broker = SocketAddr::from(([127, 0, 0, 1], port()));
        let http = SocketAddr::from(([127, 0, 0, 1], port()));
        let path = dir.join("eddy.toml");
        std::fs::write(
            &path,
            format!(
                "data_dir = {:?}\n[broker]\nlisten = \"{broker}\"\n[http]\nlisten = \"{http}\"\n",
                dir.join("data")
            ),
        )
        .expect("write config");
        Self { path, broker, http }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().expect("utf-8")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The admin token's file, which the gateway writes at its start.
    pub fn admin_token(&self) -> String {
        let path = self.path.with_file_name("data").join(ADMIN_TOKEN_FILE);
        path.to_str().expect("utf-8").to_string()
    }

    /// `eddy run --config` on it, once both ports listen: the `eddy`
    /// binary of this build, beside `eddy-query` (`cargo test -p
    /// eddy-query -p eddy-cli`, or the workspace, builds both).
    pub fn run(&self) -> GatewayProcess {
        let eddy = Path::new(env!("CARGO_BIN_EXE_eddy-query"))
            .with_file_name(format!("eddy{}", std::env::consts::EXE_SUFFIX));
        assert!(
            eddy.exists(),
            "{} is not built: these tests run it (cargo test -p eddy-query -p eddy-cli)",
            eddy.display()
        );
        GatewayProcess::start(&eddy, &self.path, &[self.broker, self.http]).expect("eddy starts")
    }
}

/// Stops `gateway` with SIGTERM and asserts it exited cleanly.
pub fn terminate(gateway: &mut GatewayProcess) {
    let status = gateway.terminate().expect("SIGTERM sent");
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop failed: {status:?}"
    );
}
