//! Processes a scenario starts and measures from outside: the broker (`cassini serve`) and the
//! bare quinn endpoint, each in its own process so that its memory can be read from `/proc` and
//! it does not share a runtime with the clients measuring it. A child is killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;

/// How long a child may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Set (to anything), the children's log lines are copied to this process's standard error,
/// each after the child's first argument and pid: the timeline of a scenario as the brokers
/// saw it (for instance a failover's claim and fence, with their timestamps).
pub(crate) const CHILD_LOG_ENV: &str = "CASSINI_BENCH_CHILD_LOG";

/// A running child process of this binary.
pub(crate) struct ChildProcess {
    child: Child,
}

impl ChildProcess {
    /// Runs this binary with `args` and waits until a line of its standard error contains
    /// `ready`. Its further output is read and discarded so it never blocks on a full pipe.
    pub(crate) fn start(args: &[&str], ready: &str) -> anyhow::Result<Self> {
        Self::start_with_env(args, &[], ready)
    }

    /// [`Self::start`] with more environment variables for the child (`CASSINI_*` settings).
    pub(crate) fn start_with_env(
        args: &[&str],
        env: &[(&str, String)],
        ready: &str,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the cassini binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting cassini {}", args.join(" ")))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let (tx, rx) = mpsc::channel();
        let wanted = ready.to_string();
        let copy_as = std::env::var_os(CHILD_LOG_ENV).map(|_| {
            let first = args.first().copied().unwrap_or_default();
            format!("[{first} {}]", child.id())
        });
        std::thread::spawn(move || {
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(prefix) = &copy_as {
                    eprintln!("{prefix} {line}");
                }
                if !told && line.contains(&wanted) {
                    told = true;
                    let _ = tx.send(());
                }
            }
        });
        let mut process = Self { child };
        rx.recv_timeout(READY_TIMEOUT).map_err(|_| {
            process.kill();
            anyhow::anyhow!("cassini {} never said {ready:?}", args.join(" "))
        })?;
        Ok(process)
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("finding a free UDP port")?;
    Ok(socket.local_addr()?)
}

/// Resident memory of process `pid` in bytes (`VmRSS` from `/proc/PID/status`), if readable.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A directory under the system's temporary directory, removed when dropped.
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.subsec_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("cassini-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
