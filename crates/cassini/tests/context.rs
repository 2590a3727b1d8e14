//! Contexts, the `CASSINI_SERVER` / `CASSINI_CERTS` / `CASSINI_NAME` variables and
//! `--server-name`'s default; `cassini server info` and `cassini server report`. Each runs the
//! real binary against a real broker on port 0, with certificates made by `cassini certs init`
//! and the contexts in a temporary `XDG_CONFIG_HOME`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod harness;

use harness::workspace::Workspace;
use harness::{assert_contains, eventually, output_within, stderr, stdout, Running, DEADLINE};
use serde_json::Value;

/// Asserts that `server check` reported a connection as `name`.
fn assert_connected_as(check: &std::process::Output, name: &str) {
    let printed = stdout(check);
    assert!(
        printed.contains(&format!("connected as {name}")),
        "{printed}"
    );
}

#[test]
fn a_selected_context_supplies_server_certs_and_name_and_the_environment_and_flags_override_it() {
    let workspace = Workspace::new(&["alice", "bob"]);
    let broker = workspace.broker(false);
    let server = broker.server();

    let listed = workspace.run(&["context", "list"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert_contains(&stderr(&listed), "no contexts");

    // A relative certificate directory is stored absolute: the context works from anywhere.
    let added = workspace.run(&[
        "context",
        "add",
        "lab",
        "--server",
        &server,
        "--certs",
        "certs",
        "--name",
        "alice",
        "--description",
        "the test broker",
        "--select",
    ]);
    assert!(added.status.success(), "{}", stderr(&added));
    let file = workspace.config_home().join("cassini/contexts/lab.toml");
    let stored = std::fs::read_to_string(&file).expect("the context file");
    assert!(
        stored.contains(&format!(
            "certs = {:?}",
            workspace.certs().display().to_string()
        )),
        "{stored}"
    );
    let listed = stdout(&workspace.run(&["context", "list"]));
    assert!(
        listed.contains("* lab") && listed.contains(&server),
        "{listed}"
    );
    assert!(listed.contains("the test broker"), "{listed}");
    let shown = workspace.run(&["context", "show"]);
    assert_contains(&stdout(&shown), "name = \"alice\"");

    // No flag at all: everything from the selected context, from another directory too.
    let mut elsewhere = workspace.command(&["server", "check"]);
    elsewhere.current_dir("/");
    let check = output_within(elsewhere, DEADLINE);
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert_connected_as(&check, "alice");

    // The environment beats the context; a flag beats the environment.
    let check = workspace.run_env(&["server", "check"], &[("CASSINI_NAME", "bob")]);
    assert_connected_as(&check, "bob");
    let check = workspace.run_env(
        &["server", "check", "--name", "alice"],
        &[("CASSINI_NAME", "bob")],
    );
    assert_connected_as(&check, "alice");

    // A second context, selected, points nowhere; `--context` and CASSINI_CONTEXT pick lab.
    let certs = workspace.certs();
    let added = workspace.run(&[
        "context",
        "add",
        "nowhere",
        "--server",
        "127.0.0.1:9",
        "--certs",
        certs.to_str().unwrap(),
        "--name",
        "bob",
    ]);
    assert!(added.status.success(), "{}", stderr(&added));
    let selected = workspace.run(&["context", "select", "nowhere"]);
    assert!(selected.status.success(), "{}", stderr(&selected));
    let check = workspace.run(&["server", "check", "--timeout", "1"]);
    assert_eq!(check.status.code(), Some(2), "{}", stdout(&check));
    let check = workspace.run(&["server", "check", "--context", "lab"]);
    assert_connected_as(&check, "alice");
    let check = workspace.run_env(&["server", "check"], &[("CASSINI_CONTEXT", "lab")]);
    assert_connected_as(&check, "alice");
    // CASSINI_SERVER and CASSINI_CERTS beat the selected context's; its name stays.
    let check = workspace.run_env(
        &["server", "check"],
        &[
            ("CASSINI_SERVER", server.as_str()),
            ("CASSINI_CERTS", certs.to_str().unwrap()),
        ],
    );
    assert_connected_as(&check, "bob");

    // pub and sub take the context too.
    let selected = workspace.run(&["context", "select", "lab"]);
    assert!(selected.status.success(), "{}", stderr(&selected));
    let mut sub = workspace.command(&[
        "sub",
        "ctx.demo",
        "--count",
        "1",
        "--raw",
        "--timeout",
        "30",
    ]);
    sub.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let subscriber = sub.spawn().expect("sub");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(subscriber.wait_with_output());
    });
    // Publish until the subscriber, once subscribed, has its message and exits.
    let output = eventually("the subscriber to get a message", || {
        let published = workspace.run(&["pub", "ctx.demo", "from-a-context"]);
        assert!(published.status.success(), "{}", stderr(&published));
        rx.recv_timeout(std::time::Duration::from_millis(200)).ok()
    })
    .expect("sub output");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "from-a-context\n");

    // rm unselects; a missing context is an error that says so.
    let removed = workspace.run(&["context", "rm", "lab"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(!file.exists());
    let listed = stdout(&workspace.run(&["context", "list"]));
    assert!(
        !listed.contains("lab") && listed.contains("nowhere"),
        "{listed}"
    );
    assert!(!listed.contains('*'), "nothing selected: {listed}");
    let missing = workspace.run(&["context", "select", "lab"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_contains(&stderr(&missing), "there is no context \"lab\"");
    let missing = workspace.run(&["server", "check", "--context", "lab"]);
    assert_contains(&stdout(&missing), "there is no context");
    let invalid = workspace.run(&["context", "add", "../escape", "--server", "x:1"]);
    assert_eq!(invalid.status.code(), Some(1));
    assert_contains(&stderr(&invalid), "not a context name");
}

#[test]
fn the_server_name_defaults_to_the_host_of_the_server_address_unless_it_is_an_ip_literal() {
    let workspace = Workspace::new(&["alice"]);
    let broker = workspace.broker(false);
    let server = broker.server();
    let certs = workspace.certs();
    let certs = certs.to_str().unwrap();

    // An IP literal: the certificate is checked against `localhost`, as before.
    let check = workspace.run(&[
        "server", "check", "--server", &server, "--certs", certs, "--name", "alice",
    ]);
    assert!(check.status.success(), "{}", stdout(&check));
    assert_contains(&stdout(&check), "CASSINI OK");

    // A name: the certificate is checked against that host. `broker.invalid` resolves to
    // nothing, so the check fails, and its reason says which name it would have checked.
    let port = server.rsplit_once(':').unwrap().1;
    let named = format!("broker.invalid:{port}");
    let check = workspace.run(&[
        "server",
        "check",
        "--server",
        &named,
        "--certs",
        certs,
        "--name",
        "alice",
        "--timeout",
        "5",
    ]);
    assert_eq!(check.status.code(), Some(2), "{}", stdout(&check));
    assert_contains(&stdout(&check), "server name \"broker.invalid\"");
    // `--server-name` (or CASSINI_SERVER_NAME) says otherwise.
    let check = workspace.run_env(
        &[
            "server",
            "check",
            "--server",
            &named,
            "--certs",
            certs,
            "--timeout",
            "5",
        ],
        &[("CASSINI_SERVER_NAME", "localhost")],
    );
    assert_contains(&stdout(&check), "server name \"localhost\"");
}

#[test]
fn server_info_shows_the_identity_limits_and_with_a_monitor_the_version_uptime_and_settings() {
    let workspace = Workspace::new(&["alice"]);
    let broker = workspace.broker(true);
    let server = broker.server();
    let monitor = broker.monitor().to_string();
    let certs = workspace.certs();
    let token = workspace.token_file();
    let connect = [
        "--server",
        &server,
        "--certs",
        certs.to_str().unwrap(),
        "--name",
        "alice",
    ];

    let mut args = vec!["server", "info"];
    args.extend(connect);
    let info = workspace.run(&args);
    assert!(info.status.success(), "{}", stderr(&info));
    let text = stdout(&info);
    for wanted in [
        "connected as (identity)",
        "alice",
        "max_payload_bytes",
        "round trip",
    ] {
        assert!(text.contains(wanted), "{wanted} in {text}");
    }
    assert!(text.contains("give --monitor ADDR"), "{text}");

    args.extend([
        "--monitor",
        &monitor,
        "--monitor-token-file",
        token.to_str().unwrap(),
        "--json",
    ]);
    let info = workspace.run(&args);
    assert!(info.status.success(), "{}", stderr(&info));
    let json: Value = serde_json::from_str(&stdout(&info)).expect("JSON");
    assert_eq!(json["identity"], "alice");
    assert_eq!(json["server"], server.as_str());
    assert!(json["limits"]["max_payload_bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["monitor"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["monitor"]["listen"], server.as_str());
    assert_eq!(json["monitor"]["identity_rule"], "default");
    assert_eq!(json["monitor"]["storage"], "memory");
    assert_eq!(json["monitor"]["token_required"], true);
    assert!(json["monitor"]["uptime_ms"].is_u64());
    assert!(json["monitor"]["counts"]["connections"].as_u64().unwrap() >= 1);

    // Without the token, the monitoring endpoint's refusal is the error.
    let mut args = vec!["server", "info", "--monitor", &monitor];
    args.extend(connect);
    let info = workspace.run(&args);
    assert_eq!(info.status.code(), Some(1));
    assert_contains(&stderr(&info), "401");
}

#[test]
fn server_report_lists_connections_and_subscriptions_from_the_monitoring_endpoint() {
    let workspace = Workspace::new(&["alice"]);
    let broker = workspace.broker(true);
    let server = broker.server();
    let certs = workspace.certs();
    let token = workspace.token_file();
    let _subscriber = Running::until(
        workspace.command(&[
            "sub",
            "report.>",
            "--queue",
            "workers",
            "--server",
            &server,
            "--certs",
            certs.to_str().unwrap(),
            "--name",
            "alice",
        ]),
        "subscribed to report.>",
    );
    // The monitoring endpoint and its token from a context.
    let added = workspace.run(&[
        "context",
        "add",
        "mon",
        "--monitor",
        &format!("http://{}/", broker.monitor()),
        "--monitor-token-file",
        token.to_str().unwrap(),
        "--select",
    ]);
    assert!(added.status.success(), "{}", stderr(&added));

    let report = workspace.run(&["server", "report", "subscriptions"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let table = stdout(&report);
    let header = table.lines().next().unwrap_or_default();
    for column in ["FILTER", "GROUP", "QUEUED", "FILL", "DROPPED"] {
        assert!(header.contains(column), "{column} in {header}");
    }
    let row = table
        .lines()
        .find(|line| line.starts_with("report.>"))
        .unwrap_or_else(|| panic!("a row for report.>: {table}"));
    assert!(row.contains("workers") && row.contains("0/"), "{row}");
    assert!(table.ends_with("1 subscriptions\n"), "{table}");

    let report = workspace.run(&["server", "report", "connections"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let table = stdout(&report);
    assert!(
        table.starts_with("ID") && table.contains("IDENTITY"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|line| line.contains("alice") && line.contains("127.0.0.1:")),
        "{table}"
    );

    // `top` finds the endpoint and token in the context too.
    let top = workspace.run(&["top", "--once"]);
    assert!(top.status.success(), "{}", stderr(&top));
    assert_contains(&stdout(&top), "subscriptions 1");

    let report = workspace.run(&["server", "report", "subscriptions", "--json"]);
    let json: Value = serde_json::from_str(&stdout(&report)).expect("JSON");
    assert_eq!(json["total"], 1);
    assert_eq!(json["subscriptions"][0]["filter"], "report.>");
    assert_eq!(json["subscriptions"][0]["queue_group"], "workers");

    // A flag beats the context: an endpoint where nothing listens fails with exit 1.
    let report = workspace.run(&[
        "server",
        "report",
        "connections",
        "--monitor",
        "127.0.0.1:9",
    ]);
    assert_eq!(report.status.code(), Some(1));
    assert_contains(&stderr(&report), "127.0.0.1:9");
}
