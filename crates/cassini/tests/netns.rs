//! A real network link cut and restored: the broker and an at-least-once subscriber run in two
//! network namespaces this test creates, joined by a veth pair; the test takes the link down
//! while messages are published and brings it back up. Every message arrives.
//!
//! Needs root and `ip netns`; without them the test says why and passes without running. It
//! touches nothing outside the namespaces it makes (and deletes them at the end).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::{init_certs, ip, lines, wait_for_line, Serve, CASSINI};

const MESSAGES: u64 = 200;
const BROKER_IP: &str = "10.213.7.1";
const CLIENT_IP: &str = "10.213.7.2";

/// Two namespaces and the veth pair between them, deleted on drop.
struct Namespaces {
    broker: String,
    client: String,
    broker_link: String,
}

impl Namespaces {
    /// Creates them, or says why this machine cannot.
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let ns = Self {
            broker: format!("cas-b{id}"),
            client: format!("cas-c{id}"),
            broker_link: format!("cvb{id}"),
        };
        let client_link = format!("cvc{id}");
        ip(&["netns", "add", &ns.broker])?;
        ip(&["netns", "add", &ns.client])?;
        ip(&[
            "link",
            "add",
            &ns.broker_link,
            "netns",
            &ns.broker,
            "type",
            "veth",
            "peer",
            "name",
            &client_link,
            "netns",
            &ns.client,
        ])?;
        for (namespace, link, address) in [
            (&ns.broker, &ns.broker_link, BROKER_IP),
            (&ns.client, &client_link, CLIENT_IP),
        ] {
            ns.exec_ip(
                namespace,
                &["addr", "add", &format!("{address}/30"), "dev", link],
            )?;
            ns.exec_ip(namespace, &["link", "set", link, "up"])?;
            ns.exec_ip(namespace, &["link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    fn exec_ip(&self, namespace: &str, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["netns", "exec", namespace, "ip"];
        full.extend_from_slice(args);
        ip(&full)
    }

    fn set_link(&self, up: bool) {
        self.exec_ip(
            &self.broker,
            &[
                "link",
                "set",
                &self.broker_link,
                if up { "up" } else { "down" },
            ],
        )
        .expect("set the link");
    }

    /// `cassini ARGS` inside `namespace`.
    fn cassini(&self, namespace: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace, CASSINI]);
        command.env_remove("RUST_LOG");
        command
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.broker]);
        let _ = ip(&["netns", "del", &self.client]);
    }
}

/// A child process, killed if the test ends early.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_link_cut_and_restored_between_namespaces_loses_no_acknowledged_message() {
    let namespaces = match Namespaces::create() {
        Ok(namespaces) => namespaces,
        Err(reason) => {
            eprintln!("skipping: network namespaces are not available here ({reason})");
            return;
        }
    };
    let certs = tempfile::tempdir().expect("tempdir");
    init_certs(certs.path(), &["edge", "feeder"]);

    // Port 0 on every address of the broker's namespace; the port it got is read back.
    let broker = Serve::new(&["--certs"])
        .arg(certs.path())
        .listen(Some("0.0.0.0:0"))
        .wrapped_in(&["ip", "netns", "exec", &namespaces.broker])
        .start();
    let port = broker.addr().port();
    let listen = format!("{BROKER_IP}:{port}");
    let local = format!("127.0.0.1:{port}");

    let mut subscriber = namespaces.cassini(&namespaces.client);
    subscriber
        .args([
            "sub",
            "cut.x",
            "--raw",
            "--ack",
            "--count",
            &MESSAGES.to_string(),
        ])
        .args([
            "--timeout",
            "90",
            "--server",
            &listen,
            "--name",
            "edge",
            "--certs",
        ])
        .arg(certs.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut subscriber = Process(subscriber.spawn().expect("subscriber"));
    let received = lines(subscriber.0.stdout.take().expect("stdout"));
    let subscriber_log = lines(subscriber.0.stderr.take().expect("stderr"));
    wait_for_line(&subscriber_log, "the subscription", |l| {
        l.starts_with("subscribed")
    });

    namespaces.set_link(false);
    let publish = namespaces
        .cassini(&namespaces.broker)
        .args([
            "pub",
            "cut.x",
            "while-cut",
            "--count",
            &MESSAGES.to_string(),
        ])
        .args(["--server", &local, "--name", "feeder", "--certs"])
        .arg(certs.path())
        .output()
        .expect("publisher");
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );
    std::thread::sleep(Duration::from_secs(3)); // the link stays down a while: the fault itself
    namespaces.set_link(true);

    let status = subscriber.0.wait().expect("subscriber exits");
    let lines: Vec<String> = received.try_iter().collect();
    assert!(
        status.success(),
        "the subscriber got all {MESSAGES}: {}",
        lines.len()
    );
    assert_eq!(lines.len() as u64, MESSAGES);
    assert!(lines.iter().all(|line| line == "while-cut"));
}
