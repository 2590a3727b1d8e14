//! `cassini pub` and `cassini sub`: thin wrappers over `cassini-client`.

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cassini_client::{Client, Message, PublishOptions};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::cli::{ConnectArgs, PubArgs, SubArgs};
use crate::context::Target;
use crate::signals::ShutdownSignals;

/// Exit status when `sub --timeout` passes before `--count` messages arrived, or `req
/// --timeout` before a reply.
pub(crate) const TIMED_OUT: u8 = 2;

/// The instant `--timeout SECONDS` ends, counted from now; `None` without a timeout.
pub(crate) fn deadline_after(timeout: Option<f64>) -> anyhow::Result<Option<Instant>> {
    timeout
        .map(|seconds| {
            Duration::try_from_secs_f64(seconds)
                .map(|timeout| Instant::now() + timeout)
                .with_context(|| format!("--timeout {seconds} is not a duration"))
        })
        .transpose()
}

/// What waiting for a stream's next item gave, under `--timeout` and the shutdown signals.
pub(crate) enum Next<T> {
    /// The stream's next item.
    Item(T),
    /// The stream ended.
    Ended,
    /// The deadline passed first.
    TimedOut,
    /// SIGINT or SIGTERM came first.
    Signalled,
}

/// The stream's next item, unless `deadline` passes or a shutdown signal comes first.
pub(crate) async fn next_before<S>(
    deadline: Option<Instant>,
    stream: &mut S,
    signals: &mut ShutdownSignals,
) -> Next<S::Item>
where
    S: futures_util::Stream + Unpin,
{
    let next = async {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, stream.next()).await.ok(),
            None => Some(stream.next().await),
        }
    };
    tokio::select! {
        next = next => match next {
            Some(Some(item)) => Next::Item(item),
            Some(None) => Next::Ended,
            None => Next::TimedOut,
        },
        _ = signals.next() => Next::Signalled,
    }
}

/// Says that `--timeout` passed with `received` of the wanted `what`s, and gives the exit
/// status for it.
pub(crate) fn timed_out(timeout: Option<f64>, received: u64, what: &str) -> ExitCode {
    eprintln!(
        "error: timed out after {}s with {received} {what}(s) received",
        timeout.unwrap_or_default()
    );
    ExitCode::from(TIMED_OUT)
}

/// Connects as `args` say, with the certificates of `args.name` from `args.certs`.
pub(crate) async fn connect(args: &ConnectArgs) -> anyhow::Result<Client> {
    connect_to_session(args, None).await
}

/// [`connect`], to the named session `session` if given.
async fn connect_to_session(args: &ConnectArgs, session: Option<&str>) -> anyhow::Result<Client> {
    let target = args.resolve()?;
    connect_target(&target, session).await
}

/// Connects to a settled [`Target`], to the named session `session` if given.
pub(crate) async fn connect_target(
    target: &Target,
    session: Option<&str>,
) -> anyhow::Result<Client> {
    let ca = target.certs.join("ca.crt");
    let cert = target.certs.join(format!("client-{}.crt", target.name));
    let key = target.certs.join(format!("client-{}.key", target.name));
    let mut builder = Client::builder(target.server.as_str())
        .ca_file(ca)
        .identity_files(cert, key)
        .server_name(target.server_name.as_str())
        .client_name(format!("cassini-cli/{}", target.name));
    if let Some(name) = session {
        builder = builder.session_name(name);
    }
    builder.connect().await.with_context(|| {
        format!(
            "connecting to {} as {:?} (server name {:?})",
            target.server, target.name, target.server_name
        )
    })
}

/// `cassini pub`: publishes, closes (which waits until the broker has read every publish and
/// answered any refusal), then fails if the broker refused any of them. With `--ack` every
/// publish waits for its acknowledgement and the first failure ends the command.
pub(crate) async fn publish(args: PubArgs) -> anyhow::Result<ExitCode> {
    let pause = match args.sleep {
        Some(seconds) => Some(
            Duration::try_from_secs_f64(seconds)
                .with_context(|| format!("--sleep {seconds} is not a duration"))?,
        ),
        None => None,
    };
    let client = connect(&args.connect).await?;
    let mut refusals = client.publish_errors();
    let mut publisher = Publisher {
        client: &client,
        args: &args,
        options: PublishOptions::new()
            .headers(args.headers.clone())
            .retain(args.retain),
        pause,
        number: 0,
    };
    let sent = publisher.publish_all().await;
    let number = publisher.number;
    if let Err(error) = sent {
        let _ = client.close().await;
        return Err(error);
    }
    client.close().await.context("closing the connection")?;
    let mut refused = 0u64;
    let mut first = None;
    while let Some(refusal) = refusals.as_mut().and_then(|queue| queue.try_recv().ok()) {
        refused += 1;
        first.get_or_insert(refusal);
    }
    match first {
        None => Ok(ExitCode::SUCCESS),
        Some(refusal) => anyhow::bail!(
            "the broker refused {refused} of {number} publish(es) to {}: {}: {}",
            refusal.topic,
            refusal.code.name().unwrap_or("unknown code"),
            refusal.reason
        ),
    }
}

/// The publishing loop of `cassini pub`.
struct Publisher<'a> {
    client: &'a Client,
    args: &'a PubArgs,
    options: PublishOptions,
    pause: Option<Duration>,
    /// Messages published so far.
    number: u64,
}

impl Publisher<'_> {
    /// Publishes the body `--count` times, or with `--lines` each line `--count` times as it
    /// is read (one line held at a time, so endless input such as `tail -f` streams).
    async fn publish_all(&mut self) -> anyhow::Result<()> {
        let max = u64::from(self.client.limits().max_payload_bytes);
        let (source, mut reader) = open_body(self.args)?;
        if !self.args.lines {
            let body = read_whole(&source, &mut reader, max)?;
            for _ in 0..self.args.count {
                self.publish_one(&body).await?;
            }
            return Ok(());
        }
        let mut line_number = 0u64;
        loop {
            line_number = line_number.saturating_add(1);
            let line =
                tokio::task::block_in_place(|| read_line(&source, &mut reader, max, line_number))?;
            let Some(line) = line else {
                return Ok(());
            };
            for _ in 0..self.args.count {
                self.publish_one(&line).await?;
            }
        }
    }

    /// Publishes `body` (with `{{Count}}` expanded), after `--sleep` unless it is the first.
    async fn publish_one(&mut self, body: &Bytes) -> anyhow::Result<()> {
        if self.number > 0 {
            if let Some(pause) = self.pause {
                tokio::time::sleep(pause).await;
            }
        }
        self.number = self.number.saturating_add(1);
        let payload = expand_count(body, self.number);
        let topic = self.args.topic.as_str();
        let sent = if self.args.ack {
            self.client
                .publish_acked_with(topic, payload, self.options.clone())
                .await
                .map(drop)
        } else {
            self.client
                .publish_with(topic, payload, self.options.clone())
                .await
        };
        sent.map_err(|error| {
            let what = if self.args.ack {
                "was not acknowledged"
            } else {
                "failed"
            };
            anyhow::anyhow!(
                "publish {} to {topic} {what}: {}",
                self.number,
                describe(&error)
            )
        })
    }
}

/// A publish error as one line, naming the broker's code for a refusal.
fn describe(error: &cassini_client::PublishError) -> String {
    match error {
        cassini_client::PublishError::Rejected { code, reason, .. } => format!(
            "the broker refused it: {}: {reason}",
            code.name().unwrap_or("unknown code")
        ),
        other => other.to_string(),
    }
}

/// Where `pub` reads its body: MESSAGE, standard input (`-`) or `--file`; with its name for
/// errors.
fn open_body(args: &PubArgs) -> anyhow::Result<(String, Box<dyn BufRead + Send>)> {
    Ok(match (&args.file, args.message.as_deref()) {
        (Some(path), _) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("reading --file {}", path.display()))?;
            (
                path.display().to_string(),
                Box::new(std::io::BufReader::new(file)),
            )
        }
        (None, Some("-")) => (
            "standard input".into(),
            Box::new(std::io::BufReader::new(std::io::stdin())),
        ),
        (None, Some(message)) => (
            "MESSAGE".into(),
            Box::new(std::io::Cursor::new(message.as_bytes().to_vec())),
        ),
        (None, None) => anyhow::bail!("give a MESSAGE, `-` for standard input, or --file F"),
    })
}

/// The whole body, at most `max` bytes (the broker's payload limit): reads at most one byte
/// more and fails clearly on a longer body instead of holding it.
fn read_whole(source: &str, reader: &mut dyn BufRead, max: u64) -> anyhow::Result<Bytes> {
    let mut body = Vec::new();
    reader
        .take(max.saturating_add(1))
        .read_to_end(&mut body)
        .with_context(|| format!("reading {source}"))?;
    if body.len() as u64 > max {
        anyhow::bail!(
            "the message from {source} is larger than the broker's payload limit of {max} bytes"
        );
    }
    Ok(Bytes::from(body))
}

/// The next line (without `\n` or `\r\n`), `None` at the end; a line over `max` bytes fails
/// after reading at most `max + 2` bytes of it.
fn read_line(
    source: &str,
    reader: &mut dyn BufRead,
    max: u64,
    number: u64,
) -> anyhow::Result<Option<Bytes>> {
    let mut line = Vec::new();
    let read = reader
        .take(max.saturating_add(2))
        .read_until(b'\n', &mut line)
        .with_context(|| format!("reading {source}"))?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.len() as u64 > max {
        anyhow::bail!(
            "line {number} of {source} is larger than the broker's payload limit of {max} bytes"
        );
    }
    Ok(Some(Bytes::from(line)))
}

/// The template placeholder `pub` replaces with the 1-based message number (as `nats pub`).
const COUNT_PLACEHOLDER: &[u8] = b"{{Count}}";

/// `body` with every `{{Count}}` replaced by `number`.
fn expand_count(body: &Bytes, number: u64) -> Bytes {
    if !body
        .windows(COUNT_PLACEHOLDER.len())
        .any(|window| window == COUNT_PLACEHOLDER)
    {
        return body.clone();
    }
    let digits = number.to_string();
    let mut out = Vec::with_capacity(body.len());
    let mut rest: &[u8] = body;
    while let Some((&first, tail)) = rest.split_first() {
        match rest.strip_prefix(COUNT_PLACEHOLDER) {
            Some(after) => {
                out.extend_from_slice(digits.as_bytes());
                rest = after;
            }
            None => {
                out.push(first);
                rest = tail;
            }
        }
    }
    Bytes::from(out)
}

pub(crate) async fn subscribe(args: SubArgs) -> anyhow::Result<ExitCode> {
    let mut signals = ShutdownSignals::install()?;
    let client = connect_to_session(&args.connect, args.session.as_deref()).await?;
    if let Some(name) = &args.session {
        let resumed = matches!(
            client.state(),
            cassini_client::ConnectionState::Connected { resumed: true, .. }
        );
        eprintln!(
            "session {name:?} {}",
            if resumed { "resumed" } else { "created" }
        );
    }
    let subscribed = match (&args.queue, args.ack, args.datagram) {
        (Some(group), false, false) => {
            client
                .subscribe_queue(args.topic.as_str(), group.as_str())
                .await
        }
        (Some(group), ack, datagram) => {
            let mut options = cassini_client::SubscribeOptions {
                queue_group: Some(group.clone()),
                ..cassini_client::SubscribeOptions::default()
            };
            if ack {
                options.acks = Some(cassini_client::AckOptions::default());
            }
            if datagram {
                options.delivery = cassini_client::DeliveryClass::Datagram {
                    oversize: cassini_client::OversizeRule::Drop,
                };
            }
            client.subscribe_with(args.topic.as_str(), options).await
        }
        (None, true, _) => client.subscribe_at_least_once(args.topic.as_str()).await,
        (None, false, true) => client.subscribe_datagram(args.topic.as_str()).await,
        (None, false, false) => client.subscribe(args.topic.as_str()).await,
    };
    let mut subscription = subscribed.with_context(|| format!("subscribing to {}", args.topic))?;
    if let Some(name) = &args.session {
        for other in client.unclaimed_subscriptions() {
            eprintln!(
                "note: session {name:?} also holds subscription {} to {}, which this sub did \
                 not take up (another filter or options); it keeps queueing until the session ends",
                other.subscription, other.filter
            );
        }
    }
    match &args.queue {
        Some(group) => eprintln!("subscribed to {} in queue group {group}", args.topic),
        None => eprintln!("subscribed to {}", args.topic),
    }
    let format = if args.json {
        Format::Json
    } else if args.raw {
        Format::Raw
    } else {
        Format::Readable
    };

    let deadline = deadline_after(args.timeout)?;
    let mut received = 0u64;
    let mut stdout = std::io::stdout().lock();
    while args.count.is_none_or(|count| received < count) {
        match next_before(deadline, &mut subscription, &mut signals).await {
            Next::Signalled => break,
            Next::TimedOut => {
                let status = timed_out(args.timeout, received, "message");
                let _ = finish(&client, &mut subscription, args.session.is_some()).await;
                return Ok(status);
            }
            Next::Ended => {
                let reason = subscription
                    .end_reason()
                    .map(|end| end.to_string())
                    .unwrap_or_else(|| "unknown reason".into());
                anyhow::bail!("the subscription ended after {received} message(s): {reason}");
            }
            Next::Item(message) => {
                received += 1;
                print_message(&mut stdout, &message, format, received)?;
            }
        }
    }
    let dropped = subscription.dropped();
    if dropped > 0 {
        eprintln!("warning: the broker dropped {dropped} message(s) for this subscription");
    }
    if args.datagram {
        eprintln!("datagrams lost: {}", subscription.lost());
    }
    finish(&client, &mut subscription, args.session.is_some())
        .await
        .context("closing the connection")?;
    Ok(ExitCode::SUCCESS)
}

/// Ends `sub`: with a named session, acknowledges what was printed and leaves the session for
/// the next `sub --session`; otherwise says goodbye, which ends the session.
async fn finish(
    client: &Client,
    subscription: &mut cassini_client::Subscription,
    keep_session: bool,
) -> Result<(), cassini_client::ClientError> {
    if keep_session {
        subscription.acknowledge();
        client.leave().await
    } else {
        client.close().await
    }
}

/// How `sub` and `req` print a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The payload and a newline.
    Raw,
    /// `[#N] Received on "TOPIC"`, the headers, the payload and an empty line.
    Readable,
    /// One JSON object per message.
    Json,
}

/// Writes `message`, the `number`th (from 1), to `out` in `format`. [`Format::Json`] writes
/// topic, sequence, headers, size, payload (lossy UTF-8), message id, reply topic and whether
/// it is a retained value or a redelivery. [`Format::Readable`] writes the payload's bytes as
/// they are.
pub(crate) fn print_message(
    out: &mut impl Write,
    message: &Message,
    format: Format,
    number: u64,
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            let headers: Vec<_> = message
                .headers()
                .iter()
                .map(|(key, value)| serde_json::json!([key, value]))
                .collect();
            let line = serde_json::json!({
                "topic": message.topic(),
                "sequence": message.sequence(),
                "headers": headers,
                "size": message.payload().len(),
                "payload": String::from_utf8_lossy(message.payload()),
                "message_id": message.message_id(),
                "reply_to": message.reply_to(),
                "retained": message.is_retained(),
                "redelivered": message.is_redelivered(),
            });
            writeln!(out, "{line}")?;
        }
        Format::Raw => {
            out.write_all(message.payload())?;
            out.write_all(b"\n")?;
        }
        Format::Readable => {
            write!(out, "[#{number}] Received on {:?}", message.topic())?;
            if let Some(reply_to) = message.reply_to() {
                write!(out, " with reply {reply_to:?}")?;
            }
            if message.is_retained() {
                write!(out, " (retained)")?;
            }
            if message.is_redelivered() {
                write!(out, " (redelivered)")?;
            }
            writeln!(out)?;
            for (key, value) in message.headers().iter() {
                writeln!(out, "{key}: {value}")?;
            }
            if !message.headers().is_empty() {
                writeln!(out)?;
            }
            out.write_all(message.payload())?;
            out.write_all(b"\n\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
