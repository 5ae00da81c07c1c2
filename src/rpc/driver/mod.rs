//! One task per connection: it reads frames, runs handlers, matches replies
//! to calls, and writes.
//!
//! Reading and writing happen in one hand-written `poll`, never one waiting
//! on the other, so two peers that both send large frames cannot deadlock.
//! The messages that are ready are encoded into one buffer and flushed
//! with one write, after every few frames read: that batching is what lets
//! many calls in flight beat one-frame-per-syscall, and writing before the
//! whole batch is handled lets the peer work on the first answers
//! meanwhile ([`READ_BEFORE_WRITE`]). Unary handlers run inside this task
//! (no hop to another task on the reply path); stream handlers run as their
//! own tasks, paced by the caller's credit. A call the router passes on to
//! another connection (the broker's) runs no handler at all (`pass.rs`).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use busline_core::{Codec, Error, Identity, Io, Message, Spin};
use futures::{
    future::{AbortHandle, BoxFuture},
    stream::FuturesUnordered,
    Stream, StreamExt,
};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::{
    codec::Framed,
    sync::{CancellationToken, WaitForCancellationFutureOwned},
};

mod command;
mod heartbeat;
mod idle;
mod pass;
mod read;
mod serve;
mod write;

pub(crate) use command::{Command, Outgoing};
use command::{Outbox, Pending};
pub(crate) use pass::PassBack;

use heartbeat::{Beat, Heartbeat};
pub(crate) use heartbeat::{ALIVE, PING};
use idle::Idle;

pub(crate) use serve::{guarded, with_deadline};

use super::{
    client::{CloseReason, WeakClient},
    router::Router,
};

/// How a connection behaves, beyond its byte stream.
pub(crate) struct Setup {
    /// Close when the command channel closes (a client-owned connection).
    pub(crate) owned_by_handles: bool,
    /// Methods served to the peer, if any.
    pub(crate) router: Option<Router>,
    /// Who the peer is, as handlers see it.
    pub(crate) identity: Arc<Identity>,
    /// Handlers (unary + notifications + streams) running at once, and calls
    /// passed on to other connections; reading
    /// pauses at the limit, which pushes back on the peer.
    pub(crate) max_handlers: usize,
    /// Cancelled to drain and close the connection.
    pub(crate) shutdown: CancellationToken,
    /// The calling side of this connection, for handlers to call back.
    pub(crate) peer: WeakClient,
    /// Room for queued notifications, given back as they are written.
    pub(crate) notification_room: Arc<Semaphore>,
    /// Probe the peer when it is silent this long, and give it up after
    /// twice as long; `None`: never.
    pub(crate) heartbeat: Option<Duration>,
    /// Where the reason the connection closed is left for its handles.
    pub(crate) closed: CloseReason,
    /// How long the connection polls on with nothing to do before sleeping.
    pub(crate) spin: Spin,
}

type CallFuture = BoxFuture<'static, (u64, Option<Message>)>;

pub(crate) struct Driver<I, C> {
    framed: Framed<I, C>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Handed to stream tasks; weak so the channel closes once every client
    /// handle is gone.
    commands_tx: mpsc::WeakUnboundedSender<Command>,
    owned_by_handles: bool,
    router: Option<Router>,
    identity: Arc<Identity>,
    max_handlers: usize,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    shutting_down: bool,

    outbox: Outbox,
    /// Keyed by ids this side chose, in sequence: a fast hash is safe here
    /// (ids from the peer keep the default, collision-resistant one).
    pending: FxHashMap<u64, Pending>,
    calls: FuturesUnordered<CallFuture>,
    call_aborts: HashMap<u64, AbortHandle>,
    /// Calls of the peer passed on to other connections, by the peer's ids.
    passed: HashMap<u64, pass::Passed>,
    next_pass_token: u64,
    notifications: FuturesUnordered<BoxFuture<'static, ()>>,
    streams: HashMap<u64, (Arc<Semaphore>, AbortHandle)>,

    flushed: Vec<oneshot::Sender<()>>,
    notification_room: Arc<Semaphore>,
    /// Counted notifications in the outbox or the write buffer.
    notifications_unwritten: usize,

    peer: WeakClient,
    closed: CloseReason,
    /// Once closing: when to give up writing the last frames.
    close_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    reading: bool,
    /// The peer closed its side, and the codec lets the calls it made run
    /// on ([`Codec::calls_outlive_hangup`]): close once they are answered.
    hung_up: bool,
    closing: Option<Error>,
    needs_flush: bool,
    spliced: write::Spliced,
    heartbeat: Option<Heartbeat>,
    /// While at the handler limit: when to tell the peer this side lives.
    keepalive: Option<tokio::time::Interval>,
    idle: Idle,
}

impl<I: Io, C: Codec> Driver<I, C> {
    pub(crate) fn new(
        framed: Framed<I, C>,
        commands: mpsc::UnboundedReceiver<Command>,
        commands_tx: &mpsc::UnboundedSender<Command>,
        setup: Setup,
    ) -> Self {
        Driver {
            framed,
            commands,
            commands_tx: commands_tx.downgrade(),
            owned_by_handles: setup.owned_by_handles,
            router: setup.router,
            identity: setup.identity,
            max_handlers: setup.max_handlers,
            shutdown: Box::pin(setup.shutdown.cancelled_owned()),
            shutting_down: false,
            outbox: Outbox::default(),
            pending: FxHashMap::default(),
            calls: FuturesUnordered::new(),
            call_aborts: HashMap::new(),
            passed: HashMap::new(),
            next_pass_token: 0,
            notifications: FuturesUnordered::new(),
            streams: HashMap::new(),
            flushed: Vec::new(),
            notification_room: setup.notification_room,
            notifications_unwritten: 0,
            peer: setup.peer,
            closed: setup.closed,
            close_deadline: None,
            reading: true,
            hung_up: false,
            closing: None,
            needs_flush: false,
            spliced: write::Spliced::default(),
            heartbeat: setup.heartbeat.map(Heartbeat::new),
            keepalive: None,
            idle: Idle::new(setup.spin),
        }
    }

    fn handlers(&self) -> usize {
        self.calls.len() + self.notifications.len() + self.streams.len() + self.passed.len()
    }

    /// Stop reading and fail everything in flight with `err`; tell the peer
    /// why if `tell` (it broke the protocol or we are shutting down).
    fn close(&mut self, err: Error, tell: bool) {
        if self.closing.is_some() {
            return;
        }
        tracing::debug!(error = %err, "closing connection");
        self.closed.set(err.clone());
        self.reading = false;
        self.flushed.clear();
        // Senders waiting for room learn the connection is gone.
        self.notification_room.close();
        // A peer that does not read must not hold the connection open.
        self.close_deadline = Some(Box::pin(tokio::time::sleep(CLOSE_GRACE)));
        for (_, pending) in self.pending.drain() {
            pending.lost(err.clone());
        }
        self.cancel_all_passed();
        // Dropping the handler futures cancels them.
        self.call_aborts.clear();
        self.calls = FuturesUnordered::new();
        for (id, (_, abort)) in self.streams.drain() {
            abort.abort();
            if tell {
                self.outbox.push_back(Message::Error {
                    id,
                    error: err.to_remote(),
                });
            }
        }
        if tell {
            let error = match &err {
                Error::Disconnected(_) => None,
                other => Some(other.to_remote()),
            };
            self.outbox.push_back(Message::Close { error });
        }
        self.closing = Some(err);
    }
}

/// How many frames to handle before yielding to other tasks.
const BUDGET: usize = 128;
/// How many frames to read before writing what is ready: the peer starts
/// on the first answers while this side works through the rest, so the
/// two sides' threads work at once instead of in turns (each idle, then
/// woken, while the other handles a whole batch). Measured against
/// writing once per [`BUDGET`], point to point with 64 calls in flight:
/// 2x the calls/s, a quarter of the sleeps, less CPU per call; 8 did as
/// well, 4 worse (a write per four frames costs more than it overlaps).
const READ_BEFORE_WRITE: usize = 16;
/// Messages waiting to be written past which the connection stops reading
/// more work from its peer: a peer that sends but does not read gets
/// backpressure, not unbounded memory.
const OUTBOX_HIGH_WATER: usize = 4096;
/// How often a side at its handler limit, which reads nothing, tells its
/// peer it is alive (so a peer's heartbeat of this or longer keeps it).
const KEEPALIVE_WHILE_BUSY: Duration = Duration::from_millis(100);
/// How long a closing connection tries to deliver its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The most stream credit a peer may grant at once (more is clamped).
const MAX_CREDIT: u32 = 1 << 16;

impl<I: Io, C: Codec> Future for Driver<I, C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.idle.polled();
        let mut budget = BUDGET;
        // Once per wake-up is enough: it stays ready once it is, and the
        // waker it registered holds until then. (Polling a source again
        // in every round below would re-register its waker each time: on
        // a busy connection that bookkeeping costs more than the frames.)
        if !this.shutting_down && this.shutdown.as_mut().poll(cx).is_ready() {
            this.shutting_down = true;
        }
        // Likewise, a source that said `Pending` in this poll wakes the task
        // when that changes: the rounds below need not ask it again.
        let (mut commands_pending, mut reader_pending) = (false, false);
        loop {
            let mut progress = false;

            if this.shutting_down && this.closing.is_none() {
                // Drain: no new calls, finish the ones running, then close.
                this.reading = false;
                if this.calls.is_empty() && this.notifications.is_empty() && this.passed.is_empty()
                {
                    this.close(
                        Error::Disconnected("the server is shutting down".into()),
                        true,
                    );
                }
            }

            while !commands_pending {
                match this.commands.poll_recv(cx) {
                    Poll::Ready(Some(cmd)) => this.on_command(cmd, cx),
                    Poll::Ready(None) if this.owned_by_handles => {
                        this.close(Error::Disconnected("client closed".into()), true);
                        break;
                    }
                    Poll::Ready(None) | Poll::Pending => {
                        commands_pending = true;
                        break;
                    }
                }
                progress = true;
            }

            // At the handler limit this side reads nothing, the peer's
            // probes included: not the peer's silence, and the peer must
            // hear that this side is alive.
            let busy =
                this.reading && this.closing.is_none() && this.handlers() >= this.max_handlers;
            if busy {
                if let Some(heartbeat) = &mut this.heartbeat {
                    heartbeat.heard();
                }
                let alive = this
                    .keepalive
                    .get_or_insert_with(|| heartbeat::every(KEEPALIVE_WHILE_BUSY));
                if alive.poll_tick(cx).is_ready() {
                    // Registers the next tick's waker.
                    let _ = alive.poll_tick(cx);
                    this.outbox.push_front(heartbeat::keepalive());
                }
            } else {
                this.keepalive = None;
            }
            // Frames this round may read before its writing step.
            let mut unwritten = READ_BEFORE_WRITE;
            while !reader_pending
                && unwritten > 0
                && this.reading
                && this.handlers() < this.max_handlers
                && this.outbox.len() < OUTBOX_HIGH_WATER
                && budget > 0
            {
                match Pin::new(&mut this.framed).poll_next(cx) {
                    Poll::Ready(Some(Ok(msg))) => {
                        if let Some(heartbeat) = &mut this.heartbeat {
                            heartbeat.heard();
                        }
                        this.on_frame(msg, cx)
                    }
                    // A broken connection, as a write failing says too.
                    Poll::Ready(Some(Err(Error::Transport(io)))) => this.close(
                        Error::Disconnected(format!("the connection broke: {io}")),
                        false,
                    ),
                    Poll::Ready(Some(Err(err))) => {
                        tracing::warn!(error = %err, "bad frame; closing the connection");
                        this.close(err, true);
                    }
                    Poll::Ready(None) if this.framed.codec().calls_outlive_hangup() => {
                        this.reading = false;
                        this.hung_up = true;
                    }
                    Poll::Ready(None) => this.close(
                        Error::Disconnected("the peer closed the connection".into()),
                        false,
                    ),
                    Poll::Pending => {
                        reader_pending = true;
                        break;
                    }
                }
                budget -= 1;
                unwritten -= 1;
                progress = true;
            }

            // Empty sets have nothing to wake us for: skip registering.
            while !this.calls.is_empty() {
                let Poll::Ready(Some((id, msg))) = this.calls.poll_next_unpin(cx) else {
                    break;
                };
                this.call_aborts.remove(&id);
                if let Some(msg) = msg {
                    this.outbox.push_back(msg);
                }
                progress = true;
            }
            if this.hung_up
                && this.calls.is_empty()
                && this.streams.is_empty()
                && this.passed.is_empty()
            {
                this.close(
                    Error::Disconnected("the peer closed the connection".into()),
                    false,
                );
            }
            while !this.notifications.is_empty() {
                if this.notifications.poll_next_unpin(cx).is_pending() {
                    break;
                }
                progress = true;
            }

            if this.closing.is_none() {
                if let Some(heartbeat) = &mut this.heartbeat {
                    match heartbeat.poll_beat(cx) {
                        // Ahead of whatever waits: it must not miss its time.
                        Poll::Ready(Some(Beat::Probe(probe))) => this.outbox.push_front(probe),
                        Poll::Ready(Some(Beat::Dead(err))) => {
                            tracing::info!(error = %err, "heartbeat: dropping the connection");
                            this.close(err, false);
                            // Nothing more will get through to a frozen peer.
                            this.close_deadline =
                                Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
                        }
                        Poll::Ready(None) | Poll::Pending => {}
                    }
                }
            }

            match this.poll_write(cx) {
                Poll::Ready(Err(err)) => {
                    tracing::debug!(error = %err, "write failed");
                    this.outbox.clear();
                    // A peer that hung up may have said why first.
                    let reason = this
                        .peer_close_reason(cx)
                        .unwrap_or_else(|| Error::Disconnected(format!("write failed: {err}")));
                    this.close(reason, false);
                    this.notifications = FuturesUnordered::new();
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) if this.closing.is_some() && this.notifications.is_empty() => {
                    return Poll::Ready(());
                }
                _ => {}
            }
            if let Some(deadline) = &mut this.close_deadline {
                if deadline.as_mut().poll(cx).is_ready() {
                    tracing::debug!("the peer did not take the last frames in time; dropping it");
                    return Poll::Ready(());
                }
            }

            if !progress {
                this.idle.spin(cx);
                return Poll::Pending;
            }
            this.idle.busy();
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

impl<I, C> Drop for Driver<I, C> {
    fn drop(&mut self) {
        for (_, (_, abort)) in self.streams.drain() {
            abort.abort();
        }
        let err = self
            .closing
            .take()
            .unwrap_or_else(|| Error::Disconnected("connection task stopped".into()));
        self.closed.set(err.clone());
        self.notification_room.close();
        for (_, pending) in self.pending.drain() {
            pending.lost(err.clone());
        }
        self.cancel_all_passed();
    }
}
