//! A faulty UDP socket for quinn, for fault-injection tests and lossy-link benchmarks.
//!
//! [`FaultySocket`] wraps the real socket of an endpoint (plug it in with
//! [`FaultControl::layer`], a [`SocketLayer`], which uses quinn's `new_with_abstract_socket` /
//! `rebind_abstract`). On the way out it drops, duplicates and delays datagrams (a random delay
//! per datagram, so jitter reorders them); on the way in it drops them; and it can black-hole
//! everything in both directions, by hand ([`FaultControl::set_blackhole`]) or by schedule
//! ([`FaultPlan::partitions`]), or only what goes to and comes from some addresses
//! ([`FaultControl::set_cut_off_from`]: a split of a cluster). Every random choice comes from
//! one generator seeded by [`FaultPlan::seed`], so a failing run's faults can be replayed from
//! its seed.
//!
//! Each outgoing transmit carries one datagram (the socket announces no segmentation
//! offload), so faults act per packet. Delayed datagrams wait in a bounded set
//! ([`MAX_DELAYED`]); a datagram that finds it full is dropped and counted.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::endpoint::SocketLayer;

/// Most datagrams held back for delay at once.
pub const MAX_DELAYED: usize = 8192;

/// What goes wrong, and how often. Probabilities are per datagram, from 0.0 to 1.0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Seeds every random choice, so a run can be replayed.
    pub seed: u64,
    /// Outgoing datagrams dropped.
    pub send_loss: f64,
    /// Incoming datagrams dropped.
    pub recv_loss: f64,
    /// Outgoing datagrams sent twice.
    pub duplicate: f64,
    /// Every outgoing datagram is held back at least this long.
    pub delay: Duration,
    /// Plus a uniformly random share of this, per datagram: datagrams overtake each other.
    pub jitter: Duration,
    /// Times (from the socket's creation) during which nothing passes in either direction.
    pub partitions: Vec<Range<Duration>>,
}

impl FaultPlan {
    /// Random loss both ways at `rate`, and nothing else.
    pub fn loss(seed: u64, rate: f64) -> Self {
        Self {
            seed,
            send_loss: rate,
            recv_loss: rate,
            ..Self::default()
        }
    }
}

/// What the socket did, for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Datagrams passed on (sent or received), duplicates included.
    pub passed: u64,
    /// Datagrams dropped by chance, by a partition or black hole, or for lack of room.
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Datagrams held back for a delay.
    pub delayed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    passed: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

/// Changes a [`FaultySocket`]'s behaviour while it runs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FaultControl {
    shared: Arc<Shared>,
}

impl FaultControl {
    /// A control for sockets that follow `plan`; its schedule starts now.
    pub fn new(plan: FaultPlan) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(PlanState {
                    rng: StdRng::seed_from_u64(plan.seed),
                    plan,
                }),
                blackhole: AtomicBool::new(false),
                cut_off_from: Mutex::default(),
                started: Instant::now(),
                counters: Counters::default(),
            }),
        }
    }

    /// A [`SocketLayer`] that wraps every socket an endpoint binds (the first, and each after a
    /// rebind) in a [`FaultySocket`] following this control. A socket that cannot be wrapped
    /// (no Tokio runtime) is used as it is, with a warning.
    pub fn layer(&self) -> SocketLayer {
        let control = self.clone();
        SocketLayer::new(move |inner| {
            match FaultySocket::with_control(Arc::clone(&inner), &control) {
                Ok(faulty) => faulty,
                Err(error) => {
                    tracing::warn!(%error, "cannot inject faults; using the socket as it is");
                    inner
                }
            }
        })
    }

    /// Drops everything in both directions while `on`.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Drops everything sent to and received from `addrs` (replacing the addresses given
    /// before; empty: none), and nothing else: one side of a split.
    pub fn set_cut_off_from(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        *self
            .shared
            .cut_off_from
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = addrs.into_iter().collect();
    }

    /// Replaces the plan (the random generator is reseeded from the new plan's seed).
    pub fn set_plan(&self, plan: FaultPlan) {
        let mut state = self.shared.lock();
        state.rng = StdRng::seed_from_u64(plan.seed);
        state.plan = plan;
    }

    /// What the socket did so far.
    pub fn stats(&self) -> FaultStats {
        let counters = &self.shared.counters;
        FaultStats {
            passed: counters.passed.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            duplicated: counters.duplicated.load(Ordering::Relaxed),
            delayed: counters.delayed.load(Ordering::Relaxed),
        }
    }
}

struct PlanState {
    plan: FaultPlan,
    rng: StdRng,
}

struct Shared {
    state: Mutex<PlanState>,
    blackhole: AtomicBool,
    /// The addresses nothing is exchanged with.
    cut_off_from: Mutex<std::collections::HashSet<SocketAddr>>,
    started: Instant,
    counters: Counters,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("blackhole", &self.blackhole)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, PlanState> {
        // Every update is a plain assignment: a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cut_off(&self, state: &PlanState) -> bool {
        if self.blackhole.load(Ordering::SeqCst) {
            return true;
        }
        let elapsed = self.started.elapsed();
        state
            .plan
            .partitions
            .iter()
            .any(|window| window.contains(&elapsed))
    }

    fn cut_off_from(&self, addr: SocketAddr) -> bool {
        self.cut_off_from
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&addr)
    }

    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What to do with one outgoing datagram.
enum SendFate {
    Drop,
    Send {
        copies: u32,
        delay: Option<Duration>,
    },
}

/// A UDP socket that loses, delays, reorders and duplicates datagrams as its plan says.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shared: Arc<Shared>,
    delayed: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl FaultySocket {
    /// Wraps `inner` with `plan`; returns the socket and its control. Must be called inside a
    /// Tokio runtime (delayed datagrams are sent by tasks on it).
    pub fn wrap(
        inner: Arc<dyn AsyncUdpSocket>,
        plan: FaultPlan,
    ) -> io::Result<(Arc<Self>, FaultControl)> {
        let control = FaultControl::new(plan);
        let socket = Self::with_control(inner, &control)?;
        Ok((socket, control))
    }

    /// Wraps `inner`, following `control` (shared with every other socket it wraps).
    pub fn with_control(
        inner: Arc<dyn AsyncUdpSocket>,
        control: &FaultControl,
    ) -> io::Result<Arc<Self>> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("a faulty socket needs a Tokio runtime"))?;
        Ok(Arc::new(Self {
            inner,
            shared: Arc::clone(&control.shared),
            delayed: Arc::new(Semaphore::new(MAX_DELAYED)),
            runtime,
        }))
    }

    fn send_fate(&self, destination: SocketAddr) -> SendFate {
        if self.shared.cut_off_from(destination) {
            return SendFate::Drop;
        }
        let mut state = self.shared.lock();
        if self.shared.cut_off(&state) {
            return SendFate::Drop;
        }
        let PlanState { plan, rng } = &mut *state;
        if plan.send_loss > 0.0 && rng.random_bool(plan.send_loss.clamp(0.0, 1.0)) {
            return SendFate::Drop;
        }
        let copies = if plan.duplicate > 0.0 && rng.random_bool(plan.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        let jitter = if plan.jitter.is_zero() {
            Duration::ZERO
        } else {
            plan.jitter.mul_f64(rng.random::<f64>())
        };
        let delay = plan.delay + jitter;
        SendFate::Send {
            copies,
            delay: (!delay.is_zero()).then_some(delay),
        }
    }

    fn drop_incoming(&self, source: SocketAddr) -> bool {
        if self.shared.cut_off_from(source) {
            return true;
        }
        let mut state = self.shared.lock();
        if self.shared.cut_off(&state) {
            return true;
        }
        let PlanState { plan, rng } = &mut *state;
        plan.recv_loss > 0.0 && rng.random_bool(plan.recv_loss.clamp(0.0, 1.0))
    }

    fn send_later(&self, transmit: &Transmit<'_>, delay: Duration) {
        let Ok(permit) = Arc::clone(&self.delayed).try_acquire_owned() else {
            self.shared.count(&self.shared.counters.dropped);
            return;
        };
        self.shared.count(&self.shared.counters.delayed);
        let inner = Arc::clone(&self.inner);
        let shared = Arc::clone(&self.shared);
        let contents = transmit.contents.to_vec();
        let (destination, ecn, segment_size, src_ip) = (
            transmit.destination,
            transmit.ecn,
            transmit.segment_size,
            transmit.src_ip,
        );
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            let transmit = Transmit {
                destination,
                ecn,
                contents: &contents,
                segment_size,
                src_ip,
            };
            // A datagram the socket cannot take now is lost, as on a real network.
            match inner.try_send(&transmit) {
                Ok(()) => shared.count(&shared.counters.passed),
                Err(_) => shared.count(&shared.counters.dropped),
            }
            drop(permit);
        });
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match self.send_fate(transmit.destination) {
            SendFate::Drop => {
                self.shared.count(&self.shared.counters.dropped);
                Ok(())
            }
            SendFate::Send { copies, delay } => {
                for copy in 0..copies {
                    if copy > 0 {
                        self.shared.count(&self.shared.counters.duplicated);
                    }
                    match delay {
                        Some(delay) => self.send_later(transmit, delay),
                        None => {
                            self.inner.try_send(transmit)?;
                            self.shared.count(&self.shared.counters.passed);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let received = std::task::ready!(self.inner.poll_recv(cx, bufs, meta))?;
            let mut kept = 0;
            for index in 0..received {
                // With receive offload one entry holds several datagrams of `stride` bytes:
                // decide on each, and close up the buffer over the dropped ones.
                let stride = meta[index].stride.max(1);
                let len = meta[index].len;
                let source = meta[index].addr;
                let buf = &mut bufs[index];
                let mut write = 0;
                let mut read = 0;
                while read < len {
                    let segment = stride.min(len - read);
                    if self.drop_incoming(source) {
                        self.shared.count(&self.shared.counters.dropped);
                    } else {
                        self.shared.count(&self.shared.counters.passed);
                        buf.copy_within(read..read + segment, write);
                        write += segment;
                    }
                    read += segment;
                }
                if write == 0 {
                    continue;
                }
                meta[index].len = write;
                bufs.swap(kept, index);
                meta.swap(kept, index);
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests;
