//! Every example in `examples/` runs against a real broker and does what its doc says.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use cassini_e2e::TestBroker;

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

async fn run_example(broker: &TestBroker, name: &str, env: &[(&str, &str)]) -> String {
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
