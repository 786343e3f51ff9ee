//! Every scenario in `scenarios/` runs against the real `eddy` binary and
//! meets its expectations; an expectation that does not hold fails the
//! run (and `eddy-testbench scenario` exits non-zero).

use std::path::{Path, PathBuf};
use std::process::Command;

use eddy_testbench::scenario::{self, Scenario};

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

async fn run(s: &Scenario) -> scenario::Outcome {
    let eddy = scenario::find_eddy().expect("the eddy binary (cargo test --workspace builds it)");
    scenario::run(s, &eddy).await.expect("scenario runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_scenario_meets_its_expectations() {
    let files = scenarios();
    assert!(files.len() >= 4, "{files:?}");
    let mut failures = Vec::new();
    for file in files {
        let s = Scenario::load(&file).expect("valid scenario");
        let outcome = run(&s).await;
        println!("{}: {:?}", s.name, outcome.checks);
        assert!(!outcome.checks.is_empty(), "{}: nothing checked", s.name);
        assert!(outcome.frames_sent > 0);
        if s.name == "reboot" {
            // sim-0001 twice, the other three once.
            assert_eq!(outcome.reboots, 5, "{}", s.name);
        }
        for c in outcome.checks.iter().filter(|c| !c.passed) {
            failures.push(format!("{}: {} ({})", s.name, c.name, c.detail));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expectation_that_does_not_hold_fails_the_scenario() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut s = Scenario::load(&dir.join("healthy-fleet.toml")).expect("valid");
    s.duration = std::time::Duration::from_secs(3);
    s.fleet.devices = 5;
    // sim-0000 runs hot: declaring it quiet must fail.
    s.expect.quiet = vec!["sim-0000".into()];
    s.expect.alerts.retain(|a| a.devices == "sim-0000");
    let outcome = run(&s).await;
    let quiet = outcome
        .checks
        .iter()
        .find(|c| c.name == "quiet sim-0000")
        .expect("checked");
    assert!(!quiet.passed, "{quiet:?}");
    assert!(quiet.detail.contains("overheat for sim-0000"), "{quiet:?}");
    assert!(!outcome.passed());
}

#[test]
fn the_command_exits_non_zero_on_a_failed_expectation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("impossible.toml");
    std::fs::write(
        &file,
        "name = \"impossible\"\nduration = \"2s\"\n[fleet]\ndevices = 2\nrate = 5.0\n\
         [gateway]\nconfig = \"\"\n[expect]\nno_loss = true\n\
         alerts = [{ rule = \"nothing\", devices = \"sim-*\", within = \"1s\" }]\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_eddy-testbench"))
        .arg("scenario")
        .arg(&file)
        .env("EDDY_BIN", scenario::find_eddy().expect("eddy"))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok    no sample lost or doubled"),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL  nothing fires for sim-*"), "{stdout}");
    assert!(stdout.contains("sim-0000 never"), "{stdout}");
    // A malformed scenario is an error naming the file.
    std::fs::write(&file, "name = \"x\"\nduration = 3\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_eddy-testbench"))
        .arg("scenario")
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("impossible.toml"),
        "{out:?}"
    );
}

#[test]
fn a_timeline_step_that_cannot_run_as_written_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("steps.toml");
    let head = "name = \"steps\"\nduration = \"5s\"\n[fleet]\ndevices = 1\nrate = 5.0\n";
    for (step, reason) in [
        (
            "action = \"restart\"\nrepeat = 3",
            "needs `every` longer than 0",
        ),
        (
            "action = \"restart\"\nrepeat = 3\nevery = \"0s\"",
            "needs `every` longer than 0",
        ),
        (
            "action = \"restart\"\nrepeat = 0\nevery = \"1s\"",
            "`repeat` is at least 1",
        ),
        (
            "action = \"kill_gateway\"\nsignal = \"term\"",
            "`signal` is for `restart` steps",
        ),
        ("action = \"fill_disk\"", "need gateway.data_dir_size"),
    ] {
        std::fs::write(&file, format!("{head}[[timeline]]\nat = \"1s\"\n{step}\n")).expect("write");
        match Scenario::load(&file) {
            Ok(_) => panic!("accepted: {step}"),
            Err(e) => assert!(e.to_string().contains(reason), "{step}: {e}"),
        }
    }
    // Repeated steps unroll in time order.
    std::fs::write(
        &file,
        format!(
            "{head}[[timeline]]\nat = \"1s\"\naction = \"restart\"\nsignal = \"mixed\"\nrepeat = 3\nevery = \"2s\"\n\
             [[timeline]]\nat = \"2s\"\naction = \"cut\"\n"
        ),
    )
    .expect("write");
    let s = Scenario::load(&file).expect("valid");
    let at: Vec<(u64, u32)> = s
        .steps()
        .iter()
        .map(|(at, _, i)| (at.as_millis() as u64, *i))
        .collect();
    assert_eq!(at, vec![(1000, 0), (2000, 0), (3000, 1), (5000, 2)]);
}
