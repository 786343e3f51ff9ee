//! Config: defaults with no file, clear errors for bad files.

use std::time::Duration;

use eddy_gateway::config::{BrokerUrl, Config, ConfigError};

#[test]
fn no_file_means_working_defaults() {
    let c = Config::parse("").expect("empty config is valid");
    assert_eq!(c.broker.listen.to_string(), "127.0.0.1:1883");
    assert!(c.broker.url.is_none());
    assert_eq!(c.data_dir.to_str(), Some("eddy-data"));
    assert_eq!(c.engine.window, Duration::from_secs(10));
    // No hidden rule: a config runs the rules it names.
    assert!(c.rules.is_empty());
    assert!(c.upstream.is_none());
}

#[test]
fn a_full_config_parses() {
    let c = Config::parse(
        r#"
        data_dir = "/var/lib/eddy"
        [broker]
        url = "mqtt://10.0.0.5:1884"
        [ingest]
        batch_size = 500
        batch_delay = "5ms"
        [engine]
        window = "1m"
        allowed_lateness = "5s"
        [[rules]]
        name = "cold"
        metric = "temperature"
        window = "30s"
        aggregate = "min"
        below = 2.5
        [upstream]
        url = "mqtt://cloud.example:1883"
        "#,
    )
    .expect("valid");
    assert_eq!(c.ingest.batch_delay, Duration::from_millis(5));
    assert_eq!(c.rules[0].below, Some(2.5));
    assert_eq!(c.upstream.expect("set").max_inflight, 100);
}

fn error_of(text: &str) -> String {
    match Config::parse(text) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {text}"),
    }
}

#[test]
fn bad_configs_name_the_field_and_the_reason() {
    let cases = [
        ("[broker]\nport = 1883", "unknown field `port`"),
        ("[engine]\nwindow = \"ten seconds\"", "window"),
        ("[engine]\nwindow = \"0s\"", "engine.window"),
        ("[broker]\nurl = \"http://x\"", "broker.url"),
        ("[broker]\nurl = \"mqtt://x:99999\"", "port `99999`"),
        ("[ingest]\nbatch_size = 0", "ingest.batch_size"),
        ("[store]\nmax_samples = 0", "store.max_samples"),
        ("[store]\nmax_bytes = 10", "store.max_bytes"),
        ("[store]\nmax_age = \"0s\"", "store.max_age"),
        ("[store]\non_full = \"explode\"", "explode"),
        ("[store]\ndurability = \"eventual\"", "eventual"),
        ("[ingest]\nmax_devices = 0", "ingest.max_devices"),
        ("[broker]\nurl = \"mqtts://x\"", "broker.url"),
        (
            "[upstream]\nurl = \"mqtt://x\"\n[upstream.tls]\nca_file = \"ca.pem\"",
            "upstream.tls",
        ),
        (
            "[upstream]\nurl = \"mqtts://x\"\n[upstream.tls]\nca = \"ca.pem\"",
            "unknown field `ca`",
        ),
        ("[http]\nlisten = \"localhost\"", "listen"),
        ("[[serial]]\npath = \"\"", "serial[0].path"),
        (
            "[[serial]]\npath = \"/dev/ttyUSB0\"\nbaud = 0",
            "serial[0].baud",
        ),
        (
            "[[serial]]\npath = \"/dev/ttyUSB0\"\n[[serial]]\npath = \"/dev/ttyUSB0\"",
            "serial[1].path",
        ),
        ("[ingest]\ntopic_prefix = \"eddy/#\"", "wildcards"),
        (
            "[[ingest.topics]]\nfilter = \"a/b\"\nformat = \"json\"\ndevice_level = 1",
            "ingest.topics[0].device_level",
        ),
        (
            "rules = [{name = \"r\", metric = \"t\", window = \"1s\", aggregate = \"mean\"}]",
            "exactly one of `above` and `below`",
        ),
        (
            "rules = [{name = \"r\", metric = \"t\", window = \"1s\", aggregate = \"median\", above = 1}]",
            "median",
        ),
        (
            "rules = [{name = \"a b\", metric = \"t\", window = \"1s\", aggregate = \"mean\", above = 1}]",
            "<text>:1:11: rule `a b`",
        ),
        (
            "[[rules]]\nname=\"r\"\nmetric=\"t\"\nwindow=\"1s\"\naggregate=\"max\"\nabove=1\n[[rules]]\nname=\"r\"\nmetric=\"t\"\nwindow=\"1s\"\naggregate=\"max\"\nabove=2",
            "used twice",
        ),
        (
            "[upstream]\nurl = \"mqtt://h\"\nmax_inflight = 0",
            "upstream.max_inflight",
        ),
    ];
    for (text, expected) in cases {
        let e = error_of(text);
        assert!(
            e.contains(expected),
            "config {text:?}: error {e:?} lacks {expected:?}"
        );
    }
}

#[test]
fn a_syntax_error_gives_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("eddy.toml");
    std::fs::write(&path, "[engine]\nwindow = \"1s\"\nmax_series = [\n").expect("write");
    let e = Config::load(&path).expect_err("invalid");
    assert!(matches!(e, ConfigError::Parse { .. }));
    let text = e.to_string();
    assert!(text.contains("eddy.toml:3:"), "{text}");
}

#[test]
fn a_missing_or_huge_file_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(matches!(
        Config::load(&dir.path().join("nope.toml")),
        Err(ConfigError::Read { .. })
    ));
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 << 20]).expect("write");
    assert!(matches!(
        Config::load(&big),
        Err(ConfigError::TooLarge { .. })
    ));
}

#[test]
fn broker_urls() {
    assert_eq!(
        BrokerUrl::parse("mqtt://localhost"),
        Ok(BrokerUrl::tcp("localhost", 1883))
    );
    assert_eq!(
        BrokerUrl::parse("tcp://[::1]:1884/"),
        Ok(BrokerUrl::tcp("::1", 1884))
    );
    assert_eq!(
        BrokerUrl::parse("mqtts://broker.example"),
        Ok(BrokerUrl {
            host: "broker.example".into(),
            port: 8883,
            tls: true
        })
    );
    assert!(BrokerUrl::parse("mqtt://:1883").is_err());
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/eddy.toml");
    let c = Config::load(&path).expect("examples/eddy.toml is valid");
    assert_eq!(c.ingest.topics.len(), 4);
    assert!(c.upstream.is_some());
    assert_eq!(c.engine.views.len(), 2);
    let (engine, _) = c.engine();
    assert_eq!(engine.views.len(), 2, "both example views compile");
}

#[test]
fn bad_views_and_paths_name_the_view_and_the_reason() {
    let view = |body: &str| format!("[[engine.views]]\nname = \"v\"\n{body}\n");
    for (text, expected) in [
        (view("window = \"rolling\""), "unknown window `rolling`"),
        (view("window = \"tumbling\""), "a tumbling window needs `size`"),
        (view("window = \"hopping\"\nsize = \"10s\""), "needs `hop`"),
        (view("window = \"count\""), "needs `count`"),
        (
            view("window = \"hopping\"\nsize = \"1h\"\nhop = \"1s\""),
            "at most 1000 hopping windows",
        ),
        (
            view("window = \"tumbling\"\nsize = \"1s\"\ngroup_by = [\"planet\"]"),
            "unknown group key `planet`",
        ),
        (
            view("window = \"tumbling\"\nsize = \"1s\"\naggregates = [\"median-ish\"]"),
            "unknown aggregate `median-ish`",
        ),
        (
            "[[engine.views]]\nname = \"default\"\nwindow = \"tumbling\"\nsize = \"1s\"".into(),
            "engine.views[0].name",
        ),
        (
            "[engine.paths]\nm1 = \"plant-1//line\"".into(),
            "engine.paths.m1",
        ),
        (
            "[[ingest.topics]]\nfilter = \"f/+/data\"\nformat = \"json\"\ndevice_level = 1\npath_levels = [2]".into(),
            "ingest.topics[0].path_levels",
        ),
        ("[http]\nmax_connections = 0".into(), "http.max_connections"),
        ("[http]\nheader_timeout = \"0s\"".into(), "http.header_timeout"),
        (
            "[alerts]\nwebhook_allow = [\"http://127.0.0.1:9000/\", \"ftp://x/\"]".into(),
            "alerts.webhook_allow[1]",
        ),
    ] {
        let err = error_of(&text);
        assert!(err.contains(expected), "{text}\n=> {err}");
    }
}

/// Fields that size or time something, with their section.
const COUNTS: [(&str, &str); 10] = [
    ("broker", "max_queued_messages"),
    ("http", "max_body_bytes"),
    ("http", "max_pending_requests"),
    ("http", "max_connections"),
    ("ingest", "batch_size"),
    ("ingest", "queue_capacity"),
    ("ingest", "max_devices"),
    ("ingest", "max_payload_bytes"),
    ("engine", "max_series"),
    ("alerts", "webhook_queue"),
];
const TIMES: [(&str, &str); 8] = [
    ("ingest", "batch_delay"),
    ("http", "header_timeout"),
    ("http", "idle_timeout"),
    ("ingest", "future_horizon"),
    ("engine", "window"),
    ("engine", "snapshot_every"),
    ("alerts", "webhook_timeout"),
    ("alerts", "reload_every"),
];

/// One field set to a value as people mistype them: zero, tiny, huge,
/// the type's ceiling; as TOML `section.key = value`.
fn extreme_field() -> impl proptest::strategy::Strategy<Value = (String, String, String)> {
    use proptest::prelude::*;
    let count = prop_oneof![
        Just(0i64),
        1i64..4,
        Just(1000),
        Just(1_000_000_000),
        Just(1 << 62),
        Just(i64::MAX),
    ];
    let time = prop_oneof![
        Just("0s"),
        Just("1ns"),
        Just("1ms"),
        Just("2s"),
        Just("400days"),
        Just("100years"),
    ];
    prop_oneof![
        (0..COUNTS.len(), count).prop_map(|(i, v)| {
            (
                COUNTS[i].0.to_string(),
                COUNTS[i].1.to_string(),
                v.to_string(),
            )
        }),
        (0..TIMES.len(), time).prop_map(|(i, v)| {
            (
                TIMES[i].0.to_string(),
                TIMES[i].1.to_string(),
                format!("\"{v}\""),
            )
        }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 32,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Whatever `eddy check` accepts starts and stops cleanly; what it
    /// refuses names the field.
    #[test]
    fn any_accepted_config_starts_and_stops(
        picked in proptest::collection::vec(extreme_field(), 1..3)
    ) {
        use proptest::prelude::*;
        let fields: std::collections::BTreeMap<(String, String), String> =
            picked.into_iter().map(|(s, k, v)| ((s, k), v)).collect();
        let data = tempfile::tempdir().expect("temp dir");
        let mut sections: std::collections::BTreeMap<&str, Vec<String>> = [
            ("broker", vec!["listen = \"127.0.0.1:0\"".to_string()]),
            ("http", vec!["listen = \"127.0.0.1:0\"".to_string()]),
        ]
        .into_iter()
        .collect();
        for ((section, key), value) in &fields {
            sections.entry(section.as_str()).or_default().push(format!("{key} = {value}"));
        }
        let mut text = format!("data_dir = \"{}\"\n", data.path().display());
        for (section, lines) in &sections {
            text.push_str(&format!("[{section}]\n{}\n", lines.join("\n")));
        }
        let config = match Config::parse(&text) {
            Ok(config) => config,
            Err(e) => {
                let e = e.to_string();
                let named = fields.keys().any(|(s, k)| e.contains(&format!("{s}.{k}")) || e.contains(k.as_str()));
                prop_assert!(named, "{e}");
                return Ok(());
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let gateway = tokio::time::timeout(
                Duration::from_secs(30),
                eddy_gateway::Gateway::start(config),
            )
            .await
            .expect("starts in time")
            .unwrap_or_else(|e| panic!("an accepted config starts: {e}\n{text}"));
            tokio::time::sleep(Duration::from_millis(200)).await;
            tokio::time::timeout(Duration::from_secs(30), gateway.shutdown())
                .await
                .expect("stops in time")
                .expect("stops cleanly");
        });
    }
}
