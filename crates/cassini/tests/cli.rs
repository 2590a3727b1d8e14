//! The command line as a user runs it: real processes, a real broker, certificates written by
//! `cassini certs init`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use harness::{
    cassini, log_field, run, spawn_until, stderr, terminate, wait_with_deadline, Broker, Serve,
};

/// The arguments of a client command: `ARGS --server SERVER --certs CERTS --name NAME`.
fn client_args<'a>(
    args: &[&'a str],
    server: &'a str,
    certs: &'a str,
    name: &'a str,
) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(["--server", server, "--certs", certs, "--name", name]);
    all
}

/// [`client_args`] for the client most tests use, `dev`.
fn dev_args<'a>(args: &[&'a str], server: &'a str, certs: &'a str) -> Vec<&'a str> {
    client_args(args, server, certs, "dev")
}

/// [`client`] named `dev`, the client most tests use.
fn dev(args: &[&str], server: &str, certs: &str) -> Command {
    client(args, server, certs, "dev")
}

/// Runs `cassini certs init --dir CERTS EXTRA...`.
fn certs_init(certs: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["certs", "init", "--dir", certs];
    args.extend_from_slice(extra);
    run(&mut cassini(&args))
}

/// `cassini ARGS` as a client of `server`, named `name`, with the certificates in `certs`.
fn client(args: &[&str], server: &str, certs: &str, name: &str) -> Command {
    cassini(&client_args(args, server, certs, name))
}

#[test]
fn two_subscribers_print_every_published_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path");
    let init = certs_init(certs, &["--client", "alice", "--client", "bob"]);
    assert_ok(&init, "certs init");
    assert_private(&dir.path().join("client-alice.key"));

    let mut broker = Broker::start(&["--certs", certs]);
    let server = broker.server();

    let mut subscribers: Vec<Child> = ["alice", "bob"]
        .iter()
        .map(|name| {
            spawn_until(
                client(
                    &[
                        "sub",
                        "demo.*",
                        "--raw",
                        "--count",
                        "100",
                        "--timeout",
                        "30",
                    ],
                    &server,
                    certs,
                    name,
                ),
                "subscribed to demo.*",
            )
        })
        .collect();

    let published = run(&mut client(
        &["pub", "demo.x", "hello", "--count", "100"],
        &server,
        certs,
        "alice",
    ));
    assert_ok(&published, "pub");

    for subscriber in &mut subscribers {
        let status = wait_with_deadline(subscriber);
        let mut stdout = String::new();
        std::io::Read::read_to_string(subscriber.stdout.as_mut().expect("stdout"), &mut stdout)
            .expect("read");
        assert!(status.success(), "sub exited with {status}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 100, "exactly 100 lines");
        assert!(lines.iter().all(|line| *line == "hello"));
    }

    let status = broker.terminate();
    assert!(status.success(), "serve exits 0 on SIGTERM, got {status}");
}

#[test]
fn sub_exits_non_zero_on_timeout() {
    let (_dir, certs, server, mut broker) = broker_with(&[]);
    let output = run(&mut dev(
        &["sub", "quiet.topic", "--count", "1", "--timeout", "0.5"],
        &server,
        &certs,
    ));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("timed out"), "stderr: {stderr}");
    broker.terminate();
}

#[test]
fn errors_are_one_clear_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path");

    let missing = run(&mut client(
        &["pub", "demo.x", "hi"],
        "127.0.0.1:9",
        certs,
        "nobody",
    ));
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(
        stderr.contains("ca.crt"),
        "names the missing file: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");

    let init = certs_init(certs, &[]);
    assert!(init.status.success());
    let unreachable = cassini_e2e::closed_udp_addr().to_string();
    let output = run(&mut dev(&["pub", "demo.x", "hi"], &unreachable, certs));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

#[test]
fn certs_init_keeps_an_existing_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path");
    assert!(certs_init(certs, &[]).status.success());
    let ca = std::fs::read(dir.path().join("ca.crt")).expect("ca.crt");
    let again = certs_init(certs, &["--client", "carol"]);
    assert!(again.status.success());
    assert_eq!(
        std::fs::read(dir.path().join("ca.crt")).expect("ca.crt"),
        ca
    );
    let issued = run(&mut cassini(&["certs", "issue", "dave", "--dir", certs]));
    assert!(issued.status.success());
    assert_private(&dir.path().join("client-dave.key"));
}

#[test]
fn certs_init_and_issue_write_node_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path");
    let init = certs_init(certs, &["--node", "n1", "--node", "n2"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let issued = run(&mut cassini(&[
        "certs", "issue", "--node", "n3", "--dir", certs,
    ]));
    assert!(issued.status.success(), "{}", stderr(&issued));
    for node in ["n1", "n2", "n3"] {
        let pem = std::fs::read(dir.path().join(format!("node-{node}.crt"))).expect("node cert");
        let der = CertificateDer::from_pem_slice(&pem).expect("PEM");
        assert_eq!(
            cassini_quic::identity::node_name(&der).as_deref(),
            Some(node),
            "a node certificate names its node"
        );
        assert_private(&dir.path().join(format!("node-{node}.key")));
    }
    let client = std::fs::read(dir.path().join("client-dev.crt")).expect("client cert");
    let der = CertificateDer::from_pem_slice(&client).expect("PEM");
    assert_eq!(
        cassini_quic::identity::node_name(&der),
        None,
        "a client certificate is never a node's"
    );
    let both = run(&mut cassini(&[
        "certs", "issue", "eve", "--node", "n4", "--dir", certs,
    ]));
    assert!(
        !both.status.success(),
        "a client name and a node name at once"
    );
}

fn assert_private(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key)
        .expect("key exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{} is private", key.display());
}

#[test]
fn bench_hol_runs_a_tiny_smoke_round() {
    let report = bench_json(&[
        "hol",
        "--rate",
        "200",
        "--duration",
        "0.2",
        "--warmup",
        "0.1",
        "--flood-rate",
        "50",
    ]);
    assert_eq!(report["scenario"], "hol");
    for phase in [
        "alone",
        "flood_on_other_connection",
        "flood_on_same_connection",
    ] {
        assert!(
            report[phase]["count"].as_u64().expect("count") > 0,
            "{phase} measured"
        );
    }
}

#[test]
fn req_gets_the_reply_of_a_reply_service_and_fails_fast_without_one() {
    let (_dir, certs, server, mut broker) = broker_with(&[]);
    let mut service = reply_once(&server, &certs, "svc.upper", "tr a-z A-Z");

    let reply = request_hello(&server, &certs, "svc.upper");
    assert_ok(&reply, "req");
    assert_eq!(String::from_utf8_lossy(&reply.stdout).trim(), "HELLO");
    assert!(
        wait_with_deadline(&mut service).success(),
        "reply exits after --count 1"
    );

    let started = Instant::now();
    let refused = request_hello(&server, &certs, "svc.nobody");
    assert_eq!(refused.status.code(), Some(3), "no responders exit status");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no responders on svc.nobody"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "did not wait for the timeout"
    );

    broker.terminate();
}

#[test]
fn bench_latency_and_throughput_run_a_tiny_smoke_round() {
    let report = paced_smoke_round("latency");
    assert_eq!(report["lost"], 0);
    assert!(report["latency"]["count"].as_u64().expect("count") > 0);

    let report = bench_json(&["throughput", "--count", "2000"]);
    assert_eq!(report["received"], 2000);
    assert_eq!(report["lost"], 0);
}

#[test]
fn bench_datagram_runs_a_tiny_smoke_round() {
    let report = paced_smoke_round("datagram");
    assert_eq!(report["scenario"], "datagram");
    assert_eq!(report["results"].as_array().map(Vec::len), Some(6));
}

/// Runs the paced bench `scenario` for a tiny round (500 messages/s for 0.2 s after 0.1 s of
/// warm-up) and returns its report.
fn paced_smoke_round(scenario: &str) -> serde_json::Value {
    bench_json(&[
        scenario,
        "--rate",
        "500",
        "--duration",
        "0.2",
        "--warmup",
        "0.1",
    ])
}

/// Runs `cassini bench ARGS --json` and returns its report.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let output = run(&mut cassini(&all));
    assert_ok(&output, &format!("bench {args:?}"));
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

#[test]
fn bench_fanout_request_and_connections_run_a_tiny_smoke_round() {
    let fanout = bench_json(&["fanout", "--count", "200", "--subscribers", "3"]);
    assert_eq!(fanout["scenario"], "fanout");
    assert_eq!(fanout["delivered"], 600);
    assert_eq!(fanout["lost"], 0);

    let dir = tempfile::tempdir().expect("tempdir");
    let plot = dir.path().join("request.svg");
    let plot_arg = plot.to_str().expect("utf-8 path");
    let request = bench_json(&["request", "--count", "100", "--plot", plot_arg]);
    assert_eq!(request["round_trips"], 100);
    assert_eq!(request["failed"], 0);
    let svg = std::fs::read_to_string(&plot).expect("the plot was written");
    assert!(svg.starts_with("<svg") && svg.contains("request → reply"));

    let connections = bench_json(&["connections", "--count", "20", "--concurrency", "4"]);
    for server in ["bare_quinn", "cassini"] {
        assert_eq!(connections[server]["opened"], 20, "{server}: {connections}");
        assert_eq!(connections[server]["failed"], 0, "{server}: {connections}");
        assert!(
            connections[server]["rss_after_bytes"].as_u64().is_some(),
            "{server}: the child's memory was read"
        );
    }
}

#[test]
fn bench_cluster_runs_a_tiny_smoke_round() {
    let report = bench_json(&[
        "cluster",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--repeat",
        "1",
        "--count",
        "2000",
        "--fanout-count",
        "100",
        "--subscribers",
        "6",
        "--failovers",
        "1",
    ]);
    assert_eq!(report["scenario"], "cluster");
    assert_eq!(report["fanout_spread_lost"], 0.0, "{report}");
    for figure in [
        "same_node_p99_us",
        "cross_node_p99_us",
        "cluster_cpu_us_per_msg",
        "failover_median_s",
    ] {
        assert!(
            report[figure].as_f64().is_some_and(|value| value > 0.0),
            "{figure}: {report}"
        );
    }
}

#[test]
fn bench_sessions_runs_a_tiny_smoke_round() {
    let report = bench_json(&[
        "sessions",
        "--count",
        "200",
        "--rate",
        "200",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--repeat",
        "1",
        "--failovers",
        "1",
    ]);
    assert_eq!(report["scenario"], "sessions");
    for mode in ["memory", "disk"] {
        for place in ["cluster", "standalone"] {
            assert_eq!(report[format!("{mode}_{place}_lost")], 0, "{report}");
            for figure in ["acked_per_s", "delivery_p99_us", "ack_p99_us"] {
                let key = format!("{mode}_{place}_{figure}");
                assert!(
                    report[&key].as_f64().is_some_and(|value| value > 0.0),
                    "{key}: {report}"
                );
            }
        }
        assert_eq!(report[format!("{mode}_failed")], 0, "{report}");
    }
    assert_eq!(report["failover_sessions_lost"], 0, "{report}");
    assert_eq!(report["failovers"], 1, "{report}");
    assert!(
        report["failover_median_s"]
            .as_f64()
            .is_some_and(|value| value > 0.0),
        "{report}"
    );
}

#[test]
fn bench_durable_runs_a_tiny_smoke_round() {
    let report = bench_json(&["durable", "--duration", "0.3", "--publishers", "2"]);
    let cases = report["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 4, "memory and disk, one and two publishers");
    for case in cases {
        assert!(case["acked"].as_u64().expect("acked") > 0, "{case}");
        assert_eq!(case["acked"], case["delivered"], "{case}");
    }
}

#[test]
fn a_refused_pub_exits_non_zero_with_the_brokers_reason() {
    let (_dir, certs, server, mut broker) = broker_with_acl(
        "default = \"deny\"\n[[rule]]\nidentity = \"dev\"\npublish = [\"demo.>\"]\n",
    );

    let allowed = run(&mut dev(
        &["pub", "demo.ok", "hi", "--count", "3"],
        &server,
        &certs,
    ));
    assert_ok(&allowed, "an allowed pub exits 0");

    let refused = run(&mut dev(
        &["pub", "secret.x", "hi", "--count", "3"],
        &server,
        &certs,
    ));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a refused pub fails: {stderr}"
    );
    assert!(
        stderr.contains("refused 3 of 3 publish(es) to secret.x: NOT_AUTHORIZED"),
        "the reason is on stderr: {stderr}"
    );

    broker.terminate();
}

#[test]
fn req_exits_4_when_the_responder_command_fails() {
    let (_dir, certs, server, mut broker) = broker_with(&[]);
    let mut service = reply_once(&server, &certs, "svc.fail", "exit 7");

    let reply = request_hello(&server, &certs, "svc.fail");
    let stderr = String::from_utf8_lossy(&reply.stderr);
    assert_eq!(reply.status.code(), Some(4), "req: {stderr}");
    assert!(
        stderr.contains("the responder reported an error"),
        "says why: {stderr}"
    );
    assert!(wait_with_deadline(&mut service).success());

    broker.terminate();
}

#[test]
fn serve_outlives_its_closed_log_pipe_and_writes_no_colour_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path");
    // The test reads the log itself, so it starts the broker without the harness's reader.
    let mut broker = Serve::new(&["--certs", certs])
        .command()
        .spawn()
        .expect("spawn");
    // Read the first line, as `| head -1` does, then close the pipe.
    let mut stderr = std::io::BufReader::new(broker.stderr.take().expect("stderr"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).expect("first log line");
    assert!(
        !first.contains('\u{1b}'),
        "no colour codes in a pipe: {first:?}"
    );
    let mut line = first;
    while !line.contains("cassini listening") {
        line.clear();
        let read = std::io::BufRead::read_line(&mut stderr, &mut line).expect("log line");
        assert!(read > 0, "serve exited before listening");
    }
    drop(stderr);
    let server = log_field(&line, "addr").expect("the bound address is logged");

    // Every connection logs at info level; these lines now go to a closed pipe.
    for _ in 0..3 {
        let published = run(&mut dev(&["pub", "demo.x", "hi"], &server, certs));
        assert_ok(&published, "the broker still serves");
    }
    terminate(&mut broker);
    let status = wait_with_deadline(&mut broker);
    assert!(status.success(), "serve exits 0 on SIGTERM, got {status}");
}

#[test]
fn sigterm_ends_sub_like_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path");
    let mut broker = Serve::new(&["--certs", certs])
        .env("RUST_LOG", "info,cassini_broker::actors::session=debug")
        .start();
    let server = broker.server();

    let mut subscriber = spawn_until(
        dev(&["sub", "demo.>"], &server, certs),
        "subscribed to demo.>",
    );
    terminate(&mut subscriber);
    let status = wait_with_deadline(&mut subscriber);
    assert!(status.success(), "sub exits 0 on SIGTERM, got {status}");

    assert!(broker.terminate().success());
    let log = broker.log();
    assert!(
        !log.iter().any(|line| line.contains("session detached")),
        "sub said goodbye, so its session ended instead of waiting to expire: {log:?}"
    );
}

/// Sends SIGINT (Ctrl-C) to `child`.
fn interrupt(child: &mut Child) {
    harness::signal(child.id(), "INT");
}

#[test]
fn sub_with_a_session_name_gets_what_was_published_while_it_was_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let certs = certs.to_str().expect("utf-8 path");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let mut broker = Broker::start(&["--certs", certs, "--storage", "disk", "--data-dir", data]);
    let server = broker.server();

    let mut first = spawn_until(
        dev(
            &["sub", "away.>", "--session", "s1", "--ack"],
            &server,
            certs,
        ),
        "subscribed to away.>",
    );
    interrupt(&mut first);
    assert!(
        wait_with_deadline(&mut first).success(),
        "sub exits 0 on Ctrl-C"
    );

    for message in ["one", "two", "three"] {
        let published = run(&mut dev(&["pub", "away.x", message], &server, certs));
        assert_ok(&published, "pub");
    }
    // The named session and its backlog are on disk: a broker restart keeps them.
    assert!(broker.terminate().success());
    broker.start_again();

    let second = run(&mut dev(
        &[
            "sub",
            "away.>",
            "--raw",
            "--session",
            "s1",
            "--ack",
            "--count",
            "3",
            "--timeout",
            "20",
        ],
        &server,
        certs,
    ));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "second sub: {stderr}");
    assert!(stderr.contains("session \"s1\" resumed"), "{stderr}");
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["one", "two", "three"],
        "the messages published while no sub ran"
    );

    // Acknowledged and left: the next run of the session has nothing more.
    let third = run(&mut dev(
        &[
            "sub",
            "away.>",
            "--session",
            "s1",
            "--ack",
            "--count",
            "1",
            "--timeout",
            "1",
        ],
        &server,
        certs,
    ));
    assert_eq!(third.status.code(), Some(2), "nothing left to print");
    assert!(third.stdout.is_empty());

    assert!(broker.terminate().success());
}

/// Starts a broker on port 0 with certificates in a fresh directory; returns the directory,
/// the certificate path, the address and the broker.
fn broker_with(extra: &[&str]) -> (tempfile::TempDir, String, String, Broker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path").to_string();
    let mut args = vec!["--certs", certs.as_str()];
    args.extend_from_slice(extra);
    let broker = Broker::start(&args);
    let server = broker.server();
    (dir, certs, server, broker)
}

/// [`broker_with`] `--acl`, the ACL `toml` written next to the certificates.
fn broker_with_acl(toml: &str) -> (tempfile::TempDir, String, String, Broker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, toml).expect("write acl");
    let certs = dir.path().to_str().expect("utf-8 path").to_string();
    let broker = Broker::start(&[
        "--certs",
        &certs,
        "--acl",
        acl.to_str().expect("utf-8 path"),
    ]);
    let server = broker.server();
    (dir, certs, server, broker)
}

/// Runs `cassini ARGS` with `input` on its standard input.
fn run_with_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = cassini(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

/// Starts `cassini reply SUBJECT --command COMMAND --count 1` and waits until it serves.
fn reply_once(server: &str, certs: &str, subject: &str, command: &str) -> Child {
    let args = ["reply", subject, "--command", command, "--count", "1"];
    spawn_until(dev(&args, server, certs), &format!("serving {subject}"))
}

/// Runs `cassini req SUBJECT hello --timeout 10`.
fn request_hello(server: &str, certs: &str, subject: &str) -> std::process::Output {
    run(&mut dev(
        &["req", subject, "hello", "--timeout", "10"],
        server,
        certs,
    ))
}

/// Starts `cassini sub FILTER --count N --raw` and waits until it is subscribed.
fn raw_subscriber(server: &str, certs: &str, filter: &str, count: u64) -> Child {
    let count = count.to_string();
    spawn_until(
        dev(
            &["sub", filter, "--count", &count, "--timeout", "30", "--raw"],
            server,
            certs,
        ),
        &format!("subscribed to {filter}"),
    )
}

/// Waits for `child` to exit 0 and returns its standard output.
fn stdout_of(mut child: Child) -> Vec<u8> {
    // Read first: a large output would fill the pipe and block the child.
    let mut pipe = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut stdout = Vec::new();
        std::io::Read::read_to_end(&mut pipe, &mut stdout).expect("read");
        stdout
    });
    let status = wait_with_deadline(&mut child);
    let stdout = reader.join().expect("reader");
    assert!(status.success(), "exited with {status}");
    stdout
}

fn assert_ok(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn pub_reads_stdin_files_and_lines_binary_empty_and_up_to_the_limit() {
    let (dir, certs, server, mut broker) = broker_with(&[]);

    // Binary from standard input, then an empty body, then a file of exactly 1 MiB (the
    // broker's default payload limit).
    let subscriber = raw_subscriber(&server, &certs, "bin.x", 3);
    let binary: &[u8] = &[0, 159, 255, b'\n', 0, 7];
    assert_ok(
        &run_with_stdin(&dev_args(&["pub", "bin.x", "-"], &server, &certs), binary),
        "pub -",
    );
    assert_ok(
        &run(&mut dev(&["pub", "bin.x", ""], &server, &certs)),
        "pub with an empty body",
    );
    let big = dir.path().join("big.bin");
    let big_body: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&big, &big_body).expect("write");
    let big_arg = big.to_str().expect("utf-8 path");
    assert_ok(
        &run(&mut dev(
            &["pub", "bin.x", "--file", big_arg],
            &server,
            &certs,
        )),
        "pub --file of 1 MiB",
    );
    let mut expected = binary.to_vec();
    expected.extend_from_slice(b"\n\n");
    expected.extend_from_slice(&big_body);
    expected.push(b'\n');
    assert!(stdout_of(subscriber) == expected, "the bodies as they were");

    // One byte over the limit is refused before anything is sent, with the reason.
    let mut too_big = big_body.clone();
    too_big.push(0);
    std::fs::write(&big, &too_big).expect("write");
    let refused = run(&mut dev(
        &["pub", "bin.x", "--file", big_arg],
        &server,
        &certs,
    ));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("larger than the broker's payload limit"),
        "{stderr}"
    );

    // --lines from standard input and from a file; {{Count}} numbers the messages from 1.
    let subscriber = raw_subscriber(&server, &certs, "lines.x", 5);
    let args = dev_args(&["pub", "lines.x", "-", "--lines"], &server, &certs);
    assert_ok(
        &run_with_stdin(&args, b"a {{Count}}\r\nb {{Count}}\n"),
        "pub --lines",
    );
    let file = dir.path().join("lines.txt");
    std::fs::write(&file, "c\nd\ne").expect("write");
    let file = file.to_str().expect("utf-8 path");
    let mut publish = dev(
        &["pub", "lines.x", "--lines", "--file", file],
        &server,
        &certs,
    );
    assert_ok(&run(&mut publish), "pub --lines --file");
    assert_eq!(
        String::from_utf8(stdout_of(subscriber)).expect("utf-8"),
        "a 1\nb 2\nc\nd\ne\n"
    );

    // --count with a template and --sleep between messages.
    let subscriber = raw_subscriber(&server, &certs, "tpl.x", 3);
    let mut publish = dev(
        &[
            "pub",
            "tpl.x",
            "n={{Count}}",
            "--count",
            "3",
            "--sleep",
            "0.2",
        ],
        &server,
        &certs,
    );
    let started = Instant::now();
    assert_ok(&run(&mut publish), "pub --count --sleep");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "slept twice"
    );
    assert_eq!(
        String::from_utf8(stdout_of(subscriber)).expect("utf-8"),
        "n=1\nn=2\nn=3\n"
    );

    broker.terminate();
}

#[test]
fn pub_ack_exits_zero_when_acknowledged_and_non_zero_with_the_reason_when_not() {
    let (_dir, certs, server, mut broker) = broker_with_acl(
        "default = \"deny\"\n[[rule]]\nidentity = \"dev\"\npublish = [\"demo.>\"]\nsubscribe = [\"demo.>\"]\n",
    );
    let subscriber = raw_subscriber(&server, &certs, "demo.ack", 2);
    assert_ok(
        &run(&mut dev(
            &["pub", "demo.ack", "m{{Count}}", "--ack", "--count", "2"],
            &server,
            &certs,
        )),
        "pub --ack",
    );
    assert_eq!(
        String::from_utf8(stdout_of(subscriber)).expect("utf-8"),
        "m1\nm2\n"
    );

    let refused = run(&mut dev(
        &["pub", "secret.x", "hi", "--ack"],
        &server,
        &certs,
    ));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("publish 1 to secret.x was not acknowledged")
            && stderr.contains("NOT_AUTHORIZED"),
        "the reason is on stderr: {stderr}"
    );

    broker.terminate();
}

#[test]
fn sub_prints_topic_and_headers_by_default_and_takes_short_flags() {
    let (_dir, certs, server, mut broker) = broker_with(&[]);
    // Short flags: -s server, -c count, -t timeout, -H header.
    let sub = [
        "sub", "show.>", "-c", "2", "-t", "30", "-s", &server, "--certs", &certs,
    ];
    let subscriber = spawn_until(cassini(&sub), "subscribed to show.>");
    let publish = [
        "pub", "show.x", "hello", "-H", "k=v", "-H", "n=2", "-s", &server, "--certs", &certs,
    ];
    assert_ok(&run(&mut cassini(&publish)), "pub with headers");
    let publish = ["pub", "show.y", "plain", "-s", &server, "--certs", &certs];
    assert_ok(&run(&mut cassini(&publish)), "pub");
    assert_eq!(
        String::from_utf8(stdout_of(subscriber)).expect("utf-8"),
        "[#1] Received on \"show.x\"\nk: v\nn: 2\n\nhello\n\n\
         [#2] Received on \"show.y\"\nplain\n\n"
    );
    broker.terminate();
}

#[test]
fn sub_queue_shares_messages_among_the_group() {
    let (_dir, certs, server, mut broker) = broker_with(&[]);
    let members: Vec<Child> = (0..2)
        .map(|_| {
            let args = [
                "sub", "work.>", "--raw", "-q", "g", "-c", "5", "-t", "30", "-s", &server,
                "--certs", &certs,
            ];
            spawn_until(cassini(&args), "subscribed to work.> in queue group g")
        })
        .collect();
    let everything = raw_subscriber(&server, &certs, "work.>", 10);
    let publish = [
        "pub",
        "work.x",
        "job {{Count}}",
        "-c",
        "10",
        "-s",
        &server,
        "--certs",
        &certs,
    ];
    assert_ok(&run(&mut cassini(&publish)), "pub");

    let mut shared: Vec<String> = Vec::new();
    for member in members {
        let printed = String::from_utf8(stdout_of(member)).expect("utf-8");
        assert_eq!(printed.lines().count(), 5, "one message in two: {printed}");
        shared.extend(printed.lines().map(str::to_string));
    }
    shared.sort();
    let mut all: Vec<String> = (1..=10).map(|n| format!("job {n}")).collect();
    all.sort();
    assert_eq!(shared, all, "each message went to one member");
    let printed = String::from_utf8(stdout_of(everything)).expect("utf-8");
    assert_eq!(
        printed.lines().count(),
        10,
        "outside the group: every message"
    );
    broker.terminate();
}

#[test]
fn req_replies_waits_for_n_replies() {
    let (_dir, certs, server, mut broker) = broker_with(&[]);
    // Short flags on purpose: `-c`, `-s` and `-t` are part of the contract.
    let responder = || {
        let args = [
            "reply",
            "svc.multi",
            "-c",
            "1",
            "-s",
            &server,
            "--certs",
            &certs,
        ];
        spawn_until(cassini(&args), "serving svc.multi")
    };
    let request_two = |payload: &str, timeout: &str| {
        let args = [
            "req",
            "svc.multi",
            payload,
            "--replies",
            "2",
            "-t",
            timeout,
            "-s",
            &server,
            "--certs",
            &certs,
        ];
        run(&mut cassini(&args))
    };
    let responders = [responder(), responder()];
    let started = Instant::now();
    let output = request_two("hi", "20");
    assert_ok(&output, "req --replies 2");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hi\nhi\n");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "did not wait for the timeout"
    );
    for mut responder in responders {
        assert!(wait_with_deadline(&mut responder).success());
    }

    // One responder, two replies wanted: the one reply is printed, then exit 2 at the timeout.
    let mut responder = responder();
    let output = request_two("once", "1");
    assert_eq!(output.status.code(), Some(2), "fewer replies than asked");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "once\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 of 2 replies on svc.multi"));
    assert!(wait_with_deadline(&mut responder).success());

    broker.terminate();
}

#[test]
fn pub_lines_publishes_each_line_as_it_is_read() {
    use std::io::Write as _;
    let (_dir, certs, server, mut broker) = broker_with(&[]);
    let first = raw_subscriber(&server, &certs, "stream.x", 1);
    let mut publisher = dev(
        &["pub", "stream.x", "-", "--lines", "--ack"],
        &server,
        &certs,
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn");
    let mut stdin = publisher.stdin.take().expect("stdin");
    stdin.write_all(b"first\n").expect("write");
    stdin.flush().expect("flush");
    // Standard input is still open: the line must arrive before its end.
    assert_eq!(stdout_of(first), b"first\n");
    let second = raw_subscriber(&server, &certs, "stream.x", 1);
    stdin.write_all(b"second\n").expect("write");
    drop(stdin);
    assert_eq!(stdout_of(second), b"second\n");
    assert!(wait_with_deadline(&mut publisher).success());
    broker.terminate();
}

#[test]
fn server_ping_and_check_ask_a_running_broker_and_check_fails_with_status_2() {
    let (_dir, certs, server, mut broker) = broker_with(&[]);

    let ping = run(&mut dev(&["server", "ping", "-c", "3"], &server, &certs));
    let stdout = String::from_utf8_lossy(&ping.stdout);
    assert_ok(&ping, "ping");
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.starts_with("pong "))
            .count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("3 pings: min "), "{stdout}");

    let check = run(&mut dev(&["server", "check"], &server, &certs));
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("CASSINI OK - ") && stdout.contains("connected as dev"),
        "{stdout}"
    );

    assert!(broker.terminate().success());

    // Nobody listens any more: a verdict, not a hang.
    let check = run(&mut dev(&["server", "check", "-t", "3"], &server, &certs));
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(2), "{stdout}");
    assert!(stdout.starts_with("CASSINI CRITICAL - "), "{stdout}");
}
