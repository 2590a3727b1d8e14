//! Running `cassini reply --command CMD` for one request: `sh -c CMD` with the request payload
//! on its standard input, its standard output as the reply.
//!
//! Everything here blocks (std processes and threads; the runtime has no process support), so
//! callers run it on a blocking thread. It is bounded: the command is killed after its time
//! limit, and only as much output as fits in one reply is kept (the rest is read and dropped,
//! so the command never blocks on a full pipe). Standard error is inherited, so the command's
//! diagnostics reach the terminal that runs `cassini reply`.

use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a command may run before it is killed.
pub(crate) const TIME_LIMIT: Duration = Duration::from_secs(10);

/// How often a running command is checked on.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long to wait for the output of a command that was killed.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// How a command ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It exited with status 0; its output, at most the limit.
    Success(Vec<u8>),
    /// It could not run, failed, ran too long, or printed too much.
    Failed {
        /// A sentence for the reply's `error` header.
        reason: String,
        /// What it printed, at most the limit.
        output: Vec<u8>,
    },
}

/// Runs `sh -c command` with `input` on its standard input; keeps at most `max_output` bytes
/// of its standard output; kills it after `time_limit`.
pub(crate) fn run(command: &str, input: &[u8], max_output: usize, time_limit: Duration) -> Outcome {
    let deadline = Instant::now() + time_limit;
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            return Outcome::Failed {
                reason: format!("cannot start sh: {error}"),
                output: Vec::new(),
            }
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        // A command that does not read its input closes the pipe; that is not an error.
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let (output_sender, output) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        thread::spawn(move || {
            let _ = output_sender.send(read_bounded(stdout, max_output));
        });
    }
    let status = wait_until(&mut child, deadline, time_limit);
    let received = match &status {
        Ok(_) => output.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        Err(_) => output.recv_timeout(OUTPUT_GRACE),
    };
    let (output, overflowed, read_failure) = match received {
        Ok(Ok((output, overflowed))) => (output, overflowed, None),
        Ok(Err(error)) => (
            Vec::new(),
            false,
            Some(format!("cannot read the command's output: {error}")),
        ),
        // Something the command started in the background still holds its output open.
        Err(_) => (
            Vec::new(),
            false,
            Some(format!(
                "the command's output did not end within {}s",
                time_limit.as_secs_f64()
            )),
        ),
    };
    match (status, read_failure) {
        (Err(reason), _) | (Ok(_), Some(reason)) => Outcome::Failed { reason, output },
        (Ok(_), None) if overflowed => Outcome::Failed {
            reason: format!(
                "the command printed more than the broker's maximum payload of {max_output} bytes"
            ),
            output,
        },
        (Ok(status), None) if status.success() => Outcome::Success(output),
        (Ok(status), None) => Outcome::Failed {
            reason: format!("the command failed ({status})"),
            output,
        },
    }
}

/// Waits for `child` to exit; kills it once `time_limit` has passed, at `deadline`.
fn wait_until(
    child: &mut Child,
    deadline: Instant,
    time_limit: Duration,
) -> Result<ExitStatus, String> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the command was killed after {}s",
                    time_limit.as_secs_f64()
                ));
            }
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(error) => {
                let _ = child.kill();
                return Err(format!("cannot wait for the command: {error}"));
            }
        }
    }
}

/// Reads `source` to its end, keeping the first `max` bytes; returns them and whether there
/// were more.
fn read_bounded(mut source: impl Read, max: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut overflowed = false;
    let mut chunk = [0u8; 8192];
    loop {
        let read = match source.read(&mut chunk) {
            Ok(0) => return Ok((kept, overflowed)),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..read.min(room)]);
        overflowed |= read > room;
    }
}

#[cfg(test)]
mod tests;
