//! The rule language against generated input: queries built from parts
//! parse to exactly those parts, and any token soup is an error with a
//! place inside the text, never a panic.

use eddy_analytics::sql::parse;
use eddy_analytics::{Aggregate, Cmp, DeviceLevel, Expr, WindowKind};
use proptest::prelude::*;

fn window() -> impl Strategy<Value = (String, WindowKind)> {
    prop_oneof![
        (1u64..600).prop_map(|s| (
            format!("TUMBLING(INTERVAL '{s}' SECOND)"),
            WindowKind::Tumbling { size_ms: s * 1000 }
        )),
        (1u64..10, 1u64..10).prop_map(|(m, h)| (
            format!("HOPPING(INTERVAL '{m}' MINUTE, INTERVAL '{h}' SECOND)"),
            WindowKind::Hopping {
                size_ms: m * 60_000,
                hop_ms: h * 1000
            }
        )),
        (1u64..5000).prop_map(|ms| (
            format!("SLIDING(INTERVAL '{ms}' MILLISECOND)"),
            WindowKind::Sliding { size_ms: ms }
        )),
        (1u64..60, proptest::option::of(61u64..600)).prop_map(|(g, m)| (
            match m {
                Some(m) => format!("SESSION(INTERVAL '{g}' SECOND, INTERVAL '{m}' SECOND)"),
                None => format!("SESSION(INTERVAL '{g}' SECOND)"),
            },
            WindowKind::Session {
                gap_ms: g * 1000,
                max_ms: m.map(|m| m * 1000)
            }
        )),
        (1u64..1000, proptest::option::of(1u64..100)).prop_map(|(n, h)| (
            match h {
                Some(h) => format!("COUNT({n}, {h})"),
                None => format!("COUNT({n})"),
            },
            WindowKind::Count { n, hop: h }
        )),
    ]
}

fn aggregate() -> impl Strategy<Value = (&'static str, Aggregate)> {
    prop_oneof![
        Just(("avg", Aggregate::Mean)),
        Just(("min", Aggregate::Min)),
        Just(("max", Aggregate::Max)),
        Just(("sum", Aggregate::Sum)),
        Just(("stddev", Aggregate::Stddev)),
        Just(("rate", Aggregate::Rate)),
        Just(("delta", Aggregate::Delta)),
        Just(("last", Aggregate::Last)),
        Just(("p99", Aggregate::Quantile(9900))),
    ]
}

fn comparison() -> impl Strategy<Value = (&'static str, Cmp)> {
    prop_oneof![
        Just((">", Cmp::Gt)),
        Just((">=", Cmp::Ge)),
        Just(("<", Cmp::Lt)),
        Just(("<=", Cmp::Le)),
        Just(("<>", Cmp::Ne)),
    ]
}

fn key() -> impl Strategy<Value = (&'static str, DeviceLevel)> {
    prop_oneof![
        Just(("device", DeviceLevel::Device)),
        Just(("site", DeviceLevel::Level(1))),
        Just(("building", DeviceLevel::Level(2))),
        Just(("line", DeviceLevel::Level(3))),
    ]
}

proptest! {
    #[test]
    fn generated_queries_parse_to_their_parts(
        (window_sql, window) in window(),
        (agg_sql, agg) in aggregate(),
        (cmp_sql, cmp) in comparison(),
        (key_sql, level) in key(),
        threshold in -1000i32..1000,
        metric in "[a-z][a-z0-9_]{0,12}",
        site in "[a-z][a-z0-9-]{0,8}",
    ) {
        prop_assume!(!["value", "device", "site", "building", "line", "path", "metric"].contains(&metric.as_str()));
        let text = format!(
            "SELECT {key_sql}, {agg_sql}({metric}) AS x FROM telemetry WHERE site = '{site}' \
             GROUP BY {key_sql}, {window_sql} HAVING x {cmp_sql} {threshold}"
        );
        let q = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(q.window, window);
        prop_assert_eq!(q.group_by.device, level);
        prop_assert_eq!(&q.metrics, &vec![metric.clone()]);
        prop_assert_eq!(q.condition, Expr::compare(agg, cmp, f64::from(threshold)));
        prop_assert_eq!(q.value, Expr::agg(agg));
        let path = format!("{site}/b/l");
        prop_assert!(q.filter.admits("any", Some(&path)));
        prop_assert!(!q.filter.admits("any", Some("elsewhere/b/l")));
    }

    #[test]
    fn token_soup_is_an_error_placed_inside_the_text(
        tokens in proptest::collection::vec(
            prop_oneof![
                Just("SELECT"), Just("FROM"), Just("telemetry"), Just("WHERE"), Just("GROUP"),
                Just("BY"), Just("HAVING"), Just("AND"), Just("OR"), Just("NOT"), Just("("),
                Just(")"), Just(","), Just("avg(t)"), Just("TUMBLING"), Just("COUNT"),
                Just("INTERVAL '1' SECOND"), Just("'x'"), Just("3"), Just("-"), Just(">"),
                Just("="), Just("device"), Just("value"), Just("\n"), Just("*"), Just("LIKE"),
            ],
            0..30,
        )
    ) {
        let text = tokens.join(" ");
        let lines = text.lines().count() as u64 + 1;
        if let Err(e) = parse(&text) {
            prop_assert!(e.line >= 1 && e.line <= lines, "{}: {}", text, e);
            prop_assert!(e.column >= 1, "{}: {}", text, e);
        }
    }
}
