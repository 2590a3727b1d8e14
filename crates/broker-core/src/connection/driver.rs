//! One connection, from `Hello` to goodbye.
//!
//! The driver runs in the task of the connection's listener and records the session it
//! attached in the [`Attachment`] slot the listener gave it. It accepts the control stream,
//! answers `Hello` with `Welcome` after the session manager has created or resumed the session,
//! then serves control requests and accepts publish streams until the client finishes its
//! control stream (a goodbye) or anything goes wrong. Any protocol error closes this connection
//! only, with the error's code and reason. A connection whose session was attached emits a
//! `connect` system event then, and a `disconnect` event (with the reason) at its end.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cassini_protocol::{
    encode_frame, ErrorCode, ErrorFrame, Frame, GoingAway, Hello, Limits, Ping, SessionId,
    Subscribed, Unsubscribed, Welcome, PROTOCOL_VERSION,
};
use cassini_replication::SessionKey;
use ractor::ActorRef;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use crate::actors::announcements::Announcements;
use crate::actors::ask;
use crate::actors::session::SessionMsg;
use crate::actors::session_manager::{Opened, SessionManagerMsg};
use crate::cluster::ownership::{Claimed, Hold};
use crate::connection::framed::{write_answer, FrameReader};
use crate::connection::publish::{serve_publish_stream, DatagramPublishes};
use crate::context::Shared;
use crate::error::BrokerError;
use crate::events::Event;
use crate::introspect::registry::shown_client_name;
use crate::log_budget::{LogBudget, DEFAULT_LINES_PER_SECOND};
use crate::transport::{Connection, RecvStream, SendStream, TransportError};

/// The control stream goes ahead of every other stream.
const CONTROL_STREAM_PRIORITY: i32 = 100;

/// How long the broker waits for a client to acknowledge `GoingAway` before closing anyway.
const GOING_AWAY_DELIVERY: Duration = Duration::from_secs(1);

/// After a goodbye, how long publish streams the client already finished get to be read to
/// their end before the connection is closed.
const GOODBYE_DRAIN: Duration = Duration::from_secs(5);

/// After a goodbye, once every publish stream is read, how long to wait for one the client
/// opened before its goodbye whose first packet is still on its way.
const GOODBYE_STRAGGLERS: Duration = Duration::from_millis(25);

/// The session a connection is attached to, which the driver records in its owner's slot as
/// soon as the session is opened: a later detach or end must name `epoch`.
pub(crate) struct Attachment {
    pub(crate) session: ActorRef<SessionMsg>,
    pub(crate) epoch: u64,
}

/// Runs the connection to its end and closes it with a code. Returns whether the client said
/// goodbye. The attached session is recorded in `attachment` (the listener that owns the
/// connection tells it of the end: the driver never names the listener).
pub(crate) async fn drive_connection(
    connection: Arc<dyn Connection>,
    shared: Arc<Shared>,
    sessions: ActorRef<SessionManagerMsg>,
    attachment: &mut Option<Attachment>,
    going_away: watch::Receiver<Option<String>>,
) -> bool {
    let mut attached = None;
    let outcome = serve(
        &connection,
        &shared,
        &sessions,
        attachment,
        going_away,
        &mut attached,
    )
    .await;
    let (clean, code, reason) = match outcome {
        Ok(()) => {
            connection.close(ErrorCode::NORMAL, "goodbye");
            (true, None, "goodbye".to_string())
        }
        Err(BrokerError::Transport(err)) => {
            tracing::debug!(%err, "connection ended");
            (false, None, format!("connection lost: {err}"))
        }
        Err(BrokerError::GoingAway(reason)) => {
            connection.close(ErrorCode::SERVER_SHUTTING_DOWN, &reason);
            let reason = format!("server shutting down: {reason}");
            (false, Some(ErrorCode::SERVER_SHUTTING_DOWN), reason)
        }
        Err(err) => {
            static CLOSING: LogBudget = LogBudget::new(DEFAULT_LINES_PER_SECOND);
            if let Some(suppressed) = CLOSING.admit() {
                tracing::info!(code = ?err.code(), %err, suppressed, "closing connection");
            }
            connection.close(err.code(), &err.reason());
            (false, Some(err.code()), err.reason())
        }
    };
    if let Some((session, since)) = attached {
        let peer = connection.peer();
        shared.emit(Event::Disconnect {
            identity: peer.identity.to_string(),
            remote: peer.remote_addr.to_string(),
            session: session.to_string(),
            reason,
            code: code.map(|code| {
                code.name()
                    .map_or_else(|| code.0.to_string(), str::to_string)
            }),
            clean,
            connected_ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }
    clean
}

async fn serve(
    connection: &Arc<dyn Connection>,
    shared: &Arc<Shared>,
    sessions: &ActorRef<SessionManagerMsg>,
    attachment: &mut Option<Attachment>,
    mut going_away: watch::Receiver<Option<String>>,
    attached: &mut Option<(SessionId, Instant)>,
) -> Result<(), BrokerError> {
    let limits = &shared.config.limits;
    let max_frame_bytes = limits.max_frame_bytes;
    let deadline = Instant::now() + limits.hello_timeout;
    let timed_out = |_| BrokerError::HelloTimeout(limits.hello_timeout);

    let (mut control_send, control_recv) = timeout_at(deadline, connection.accept_bi())
        .await
        .map_err(timed_out)??;
    control_send.set_priority(CONTROL_STREAM_PRIORITY);
    let frames = Arc::new(shared.memory.frames_for(&connection.peer().identity));
    let mut control = FrameReader::new(control_recv, max_frame_bytes, frames.reader());
    // Boxed here and below: an async fn's future is as large as its largest state, and this
    // one lives as long as the connection (docs/BENCHMARKS.md, "Connections"). Claiming and
    // opening the session, answering a control request and going away are its largest states,
    // each passed through once or now and then; boxed, they take memory only while they run.
    // For the same reason what is used only to open the session (`Hello`, the claim,
    // `Welcome`) lives in blocks of its own, and ends before the connection's loop starts.
    // The claim's hold lasts until the connection ends: a newer claim by another node closes
    // it, and an older claim than one already held here never opens the session.
    let (_hold, mut opened) = {
        let hello = match timeout_at(deadline, control.next())
            .await
            .map_err(timed_out)?
            .map_err(control_reset)?
        {
            Some(Frame::Hello(hello)) => hello,
            Some(other) => {
                return Err(BrokerError::ProtocolViolation(format!(
                    "expected Hello, got {}",
                    other.kind()
                )))
            }
            None => {
                return Err(BrokerError::ProtocolViolation(
                    "control stream ended before Hello".into(),
                ))
            }
        };
        if let Some(name) = &hello.client_name {
            let shown = shown_client_name(name);
            tracing::Span::current().record("client", tracing::field::display(&shown));
            shared.registry.set_client_name(connection, shown);
        }
        // One position per subscription: more is not a client resuming, and each costs the
        // session's attach a lookup.
        let max = limits.max_subscriptions_per_session;
        if hello.positions.len() > usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(BrokerError::TooManyPositions {
                listed: hello.positions.len(),
                max,
            });
        }
        let claim = Box::pin(claim_session(shared, connection, &hello)).await?;
        let hold = match claim {
            Some(claimed) => Some(claimed.hold(Arc::clone(connection))?),
            None => None,
        };
        let claim = hold.as_ref().map(Hold::epoch);
        let opened = Box::pin(open_session(connection, sessions, hello, claim)).await?;
        if let (Some(_), Some(store)) = (claim, shared.replicated()) {
            // A named session's `Welcome` comes once its records are in the cluster's log: a
            // client told its session is there finds it on any node after this one dies.
            let ticket = store.ticket();
            Box::pin(store.synced(ticket))
                .await
                .map_err(BrokerError::Storage)?;
        }
        (hold, opened)
    };
    let ended = opened.ended.take();
    *attachment = Some(Attachment {
        session: opened.session.clone(),
        epoch: opened.epoch,
    });
    {
        let welcome = fit_welcome(
            Welcome {
                protocol_version: PROTOCOL_VERSION,
                session_id: opened.id,
                resumed: opened.resumed,
                identity: connection.peer().identity.to_string(),
                limits: Limits {
                    max_datagram_bytes: connection
                        .max_datagram_size()
                        .map_or(0, |size| u32::try_from(size).unwrap_or(u32::MAX)),
                    ..limits.announced()
                },
                subscriptions: opened.subscriptions.clone(),
                cluster_addresses: shared
                    .router
                    .cluster()
                    .map(|cluster| cluster.client_addresses())
                    .unwrap_or_default(),
            },
            max_frame_bytes,
        );
        write_control(control_send.as_mut(), &welcome, max_frame_bytes)
            .await
            .map_err(control_reset)?;
    }
    session_attached(shared, connection, opened.id, opened.resumed);
    *attached = Some((opened.id, Instant::now()));
    static ATTACHED: LogBudget = LogBudget::new(DEFAULT_LINES_PER_SECOND);
    if let Some(suppressed) = ATTACHED.admit() {
        tracing::info!(session = %opened.id, resumed = opened.resumed, suppressed, "session attached");
    }

    let mut publishers = JoinSet::new();
    let mut settling = Settling::new();
    let max_publish_streams = limits.max_publish_streams_per_connection;
    // Serves a publish stream the client opened; its partial frames count in the identity's.
    let publish_stream = |send: Box<dyn SendStream>, recv: Box<dyn RecvStream>| {
        serve_publish_stream(
            send,
            recv,
            Arc::clone(shared),
            Arc::clone(&connection.peer().identity),
            frames.reader(),
        )
    };
    // Made on the first datagram publish: most clients never send one.
    let mut datagrams: Option<Box<DatagramPublishes>> = None;
    let mut datagrams_open = connection.max_datagram_size().is_some();
    loop {
        tokio::select! {
            datagram = connection.read_datagram(), if datagrams_open => match datagram {
                Ok(datagram) => datagrams
                    .get_or_insert_with(|| {
                        Box::new(DatagramPublishes::new(
                            Arc::clone(shared),
                            Arc::clone(&connection.peer().identity),
                        ))
                    })
                    .receive(&datagram)?,
                Err(TransportError::DatagramsUnsupported) => datagrams_open = false,
                Err(err) => return Err(err.into()),
            },
            frame = control.next() => match frame.map_err(control_reset)? {
                None => break,
                Some(frame) => if let Some(request) = apply_ack(frame, &opened) {
                    Box::pin(serve_control(request, shared, &opened, control_send.as_mut(), max_frame_bytes, &mut settling))
                        .await
                        .map_err(control_reset)?
                },
            },
            Some(settled) = settling.join_next() => if let Ok(answer) = settled {
                write_control(control_send.as_mut(), &answer, max_frame_bytes)
                    .await
                    .map_err(control_reset)?;
            },
            accepted = connection.accept_bi(), if publishers.len() < max_publish_streams => {
                let (send, recv) = accepted?;
                publishers.spawn(publish_stream(send, recv));
            },
            Some(done) = publishers.join_next() => flatten(done)?,
            notice = next_notice(ended.as_ref()) => {
                write_control(control_send.as_mut(), &Frame::SubscriptionEnded(notice), max_frame_bytes)
                    .await
                    .map_err(control_reset)?;
            }
            Ok(()) = going_away.changed() => {
                let reason = going_away.borrow().clone().unwrap_or_default();
                return Box::pin(go_away(shared, &opened, &mut control, control_send.as_mut(), reason, &mut settling)).await;
            }
        }
    }
    let _ = control_send.finish();
    // Publish streams the client opened before its goodbye may still be on their way (their
    // first packet can arrive after the goodbye's): they are accepted and read to their end
    // too, until every stream is done and none arrived for `GOODBYE_STRAGGLERS`.
    let drained = timeout(GOODBYE_DRAIN, async {
        loop {
            tokio::select! {
                Some(done) = publishers.join_next() => flatten(done)?,
                accepted = connection.accept_bi(), if publishers.len() < max_publish_streams => {
                    let Ok((send, recv)) = accepted else { break };
                    publishers.spawn(publish_stream(send, recv));
                }
                () = tokio::time::sleep(GOODBYE_STRAGGLERS), if publishers.is_empty() => break,
            }
        }
        Ok::<_, BrokerError>(())
    })
    .await;
    match drained {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("publish streams still open {GOODBYE_DRAIN:?} after goodbye");
            Ok(())
        }
    }
}

/// Records the attached session on the connection's span (opened by its listener) and in the
/// monitoring registry, counts the open and emits the `connect` event.
fn session_attached(
    shared: &Shared,
    connection: &Arc<dyn Connection>,
    session: SessionId,
    resumed: bool,
) {
    tracing::Span::current().record("session", tracing::field::display(session));
    shared.registry.set_session(connection, session, resumed);
    shared.router.counters().session_opened(resumed);
    let peer = connection.peer();
    shared.emit(Event::Connect {
        identity: peer.identity.to_string(),
        remote: peer.remote_addr.to_string(),
        session: session.to_string(),
        resumed,
    });
}

/// The `Subscribed` answers waiting for the cluster's peers to acknowledge their interest
/// ([`crate::cluster::Cluster::settled`]), each in a task of its own: the control stream serves
/// the client's other requests meanwhile, and writes each answer when its wait ends.
type Settling = JoinSet<Frame>;

/// Applies a control stream frame that is an `Ack` (it has no answer) and returns any other
/// frame: a request, for [`serve_control`]. Acks come often; this allocates nothing.
fn apply_ack(frame: Frame, opened: &Opened) -> Option<Frame> {
    match frame {
        Frame::Ack(ack) => {
            // An ack for a subscription that ended is harmless.
            opened.acks.ack(ack.subscription, &ack.ranges);
            None
        }
        request => Some(request),
    }
}

/// Answers one request of the control stream, in order, except that a `Subscribed` that must
/// wait for the cluster is answered from `settling` once the wait ends (answers name their
/// request). Its callers box it: see `serve`.
async fn serve_control(
    request: Frame,
    shared: &Shared,
    opened: &Opened,
    control_send: &mut dyn SendStream,
    max_frame_bytes: u32,
    settling: &mut Settling,
) -> Result<(), BrokerError> {
    let answer = answer_control(request, &opened.session).await?;
    match (&answer, shared.router.cluster()) {
        (Frame::Subscribed(_), Some(cluster)) => {
            let cluster = Arc::clone(cluster);
            settling.spawn(async move {
                cluster.settled().await;
                answer
            });
            Ok(())
        }
        _ => write_control(control_send, &answer, max_frame_bytes).await,
    }
}

/// The broker is shutting down: tell the client, keep serving its control stream (so its
/// acknowledgements still count) until every queue of its session is delivered (and, at least
/// once, acknowledged) or the drain deadline passes, then end the connection.
async fn go_away(
    shared: &Shared,
    opened: &Opened,
    control: &mut FrameReader,
    control_send: &mut dyn SendStream,
    reason: String,
    settling: &mut Settling,
) -> Result<(), BrokerError> {
    let max_frame_bytes = shared.config.limits.max_frame_bytes;
    let hint = shared.config.shutdown.reconnect_hint;
    let notice = Frame::GoingAway(GoingAway {
        reason: reason.clone(),
        reconnect_after_ms: u32::try_from(hint.as_millis()).unwrap_or(u32::MAX),
    });
    write_control(control_send, &notice, max_frame_bytes).await?;
    let deadline = Instant::now()
        + shared
            .config
            .shutdown
            .drain
            .saturating_sub(GOING_AWAY_DELIVERY);
    let mut control_open = true;
    loop {
        tokio::select! {
            biased;
            () = opened.acks.delivered() => break,
            () = tokio::time::sleep_until(deadline) => break,
            frame = control.next(), if control_open => match frame.map_err(control_reset)? {
                Some(frame) => if let Some(request) = apply_ack(frame, opened) {
                    Box::pin(serve_control(request, shared, opened, control_send, max_frame_bytes, settling)).await?
                },
                None => control_open = false,
            },
            Some(settled) = settling.join_next() => if let Ok(answer) = settled {
                write_control(control_send, &answer, max_frame_bytes).await?;
            },
        }
    }
    if !opened.acks.all_delivered() {
        tracing::warn!("shutting down with deliveries still queued or unacknowledged");
    }
    let _ = control_send.finish();
    // Closing at once would discard the notice: wait (briefly) until it arrived.
    let _ = timeout(GOING_AWAY_DELIVERY, control_send.delivered()).await;
    Err(BrokerError::GoingAway(reason))
}

/// Writes `frame` on the control stream. A client that has left the control stream's earlier
/// frames unread, so that this one cannot be written for
/// [`crate::connection::framed::ANSWER_WRITE_TIMEOUT`], is closed with
/// `SLOW_CONSUMER`: while the driver waits it reads nothing of the connection, and QUIC would
/// keep what the client sends meanwhile.
async fn write_control(
    control_send: &mut dyn SendStream,
    frame: &Frame,
    max_frame_bytes: u32,
) -> Result<(), BrokerError> {
    if write_answer(control_send, frame, max_frame_bytes).await? {
        Ok(())
    } else {
        Err(BrokerError::AnswersUnread("control"))
    }
}

/// A control stream the client reset (or stopped) breaks the protocol: the connection closes
/// with `PROTOCOL_VIOLATION`. Like any close without a goodbye, it only detaches the session.
fn control_reset(err: BrokerError) -> BrokerError {
    match err {
        BrokerError::Transport(TransportError::Reset(code) | TransportError::Stopped(code)) => {
            BrokerError::ProtocolViolation(format!(
                "control stream reset by the client with {code}"
            ))
        }
        other => other,
    }
}

/// The next subscription the broker ended, to announce; pending forever without a queue.
async fn next_notice(ended: Option<&Announcements>) -> cassini_protocol::SubscriptionEnded {
    match ended {
        Some(announcements) => announcements.next().await,
        None => std::future::pending().await,
    }
}

fn flatten(
    done: Result<Result<(), BrokerError>, tokio::task::JoinError>,
) -> Result<(), BrokerError> {
    done.map_err(|err| BrokerError::Internal(format!("publish stream task: {err}")))?
}

/// `welcome` as a frame that fits in `max_frame_bytes` and in the default maximum a client
/// reads `Welcome` with: if the listed subscriptions make it larger, the highest ids are left
/// out (a new client process cannot take those up; see docs/PROTOCOL.md, Named sessions).
fn fit_welcome(welcome: Welcome, max_frame_bytes: u32) -> Frame {
    let max = max_frame_bytes.min(cassini_protocol::codec::DEFAULT_MAX_FRAME_BYTES);
    let held = welcome.subscriptions.len();
    let mut frame = Frame::Welcome(welcome);
    while let Frame::Welcome(welcome) = &mut frame {
        if welcome.subscriptions.is_empty()
            || encode_frame(&Frame::Welcome(welcome.clone()), &mut BytesMut::new(), max).is_ok()
        {
            if welcome.subscriptions.len() < held {
                tracing::warn!(
                    listed = welcome.subscriptions.len(),
                    held,
                    "Welcome lists only the session's first subscriptions: the rest do not fit in one frame"
                );
            }
            break;
        }
        let keep = welcome.subscriptions.len() / 2;
        welcome.subscriptions.truncate(keep);
    }
    frame
}

/// In a cluster with replicated session ownership, a named session is claimed for this node
/// before it attaches (docs/CLUSTERING.md, "Session ownership"): the claim, released unless
/// the connection comes to hold it. `None` without ownership, or for an unnamed session (its
/// id lives on this node only, so no other node can serve it).
async fn claim_session(
    shared: &Shared,
    connection: &Arc<dyn Connection>,
    hello: &Hello,
) -> Result<Option<Claimed>, BrokerError> {
    let Some(ownership) = shared
        .router
        .cluster()
        .and_then(|cluster| cluster.ownership())
    else {
        return Ok(None);
    };
    let Some(name) = &hello.session_name else {
        return Ok(None);
    };
    if hello.protocol_version != PROTOCOL_VERSION || !cassini_protocol::valid_session_name(name) {
        // Refused by `open_session`, with the reason, before anything is claimed.
        return Ok(None);
    }
    // By identity and name, MQTT client ids too: a client of another identity that takes
    // the same name on another node must not close this identity's connection.
    let session = SessionKey {
        identity: connection.peer().identity.to_string(),
        name: name.clone(),
    };
    Ok(Some(ownership.claim(session).await?))
}

async fn open_session(
    connection: &Arc<dyn Connection>,
    sessions: &ActorRef<SessionManagerMsg>,
    hello: Hello,
    claim: Option<u64>,
) -> Result<Opened, BrokerError> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(BrokerError::UnsupportedVersion {
            requested: hello.protocol_version,
            supported: PROTOCOL_VERSION,
        });
    }
    ask(sessions, |reply| SessionManagerMsg::Open {
        resume: hello.resume,
        name: hello.session_name,
        positions: hello.positions,
        connection: Arc::clone(connection),
        claim,
        reply,
    })
    .await?
}

/// Turns one control request into its answer. Errors that concern only the request become an
/// `Error` frame; errors that concern the connection are returned. In a cluster, the caller
/// sends `Subscribed` only once every connected peer has acknowledged this node's interest as it
/// stands after the subscribe ([`serve_control`]).
async fn answer_control(
    frame: Frame,
    session: &ActorRef<SessionMsg>,
) -> Result<Frame, BrokerError> {
    let (request_id, result) = match frame {
        Frame::Subscribe(subscribe) => {
            let request_id = subscribe.request_id;
            let result = ask(session, |reply| SessionMsg::Subscribe {
                filter: subscribe.filter,
                options: subscribe.options,
                reply,
            })
            .await?;
            let result = result.map(|subscription| {
                Frame::Subscribed(Subscribed {
                    request_id,
                    subscription,
                })
            });
            (request_id, result)
        }
        Frame::Unsubscribe(unsubscribe) => {
            let request_id = unsubscribe.request_id;
            let subscription = unsubscribe.subscription;
            let result = ask(session, |reply| SessionMsg::Unsubscribe {
                subscription,
                reply,
            })
            .await?
            .map(|()| {
                Frame::Unsubscribed(Unsubscribed {
                    request_id,
                    subscription,
                })
            });
            (request_id, result)
        }
        Frame::Ping(Ping { nonce }) => return Ok(Frame::Pong(Ping { nonce })),
        other => {
            return Err(BrokerError::ProtocolViolation(format!(
                "{} frame on the control stream",
                other.kind()
            )))
        }
    };
    Ok(result.unwrap_or_else(|err| {
        Frame::Error(ErrorFrame {
            request_id: Some(request_id),
            code: err.code(),
            reason: err.reason(),
        })
    }))
}

#[cfg(test)]
mod tests {
    use cassini_protocol::{Limits, SessionId, SessionSubscription, SubscribeOptions};

    use super::*;

    fn welcome(subscriptions: usize) -> Welcome {
        Welcome {
            protocol_version: PROTOCOL_VERSION,
            session_id: SessionId([1; 16]),
            resumed: true,
            identity: "alice".into(),
            limits: Limits {
                max_payload_bytes: 1024,
                max_frame_bytes: 4096,
                max_subscriptions: 1024,
                max_topic_bytes: 256,
                max_topic_depth: 16,
                max_headers: 0,
                max_header_bytes: 0,
                max_datagram_bytes: 0,
            },
            subscriptions: (1..=subscriptions as u64)
                .map(|subscription| SessionSubscription {
                    subscription,
                    filter: format!("{}.{subscription}", "t".repeat(200)),
                    options: SubscribeOptions::default(),
                })
                .collect(),
            cluster_addresses: Vec::new(),
        }
    }

    #[test]
    fn a_welcome_too_large_for_one_frame_lists_fewer_subscriptions() {
        let Frame::Welcome(fitted) = fit_welcome(welcome(100), 4096) else {
            panic!("not a Welcome");
        };
        let listed = fitted.subscriptions.len();
        assert!(listed > 0 && listed < 100, "listed {listed}");
        assert_eq!(
            fitted.subscriptions[0].subscription, 1,
            "the lowest ids stay"
        );
        assert!(encode_frame(&Frame::Welcome(fitted), &mut BytesMut::new(), 4096).is_ok());
        let Frame::Welcome(small) = fit_welcome(welcome(3), 4096) else {
            panic!("not a Welcome");
        };
        assert_eq!(small.subscriptions.len(), 3, "what fits is listed whole");
    }
}
