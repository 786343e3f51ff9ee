//! Invalid rules: each gets its message with file, line and column (the
//! command line's `eddy rules check` is tested with the `eddy-cli` tests).

use std::path::PathBuf;

use eddy_gateway::rules::check_file;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path
}

const SQL_OK: &str = "SELECT device, avg(t) FROM telemetry GROUP BY device, TUMBLING(INTERVAL '10' SECOND) HAVING avg(t) > 1";

fn sql_rule(sql: &str) -> String {
    format!("[[rules]]\nname = \"r\"\nsql = \"{sql}\"\n")
}

/// (rule file text, "line:column", what the message says)
fn cases() -> Vec<(String, &'static str, &'static str)> {
    let shorthand =
        "[[rules]]\nname = \"r\"\nmetric = \"t\"\nwindow = \"10s\"\naggregate = \"mean\"\n";
    // SQL positions: the query starts at column 8 of line 3, after `sql = "`.
    vec![
        // TOML syntax and types.
        (
            "[[rules]]\nname = \"r\"\nmetric = \n".into(),
            "3:10",
            "string values must be quoted",
        ),
        (
            format!("{shorthand}abov = 3\n"),
            "6:1",
            "unknown field `abov`",
        ),
        (
            format!("{shorthand}above = \"hot\"\n"),
            "6:9",
            "invalid type: string \"hot\", expected f64",
        ),
        (
            "[[rules]]\nname = \"r\"\nmetric = \"t\"\nwindow = \"10s\"\naggregate = \"median\"\nabove = 1\n".into(),
            "5:13",
            "unknown aggregate `median`",
        ),
        (
            "[[rules]]\nname = \"r\"\nmetric = \"t\"\nwindow = \"ten seconds\"\naggregate = \"mean\"\nabove = 1\n".into(),
            "4:10",
            "invalid value: string \"ten seconds\", expected a duration",
        ),
        // Missing and contradictory fields.
        (
            "[[rules]]\nname = \"r\"\nmetric = \"t\"\naggregate = \"mean\"\nabove = 1\n".into(),
            "2:1",
            "expected `window`",
        ),
        (
            format!("{shorthand}above = 1\nbelow = 0\n"),
            "6:1",
            "set exactly one of `above` and `below`",
        ),
        (
            format!("{shorthand}above = 30\nclear_below = 40\n"),
            "7:1",
            "must be at most `above` (30)",
        ),
        (
            "[[rules]]\nname = \"r\"\nwindow = \"10s\"\n".into(),
            "2:1",
            "expected `metric`",
        ),
        (
            format!("{shorthand}above = 1\ngroup_by = \"planet\"\n"),
            "7:1",
            "unknown group key `planet`",
        ),
        (
            format!("{shorthand}above = 1\nactions = [{{ type = \"webhook\", url = \"ftp://x\" }}]\n"),
            "7:1",
            "expected http://host:port/path",
        ),
        (
            format!("{shorthand}above = 1\nactions = [{{ type = \"command\", command = \"set_output\" }}]\n"),
            "7:1",
            "set_output needs `pin`",
        ),
        (
            format!("{shorthand}above = 1\nactions = [{{ type = \"pager\" }}]\n"),
            "7:21",
            "unknown variant `pager`, expected one of `mqtt`, `upstream`, `webhook`, `command`",
        ),
        (
            format!("{shorthand}above = 1\n[[rules]]\nname = \"r\"\nmetric = \"t\"\nno_data = \"30s\"\n"),
            "8:1",
            "the name is used twice",
        ),
        // SQL: syntax, unknown names, types, missing parts.
        (
            sql_rule("SELECT avg(t) FROM telemetry GROUP BY TUMBLING(INTERVAL '1' SECOND) HAVING avg(t) >"),
            "3:91",
            "Expected: an expression, found: EOF",
        ),
        (
            sql_rule("SELECT avg(t) FROM telemetry GROUP BY WOBBLY(3) HAVING avg(t) > 1"),
            "3:46",
            "unknown window `wobbly`",
        ),
        (
            sql_rule("SELECT median(t) FROM telemetry GROUP BY TUMBLING(INTERVAL '1' SECOND) HAVING median(t) > 1"),
            "3:15",
            "unknown aggregate `median`",
        ),
        (
            sql_rule("SELECT avg(t) FROM telemetry GROUP BY TUMBLING(INTERVAL '1' SECOND) HAVING avg(t)"),
            "3:83",
            "expected a condition in HAVING",
        ),
        (
            sql_rule("SELECT avg(t) FROM telemetry GROUP BY TUMBLING(INTERVAL '1' SECOND) HAVING avg(t) > 'hot'"),
            "3:92",
            "expected a number",
        ),
        (
            sql_rule("SELECT avg(t) FROM telemetry GROUP BY device HAVING avg(t) > 1"),
            "3:8",
            "expected a window in GROUP BY",
        ),
        // Several metrics and group comparisons.
        (
            sql_rule("SELECT site FROM telemetry GROUP BY site, TUMBLING(INTERVAL '1' SECOND) HAVING avg(t) > site.avg(t) + 1"),
            "3:96",
            "a comparison with the group (site.avg(...)) needs a rule grouped per device",
        ),
        (
            sql_rule("SELECT device FROM telemetry GROUP BY device, SESSION(INTERVAL '5' SECOND) HAVING avg(t) > 1 AND avg(h) > 2"),
            "3:54",
            "use TUMBLING or HOPPING, not SESSION",
        ),
        (
            "[[rules]]\nname = \"r\"\nwindow = \"10s\"\nall = [\n  { metric = \"t\", aggregate = \"mean\", above = 30 },\n  { metric = \"h\", aggregate = \"mean\" },\n]\n".into(),
            "6:5",
            "set exactly one of `above` and `below`",
        ),
        (
            "[[rules]]\nname = \"r\"\nwindow = \"10s\"\nany = [{ metric = \"t\", above = 30 }]\n".into(),
            "4:10",
            "expected `aggregate` here or in the rule",
        ),
        (
            format!("{shorthand}above = 1\ngroup_by = \"site\"\nrelative_to = \"site\"\n"),
            "8:1",
            "a comparison with the group needs a rule grouped per device",
        ),
        (
            format!("{shorthand}above = 1\nrelative_to = \"planet\"\n"),
            "7:1",
            "unknown group key `planet`",
        ),
        (
            format!("{shorthand}above = 1\nall = [{{ metric = \"h\", above = 1 }}]\n"),
            "7:1",
            "set `metric` or `all`, not both",
        ),
        (
            sql_rule("SELECT avg(t) FROM sensors GROUP BY TUMBLING(INTERVAL '1' SECOND) HAVING avg(t) > 1"),
            "3:27",
            "expected FROM telemetry",
        ),
        (
            sql_rule("SELECT avg(t) FROM telemetry GROUP BY TUMBLING(INTERVAL '1' SECOND)"),
            "3:8",
            "expected HAVING",
        ),
        (
            sql_rule("SELECT avg(t) FROM telemetry WHERE colour = 'red' GROUP BY TUMBLING(INTERVAL '1' SECOND) HAVING avg(t) > 1"),
            "3:43",
            "unknown column `colour` in WHERE",
        ),
        (
            sql_rule("SELECT avg(t) FROM telemetry GROUP BY TUMBLING(INTERVAL '1' FORTNIGHT) HAVING avg(t) > 1"),
            "3:68",
            "Expected: ), found: FORTNIGHT",
        ),
        (
            format!("[[rules]]\nname = \"r\"\nmetric = \"t\"\nsql = \"{SQL_OK}\"\n"),
            "3:1",
            "`metric` is part of the threshold shorthand",
        ),
        // A multi-line SQL string: positions count from its own lines.
        (
            "[[rules]]\nname = \"r\"\nsql = \"\"\"\nSELECT avg(t)\nFROM telemetry\nGROUP BY HOPPING(INTERVAL '10' SECOND)\nHAVING avg(t) > 1\n\"\"\"\n".into(),
            "6:10",
            "expected HOPPING(size, hop)",
        ),
        // Limits: the 20 KB rule of 5,000 terms that once overflowed the
        // stack, and parentheses nested past 32 (the 33rd is placed).
        (
            sql_rule(&format!(
                "{} HAVING {}",
                &SQL_OK[..SQL_OK.find(" HAVING").expect("having")],
                vec!["avg(t) > 1"; 5000].join(" OR ")
            )),
            "3:8",
            "exceeds the limit of 8192",
        ),
        (
            sql_rule(&format!(
                "{} HAVING {}avg(t) > 1{}",
                &SQL_OK[..SQL_OK.find(" HAVING").expect("having")],
                "(".repeat(33),
                ")".repeat(33)
            )),
            "3:132",
            "nested deeper than 32",
        ),
    ]
}

#[test]
fn every_invalid_rule_is_named_with_its_place_and_what_was_expected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for (i, (text, at, what)) in cases().into_iter().enumerate() {
        let path = write(&dir, &format!("case{i}.toml"), &text);
        let file = path.display().to_string();
        match check_file(&path) {
            Ok(n) => failures.push(format!("case {i}: accepted ({n} rules):\n{text}")),
            Err(errors) => {
                let first = errors.0[0].to_string();
                let place = format!("{file}:{at}");
                if !first.starts_with(&place) || !first.contains(what) {
                    failures.push(format!(
                        "case {i}: expected `{place}` and `{what}`, got `{first}`"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_rule_files_and_configs_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write(
        &dir,
        "plant.toml",
        &format!(
            r#"
[[rules]]
name = "overheat"
metric = "temperature"
window = "10s"
aggregate = "mean"
above = 60
clear_below = 55
for = "30s"
keep_firing_for = "1m"
repeat = "10m"
severity = "critical"
devices = ["press-*"]
site = "plant-1"
flap = {{ window = "10m", changes = 6 }}
actions = [
  {{ type = "mqtt" }},
  {{ type = "webhook", url = "http://127.0.0.1:9000/alerts" }},
  {{ type = "command", command = "set_output", pin = 2, on = true }},
  {{ type = "command", command = "set_output", pin = 2, on = false, when = "resolved" }},
]

[[rules]]
name = "silent"
metric = "temperature"
no_data = "30s"

[[rules]]
name = "sql"
sql = "{SQL_OK}"
clear = "avg(t) < 0.5"

[[rules]]
name = "muggy"
window = "1m"
aggregate = "mean"
all = [
  {{ metric = "temperature", above = 30 }},
  {{ metric = "humidity", above = 80 }},
]

[[rules]]
name = "outlier"
metric = "temperature"
window = "1m"
aggregate = "mean"
above = 10
relative_to = "site"

[[rules]]
name = "power"
sql = """
SELECT device, avg(voltage) * avg(current) AS power FROM telemetry
GROUP BY device, TUMBLING(INTERVAL '1' MINUTE)
HAVING power > 2000 OR avg(temperature) > site.avg(temperature) + 10"""
clear = "avg(voltage) * avg(current) < 1800 AND avg(temperature) < site.avg(temperature) + 5"
"#
        ),
    );
    assert_eq!(check_file(&rules).expect("valid"), 6);
    let config = write(
        &dir,
        "eddy.toml",
        "data_dir = \"x\"\n[engine]\nwindow = \"5s\"\n[[rules]]\nname = \"a\"\nmetric = \"t\"\nwindow = \"5s\"\naggregate = \"max\"\nbelow = 3\n",
    );
    assert_eq!(check_file(&config).expect("valid"), 1);
}

#[test]
fn a_webhook_outside_the_allow_list_is_refused_at_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |allow: &str, url: &str| {
        format!(
            "data_dir = \"x\"\n[alerts]\nwebhook_allow = [{allow}]\n[[rules]]\nname = \"a\"\n\
             metric = \"t\"\nwindow = \"5s\"\naggregate = \"max\"\nbelow = 3\n\
             actions = [{{ type = \"webhook\", url = \"{url}\" }}]\n"
        )
    };
    let allow = "\"http://127.0.0.1:9000/hooks/\"";
    let ok = write(
        &dir,
        "ok.toml",
        &config(allow, "http://127.0.0.1:9000/hooks/eddy"),
    );
    assert_eq!(check_file(&ok).expect("allowed"), 1);
    for (name, allow, url, at, what) in [
        // Another host, another port, another path: refused at `actions`.
        (
            "host.toml",
            allow,
            "http://10.0.0.9:9000/hooks/eddy",
            "10:1",
            "webhook_allow",
        ),
        (
            "port.toml",
            allow,
            "http://127.0.0.1:90001/hooks/x",
            "10:1",
            "webhook_allow",
        ),
        (
            "path.toml",
            allow,
            "http://127.0.0.1:9000/admin",
            "10:1",
            "webhook_allow",
        ),
        // No list: no webhook at all.
        (
            "none.toml",
            "",
            "http://127.0.0.1:9000/hooks/eddy",
            "10:1",
            "webhook_allow",
        ),
        // A prefix without a path could match another port.
        (
            "prefix.toml",
            "\"http://127.0.0.1:9000\"",
            "http://127.0.0.1:9000/x",
            "3:",
            "ending in a path",
        ),
    ] {
        let path = write(&dir, name, &config(allow, url));
        let errors = check_file(&path).expect_err("refused").to_string();
        let place = format!("{}:{at}", path.display());
        assert!(
            errors.contains(&place) && errors.contains(what),
            "{name}: expected `{place}` and `{what}` in {errors}"
        );
    }
}
