//! `cassini req` and `cassini reply`: request/reply over `cassini-client`.
//!
//! `req` sends one request and prints the first reply; its exit status tells a script whether
//! a reply came, nobody listened, or time ran out. `reply` answers requests one at a time, by
//! echoing them or by running a shell command ([`crate::reply_command`]) on a blocking thread.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cassini_client::{Client, ClientError, PublishOptions, Request};

use crate::cli::{ReplyArgs, ReqArgs};
use crate::pubsub::{connect, print_message, TIMED_OUT};
use crate::reply_command::{self, Outcome};
use crate::signals::ShutdownSignals;

/// Exit status of `req` when the broker says nobody subscribes to the topic.
const NO_RESPONDERS: u8 = 3;

/// Exit status of `req` when the reply carries the [`ERROR_HEADER`]: the responder failed.
const RESPONDER_FAILED: u8 = 4;

/// The header a `reply --command` reply carries when the command failed; its value says how.
const ERROR_HEADER: &str = "error";

/// `cassini req`: sends one request, prints the first reply.
pub(crate) async fn request(args: ReqArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .with_context(|| format!("--timeout {} is not a duration", args.timeout))?;
    let client = connect(&args.connect).await?;
    let options = PublishOptions::new().headers(args.headers);
    let payload = Bytes::from(args.message.into_bytes());
    let topic = args.topic.as_str();
    let reply = match client.request_with(topic, payload, options, timeout).await {
        Ok(reply) => reply,
        Err(error @ ClientError::NoResponders { .. }) => {
            eprintln!("error: {error}");
            let _ = client.close().await;
            return Ok(ExitCode::from(NO_RESPONDERS));
        }
        Err(ClientError::Timeout(_)) => {
            eprintln!("error: no reply on {topic} within {}s", args.timeout);
            let _ = client.close().await;
            return Ok(ExitCode::from(TIMED_OUT));
        }
        Err(error) => {
            let _ = client.close().await;
            return Err(error).with_context(|| format!("requesting on {topic}"));
        }
    };
    print_message(&mut std::io::stdout().lock(), &reply, args.json)?;
    client.close().await.context("closing the connection")?;
    match reply.header(ERROR_HEADER) {
        Some(reason) => {
            eprintln!("error: the responder reported an error: {reason}");
            Ok(ExitCode::from(RESPONDER_FAILED))
        }
        None => Ok(ExitCode::SUCCESS),
    }
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
