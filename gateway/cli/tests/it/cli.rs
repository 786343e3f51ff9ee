//! The `eddy` binary at its edges: run, stop on Ctrl-C, bad configs, check.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use eddy_mqtt::{BrokerUrl, Connector};
use eddy_test_support::mqtt::burst;
use eddy_test_support::process::ChildGuard;

fn eddy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
}

#[test]
fn run_ingests_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("eddy.toml");
    std::fs::write(
        &config,
        "[broker]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write config");
    // Killed if the test fails early.
    let mut guard = ChildGuard::spawn(
        eddy()
            .args(["run", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .expect("eddy starts");
    let child = guard.get_mut().expect("running");

    // The log (stderr) says where the embedded broker listens. A reader
    // thread keeps the pipe drained, so the test never blocks on it.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let port: u16 = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no listening line in {log:?}"));
        let port = line
            .contains("MQTT broker listening")
            .then(|| line.split("addr=127.0.0.1:").nth(1))
            .flatten()
            .and_then(|p| p.trim().parse().ok());
        log.push(line);
        if let Some(port) = port {
            break port;
        }
    };

    // Publish JSON telemetry and wait for the broker's acknowledgements.
    let url = BrokerUrl::from(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let messages = (0..20)
        .map(|i| {
            let payload = format!("{{\"t\": {i}}}").into_bytes();
            ("eddy/v1/cli-dev/telemetry".to_string(), payload)
        })
        .collect();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(burst(&Connector::new(&url, "cli-test"), messages));
    std::thread::sleep(Duration::from_millis(500));

    // Ctrl-C: the gateway drains, commits and exits 0.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "eddy did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit {exit:?}");
    reader.join().expect("reader thread");
    log.extend(rx.try_iter());
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:?}");

    let store =
        eddy_gateway::store::Store::open(&dir.path().join("data").join(eddy_gateway::STORE_FILE))
            .expect("store reopens after a clean stop");
    assert_eq!(store.sample_count().expect("readable"), 20);
}

#[test]
fn a_bad_config_exits_non_zero_and_names_the_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("eddy.toml");
    std::fs::write(&config, "[engine]\nwindow = \"0s\"\n").expect("write");
    for args in [vec!["run", "--config"], vec!["check"]] {
        let out = eddy().args(&args).arg(&config).output().expect("runs");
        assert!(!out.status.success(), "{args:?} accepted a bad config");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("engine.window"), "{args:?}: {stderr}");
    }
    let out = eddy()
        .args(["run", "--broker", "ftp://x"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.url"));
}

/// `eddy check` on a file of the repository (relative to its root):
/// passes, and says how many rules it holds.
fn check_passes(file: &str) -> (std::path::PathBuf, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(file);
    let out = eddy().arg("check").arg(&path).output().expect("runs");
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (path, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_accepts_the_example_config() {
    let (_, out) = check_passes("examples/eddy.toml");
    assert!(out.contains("ok (6 rules)"), "{out}");
}

/// The Debian package's /etc/eddy/eddy.toml is a valid config that keeps
/// the state in the service's StateDirectory and runs no rules.
#[test]
fn check_accepts_the_packaged_config() {
    let (path, out) = check_passes("deploy/debian/eddy.toml");
    assert!(out.contains("ok (0 rules)"), "{out}");
    let config = eddy_gateway::config::Config::load(&path).expect("loads");
    assert_eq!(config.data_dir, std::path::Path::new("/var/lib/eddy"));
    assert!(
        config.broker.listen.ip().is_loopback(),
        "loopback by default"
    );
}

#[test]
fn a_garbage_or_truncated_store_file_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let store = data.join("eddy.redb");
    let config = dir.path().join("eddy.toml");
    std::fs::write(
        &config,
        "[broker]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write config");
    let run = || {
        eddy()
            .args(["run", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("runs")
    };
    // A real store, cut short.
    write_store(&store, 3000);
    let len = std::fs::metadata(&store).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .and_then(|f| f.set_len(len / 3))
        .expect("truncate");
    for (case, contents) in [("truncated", None), ("garbage", Some(vec![0xA5u8; 8192]))] {
        if let Some(bytes) = contents {
            std::fs::write(&store, bytes).expect("write garbage");
        }
        let out = run();
        assert!(!out.status.success(), "{case} store accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("eddy.redb"), "{case}: {stderr}");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
}

/// A store at `path` holding `n` samples, closed.
fn write_store(path: &std::path::Path, n: i64) {
    let s = eddy_gateway::store::Store::open(path).expect("creates");
    let samples: Vec<_> = (0..n)
        .map(|i| eddy_gateway::store::StoredSample {
            device: "d".into(),
            metric: "m".into(),
            ts_ms: i,
            value: i as f64,
            frame: None,
        })
        .collect();
    let batch = eddy_gateway::store::Batch {
        samples,
        ..Default::default()
    };
    s.commit_batch(&batch, eddy_gateway::store::Limits::NONE)
        .expect("commits");
}

/// README's recovery path for a damaged store: move it aside, salvage
/// what reads into a new store, start on that.
#[test]
fn salvage_writes_a_whole_store_from_a_damaged_one_and_lists_what_was_lost() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("eddy.redb");
    write_store(&store, 20_000);
    let len = std::fs::metadata(&store).expect("stat").len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .expect("open");
    f.seek(SeekFrom::Start((len / 2) & !4095)).expect("seek");
    f.write_all(&[0; 4096]).expect("zero a block");
    drop(f);
    let damaged = dir.path().join("eddy.redb.damaged");
    std::fs::rename(&store, &damaged).expect("move aside");

    let out = eddy()
        .arg("salvage")
        .arg(&damaged)
        .arg(&store)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a partial salvage exits non-zero");
    assert!(stdout.contains("unreadable: offsets"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let salvaged = eddy_gateway::store::Store::open(&store).expect("the new store is whole");
    let mut n = 0;
    salvaged
        .for_each_sample(|offset, s| {
            assert_eq!(s.value, offset as f64, "each sample at its offset");
            n += 1;
        })
        .expect("readable");
    assert!(
        (10_000..20_000).contains(&n),
        "{n} samples salvaged\n{stdout}"
    );
}
