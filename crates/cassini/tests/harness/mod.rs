//! The one process harness of the `cassini` binary's tests.
//!
//! - [`cassini`]: the binary run as a user runs it, with none of the caller's `RUST_LOG` or
//!   `CASSINI_*` variables; [`run`], [`spawn_until`], [`wait_with_deadline`], [`terminate`] for
//!   the processes a test starts (`pub`, `sub`, `reply`, ...).
//! - [`Broker`]: `cassini serve` as a child process. It listens on port 0 (QUIC, the monitor
//!   when `--monitor 127.0.0.1:0` is given, the cluster address with `--cluster-listen
//!   127.0.0.1:0`) and the harness reads the bound addresses back from its log (`addr=` of the
//!   `cassini listening`, `monitoring endpoint` and `cluster listening` lines), so no port is
//!   ever guessed. Its log is kept for the test to wait on; it is killed on drop.
//! - [`Serve`]: the flags, environment and address of a [`Broker`] not yet started, for the
//!   tests that need more than [`Broker::start`]; [`Serve::cluster_node`] for a cluster node,
//!   [`Serve::cluster_member`] for one of the Raft members n1, n2 and n3, and [`three_nodes`]
//!   for the nodes n1, n2 and n3 dialing each other.
//! - [`Running`]: a long-running client (`sub`, `pub --count`, ...) killed on drop;
//!   [`output_within`] runs a command (any program) to completion within a limit;
//!   [`eventually`] polls a probe until it answers; [`assert_contains`] shows the whole text
//!   it did not find a string in.
//! - [`clients`]: a `cassini-client` or a raw quinn connection presenting the certificates of a
//!   directory, for the suites that attack or load a running broker, the reconnect settings
//!   of clients that must notice a lost broker at once, and clients of a named session that
//!   retry while the cluster cannot commit its claim yet.
//! - [`island::Island`]: a network namespace behind a veth pair, to cut a node off with a real
//!   link going down.
//! - [`workspace::Workspace`]: a temporary directory with certificates, a monitor token
//!   file and a private configuration home (`XDG_CONFIG_HOME`, where contexts live), for the
//!   suites that run `cassini` as an operator does (`context`, `status_page`).
//!
//! Every wait has a deadline ([`DEADLINE`]); none is a bare sleep.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)] // each test file uses a different part; helpers fail loudly

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub(crate) mod clients;
pub(crate) mod island;
pub(crate) mod workspace;

/// The binary under test.
pub(crate) const CASSINI: &str = env!("CARGO_BIN_EXE_cassini");

/// How long any wait on a child process may take.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// What the first member of a cluster with `cluster.members` logs once it made the Raft group.
pub(crate) const RAFT_INITIALIZED: &str = "initialized the cluster's Raft group";

/// `cassini ARGS` with no `RUST_LOG` and no `CASSINI_*` variable from the caller's environment.
pub(crate) fn cassini(args: &[&str]) -> Command {
    let mut command = Command::new(CASSINI);
    command.args(args);
    clean_env(&mut command);
    command
}

fn clean_env(command: &mut Command) {
    command.env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CASSINI_") {
            command.env_remove(name);
        }
    }
}

/// Runs `command` to completion.
pub(crate) fn run(command: &mut Command) -> Output {
    command.output().expect("run")
}

/// Runs `command` with no stdin and collects its output, killing it (and failing the test)
/// if it has not finished within `limit`.
pub(crate) fn output_within(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{command:?} did not finish within {limit:?}");
        }
    }
}

/// A finished command's stdout, as text.
pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A finished command's stderr, as text.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Fails the test unless `text` contains `wanted`, showing all of `text`.
#[track_caller]
pub(crate) fn assert_contains(text: &str, wanted: &str) {
    assert!(text.contains(wanted), "expected {wanted:?} in:\n{text}");
}

/// Calls `probe` every 50 ms until it returns `Some`; fails the test after [`DEADLINE`].
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

/// Runs `ip ARGS` (network namespaces and links, for the tests that cut a real link); an
/// error that says what failed, for a test to skip with when it cannot.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Lines of a child's output, read on a thread.
pub(crate) fn lines(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                return;
            }
        }
    });
    receive
}

/// Waits (within 30 s) for a line of `lines` that `wanted` accepts, skipping the others.
pub(crate) fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("timed out waiting for {what}");
}

/// `cassini certs ARGS --dir DIR`, which must succeed.
pub(crate) fn certs(dir: &Path, args: &[&str]) -> Output {
    let output = run(cassini(&["certs"]).args(args).arg("--dir").arg(dir));
    assert!(
        output.status.success(),
        "cassini certs {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Certificates for nodes n1, n2 and n3 in `dir`, and the three nodes `start(name, peers)`
/// starts, each dialing the nodes started before it (and each dials back the nodes that dial
/// it, so the mesh is full).
pub(crate) fn three_nodes(
    dir: &Path,
    start: impl Fn(&str, &[SocketAddr]) -> Broker,
) -> Vec<Broker> {
    certs(
        dir,
        &["init", "--node", "n1", "--node", "n2", "--node", "n3"],
    );
    let mut addrs = Vec::new();
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let broker = start(name, &addrs);
        addrs.push(broker.cluster_addr());
        nodes.push(broker);
    }
    nodes
}

/// `cassini certs init` in `dir` with the given clients.
pub(crate) fn init_certs(dir: &Path, clients: &[&str]) {
    let mut args = vec!["init"];
    for client in clients {
        args.extend(["--client", client]);
    }
    certs(dir, &args);
}

/// Starts `command` with stdout and stderr piped and waits until a stderr line contains
/// `ready`. Returns the child; the rest of its stderr is drained in the background.
pub(crate) fn spawn_until(mut command: Command, ready: &str) -> Child {
    command.stdout(Stdio::piped());
    spawn_watching(command, ready)
}

/// Starts `command` with stderr piped and waits (within [`DEADLINE`]) until a stderr line
/// contains `ready`; the rest of its stderr is drained in the background.
fn spawn_watching(mut command: Command, ready: &str) -> Child {
    let mut child = command.stderr(Stdio::piped()).spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let wanted = ready.to_string();
    thread::spawn(move || {
        let mut signalled = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !signalled && line.contains(&wanted) {
                signalled = true;
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(DEADLINE).is_err() {
        let _ = child.kill();
        panic!("{command:?} never printed {ready:?}");
    }
    child
}

/// A long-running client process (`sub`, `pub --count N`, ...) with no stdin and its stdout
/// discarded, killed when dropped.
pub(crate) struct Running(Child);

impl Running {
    /// Starts `command`, its stderr discarded too.
    pub(crate) fn start(mut command: Command) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Self(command.spawn().expect("spawn"))
    }

    /// Starts `command` with its stdout and stderr read line by line on threads.
    pub(crate) fn piped(
        mut command: Command,
    ) -> (Self, mpsc::Receiver<String>, mpsc::Receiver<String>) {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        (Self(child), stdout, stderr)
    }

    /// Whether it has exited, and with success.
    pub(crate) fn succeeded(&mut self) -> Option<bool> {
        self.0
            .try_wait()
            .expect("wait")
            .map(|status| status.success())
    }

    /// Starts `command` and waits (within [`DEADLINE`]) until a stderr line contains `ready`.
    pub(crate) fn until(mut command: Command, ready: &str) -> Self {
        command.stdin(Stdio::null()).stdout(Stdio::null());
        Self(spawn_watching(command, ready))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit, for at most [`DEADLINE`] (then kills it and fails).
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

/// Sends `child` SIGTERM.
pub(crate) fn terminate(child: &mut Child) {
    signal(child.id(), "TERM");
}

/// Sends process `pid` a signal by name (`HUP`, `INT`, `TERM`).
pub(crate) fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// The value of `key` in a log line: `key=VALUE` in a pretty line (colour codes ignored),
/// e.g. `addr` in `... addr=127.0.0.1:7700 ...`, or `"key":"VALUE"` in a JSON one.
pub(crate) fn log_field(line: &str, key: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let pretty = format!("{key}=");
    if let Some(at) = plain.find(&pretty) {
        let value = &plain[at + pretty.len()..];
        return value.split_whitespace().next().map(str::to_string);
    }
    let json = format!("\"{key}\":\"");
    let value = &plain[plain.find(&json)? + json.len()..];
    value.split('"').next().map(str::to_string)
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

/// `cassini serve` not yet started: its flags, environment and the address it is told to
/// listen on (`127.0.0.1:0` unless a test says otherwise).
#[derive(Clone, Debug)]
pub(crate) struct Serve {
    /// Runs the binary through this, e.g. `ip netns exec NAME`.
    wrapper: Vec<OsString>,
    args: Vec<OsString>,
    /// `--listen`, or `None` when the configuration under test names the address.
    listen: Option<String>,
    env: Vec<(OsString, OsString)>,
    /// Prints every log line, prefixed `BROKER`.
    echo: bool,
}

impl Serve {
    /// `cassini serve --listen 127.0.0.1:0 ARGS`.
    pub(crate) fn new(args: &[&str]) -> Self {
        Self {
            wrapper: Vec::new(),
            args: args.iter().map(OsString::from).collect(),
            listen: Some("127.0.0.1:0".into()),
            env: Vec::new(),
            echo: false,
        }
    }

    /// `serve` as node `name` of the cluster `test` with the certificates of `dir`, its cluster
    /// address on `listen`, dialing `peers`, logging at `info` (the cluster tests wait on
    /// its lines).
    pub(crate) fn cluster_node(dir: &Path, name: &str, listen: &str, peers: &[SocketAddr]) -> Self {
        let mut serve = Self::new(&["--certs"])
            .arg(dir)
            .args(&["--cluster", "test", "--node", name])
            .args(&["--cluster-listen", listen])
            .env("RUST_LOG", "info");
        for peer in peers {
            serve = serve.args(&["--peer", &peer.to_string()]);
        }
        serve
    }

    /// [`Serve::cluster_node`] on cluster port 0 as one of the voting members n1, n2 and n3
    /// (`--cluster-member` each), so named sessions are claimed through the cluster's Raft
    /// group (docs/CLUSTERING.md, "Session ownership"); its first member logs
    /// [`RAFT_INITIALIZED`] once the group is made.
    pub(crate) fn cluster_member(dir: &Path, name: &str, peers: &[SocketAddr]) -> Self {
        Self::cluster_member_on(dir, name, "127.0.0.1:0", peers)
    }

    /// [`Serve::cluster_member`] with its cluster address on `listen`.
    pub(crate) fn cluster_member_on(
        dir: &Path,
        name: &str,
        listen: &str,
        peers: &[SocketAddr],
    ) -> Self {
        Self::cluster_node(dir, name, listen, peers)
            .args(&["--cluster-member", "n1", "--cluster-member", "n2"])
            .args(&["--cluster-member", "n3"])
    }

    /// `--storage disk --data-dir DATA_DIR`.
    pub(crate) fn on_disk(self, data_dir: &Path) -> Self {
        self.args(&["--storage", "disk", "--data-dir"])
            .arg(data_dir)
    }

    /// One more flag or value.
    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More flags or values.
    pub(crate) fn args(self, args: &[&str]) -> Self {
        args.iter().fold(self, |serve, arg| serve.arg(arg))
    }

    /// An environment variable for the broker.
    pub(crate) fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// `--listen ADDR` instead of `127.0.0.1:0`; `None`: no `--listen` flag, for tests of where
    /// the address comes from.
    pub(crate) fn listen(mut self, addr: Option<&str>) -> Self {
        self.listen = addr.map(str::to_string);
        self
    }

    /// Runs the binary as `WRAPPER... cassini serve ...`, e.g. inside a network namespace.
    pub(crate) fn wrapped_in(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(OsString::from).collect();
        self
    }

    /// Prints the broker's log lines as they come, prefixed `BROKER`.
    pub(crate) fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// The command, stdout discarded and stderr piped.
    pub(crate) fn command(&self) -> Command {
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(CASSINI);
                command
            }
            None => Command::new(CASSINI),
        };
        clean_env(&mut command);
        command.arg("serve");
        if let Some(listen) = &self.listen {
            command.args(["--listen", listen]);
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Starts it and waits until it listens.
    pub(crate) fn start(self) -> Broker {
        let (child, log, reader) = self.spawn();
        let mut broker = Broker {
            child: Some(child),
            serve: self,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
            reader: Some(reader),
        };
        broker.addr = broker.listening_addr();
        broker
    }

    /// Starts it expecting it to refuse to start: waits until it exits, fails the test if it
    /// listens or exits 0, and returns everything it logged.
    pub(crate) fn refused(&self) -> String {
        let (mut child, log, reader) = self.spawn();
        let started = Instant::now();
        let status = loop {
            if log.count("cassini listening") > 0 {
                let _ = child.kill();
                panic!("the broker started: {}", log.joined());
            }
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(started.elapsed() < DEADLINE, "the broker did not exit");
            log.wait_for_more(Duration::from_millis(20));
        };
        reader.join().expect("log reader");
        let output = log.joined();
        assert!(!status.success(), "the broker must not start: {output}");
        output
    }

    fn spawn(&self) -> (Child, Arc<Log>, JoinHandle<()>) {
        let mut child = self.command().spawn().expect("spawn cassini serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Log::default());
        let reader = {
            let log = Arc::clone(&log);
            let echo = self.echo;
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("BROKER {line}");
                    }
                    log.push(line);
                }
                log.close();
            })
        };
        (child, log, reader)
    }
}

/// A running `cassini serve`, killed when dropped.
pub(crate) struct Broker {
    child: Option<Child>,
    serve: Serve,
    addr: SocketAddr,
    log: Arc<Log>,
    reader: Option<JoinHandle<()>>,
}

impl Broker {
    /// `cassini serve --listen 127.0.0.1:0 ARGS`, once it listens.
    pub(crate) fn start(args: &[&str]) -> Self {
        Serve::new(args).start()
    }

    /// `cassini serve --listen 127.0.0.1:0 --certs CERTS EXTRA`, once it listens.
    pub(crate) fn with_certs(certs: &Path, extra: &[&str]) -> Self {
        Serve::new(&["--certs"]).arg(certs).args(extra).start()
    }

    /// How it was started (with `--listen 127.0.0.1:0`, not its bound address).
    pub(crate) fn serve(&self) -> &Serve {
        &self.serve
    }

    /// Where its QUIC endpoint is bound.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// [`Broker::addr`] as a `--server` value.
    pub(crate) fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Where its monitoring endpoint is bound (`--monitor 127.0.0.1:0`), once it is.
    pub(crate) fn monitor(&self) -> SocketAddr {
        let line = self.wait_for_log("monitoring endpoint");
        log_field(&line, "addr")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no monitor address in {line:?}"))
    }

    /// The cluster address it bound (`addr=` of its `cluster listening` line), for a node
    /// started with `--cluster-listen 127.0.0.1:0`.
    pub(crate) fn cluster_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("cluster listening");
        log_field(&line, "addr")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no cluster address in {line:?}"))
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker runs").id()
    }

    /// Sends the child a signal by name (`HUP`, `TERM`).
    pub(crate) fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Every log line so far.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lines()
    }

    /// How many log lines contain `needle` so far.
    pub(crate) fn log_count(&self, needle: &str) -> usize {
        self.log.count(needle)
    }

    /// Waits until a log line contains `needle`; returns the first such line.
    pub(crate) fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_count(needle, 1)
    }

    /// Waits until `count` log lines contain `needle`; returns the last of them.
    pub(crate) fn wait_for_log_count(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (lines, closed) = self.log.snapshot();
            if let Some(line) = lines
                .iter()
                .filter(|line| line.contains(needle))
                .nth(count - 1)
            {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !closed && !left.is_zero(),
                "no log line {needle:?} (x{count}) within {DEADLINE:?}{}; log:\n{}",
                if closed { " (the broker exited)" } else { "" },
                lines.join("\n")
            );
            self.log.wait_for_more(left);
        }
    }

    /// The value of `key=` in the first log line containing `needle`, if there is one yet.
    pub(crate) fn log_field(&self, needle: &str, key: &str) -> Option<String> {
        let lines = self.log.lines();
        let line = lines.iter().find(|line| line.contains(needle))?;
        log_field(line, key)
    }

    /// The child's resident memory, bytes (`VmRSS`).
    pub(crate) fn rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// The child's peak resident memory so far, bytes (`VmHWM`).
    pub(crate) fn peak_rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Asserts that the broker's peak memory is less than `bound` bytes above `before` (its
    /// resident memory before the attack), printing the figures for `what`.
    pub(crate) fn assert_peak_growth_below(&self, before: u64, bound: u64, what: &str) {
        let peak = self.peak_rss_bytes();
        let growth = peak.saturating_sub(before);
        eprintln!(
            "broker RSS before {} KiB, peak {} KiB, growth {} KiB for {what}",
            before >> 10,
            peak >> 10,
            growth >> 10
        );
        assert!(
            growth < bound,
            "broker grew by {} MiB, bound {} MiB",
            growth >> 20,
            bound >> 20
        );
    }

    /// SIGKILL: no shutdown, no flush, no goodbye. Waits until the process is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
        self.join_reader();
    }

    /// SIGTERM, a graceful shutdown; waits (with the deadline) until the process exits and its
    /// last log line is read. Returns its exit status.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the broker runs");
        terminate(&mut child);
        let status = wait_with_deadline(&mut child);
        self.join_reader();
        status
    }

    /// Starts the broker again, after [`Broker::kill`] or [`Broker::terminate`], with the same
    /// flags on the same address (clients that knew it reconnect to it).
    pub(crate) fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker still runs");
        let addr = self.addr.to_string();
        let serve = self.serve.clone().listen(Some(&addr));
        let (child, log, reader) = serve.spawn();
        self.child = Some(child);
        self.log = log;
        self.reader = Some(reader);
        let again = self.listening_addr();
        assert_eq!(again, self.addr, "the broker listens where it did");
    }

    /// [`Broker::start_again`] with the flags of `serve` instead, on the same address: e.g. a
    /// cluster member restarted with `--peer`s of the nodes alive now (the first member,
    /// started with none, would otherwise come back on a new cluster port nobody dials).
    pub(crate) fn start_again_as(&mut self, serve: Serve) {
        assert!(self.child.is_none(), "the broker still runs");
        self.serve = serve;
        self.start_again();
    }

    /// `/clusterz` of its monitoring endpoint (`--monitor 127.0.0.1:0`), plain HTTP/1.0;
    /// `Null` if unreadable.
    pub(crate) fn clusterz(&self) -> serde_json::Value {
        self.clusterz_with(None)
    }

    /// [`Broker::clusterz`] presenting `token` (`--monitor-token-file`).
    pub(crate) fn clusterz_with(&self, token: Option<&str>) -> serde_json::Value {
        use std::io::{Read, Write};
        let read = || -> Option<serde_json::Value> {
            let mut stream =
                std::net::TcpStream::connect_timeout(&self.monitor(), Duration::from_secs(2))
                    .ok()?;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let authorization = token
                .map(|token| format!("Authorization: Bearer {token}\r\n"))
                .unwrap_or_default();
            stream
                .write_all(
                    format!("GET /clusterz HTTP/1.0\r\nHost: localhost\r\n{authorization}\r\n")
                        .as_bytes(),
                )
                .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let (_, body) = response.split_once("\r\n\r\n")?;
            serde_json::from_str(body).ok()
        };
        read().unwrap_or(serde_json::Value::Null)
    }

    /// Whether it runs (not killed nor terminated).
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then [`Broker::start_again`].
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_log("cassini listening");
        log_field(&line, "addr")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no bound address in {line:?}"))
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("log reader");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child's stderr lines, as they arrive.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    grew: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// The child's stderr ended.
    closed: bool,
}

impl Log {
    fn push(&self, line: String) {
        self.state.lock().unwrap().lines.push(line);
        self.grew.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.grew.notify_all();
    }

    fn lines(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    fn snapshot(&self) -> (Vec<String>, bool) {
        let state = self.state.lock().unwrap();
        (state.lines.clone(), state.closed)
    }

    fn count(&self, needle: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .lines
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    fn joined(&self) -> String {
        self.state.lock().unwrap().lines.join("\n")
    }

    /// Waits until a line arrives or the stream closes, for at most `limit`.
    fn wait_for_more(&self, limit: Duration) {
        let state = self.state.lock().unwrap();
        let seen = state.lines.len();
        let _ = self
            .grew
            .wait_timeout_while(state, limit, |state| {
                state.lines.len() == seen && !state.closed
            })
            .unwrap();
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
