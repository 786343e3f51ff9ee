//! The CLI and the API's tokens: the admin token the gateway writes at
//! first start works with no flags from the gateway's machine, and
//! tokens of a scope are made, used, listed and revoked with `eddy token`.

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

#[test]
fn api_token_the_admin_token_works_with_no_flags_and_scoped_tokens_are_made_used_and_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, http) = (free_port().expect("port"), free_port().expect("port"));
    let config = dir.path().join("eddy.toml");
    // The default config's data directory, `eddy-data`, in `dir`.
    let data = dir.path().join("eddy-data");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[broker]\nlisten = \"127.0.0.1:{mqtt}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n"
        ),
    )
    .expect("config");
    let _gateway = GatewayProcess::start(
        Path::new(env!("CARGO_BIN_EXE_eddy")),
        &config,
        &[
            SocketAddr::from(([127, 0, 0, 1], mqtt)),
            SocketAddr::from(([127, 0, 0, 1], http)),
        ],
    )
    .expect("eddy runs");
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
