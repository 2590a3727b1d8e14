//! `serve`'s log lines: JSON format, `RUST_LOG`-style filters, and the connection span that
//! names the peer's address, identity and session.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod common;

use common::{
    cassini, free_udp_port, next_line_with, run, spawn_collecting, terminate, wait_with_deadline,
};

#[test]
fn json_lines_carry_the_connection_span_with_remote_identity_and_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().unwrap();
    let server = format!("127.0.0.1:{}", free_udp_port());
    let (mut broker, lines) = spawn_collecting(cassini(&[
        "serve",
        "--listen",
        &server,
        "--certs",
        certs,
        "--log-format",
        "json",
    ]));
    next_line_with(&lines, "cassini listening");
    let published = run(&mut cassini(&[
        "pub", "log.demo", "hi", "--server", &server, "--certs", certs,
    ]));
    assert!(published.status.success());
    let line = next_line_with(&lines, "session attached");
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
    terminate(&mut broker);
    assert!(wait_with_deadline(&mut broker).success());
}

#[test]
fn log_filters_select_targets_and_levels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().unwrap();
    let server = format!("127.0.0.1:{}", free_udp_port());
    for (name, filter) in [
        ("CASSINI_LOG_LEVEL", "warn,cassini::serve=info"),
        ("RUST_LOG", "warn,cassini::serve=info"),
    ] {
        let mut command = cassini(&[
            "serve",
            "--listen",
            &server,
            "--certs",
            certs,
            "--monitor",
            "127.0.0.1:0",
        ]);
        command.env(name, filter);
        let (mut broker, lines) = spawn_collecting(command);
        next_line_with(&lines, "cassini listening");
        terminate(&mut broker);
        assert!(wait_with_deadline(&mut broker).success());
        let rest: Vec<String> = lines.try_iter().collect();
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
