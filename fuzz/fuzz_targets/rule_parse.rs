//! Any text as a rules file, and as a rule's SQL: errors carry a place
//! inside the text, valid rules compile and run in an engine; never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count() + 1;
    match eddy_analytics::sql::parse(text) {
        Ok(q) => {
            let a = eddy_analytics::Aggregates::new(true);
            let _ = q.condition.holds(&a);
        }
        Err(e) => assert!(e.line as usize <= lines, "{e} beyond {lines} lines"),
    }
    if let Ok(rules) = eddy_gateway::rules::parse_file("fuzz", text) {
        let (ok, errors) = eddy_gateway::rules::compile_file(
            "fuzz",
            text,
            &rules,
            eddy_gateway::rules::WebhookAllow::Unchecked,
        );
        for e in &errors {
            assert!(e.line <= lines, "{e} beyond {lines} lines");
        }
        let plan = ok.into_iter().map(|(r, _)| r).collect();
        let _ = eddy_analytics::Engine::new(eddy_analytics::EngineConfig::default(), plan);
    }
});
