//! The CLI and the API's tokens: the admin token the gateway writes at
//! first start works with no flags from the gateway's machine, and
//! tokens of a scope are made, used, listed and revoked with `eddy token`;
//! device credentials likewise with `eddy device`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use eddy_test_support::free_port;
use eddy_test_support::process::GatewayProcess;

use crate::common::output_text as text;

/// `eddy ARGS` in `cwd`, without a token in the environment unless given.
fn eddy(cwd: &Path, args: &[&str], env_token: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eddy"));
    command
        .current_dir(cwd)
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("EDDY_TOKEN");
    if let Some(t) = env_token {
        command.env("EDDY_TOKEN", t);
    }
    command.output().expect("eddy runs")
}

/// An `eddy run` on free loopback ports with its data directory in a
/// temporary directory.
struct Running {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    data: std::path::PathBuf,
    mqtt: u16,
    http: u16,
    _gateway: GatewayProcess,
}

impl Running {
    /// `broker` is more of the config's `[broker]` table.
    fn start(broker: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mqtt, http) = (free_port().expect("port"), free_port().expect("port"));
        let config = dir.path().join("eddy.toml");
        // The default config's data directory, `eddy-data`, in `dir`.
        let data = dir.path().join("eddy-data");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{mqtt}\"\n{broker}[http]\nlisten = \"127.0.0.1:{http}\"\n"
            ),
        )
        .expect("config");
        let gateway = GatewayProcess::start(
            Path::new(env!("CARGO_BIN_EXE_eddy")),
            &config,
            &[
                SocketAddr::from(([127, 0, 0, 1], mqtt)),
                SocketAddr::from(([127, 0, 0, 1], http)),
            ],
        )
        .expect("eddy runs");
        Self {
            dir,
            config,
            data,
            mqtt,
            http,
            _gateway: gateway,
        }
    }
}

#[test]
fn api_token_the_admin_token_works_with_no_flags_and_scoped_tokens_are_made_used_and_revoked() {
    let Running {
        dir,
        config,
        data,
        http,
        _gateway,
        ..
    } = Running::start("");
    let token_file = data.join("admin.token");
    let mode = std::fs::metadata(&token_file)
        .expect("admin.token written at first start")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let url = format!("http://127.0.0.1:{http}");
    let here = dir.path();
    let elsewhere = tempfile::tempdir().expect("tempdir");

    // No flags, on the gateway's machine (its default data directory).
    let out = eddy(here, &["rules", "list", "--url", &url], None);
    assert!(out.status.success(), "{}", text(&out));
    let out = eddy(here, &["alerts", "--url", &url], None);
    assert!(out.status.success(), "{}", text(&out));
    // Without a token anywhere: refused, saying what is needed.
    let out = eddy(elsewhere.path(), &["rules", "list", "--url", &url], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("401"), "{}", text(&out));

    // A read token reads and changes nothing.
    let out = eddy(
        here,
        &[
            "token", "create", "--scope", "read", "viewer", "--url", &url,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let viewer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(viewer.starts_with("eddy_"), "{viewer}");
    let viewer_file = elsewhere.path().join("viewer.token");
    std::fs::write(&viewer_file, format!("{viewer}\n")).expect("token file");
    let viewer_path = viewer_file.to_str().expect("utf-8");
    let out = eddy(
        elsewhere.path(),
        &["rules", "list", "--url", &url, "--token-file", viewer_path],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let rule = r#"{"metric": "t", "window": "10s", "aggregate": "mean", "above": 1}"#;
    let out = eddy(
        elsewhere.path(),
        &["rules", "put", "x", rule, "--url", &url],
        Some(&viewer),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("403"), "{}", text(&out));
    // The admin token through --config.
    let config_path = config.to_str().expect("utf-8");
    let out = eddy(
        elsewhere.path(),
        &[
            "rules",
            "put",
            "x",
            rule,
            "--url",
            &url,
            "--config",
            config_path,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));

    let out = eddy(here, &["token", "list", "--url", &url], None);
    let listed = text(&out);
    assert!(
        listed.contains("admin") && listed.contains("viewer"),
        "{listed}"
    );
    assert!(!listed.contains(&viewer), "a token is shown once only");
    let out = eddy(here, &["token", "revoke", "viewer", "--url", &url], None);
    assert!(out.status.success(), "{}", text(&out));
    let out = eddy(
        elsewhere.path(),
        &["rules", "list", "--url", &url],
        Some(&viewer),
    );
    assert!(text(&out).contains("401"), "{}", text(&out));
}

/// Whether the broker at 127.0.0.1:`port` accepts `login`'s CONNECT.
fn connects(port: u16, login: Option<(&str, &str)>) -> Result<(), String> {
    let mut options = rumqttc::MqttOptions::new("cli-test-device", "127.0.0.1", port);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (_client, mut connection) = rumqttc::Client::new(options, 4);
    for event in connection.iter() {
        match event {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the connection ended".into())
}

#[test]
fn device_credentials_made_with_eddy_device_admit_that_device_until_revoked() {
    let Running {
        dir,
        mqtt,
        http,
        _gateway,
        ..
    } = Running::start("allow_anonymous = false\n");
    let url = format!("http://127.0.0.1:{http}");
    let here = dir.path();
    assert!(
        connects(mqtt, None).is_err(),
        "anonymous clients are refused"
    );
    let out = eddy(here, &["device", "add", "dev-1", "--url", &url], None);
    assert!(out.status.success(), "{}", text(&out));
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(secret.len(), 48, "{secret}");
    assert!(text(&out).contains("user name `dev-1`"), "{}", text(&out));
    let again = eddy(here, &["device", "add", "dev-1", "--url", &url], None);
    assert!(text(&again).contains("409"), "{}", text(&again));
    let out = eddy(here, &["device", "list", "--url", &url], None);
    let listed = text(&out);
    assert!(
        listed.contains("dev-1") && listed.contains("device"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "a secret is shown once only");
    connects(mqtt, Some(("dev-1", &secret))).expect("dev-1 connects with its secret");
    assert!(connects(mqtt, Some(("dev-1", "not-the-secret"))).is_err());
    let out = eddy(here, &["device", "revoke", "dev-1", "--url", &url], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(connects(mqtt, Some(("dev-1", &secret))).is_err(), "revoked");
}
