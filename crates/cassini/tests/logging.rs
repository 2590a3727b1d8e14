//! `serve`'s log lines: JSON format, `RUST_LOG`-style filters, and the connection span that
//! names the peer's address, identity and session.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use harness::{cassini, run, Serve};

#[test]
fn json_lines_carry_the_connection_span_with_remote_identity_and_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().unwrap();
    let mut broker = Serve::new(&["--certs", certs, "--log-format", "json"]).start();
    let server = broker.server();
    let published = run(&mut cassini(&[
        "pub", "log.demo", "hi", "--server", &server, "--certs", certs,
    ]));
    assert!(published.status.success());
    let line = broker.wait_for_log("session attached");
    let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    let span = &event["span"];
    assert_eq!(span["name"], "connection", "{line}");
    assert_eq!(span["identity"], "dev", "{line}");
    assert!(
        span["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    let session = span["session"]
        .as_str()
        .expect("session recorded on the span");
    assert_eq!(session.len(), 32, "{line}");
    assert_eq!(event["fields"]["session"], session, "{line}");
    assert!(broker.terminate().success());
}

#[test]
fn log_filters_select_targets_and_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().unwrap();
    for (name, filter) in [
        ("CASSINI_LOG_LEVEL", "warn,cassini::serve=info"),
        ("RUST_LOG", "warn,cassini::serve=info"),
    ] {
        let mut broker = Serve::new(&["--certs", certs, "--monitor", "127.0.0.1:0"])
            .env(name, filter)
            .start();
        let status = broker.terminate();
        let rest = broker.log();
        assert!(status.success(), "{name}: {status}: {rest:?}");
        assert!(
            rest.iter().any(|line| line.contains("shutting down")),
            "{name}: cassini::serve at info is shown: {rest:?}"
        );
        assert!(
            !rest.iter().any(|line| line.contains("monitoring endpoint")),
            "{name}: cassini::monitoring at info is filtered out: {rest:?}"
        );
    }
}
