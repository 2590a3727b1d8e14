//! Every example in `examples/` runs against a real broker and does what its doc says.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use cassini_e2e::{within, TestBroker};
use tokio::sync::mpsc;

/// The example binary beside this test (`target/<profile>/examples/NAME`). `cargo test` builds
/// examples with the tests; when a filtered run did not, they are built here once.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "cassini-e2e", "--examples"])
                .status()
                .expect("cargo build --examples");
            assert!(status.success(), "building the examples failed");
        });
    }
    path
}

/// The command that runs example `name` against `broker` with a client certificate `dev` in a
/// temporary certificate directory, which must outlive the run.
fn example_command(
    broker: &TestBroker,
    name: &str,
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Command) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.crt"), broker.pki.ca.cert_pem()).expect("ca.crt");
    broker
        .pki
        .client("dev")
        .write(
            &dir.path().join("client-dev.crt"),
            &dir.path().join("client-dev.key"),
        )
        .expect("client certificate");
    let mut command = Command::new(example(name));
    command
        .env("CASSINI_SERVER", broker.addr.to_string())
        .env("CASSINI_CERTS", dir.path())
        .env("CASSINI_NAME", "dev")
        .envs(env.iter().copied());
    (dir, command)
}

async fn run_example(broker: &TestBroker, name: &str, env: &[(&str, &str)]) -> String {
    let (_dir, mut command) = example_command(broker, name, env);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .unwrap_or_else(|err| panic!("running example {name}: {err} (built by `cargo test`?)"));
    assert!(
        output.status.success(),
        "example {name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_pubsub_example_prints_three_greetings() {
    let broker = TestBroker::start().await;
    let out = run_example(&broker, "pubsub", &[]).await;
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("demo.greetings #1: hello"), "{out}");
    broker.stop().await;
}

#[tokio::test]
async fn the_request_reply_example_gets_a_reply_and_no_responders() {
    let broker = TestBroker::start().await;
    let out = run_example(&broker, "request_reply", &[]).await;
    assert!(out.contains("reply: caller asked"), "{out}");
    assert!(out.contains("no responders, as expected"), "{out}");
    broker.stop().await;
}

#[tokio::test]
async fn the_typed_messages_example_round_trips_both_encodings() {
    let broker = TestBroker::start().await;
    let out = run_example(&broker, "typed_messages", &[]).await;
    assert!(
        out.contains("json:    Reading { sensor: \"kitchen\", celsius: 21.5 }"),
        "{out}"
    );
    assert!(
        out.contains("msgpack: Reading { sensor: \"kitchen\", celsius: 21.5 }"),
        "{out}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn the_edge_client_example_receives_its_own_readings() {
    let broker = TestBroker::start().await;
    let out = run_example(&broker, "edge_client", &[("CASSINI_EXAMPLE_MESSAGES", "3")]).await;
    assert!(out.contains("connected as dev"), "{out}");
    assert!(out.contains("#3 reading 2"), "{out}");
    broker.stop().await;
}

/// A running example whose stdout is read line by line; killed if the test ends early.
struct RunningExample {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl RunningExample {
    fn spawn(mut command: Command) -> Self {
        command.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = command.spawn().expect("example starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `wanted`; fails the test after the deadline or at the
    /// end of the output.
    async fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let line = within(what, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if wanted(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        line.unwrap_or_else(|| panic!("output ended before {what}: {:#?}", self.seen))
    }
}

impl Drop for RunningExample {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_edge_client_example_survives_a_broker_restart() {
    let broker = TestBroker::start().await;
    // The example publishes every 200 ms and buffers what it publishes while the broker is
    // away (2 s or more); the client reports `Connected` once that buffer is sent. With a
    // limit of 8 it can receive its 8th reading, and close, while buffered ones are still
    // going out, so `Connected` never comes (one CI run printed exactly that); 30 leaves the
    // flush time to finish.
    let (_dir, command) = example_command(
        &broker,
        "edge_client",
        &[("CASSINI_EXAMPLE_MESSAGES", "30")],
    );
    let mut example = RunningExample::spawn(command);
    example
        .wait_for("a reading before the restart", |l| l.contains(" reading "))
        .await;

    let broker = broker.restart().await;
    example
        .wait_for("the client reconnecting", |l| {
            l.starts_with("state: Reconnecting")
        })
        .await;
    // The lost session is reported as soon as the subscription is made again, and the new
    // session's first reading may arrive then too: both may come before or after `Connected`
    // (that waits for the outbound buffer to be sent).
    let (mut connected, mut lost, mut reading) = (false, false, false);
    while !(connected && lost && reading) {
        let line = example
            .wait_for(
                "the client connected again, the lost session reported as a gap, and a reading in the new session",
                |l| {
                    l.starts_with("state: Connected")
                        || l.contains("gap: SessionLost")
                        || l.starts_with("#1 reading")
                },
            )
            .await;
        connected |= line.starts_with("state: Connected");
        lost |= line.contains("gap: SessionLost");
        reading |= line.starts_with("#1 reading");
    }
    let status = within("the example exits after its 30 messages", async {
        let mut child = std::mem::replace(
            &mut example.child,
            Command::new("true").spawn().expect("placeholder"),
        );
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
    })
    .await
    .expect("wait");
    assert!(status.success(), "{:#?}", example.seen);
    broker.stop().await;
}

#[tokio::test]
async fn the_embedded_actor_example_turns_readings_into_commands() {
    let mut command = Command::new(example("embedded_actor"));
    command.env("CASSINI_EXAMPLE_MESSAGES", "2");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run embedded_actor");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("thermostat: boiler at 19.5 °C"), "{out}");
    assert_eq!(out.matches("sensor: plant.boiler.cool").count(), 2, "{out}");
}

#[tokio::test]
async fn the_telemetry_example_counts_what_it_lost() {
    let broker = TestBroker::start().await;
    let out = run_example(&broker, "telemetry", &[("CASSINI_EXAMPLE_MESSAGES", "100")]).await;
    let summary = out
        .lines()
        .find(|line| line.starts_with("received "))
        .unwrap_or_else(|| panic!("no summary: {out}"));
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [received, sent, lost] = numbers[..] else {
        panic!("summary {summary:?}");
    };
    assert_eq!(sent, 100);
    assert!(received > 0, "{out}");
    assert!(received + lost <= sent, "{out}");
    broker.stop().await;
}
