//! Helpers of the operator-facing suites (`context`, `status_page`): a real broker process on
//! port 0 with its monitoring endpoint, certificates made by `cassini certs init`, and
//! `cassini` commands run with a clean environment and a private configuration directory.

#![allow(dead_code, clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test helpers fail loudly

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub(crate) const CASSINI: &str = env!("CARGO_BIN_EXE_cassini");
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// A directory with certificates, a monitor token and a configuration directory for contexts.
pub(crate) struct Workspace {
    pub(crate) dir: tempfile::TempDir,
}

impl Workspace {
    /// Certificates for `clients` (and the server), and the token file `token`.
    pub(crate) fn new(clients: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspace = Self { dir };
        let certs = workspace.certs();
        let mut args = vec!["certs", "init", "--dir", certs.to_str().expect("utf-8")];
        for client in clients {
            args.extend(["--client", client]);
        }
        let output = workspace.run(&args);
        assert!(output.status.success(), "certs init: {}", stderr(&output));
        std::fs::write(workspace.token_file(), "ops-test-token-7c1e\n").expect("token file");
        workspace
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn certs(&self) -> PathBuf {
        self.path().join("certs")
    }

    pub(crate) fn token_file(&self) -> PathBuf {
        self.path().join("monitor.token")
    }

    pub(crate) fn token(&self) -> &'static str {
        "ops-test-token-7c1e"
    }

    /// `XDG_CONFIG_HOME` of the commands run here.
    pub(crate) fn config_home(&self) -> PathBuf {
        self.path().join("config")
    }

    /// `cassini ARGS` in this directory, without the caller's `CASSINI_*` and `RUST_LOG`, with
    /// this workspace's configuration directory.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(CASSINI);
        command
            .args(args)
            .current_dir(self.path())
            .env_remove("RUST_LOG")
            .env("XDG_CONFIG_HOME", self.config_home());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CASSINI_") {
                command.env_remove(name);
            }
        }
        command
    }

    /// Runs `cassini ARGS` to completion (within [`DEADLINE`]).
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        output_within(self.command(args), DEADLINE)
    }

    /// Runs `cassini ARGS` with extra environment variables.
    pub(crate) fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command(args);
        for (name, value) in env {
            command.env(name, value);
        }
        output_within(command, DEADLINE)
    }
}

/// Runs `command` and collects its output, killing it after `limit`.
pub(crate) fn output_within(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("{command:?} did not finish within {limit:?}");
        }
    }
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `cassini serve` process on port 0 with its monitoring endpoint on port 0.
pub(crate) struct Broker {
    child: Child,
    /// The QUIC address clients connect to.
    pub(crate) addr: String,
    /// The monitoring endpoint's address.
    pub(crate) monitor: String,
}

impl Broker {
    /// Starts a broker on `workspace`'s certificates; with `token`, the monitoring endpoint
    /// requires the workspace's token.
    pub(crate) fn start(workspace: &Workspace, token: bool) -> Self {
        let certs = workspace.certs();
        let token_file = workspace.token_file();
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--monitor",
            "127.0.0.1:0",
            "--certs",
            certs.to_str().expect("utf-8"),
        ];
        if token {
            args.extend(["--monitor-token-file", token_file.to_str().expect("utf-8")]);
        }
        let mut child = workspace
            .command(&args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the broker");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Once nobody listens, the lines are still drained so the broker never blocks.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let (mut addr, mut monitor) = (None, None);
        while addr.is_none() || monitor.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => strip_ansi(&line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("the broker did not report its addresses in time");
                }
            };
            if line.contains("cassini listening") {
                addr = field(&line, "addr");
            } else if line.contains("monitoring endpoint") {
                monitor = field(&line, "addr");
            }
        }
        Self {
            child,
            addr: addr.unwrap_or_default(),
            monitor: monitor.unwrap_or_default(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A long-running `cassini` client (e.g. `sub`), killed when dropped.
pub(crate) struct Running(pub(crate) Child);

impl Running {
    /// Starts `command` with its output discarded, unless `stderr_line` is given: then waits
    /// (within [`DEADLINE`]) until stderr has a line containing it.
    pub(crate) fn start(mut command: Command, stderr_line: Option<&str>) -> Self {
        command.stdin(Stdio::null()).stdout(Stdio::null());
        let Some(wanted) = stderr_line else {
            let child = command.stderr(Stdio::null()).spawn().expect("spawn");
            return Self(child);
        };
        let mut child = command.stderr(Stdio::piped()).spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let wanted = wanted.to_owned();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(&wanted) {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(DEADLINE).is_err() {
            let _ = child.kill();
            panic!("{command:?} never printed the line expected");
        }
        Self(child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Calls `probe` until it returns `Some`, at most until [`DEADLINE`].
pub(crate) fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `key=VALUE` in a log line.
fn field(line: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let start = line.find(&needle)? + needle.len();
    line[start..].split_whitespace().next().map(str::to_owned)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
