//! `eddy rules check`: every error with file, line and column, non-zero
//! exit on any.

use std::process::Command;

#[test]
fn eddy_rules_check_exits_non_zero_and_prints_every_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    let sql = "SELECT device, avg(t) FROM telemetry GROUP BY device, TUMBLING(INTERVAL '10' SECOND) HAVING avg(t) > 1";
    std::fs::write(&good, format!("[[rules]]\nname = \"r\"\nsql = \"{sql}\"\n")).expect("write");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rules]]\nname = \"a\"\nmetric = \"t\"\n\n[[rules]]\nname = \"b\"\nsql = \"SELECT max(t) FROM telemetry GROUP BY COUNT(0) HAVING max(t) > 1\"\n",
    )
    .expect("write");
    let eddy = env!("CARGO_BIN_EXE_eddy");
    let ok = Command::new(eddy)
        .args(["rules", "check"])
        .arg(&good)
        .output()
        .expect("runs");
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok (1 rules)"));
    let out = Command::new(eddy)
        .args(["rules", "check"])
        .arg(&good)
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let bad = bad.display().to_string();
    assert!(
        stderr.contains(&format!("{bad}:2:1: rule `a`: expected `window`")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{bad}:7:52: rule `b`: expected a whole number of samples"
        )),
        "{stderr}"
    );
}
