//! The `eddy` binary at its edges: run, stop on Ctrl-C, bad configs, check.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn eddy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
}

#[test]
fn run_ingests_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("eddy.toml");
    std::fs::write(&config, "[broker]\nlisten = \"127.0.0.1:0\"\n").expect("write config");
    let mut child = eddy()
        .args(["run", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eddy starts");

    // The log (stderr) says where the embedded broker listens.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let port: u16 = loop {
        assert!(Instant::now() < deadline, "no listening line");
        let line = lines.next().expect("a log line").expect("utf-8");
        if let Some(rest) = line.split("addr=127.0.0.1:").nth(1) {
            break rest.trim().parse().expect("a port");
        }
    };
    // Stream the rest of the log so the child never blocks on a full pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    // Publish JSON telemetry and wait for the broker's acknowledgements.
    let (client, mut connection) = Client::new(MqttOptions::new("cli-test", "127.0.0.1", port), 64);
    for i in 0..20 {
        client
            .publish(
                "eddy/v1/cli-dev/telemetry",
                QoS::AtLeastOnce,
                false,
                format!("{{\"t\": {i}}}"),
            )
            .expect("queued");
    }
    let mut acked = 0;
    for event in connection.iter() {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = event {
            acked += 1;
            if acked == 20 {
                break;
            }
        }
    }
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
    let log = log.join().expect("log thread").join("\n");
    assert!(log.contains("shutting down"), "{log}");

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

#[test]
fn check_accepts_the_example_config() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/eddy.toml");
    let out = eddy().arg("check").arg(&example).output().expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 rules)"));
}
