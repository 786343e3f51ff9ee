//! One path for configuration: `eddy check`, `eddy rules check`, `eddy
//! run`, the rules directory and the rules API read the same text the same
//! way, and report the same error at the same place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use eddy_test_support::free_port;
use eddy_test_support::http::{admin_token, http_get_as};
use eddy_test_support::process::GatewayProcess;

fn eddy(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(args)
        .arg(file)
        .env("RUST_LOG", "error")
        .output()
        .expect("eddy runs")
}

/// `eddy ARGS CONFIG`.
fn eddy_in(args: &[&str], setup: &Setup) -> Output {
    eddy(args, &setup.config)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A config listening on free ports, with `extra` appended.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    mqtt: u16,
    http: SocketAddr,
}

impl Setup {
    fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = || free_port().expect("a free port");
        let (mqtt, http) = (port(), port());
        let config = dir.path().join("eddy.toml");
        // `RULES_DIR` stands for this setup's `rules.d`.
        let extra = extra.replace("RULES_DIR", &format!("{:?}", dir.path().join("rules.d")));
        let text = format!(
            "data_dir = {:?}\n[broker]\nlisten = \"127.0.0.1:{mqtt}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n{extra}",
            dir.path().join("data")
        );
        std::fs::write(&config, text).expect("write config");
        Self {
            dir,
            config,
            mqtt,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    /// `eddy run` on this config, once its listeners accept connections.
    fn run(&self) -> GatewayProcess {
        let mqtt = SocketAddr::from(([127, 0, 0, 1], self.mqtt));
        GatewayProcess::start(
            Path::new(env!("CARGO_BIN_EXE_eddy")),
            &self.config,
            &[mqtt, self.http],
        )
        .expect("eddy runs")
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

const RULE: &str = "[[rules]]\nname = \"hot\"\nmetric = \"temperature\"\nwindow = \"10s\"\naggregate = \"mean\"\nabove = 50\n";

/// The names of the rules a running gateway runs.
async fn running_rules(setup: &Setup) -> Vec<String> {
    let token = admin_token(&setup.dir.path().join("data"));
    let (status, body) = http_get_as(setup.http, "/api/rules", &token).await;
    assert_eq!(status, 200, "{body}");
    let rules: serde_json::Value = serde_json::from_str(&body).expect("json");
    rules
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn check_and_run_agree_on_the_rule_set_of_the_same_file() {
    let dir_rules = "[[rules]]\nname = \"cold\"\nmetric = \"temperature\"\nwindow = \"10s\"\naggregate = \"min\"\nbelow = 2\n";
    // No rules at all (no hidden default rule), one in the file, one in
    // the file and one in the rules directory.
    for (extra, with_dir, expected) in [
        ("", false, vec![]),
        (RULE, false, vec!["hot"]),
        (
            &*format!("[alerts]\nrules_dir = RULES_DIR\n{RULE}"),
            true,
            vec!["hot", "cold"],
        ),
    ] {
        let setup = Setup::new(extra);
        if with_dir {
            setup.write("rules.d/cold.toml", dir_rules);
        }
        let check = eddy_in(&["check"], &setup);
        assert!(check.status.success(), "{}", stderr(&check));
        assert!(
            stdout(&check).contains(&format!("ok ({} rules)", expected.len())),
            "{}",
            stdout(&check)
        );
        let _running = setup.run();
        let mut running = running_rules(&setup).await;
        running.sort();
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(running, expected, "eddy run runs what eddy check counted");
    }
}

#[tokio::test]
async fn a_misspelled_table_is_refused_by_every_path_with_its_place() {
    // In eddy.toml: check and run refuse it, at the same place.
    let setup = Setup::new("[alert]\nrules_dir = \"r\"\n");
    let place = format!("{}:6:2", setup.config.display());
    for args in [&["check"][..], &["rules", "check"], &["run", "--config"]] {
        let out = eddy(args, &setup.config);
        assert!(!out.status.success(), "{args:?} accepted it");
        let err = stderr(&out);
        assert!(
            err.contains(&place) && err.contains("unknown field `alert`"),
            "{args:?}: {err}"
        );
    }

    // `[[rule]]` in a rules-directory file: `eddy rules check` on the
    // file, `eddy check` and `eddy run` on the config that names its
    // directory.
    let setup = Setup::new("[alerts]\nrules_dir = RULES_DIR\n");
    let file = setup.write(
        "rules.d/typo.toml",
        "# one rule\n[[rule]]\nname = \"x\"\nmetric = \"t\"\nno_data = \"1m\"\n",
    );
    let place = format!("{}:2:3", file.display());
    let out = eddy(&["rules", "check"], &file);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&place) && stderr(&out).contains("unknown field `rule`"),
        "{}",
        stderr(&out)
    );
    for args in [&["check"][..], &["run", "--config"]] {
        let out = eddy_in(args, &setup);
        assert!(!out.status.success(), "{args:?} accepted it");
        let err = stderr(&out);
        assert!(
            err.contains("rules.d/typo.toml:2:3") && err.contains("unknown field `rule`"),
            "{args:?}: {err}"
        );
    }

    // A rule through the API with a misspelled field: refused, placed in
    // the body.
    let setup = Setup::new("");
    let _running = setup.run();
    let url = setup.url();
    let config = setup.config.clone();
    let body = "{\"metric\": \"t\", \"windw\": \"10s\", \"aggregate\": \"mean\", \"above\": 1}";
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_eddy"))
            .args(["rules", "put", "typo", body, "--url", &url, "--config"])
            .arg(&config)
            .output()
            .expect("runs")
    })
    .await
    .expect("joined");
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("api:1:") && err.contains("unknown field `windw`"),
        "{err}"
    );
    assert!(running_rules(&setup).await.is_empty());
}

#[test]
fn the_same_sql_error_is_reported_at_the_same_place_by_every_command() {
    let sql = "SELECT avg(t) FROM telemetry GROUP BY WOBBLY(3) HAVING avg(t) > 1";
    // In eddy.toml: the query starts at column 8 of line 8.
    let setup = Setup::new(&format!("[[rules]]\nname = \"w\"\nsql = \"{sql}\"\n"));
    let place = format!(
        "{}:8:46: rule `w`: unknown window `wobbly`",
        setup.config.display()
    );
    for args in [&["check"][..], &["rules", "check"], &["run", "--config"]] {
        let out = eddy(args, &setup.config);
        assert!(!out.status.success(), "{args:?} accepted it");
        assert!(stderr(&out).contains(&place), "{args:?}: {}", stderr(&out));
    }
    // In a rules-directory file: the same place in that file, whichever
    // command reads it.
    let setup = Setup::new("[alerts]\nrules_dir = RULES_DIR\n");
    let file = setup.write(
        "rules.d/w.toml",
        &format!("[[rules]]\nname = \"w\"\nsql = \"{sql}\"\n"),
    );
    let place = "rules.d/w.toml:3:46: rule `w`: unknown window `wobbly`";
    let out = eddy(&["rules", "check"], &file);
    assert!(stderr(&out).contains(place), "{}", stderr(&out));
    for args in [&["check"][..], &["run", "--config"]] {
        let out = eddy_in(args, &setup);
        assert!(!out.status.success(), "{args:?} accepted it");
        assert!(stderr(&out).contains(place), "{args:?}: {}", stderr(&out));
    }
}
