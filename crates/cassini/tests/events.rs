//! `cassini events` as an operator runs it: a real broker with an ACL file, certificates from
//! `cassini certs init`, and the system events it prints.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use harness::{cassini, output_within, run, spawn_until, Serve, DEADLINE};

const ACL: &str = r#"
default = "allow"

[[rule]]
identity = "ops"
subscribe = ["$SYS.>"]

[[rule]]
identity = "dev"
deny_publish = ["secret.>"]
"#;

fn connect_args<'a>(server: &'a str, dir: &'a str, name: &'a str) -> Vec<&'a str> {
    vec!["--server", server, "--certs", dir, "--name", name]
}

#[test]
fn events_prints_connects_authorization_failures_and_disconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path");
    harness::init_certs(dir.path(), &["ops", "dev"]);
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, ACL).expect("write acl");
    let mut broker = Serve::new(&["--certs", certs, "--acl", acl.to_str().expect("utf-8")])
        .env("CASSINI_EVENTS_STATS_INTERVAL_SECS", "1")
        .start();
    let server = broker.server();

    let mut args = vec![
        "events",
        "--kind",
        "connect",
        "--kind",
        "authorization_failed",
        "--kind",
        "disconnect",
        "--count",
        "3",
        "--timeout",
        "30",
    ];
    args.extend(connect_args(&server, certs, "ops"));
    let events = spawn_until(cassini(&args), "subscribed to");

    let mut args = vec!["pub", "secret.x", "hi"];
    args.extend(connect_args(&server, certs, "dev"));
    let refused = run(&mut cassini(&args));
    assert_eq!(
        refused.status.code(),
        Some(1),
        "the ACL refuses the publish"
    );

    let output = events.wait_with_output().expect("events output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "events exits 0 after --count: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    // One subscription per kind: their lines may come in any order.
    let line_of = |kind: &str| {
        lines
            .iter()
            .find(|line| line.split(' ').nth(1) == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} line in {stdout}"))
    };
    for (kind, fields) in [
        ("connect", &["identity=dev", "remote=127.0.0.1:"][..]),
        (
            "authorization_failed",
            &["identity=dev", "action=\"publish to\"", "target=secret.x"][..],
        ),
        (
            "disconnect",
            &["identity=dev", "clean=true", "reason=goodbye"][..],
        ),
    ] {
        let line = line_of(kind);
        assert!(
            line.split(' ')
                .next()
                .is_some_and(|time| time.ends_with('Z')),
            "starts with the UTC time: {line}"
        );
        for field in fields {
            assert!(line.contains(field), "{field} in {line}");
        }
    }

    // --json prints the payload as it is.
    let mut args = vec!["events", "--json", "--kind", "stats", "-c", "1", "-t", "30"];
    args.extend(connect_args(&server, certs, "ops"));
    let stats = output_within(cassini(&args), DEADLINE);
    assert!(stats.status.success(), "{}", harness::stderr(&stats));
    let event: serde_json::Value =
        serde_json::from_str(harness::stdout(&stats).trim()).expect("one JSON object");
    assert_eq!(event["kind"], "stats");
    assert!(event["connections"].as_u64().is_some_and(|n| n >= 1));

    broker.terminate();
}

#[test]
fn events_as_an_identity_the_acl_does_not_allow_fails_with_not_authorized() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path");
    harness::init_certs(dir.path(), &["ops", "dev"]);
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, ACL).expect("write acl");
    let mut broker = Serve::new(&["--certs", certs, "--acl", acl.to_str().expect("utf-8")]).start();
    let server = broker.server();

    let mut args = vec!["events", "--timeout", "10"];
    args.extend(connect_args(&server, certs, "dev"));
    let refused = output_within(cassini(&args), DEADLINE);
    let stderr = harness::stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("$SYS.event.>") && stderr.contains("NOT_AUTHORIZED"),
        "says what and why: {stderr}"
    );

    // An unknown kind is refused before connecting.
    let unknown = run(&mut cassini(&["events", "--kind", "nope"]));
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        harness::stderr(&unknown).contains("connect"),
        "lists the kinds"
    );

    broker.terminate();
}
