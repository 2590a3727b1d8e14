//! A `cassini serve` child process for tests that need the real binary: its memory read from
//! `/proc`, its log lines, signals, and certificate directories made by `cassini certs`.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)] // each test file uses a different part; helpers fail loudly

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const CASSINI: &str = env!("CARGO_BIN_EXE_cassini");

/// How long any wait on the child may take.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// A running `cassini serve`; killed when dropped.
pub(crate) struct BrokerProcess {
    child: Child,
    /// Where it listens.
    pub(crate) addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl BrokerProcess {
    /// Starts `cassini serve --listen 127.0.0.1:PORT --certs DIR EXTRA...` and waits until it
    /// listens.
    pub(crate) fn start(certs: &Path, extra: &[&str]) -> Self {
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("port")
            .port();
        Self::start_on(&format!("127.0.0.1:{port}"), certs, extra)
    }

    /// [`BrokerProcess::start`] on `addr`, e.g. again on the address of one that was killed.
    pub(crate) fn start_on(addr: &str, certs: &Path, extra: &[&str]) -> Self {
        let addr = addr.to_owned();
        let mut child = Command::new(CASSINI)
            .args(["serve", "--listen", &addr, "--certs"])
            .arg(certs)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn broker");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let broker = Self { child, addr, log };
        broker.wait_for_log("cassini listening");
        broker
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and waits until the process is gone.
    pub(crate) fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// How many log lines contain `needle` so far.
    pub(crate) fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits until a log line contains `needle`.
    pub(crate) fn wait_for_log(&self, needle: &str) {
        self.wait_for_log_count(needle, 1);
    }

    /// Waits until `count` log lines contain `needle`.
    pub(crate) fn wait_for_log_count(&self, needle: &str, count: usize) {
        let started = Instant::now();
        while self.log_count(needle) < count {
            assert!(
                started.elapsed() < DEADLINE,
                "no log line {needle:?} (x{count}) within {DEADLINE:?}; log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the child a signal by name (`HUP`, `TERM`).
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The child's resident memory, bytes (`VmRSS`).
    pub(crate) fn rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// The child's peak resident memory so far, bytes (`VmHWM`).
    pub(crate) fn peak_rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .expect("a /proc status field")
}

/// Runs `cassini ARGS...` to completion and fails the test if it fails.
pub(crate) fn cassini(args: &[&str], dir: &Path) -> Output {
    let output = Command::new(CASSINI)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run cassini");
    assert!(
        output.status.success(),
        "cassini {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `cassini certs init` in `dir` with the given clients.
pub(crate) fn init_certs(dir: &Path, clients: &[&str]) {
    let mut args = vec!["certs", "init"];
    for client in clients {
        args.extend(["--client", client]);
    }
    cassini(&args, dir);
}
