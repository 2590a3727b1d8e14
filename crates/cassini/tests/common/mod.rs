//! Helpers shared by the command-line suites: run `cassini` as a user would, wait for a log
//! line with a deadline, stop a broker with SIGTERM.

#![allow(dead_code, clippy::expect_used, clippy::panic)] // each suite uses a different subset; helpers fail loudly

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub(crate) const CASSINI: &str = env!("CARGO_BIN_EXE_cassini");
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// `cassini ARGS` with no `RUST_LOG` and no `CASSINI_*` variable from the caller's environment.
pub(crate) fn cassini(args: &[&str]) -> Command {
    let mut command = Command::new(CASSINI);
    command.args(args).env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CASSINI_") {
            command.env_remove(name);
        }
    }
    command
}

/// Starts `command` with stderr piped and waits until a stderr line contains `ready`.
/// Returns the child and that line; its remaining stderr is drained in the background.
pub(crate) fn spawn_until_line(mut command: Command, ready: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let wanted = ready.to_string();
    thread::spawn(move || {
        let mut signalled = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !signalled && line.contains(&wanted) {
                signalled = true;
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(line) => (child, line),
        Err(_) => {
            let _ = child.kill();
            panic!("process never printed {:?}", ready);
        }
    }
}

/// [`spawn_until_line`] without the line.
pub(crate) fn spawn_until(command: Command, ready: &str) -> Child {
    spawn_until_line(command, ready).0
}

pub(crate) fn wait_with_deadline(child: &mut Child) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("process did not exit in time");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("free port")
        .port()
}

pub(crate) fn run(command: &mut Command) -> Output {
    command.output().expect("run")
}

/// Sends SIGTERM.
pub(crate) fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// The value of `key=VALUE` in a pretty log line, e.g. `addr` in `... addr=127.0.0.1:7700 ...`.
pub(crate) fn log_field(line: &str, key: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let needle = format!("{key}=");
    let start = plain.find(&needle)? + needle.len();
    Some(
        plain[start..]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string(),
    )
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

/// Starts `command` with stderr piped; every stderr line is sent on the returned channel.
pub(crate) fn spawn_collecting(mut command: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The next line from `lines` containing `wanted`, within [`DEADLINE`].
pub(crate) fn next_line_with(lines: &mpsc::Receiver<String>, wanted: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(wanted) => return line,
            Ok(_) => {}
            Err(_) => panic!("no line with {wanted:?}"),
        }
    }
}
