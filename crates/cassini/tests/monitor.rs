//! `cassini serve --monitor` and `cassini top` / `cassini stats`, run as a user runs them.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::io::Read;
use std::process::Stdio;

use harness::{cassini, run, wait_with_deadline, Broker};

#[test]
fn top_once_shows_the_connections_and_topics_of_a_running_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().unwrap();
    let mut broker = Broker::start(&["--certs", certs, "--monitor", "127.0.0.1:0"]);
    let server = broker.server();
    let monitor = broker.monitor().to_string();
    assert!(!monitor.ends_with(":0"), "{monitor}");

    let connect = ["--server", server.as_str(), "--certs", certs];
    let mut sub_args = vec![
        "sub",
        "top.demo.>",
        "--raw",
        "--count",
        "3",
        "--timeout",
        "30",
    ];
    sub_args.extend(connect);
    let mut subscriber = cassini(&sub_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sub");

    // Wait until the subscription is visible, then publish and read it back in top.
    let deadline = std::time::Instant::now() + harness::DEADLINE;
    let screen = loop {
        let output = run(&mut cassini(&["top", "--once", "--monitor", &monitor]));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let screen = String::from_utf8(output.stdout).unwrap();
        if screen.contains("top.demo.>") {
            break screen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no subscription in:\n{screen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(screen.starts_with("cassini "), "{screen}");
    assert!(screen.contains("CONNECTIONS (1 of 1)"), "{screen}");
    assert!(
        screen.contains(" dev "),
        "the identity is listed:\n{screen}"
    );
    assert!(screen.contains("TOPICS (1 of 1)"), "{screen}");
    assert!(screen.contains("ready"), "{screen}");
    assert!(
        !screen.contains("CLUSTER"),
        "no cluster section for a standalone broker:\n{screen}"
    );

    let mut pub_args = vec!["pub", "top.demo.x", "hello", "--count", "3"];
    pub_args.extend(connect);
    assert!(run(&mut cassini(&pub_args)).status.success());
    assert!(wait_with_deadline(&mut subscriber).success());
    let mut printed = String::new();
    subscriber
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    assert_eq!(printed, "hello\nhello\nhello\n");

    let stats = run(&mut cassini(&["stats", "--once", "--monitor", &monitor]));
    assert!(stats.status.success(), "`stats` is `top`");
    let screen = String::from_utf8(stats.stdout).unwrap();
    assert!(screen.contains("msgs in 3 (-)"), "{screen}");
    assert!(screen.contains("msgs out 3 (-)"), "{screen}");
    assert!(screen.contains("sessions created 2"), "{screen}");

    assert!(broker.terminate().success());
    let gone = run(&mut cassini(&["top", "--once", "--monitor", &monitor]));
    assert_eq!(
        gone.status.code(),
        Some(1),
        "an unreachable endpoint is an error"
    );
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&monitor), "{stderr}");
}

#[test]
fn top_on_a_terminal_quits_on_q() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().unwrap();
    let mut broker = Broker::start(&["--certs", certs, "--monitor", "127.0.0.1:0"]);
    let monitor = broker.monitor();

    // util-linux `script` gives `top` a pseudo-terminal, as a person's shell would, and passes
    // our standard input to it.
    let command = format!(
        "{} top --monitor {monitor} --interval 0.2",
        harness::CASSINI
    );
    let mut top = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn script");
    let mut stdout = top.stdout.take().expect("stdout");
    let (screens, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0
                || screens
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + harness::DEADLINE;
    let mut seen = String::new();
    while !seen.contains("connections") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        seen.push_str(&lines.recv_timeout(left).expect("top draws a screen"));
    }
    std::io::Write::write_all(top.stdin.as_mut().expect("stdin"), b"q").expect("press q");
    let status = wait_with_deadline(&mut top);
    assert!(status.success(), "top quits on q with status 0: {status}");

    assert!(broker.terminate().success());
}
