//! The broker's transport interface, in memory: each MQTT connection is handed to the broker as
//! a `cassini_broker::Connection` whose streams are pipes inside this process. The gateway is
//! the client end: it opens the control stream and a publish stream, speaks Cassini frames on
//! them, and reads one stream per subscription that the broker opens. So an MQTT client gets
//! exactly what a QUIC client gets (the same `Hello`, sessions, ACL checks, admission, queues,
//! overflow policies, limits, revocation, monitoring) with no second path into the broker.
//!
//! A pipe carries chunks through a bounded channel: a writer waits while its reader is
//! [`PIPE_CHUNKS`] writes behind, which is the flow control a slow MQTT client exerts on its
//! subscriptions' queues (whose overflow policies then apply, as for a QUIC client). Closing the
//! connection (either end) fails every later write and every read that finds its pipe empty.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cassini_broker::transport::BiStream;
use cassini_broker::{Connection, PeerInfo, RecvStream, SendStream, TransportError};
use cassini_protocol::ErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Writes a pipe holds before its writer waits.
pub const PIPE_CHUNKS: usize = 16;

/// Unidirectional streams the broker may have opened and the gateway not yet taken.
const UNI_BACKLOG: usize = 64;

enum Chunk {
    Data(Bytes),
    Reset(ErrorCode),
}

/// What both ends of one connection share: whether it is closed, and how; how long the
/// session outlives it.
#[derive(Debug, Default)]
struct Shared {
    closed: CancellationToken,
    /// The code and reason of the first close.
    reason: Mutex<Option<(ErrorCode, String)>>,
    /// The MQTT 5 Session Expiry Interval in force (`None`: the broker's `sessions.expiry`).
    session_expiry: Mutex<Option<Duration>>,
}

impl Shared {
    fn close(&self, code: ErrorCode, reason: &str) {
        if let Ok(mut slot) = self.reason.lock() {
            if slot.is_none() {
                *slot = Some((code, reason.to_string()));
            }
        }
        self.closed.cancel();
    }

    fn lost(&self) -> TransportError {
        let reason = self
            .reason
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .map_or_else(
                || "closed".to_string(),
                |(code, reason)| format!("{code}: {reason}"),
            );
        TransportError::ConnectionLost(reason)
    }
}

/// The sending end of a pipe.
pub struct PipeWriter {
    tx: Option<mpsc::Sender<Chunk>>,
    /// Set by the reader's `stop`.
    stopped: Arc<AtomicU32>,
    /// Set by `finish`: only then is the end of the channel the end of the stream (a writer
    /// dropped without it is a reset, as a QUIC stream dropped unfinished).
    finished: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

/// The receiving end of a pipe.
pub struct PipeReader {
    rx: mpsc::Receiver<Chunk>,
    stopped: Arc<AtomicU32>,
    finished: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

const NOT_STOPPED: u32 = u32::MAX;

fn pipe(shared: &Arc<Shared>) -> (PipeWriter, PipeReader) {
    let (tx, rx) = mpsc::channel(PIPE_CHUNKS);
    let stopped = Arc::new(AtomicU32::new(NOT_STOPPED));
    let finished = Arc::new(AtomicBool::new(false));
    (
        PipeWriter {
            tx: Some(tx),
            stopped: Arc::clone(&stopped),
            finished: Arc::clone(&finished),
            shared: Arc::clone(shared),
        },
        PipeReader {
            rx,
            stopped,
            finished,
            shared: Arc::clone(shared),
        },
    )
}

impl PipeWriter {
    /// Writes `buf`, waiting while the pipe is full.
    pub async fn write(&mut self, buf: &[u8]) -> Result<(), TransportError> {
        let stopped = self.stopped.load(Ordering::Acquire);
        if stopped != NOT_STOPPED {
            return Err(TransportError::Stopped(ErrorCode::from(stopped)));
        }
        let Some(tx) = &self.tx else {
            return Err(TransportError::StreamClosed);
        };
        if self.shared.closed.is_cancelled() {
            return Err(self.shared.lost());
        }
        let chunk = Chunk::Data(Bytes::copy_from_slice(buf));
        tokio::select! {
            sent = tx.send(chunk) => sent.map_err(|_| {
                let stopped = self.stopped.load(Ordering::Acquire);
                if stopped == NOT_STOPPED {
                    TransportError::StreamClosed
                } else {
                    TransportError::Stopped(ErrorCode::from(stopped))
                }
            }),
            () = self.shared.closed.cancelled() => Err(self.shared.lost()),
        }
    }

    /// Ends the stream: the reader gets everything written, then the end.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        let tx = self.tx.take().ok_or(TransportError::StreamClosed)?;
        self.finished.store(true, Ordering::Release);
        drop(tx);
        Ok(())
    }
}

impl PipeReader {
    /// Appends the next chunk to `buf`; `Ok(false)` at the end of the stream. What was written
    /// before the connection closed is still read.
    pub async fn read(&mut self, buf: &mut BytesMut) -> Result<bool, TransportError> {
        let chunk = tokio::select! {
            biased;
            chunk = self.rx.recv() => chunk,
            () = self.shared.closed.cancelled() => match self.rx.try_recv() {
                Ok(chunk) => Some(chunk),
                Err(_) => return Err(self.shared.lost()),
            },
        };
        match chunk {
            Some(Chunk::Data(data)) => {
                buf.extend_from_slice(&data);
                Ok(true)
            }
            Some(Chunk::Reset(code)) => Err(TransportError::Reset(code)),
            None if self.finished.load(Ordering::Acquire) => Ok(false),
            None if self.shared.closed.is_cancelled() => Err(self.shared.lost()),
            None => Err(TransportError::Reset(ErrorCode::NORMAL)),
        }
    }

    /// Tells the writer to stop, with `code`.
    pub fn stop(&mut self, code: ErrorCode) {
        self.stopped.store(code.value(), Ordering::Release);
        self.rx.close();
    }
}

#[async_trait]
impl SendStream for PipeWriter {
    async fn write_all(&mut self, buf: &[u8]) -> Result<(), TransportError> {
        self.write(buf).await
    }

    fn finish(&mut self) -> Result<(), TransportError> {
        PipeWriter::finish(self)
    }

    async fn delivered(&mut self) -> Result<(), TransportError> {
        // What was written is in the pipe, which the reader drains even after a close.
        Ok(())
    }

    fn reset(&mut self, code: ErrorCode) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Chunk::Reset(code));
        }
    }

    fn set_priority(&mut self, _priority: i32) {}
}

#[async_trait]
impl RecvStream for PipeReader {
    async fn read_into(&mut self, buf: &mut BytesMut) -> Result<bool, TransportError> {
        self.read(buf).await
    }

    fn stop(&mut self, code: ErrorCode) {
        PipeReader::stop(self, code);
    }
}

/// The gateway's end of a bridged connection.
pub struct ClientEnd {
    shared: Arc<Shared>,
    open_bi: mpsc::Sender<BiStream>,
    /// The streams the broker opens, one per subscription (until taken).
    pub uni: Option<mpsc::Receiver<PipeReader>>,
}

/// A bidirectional stream from the gateway's side.
pub struct ClientStream {
    /// Frames to the broker.
    pub send: PipeWriter,
    /// Frames from the broker.
    pub recv: PipeReader,
}

impl ClientEnd {
    /// Opens a bidirectional stream (the first is the control stream).
    pub async fn open_bi(&self) -> Result<ClientStream, TransportError> {
        let (to_broker, broker_reads) = pipe(&self.shared);
        let (broker_writes, from_broker) = pipe(&self.shared);
        let stream: BiStream = (Box::new(broker_writes), Box::new(broker_reads));
        tokio::select! {
            sent = self.open_bi.send(stream) => sent.map_err(|_| self.shared.lost())?,
            () = self.shared.closed.cancelled() => return Err(self.shared.lost()),
        }
        Ok(ClientStream {
            send: to_broker,
            recv: from_broker,
        })
    }

    /// Closes the connection from the client's side (the broker sees it lost, not a goodbye).
    pub fn close(&self, reason: &str) {
        self.shared.close(ErrorCode::NORMAL, reason);
    }

    /// Completes once either side closed the connection.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }

    /// The code and reason of the close, once closed.
    pub fn close_reason(&self) -> Option<(ErrorCode, String)> {
        self.shared.reason.lock().ok().and_then(|slot| slot.clone())
    }

    /// How long the session is to outlive this connection if it ends without a goodbye (the
    /// broker caps it at `sessions.expiry`); `None`: `sessions.expiry`. Set before the
    /// connection closes: the broker reads it then.
    pub fn set_session_expiry(&self, expiry: Option<Duration>) {
        if let Ok(mut slot) = self.shared.session_expiry.lock() {
            *slot = expiry;
        }
    }
}

/// The broker's end of a bridged connection.
pub struct BrokerEnd {
    peer: PeerInfo,
    protocol: &'static str,
    shared: Arc<Shared>,
    accept_bi: tokio::sync::Mutex<mpsc::Receiver<BiStream>>,
    uni: mpsc::Sender<PipeReader>,
}

/// A new bridged connection for `peer` speaking `protocol` (as `/connz` shows it): the broker's
/// end (give it to `BrokerHandle::accept`) and the gateway's.
pub fn connection(peer: PeerInfo, protocol: &'static str) -> (BrokerEnd, ClientEnd) {
    let shared = Arc::new(Shared::default());
    let (open_bi, accept_bi) = mpsc::channel(8);
    let (uni_tx, uni_rx) = mpsc::channel(UNI_BACKLOG);
    (
        BrokerEnd {
            peer,
            protocol,
            shared: Arc::clone(&shared),
            accept_bi: tokio::sync::Mutex::new(accept_bi),
            uni: uni_tx,
        },
        ClientEnd {
            shared,
            open_bi,
            uni: Some(uni_rx),
        },
    )
}

#[async_trait]
impl Connection for BrokerEnd {
    fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    async fn accept_bi(&self) -> Result<BiStream, TransportError> {
        let mut accept = self.accept_bi.lock().await;
        tokio::select! {
            stream = accept.recv() => stream.ok_or_else(|| self.shared.lost()),
            () = self.shared.closed.cancelled() => Err(self.shared.lost()),
        }
    }

    async fn open_uni(&self) -> Result<Box<dyn SendStream>, TransportError> {
        let (writer, reader) = pipe(&self.shared);
        tokio::select! {
            sent = self.uni.send(reader) => sent.map_err(|_| self.shared.lost())?,
            () = self.shared.closed.cancelled() => return Err(self.shared.lost()),
        }
        Ok(Box::new(writer))
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        self.shared.close(code, reason);
    }

    fn protocol(&self) -> &str {
        self.protocol
    }

    /// An MQTT client id is unique per server, whatever the identity.
    fn exclusive_session_name(&self) -> bool {
        true
    }

    fn session_expiry(&self) -> Option<Duration> {
        self.shared
            .session_expiry
            .lock()
            .ok()
            .and_then(|slot| *slot)
    }

    async fn closed(&self) -> TransportError {
        self.shared.closed.cancelled().await;
        self.shared.lost()
    }
}
