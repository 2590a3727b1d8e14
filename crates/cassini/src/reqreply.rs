//! `cassini req` and `cassini reply`: request/reply over `cassini-client`.
//!
//! `req` sends one request and prints the first reply; its exit status tells a script whether
//! a reply came, nobody listened, or time ran out. `reply` answers requests one at a time, by
//! echoing them or by running a shell command ([`crate::reply_command`]) on a blocking thread.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cassini_client::{Client, ClientError, PublishOptions, Request, RequestError};

use crate::cli::{ReplyArgs, ReqArgs};
use crate::pubsub::{connect, print_message, Format, TIMED_OUT};
use crate::reply_command::{self, Outcome};
use crate::signals::ShutdownSignals;

/// Exit status of `req` when the broker says nobody subscribes to the topic.
const NO_RESPONDERS: u8 = 3;

/// Exit status of `req` when the reply carries the [`ERROR_HEADER`]: the responder failed.
const RESPONDER_FAILED: u8 = 4;

/// The header a `reply --command` reply carries when the command failed; its value says how.
const ERROR_HEADER: &str = "error";

/// `cassini req`: sends one request, prints the first reply (or the first `--replies`).
pub(crate) async fn request(args: ReqArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .with_context(|| format!("--timeout {} is not a duration", args.timeout))?;
    let client = connect(&args.connect).await?;
    if args.replies > 1 {
        let outcome = gather_replies(&client, args, timeout).await;
        let _ = client.close().await;
        return outcome;
    }
    let options = PublishOptions::new().headers(args.headers);
    let payload = Bytes::from(args.message.into_bytes());
    let topic = args.topic.as_str();
    let reply = match client.request_with(topic, payload, options, timeout).await {
        Ok(reply) => reply,
        Err(error @ RequestError::NoResponders { .. }) => {
            eprintln!("error: {error}");
            let _ = client.close().await;
            return Ok(ExitCode::from(NO_RESPONDERS));
        }
        Err(RequestError::Timeout) => {
            eprintln!("error: no reply on {topic} within {}s", args.timeout);
            let _ = client.close().await;
            return Ok(ExitCode::from(TIMED_OUT));
        }
        Err(error) => {
            let _ = client.close().await;
            return Err(error).with_context(|| format!("requesting on {topic}"));
        }
    };
    print_message(&mut std::io::stdout().lock(), &reply, format(args.json), 1)?;
    client.close().await.context("closing the connection")?;
    match reply.header(ERROR_HEADER) {
        Some(reason) => {
            eprintln!("error: the responder reported an error: {reason}");
            Ok(ExitCode::from(RESPONDER_FAILED))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// How `req` prints replies: the payload, or JSON.
fn format(json: bool) -> Format {
    if json {
        Format::Json
    } else {
        Format::Raw
    }
}

/// `req --replies N` (N > 1): subscribes to an inbox of its own (`_INBOX.<identity token>.<16
/// random hex digits>`, which only this identity may read), publishes the request with that
/// reply topic and prints replies as they come until N arrived (exit 0) or the timeout passed
/// (exit 2). The client's request API completes at the first reply, hence the own inbox.
async fn gather_replies(
    client: &Client,
    args: ReqArgs,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + timeout;
    let topic = args.topic.as_str();
    let inbox = format!(
        "{}.{:016X}",
        cassini_protocol::inbox::inbox_prefix(client.identity()),
        unique_suffix()
    );
    let mut replies = tokio::time::timeout_at(deadline, client.subscribe(&inbox))
        .await
        .map_err(|_| anyhow::anyhow!("subscribing to the reply inbox took over --timeout"))?
        .with_context(|| format!("subscribing to the reply inbox {inbox}"))?;
    let options = PublishOptions::new()
        .headers(args.headers)
        .reply_to(inbox.as_str());
    let payload = Bytes::from(args.message.into_bytes());
    client
        .publish_with(topic, payload, options)
        .await
        .with_context(|| format!("requesting on {topic}"))?;
    let mut stdout = std::io::stdout().lock();
    let mut received = 0u64;
    let mut failed = false;
    while received < args.replies {
        let reply =
            match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut replies))
                .await
            {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    let reason = replies
                        .end_reason()
                        .map(|end| end.to_string())
                        .unwrap_or_else(|| "unknown reason".into());
                    anyhow::bail!("the reply inbox ended after {received} reply(ies): {reason}");
                }
                Err(_) => {
                    eprintln!(
                        "error: {received} of {} replies on {topic} within {}s",
                        args.replies, args.timeout
                    );
                    return Ok(ExitCode::from(TIMED_OUT));
                }
            };
        received += 1;
        print_message(&mut stdout, &reply, format(args.json), received)?;
        if let Some(reason) = reply.header(ERROR_HEADER) {
            eprintln!("error: a responder reported an error: {reason}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::from(RESPONDER_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// A number unlikely to repeat between runs (std's per-process random hash keys, so no new
/// dependency): keeps two `req --replies` of one identity on separate inboxes. It is not a
/// secret: the identity token in the inbox keeps other identities out.
fn unique_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// `cassini reply`: answers requests until interrupted or `--count` were answered.
pub(crate) async fn reply(args: ReplyArgs) -> anyhow::Result<ExitCode> {
    let mut signals = ShutdownSignals::install()?;
    let client = connect(&args.connect).await?;
    let topic = args.topic.as_str();
    let mut responder = match &args.queue {
        Some(group) => client.serve_queue(topic, group).await,
        None => client.serve(topic).await,
    }
    .with_context(|| format!("serving {topic}"))?;
    match &args.queue {
        Some(group) => eprintln!("serving {topic} in queue group {group}"),
        None => eprintln!("serving {topic}"),
    }

    let mut answered = 0u64;
    while args.count.is_none_or(|count| answered < count) {
        let request = tokio::select! {
            request = responder.recv() => request,
            _ = signals.next() => break,
        };
        let Some(request) = request else {
            let reason = responder
                .subscription()
                .end_reason()
                .map(|end| end.to_string())
                .unwrap_or_else(|| "unknown reason".into());
            anyhow::bail!("the subscription ended after {answered} request(s): {reason}");
        };
        if request.message().reply_to().is_none() {
            eprintln!(
                "warning: skipping a message on {} without a reply topic",
                request.message().topic()
            );
            continue;
        }
        let answer = async {
            match &args.command {
                Some(command) => answer_with_command(&client, &request, command).await,
                None => request.respond(request.payload().clone()).await,
            }
        };
        tokio::select! {
            answer = answer => answer.with_context(|| {
                format!("replying to a request on {}", request.message().topic())
            })?,
            _ = signals.next() => break,
        }
        answered += 1;
    }
    client.close().await.context("closing the connection")?;
    Ok(ExitCode::SUCCESS)
}

/// Replies to `request` with the output of `sh -c command`, or with an error header if the
/// command fails or its output cannot be sent.
async fn answer_with_command(
    client: &Client,
    request: &Request,
    command: &str,
) -> Result<(), ClientError> {
    let max_output = client.limits().max_payload_bytes as usize;
    let input = request.payload().clone();
    let command = command.to_owned();
    let outcome = tokio::task::spawn_blocking(move || {
        reply_command::run(&command, &input, max_output, reply_command::TIME_LIMIT)
    })
    .await
    .unwrap_or_else(|error| Outcome::Failed {
        reason: format!("the command runner failed: {error}"),
        output: Vec::new(),
    });
    let (output, options) = match outcome {
        Outcome::Success(output) => (output, PublishOptions::new()),
        Outcome::Failed { reason, output } => {
            eprintln!(
                "warning: request on {}: {reason}",
                request.message().topic()
            );
            (output, PublishOptions::new().header(ERROR_HEADER, reason))
        }
    };
    request.respond_with(output, options).await
}
