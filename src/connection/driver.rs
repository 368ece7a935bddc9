//! [`Driver`]: the future that runs one connection.
//!
//! tungstenite's [`WebSocketContext`] does the protocol work on the read side (frame parsing,
//! unmasking, reassembly, UTF-8 and size checks, answering pings and close frames). Writes go
//! through the connection's [`Wire`]: data frames arrive pre-encoded from the fan-out, control
//! frames come from tungstenite, and one vectored write sends as many as the socket takes.
//!
//! Each `poll` does, in order:
//! 1. take what the outbound queue hands over (at most half its budget) and any close request
//!    from the hub, unless the write interval holds data back: the last take of data was less
//!    than the current interval (`write_interval`, or more under a steady stream) ago, and
//!    none of these applies: the client sent a data message within the last
//!    `write_interval`, a backlog is being worked through, the wire still holds data, or the
//!    connection is closing or asked to close. While the hub is behind (`hub::backlog`), a
//!    lone message after a quiet spell waits too, once, for `max_write_interval` or until the
//!    queue is a quarter full;
//! 2. the timer: heartbeat ping, pong timeout, idle timeout (while reading waits on the
//!    broker, both are judged once what the client sent is read: `unread`), the end of the
//!    write interval, or close deadline;
//! 3. read frames (a bounded number per poll, so one chatty client cannot starve its worker
//!    thread), running the message hook and the fan-out for each data message; a data message
//!    lifts a hold, and what was held is taken right after; once the socket is empty, a read
//!    buffer grown by a large frame is let go of (`shrink_read_buffer`). While the broker's
//!    queue for the room is full (Redis slower than clients send), reading waits: what was
//!    read reaches the local members, waits in `forward` for places in the broker's queue,
//!    and the task is parked with the broker until there is room (`broker_room`);
//! 4. send our close frame when due, then write the wire.
//!
//! The task is woken by the socket (reads and writes), by the timer, by the outbound queue
//! (pushes and close requests), and by the broker when its queue has room again. Under a
//! steady stream (data arrived while the last take was held back) the next take waits for the
//! timer alone: the queue wakes the task for close requests only, until a take finds nothing or
//! a message from the client lifts the hold. That makes one wake-up per write instead of two.
//! A steady stream of more than one message per `write_interval` also lengthens the interval,
//! by `write_interval` at each take, up to `max_write_interval`; any other take starts it again
//! from `write_interval`.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::{ArcWake, AtomicWaker, waker};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketContext};
use tokio_tungstenite::tungstenite::{self};

use super::boundary::FrameBoundary;
use super::frames::Frames;
use super::io::PollIo;
use super::queue::{CloseIntent, OutboundQueue, Taken};
use super::wire::{Wire, Written};
use crate::close_code;
use crate::config::{FAR_FUTURE, HubConfig, RateLimit};
use crate::hub::stats::Counters;
use crate::hub::{ConnectionContext, InboundAction, Membership};
use crate::message::Message;

/// Messages (data, ping, pong, close) read per poll before yielding to other tasks. Fragments
/// of messages not yet whole are held to as many again, plus what the socket read that reaches
/// that number brought (`PollIo::fragment_allowance`).
const READ_BUDGET: usize = 64;
// `forward_delivered` (a `u8`) counts up to a read budget's worth.
const _: () = assert!(READ_BUDGET <= u8::MAX as usize);

/// Bytes read at a time (on the stack) while draining what a misbehaving client still sends.
const DISCARD_CHUNK: usize = 4096;
/// Control frames (pongs, close) waiting to be written beyond which reading pauses until the
/// client reads: a client that sends pings and never reads gets TCP back-pressure, not memory.
const MAX_PENDING_CONTROL: usize = 4 * 1024;
/// How soon a pong or idle deadline that passed with bytes from the client still unread is
/// looked at again (at most the configured timeout).
const UNREAD_RECHECK: Duration = Duration::from_millis(100);
/// Most looks (`UNREAD_RECHECK` apart) a client's backlog left by waits on the broker may take
/// to read before a deadline is judged again while the read budget runs out: 25 s' worth (a
/// `u8`, beside `forward_delivered`: the driver's size is watched, see `size`).
const MAX_CATCH_UP: u8 = 250;

/// `at + by`, with `by` capped at [`FAR_FUTURE`]: a configured `Duration::MAX` means "never",
/// not an overflow.
fn later(at: Instant, by: Duration) -> Instant {
    at + by.min(FAR_FUTURE)
}

/// How a connection ended (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The close handshake completed (either side started it).
    Closed,
    /// The socket failed or the peer vanished without a close frame.
    Io(String),
    /// We sent a close frame and the peer never answered in time (or, after a broken frame,
    /// never closed its end while we drained what it sent).
    CloseTimeout,
    /// The shutdown grace period ran out.
    Aborted,
}

#[derive(Debug)]
enum Phase {
    /// Reading and writing data.
    Open,
    /// We want to send `frame`; with `drain`, only after every queued data frame is written.
    Closing { frame: CloseFrame, drain: bool },
    /// Our close frame is on the wire; waiting for the peer's.
    CloseSent,
    /// The peer sent a close frame; tungstenite put our answer on the wire.
    PeerClosed,
}

/// What is left to read from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Frames, parsed by tungstenite.
    Frames,
    /// Bytes that mean nothing any more (the client broke a frame or a limit): read and
    /// dropped until the client closes its end. A socket closed with unread data sends a reset
    /// instead of a FIN, which can make the client lose our close frame (a browser then
    /// reports 1006 rather than the code); so the rest is drained, bounded by the close timer
    /// (`close_timeout` once our close frame is out; during a shutdown's drain, the grace
    /// period). `shut`: our side is shut down after our close frame (a FIN over TCP, END_STREAM
    /// over HTTP/2, close_notify then FIN over TLS), so the client knows we are done and closes
    /// its own; tungstenite's buffers are let go of then.
    Discarding { shut: bool },
    /// Nothing more will be read: the close handshake is over, or the client closed its end.
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Heartbeat {
    Disabled,
    /// Next ping due at `heartbeat_at`.
    Idle,
    /// A ping went out at this instant, or reading the client last waited on the broker then
    /// (the pong timeout counts from the later); `heartbeat_at` is the pong deadline, or when
    /// to look again while reading waits.
    AwaitingPong(Instant),
}

/// Inbound rate limit: a token bucket.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
    per_second: f64,
    burst: f64,
}

impl TokenBucket {
    fn new(limit: RateLimit, now: Instant) -> Self {
        let burst = f64::from(limit.burst);
        Self {
            tokens: burst,
            last: now,
            per_second: limit.per_second,
            burst,
        }
    }

    /// Takes `n` tokens if there are as many.
    fn take(&mut self, now: Instant, n: u32) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        let n = f64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Wakes the connection task when the socket becomes readable, and remembers that it did, so
/// that a poll caused by anything else (a push to the queue, a timer, writability) skips the
/// read path: tungstenite zero-fills its read buffer before every read attempt. The broker
/// uses the same waker when reading waits for room in its publish queue (`parked`).
#[derive(Debug, Default)]
struct ReadReadiness {
    ready: AtomicBool,
    /// The broker holds this waker until its publish queue has room: park only once.
    parked: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for ReadReadiness {
    fn wake_by_ref(arc: &Arc<Self>) {
        arc.ready.store(true, Ordering::Release);
        arc.parked.store(false, Ordering::Release);
        arc.task.wake();
    }
}

pub(crate) struct Driver<'a, S> {
    io: S,
    readiness: Arc<ReadReadiness>,
    /// Waker for socket reads: flags readiness, then wakes the task.
    read_waker: Waker,
    /// The last read attempt found nothing; skip reading until `readiness` says otherwise.
    read_blocked: bool,
    /// Looks at a passed deadline that found reading waiting on the broker, not yet spent on
    /// looks that found the backlog the waits left still being read (the read budget ran out,
    /// the socket not drained): see `unread`. Not reset when a read finds the socket empty:
    /// while a backlog is read it runs dry for a moment whenever the client's kernel has not
    /// passed on more yet (its send buffer holds what ours could not), which cut the
    /// allowance short in tests. What is left waits for the next passed deadline, at most
    /// `MAX_CATCH_UP`.
    catch_up: u8,
    ws: WebSocketContext,
    /// Where the client's frames end in what `ws` was given: tells when `ws` holds nothing
    /// and may be replaced, to let go of a read buffer grown by a large frame.
    boundary: FrameBoundary,
    /// What tungstenite wrote during the last call (pongs, close frames), bound for the wire.
    control: BytesMut,
    wire: Wire,
    /// Frames taken from the queue, on their way to the wire (kept to reuse its allocation).
    taken: VecDeque<Frames>,
    /// Messages read for the room, fanned out together when the read loop ends; between polls,
    /// the ones the broker's full queue could not take yet (see `forward_delivered`).
    forward: Vec<Message>,
    /// How many messages at the front of `forward` reached the local members already and wait
    /// for room in the broker's queue (at most `READ_BUDGET`).
    forward_delivered: u8,
    /// The queue still held messages after the last take (it hands over half its budget at a
    /// time): take again once the wire is written.
    more_queued: bool,
    /// Data may be taken from the queue again from this instant (the current interval, see
    /// `intervals`, after the last take that found any); `None`: at once. A message from the
    /// client lifts it: a client waiting for an answer does not wait for the interval.
    next_take: Option<Instant>,
    /// Queued data is waiting for `next_take`; the timer fires then.
    take_waiting: bool,
    /// `next_take` is (or was, when `None`) a hold for a backlog (`hub::backlog`), served once
    /// per take.
    backlog_held: bool,
    /// The current write interval, in `HubConfig::write_interval`s: 1, grown by one at each
    /// take of a steady stream while below `HubConfig::max_write_interval`. (A count, not a
    /// `Duration`: every byte here is paid by every idle connection.)
    intervals: u32,
    /// Until then nothing is held back: the client sent a data message less than
    /// `write_interval` ago and may be waiting for an answer (a reply, its echo, the room's
    /// response).
    answering_until: Option<Instant>,
    /// Data frames taken for the wire and then discarded because the connection started
    /// closing (for a reason other than the slow-consumer policy, which counts its own):
    /// reported with the rest when the connection ends.
    /// (A `u32`: the flags beside it fit in the word it leaves, and every byte here is paid by
    /// every idle connection; a connection's own discards never come near it.)
    discarded: u32,
    queue: Arc<OutboundQueue>,
    membership: &'a Membership,
    context: &'a ConnectionContext,
    /// Fires at the earliest of the heartbeat event, the idle deadline and a held-back take
    /// (`take_waiting`), or at the close deadline once closing.
    timer: Pin<Box<Sleep>>,
    heartbeat: Heartbeat,
    heartbeat_at: Instant,
    /// Last data message from the client (kept up to date only with an idle timeout).
    last_data: Instant,
    rate: Option<TokenBucket>,
    phase: Phase,
    /// What is left to read.
    input: Input,
}

impl<S> std::fmt::Debug for Driver<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("id", &self.context.id())
            .field("phase", &self.phase)
            .field("wire", &self.wire)
            .finish_non_exhaustive()
    }
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    }
}

/// The encoded ping frame the heartbeat sends (empty payload).
fn ping_frame() -> Bytes {
    let mut frame = Vec::with_capacity(2);
    Frame::ping(Bytes::new())
        .format(&mut frame)
        .expect("writing to a Vec cannot fail");
    Bytes::from(frame)
}

/// What a read error means for the connection.
enum ReadFailure {
    /// The socket has no more to give (would block is handled before this).
    Ended(End),
    /// The client broke a rule: send this close frame.
    Close(CloseFrame),
}

fn classify(error: WsError) -> ReadFailure {
    match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => ReadFailure::Ended(End::Closed),
        WsError::Io(error) => ReadFailure::Ended(End::Io(error.to_string())),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            ReadFailure::Ended(End::Io("reset without closing handshake".into()))
        }
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            ReadFailure::Close(close_frame(close_code::MESSAGE_TOO_BIG, "message too big"))
        }
        WsError::Capacity(_) => {
            ReadFailure::Close(close_frame(close_code::MESSAGE_TOO_BIG, "too big"))
        }
        WsError::Utf8(_) => ReadFailure::Close(close_frame(
            close_code::INVALID_PAYLOAD,
            "invalid UTF-8 in text message",
        )),
        WsError::Protocol(error) => ReadFailure::Close(close_frame(
            close_code::PROTOCOL_ERROR,
            protocol_reason(&error),
        )),
        other => ReadFailure::Ended(End::Io(other.to_string())),
    }
}

fn protocol_reason(error: &ProtocolError) -> &'static str {
    match error {
        ProtocolError::NonZeroReservedBits => "reserved bits set",
        ProtocolError::UnmaskedFrameFromClient => "unmasked frame from client",
        ProtocolError::FragmentedControlFrame => "fragmented control frame",
        ProtocolError::ControlFrameTooBig => "control frame too big",
        ProtocolError::UnknownControlFrameType(_) | ProtocolError::UnknownDataFrameType(_) => {
            "unknown opcode"
        }
        ProtocolError::UnexpectedContinueFrame => "continuation without a start",
        ProtocolError::ExpectedFragment(_) => "expected a continuation frame",
        ProtocolError::InvalidCloseSequence => "invalid close frame",
        _ => "protocol error",
    }
}

impl<'a, S> Driver<'a, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(
        io: S,
        queue: Arc<OutboundQueue>,
        membership: &'a Membership,
        context: &'a ConnectionContext,
    ) -> Self {
        let config = &membership.hub().inner().config;
        let now = Instant::now();
        let (heartbeat, heartbeat_at) = match config.ping_interval {
            Some(interval) => (Heartbeat::Idle, later(now, interval)),
            None => (Heartbeat::Disabled, later(now, FAR_FUTURE)),
        };
        let first_deadline = match config.idle_timeout {
            Some(idle) => heartbeat_at.min(later(now, idle)),
            None => heartbeat_at,
        };
        let readiness = Arc::new(ReadReadiness::default());
        Self {
            io,
            read_waker: waker(Arc::clone(&readiness)),
            readiness,
            read_blocked: false,
            catch_up: 0,
            ws: WebSocketContext::new(Role::Server, Some(config.websocket_config())),
            boundary: FrameBoundary::default(),
            control: BytesMut::new(),
            wire: Wire::default(),
            taken: VecDeque::new(),
            forward: Vec::new(),
            forward_delivered: 0,
            more_queued: false,
            next_take: None,
            backlog_held: false,
            take_waiting: false,
            intervals: 1,
            answering_until: None,
            discarded: 0,
            queue,
            membership,
            context,
            timer: Box::pin(tokio::time::sleep_until(first_deadline)),
            heartbeat,
            heartbeat_at,
            last_data: now,
            rate: config
                .inbound_rate
                .map(|limit| TokenBucket::new(limit, now)),
            phase: Phase::Open,
            input: Input::Frames,
        }
    }

    fn config(&self) -> &HubConfig {
        &self.membership.hub().inner().config
    }

    fn counters(&self) -> &Counters {
        &self.membership.hub().inner().counters
    }

    /// Whether data frames may still go out (before our close frame, and not after the peer's).
    fn sends_data(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Closing { drain: true, .. })
    }

    fn release(&self, written: Written) {
        if written.frames > 0 {
            self.queue.release(written.frames, written.bytes);
        }
    }

    /// Data frames on the wire that are not started yet are dropped (a close must not wait
    /// behind them) and released from the queue bounds; returns how many.
    fn discard_unstarted(&mut self) -> usize {
        let (discarded, completed) = self.wire.discard_unstarted_data();
        self.release(discarded);
        self.release(completed);
        discarded.frames
    }

    /// [`discard_unstarted`](Self::discard_unstarted) for a close, counted in `discarded`; and
    /// the queue stops taking data ([`OutboundQueue::stop_data`]): what is queued is discarded
    /// now, what arrives later as it comes (the queue counts both). What the room sends while
    /// the client takes its time to answer the close, however much arrives between two polls
    /// of this task, never piles up until it overflows the queue and counts as a slow consumer.
    fn discard_unstarted_on_close(&mut self) {
        let frames = self.discard_unstarted();
        self.discarded = self
            .discarded
            .saturating_add(u32::try_from(frames).unwrap_or(u32::MAX));
        self.more_queued = false;
        // A close intent stays with the queue for the next take (a request wakes this task).
        self.queue.stop_data();
    }

    /// Drops what is queued (nothing of it is to be written any more) and returns the queue's
    /// close intent, if any.
    fn discard_queued(&mut self) -> Option<CloseIntent> {
        self.more_queued = false;
        self.queue.discard_queued()
    }

    /// Starts the close handshake (once): `frame` goes out after the queued data if `drain`,
    /// at once otherwise (what the wire holds and has not started is discarded).
    fn begin_close(&mut self, frame: CloseFrame, drain: bool) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        if !drain {
            self.discard_unstarted_on_close();
        }
        let config = self.config();
        let deadline = if drain {
            config.close_timeout.saturating_add(config.shutdown_grace)
        } else {
            config.close_timeout
        };
        self.arm_close_timer(deadline);
        self.phase = Phase::Closing { frame, drain };
    }

    /// Points the timer at the end of the close handshake: `after` from now, the connection
    /// ends (`End::CloseTimeout`) if it is not over by then.
    fn arm_close_timer(&mut self, after: Duration) {
        self.timer.as_mut().reset(later(Instant::now(), after));
    }

    fn on_close_intent(&mut self, intent: CloseIntent) {
        match intent {
            // Handled by the caller: nothing more is written.
            CloseIntent::Abort => {}
            CloseIntent::SlowConsumer => {
                if matches!(self.phase, Phase::Open) {
                    // Taken for the wire but never started: dropped with the queue (which
                    // counted what it still held).
                    let dropped = self.discard_unstarted();
                    Counters::add(&self.counters().dropped_messages, dropped as u64);
                }
                self.begin_close(
                    close_frame(
                        close_code::SLOW_CONSUMER,
                        "slow consumer: outbound queue full",
                    ),
                    false,
                );
            }
            CloseIntent::InternalError => {
                self.begin_close(
                    close_frame(close_code::INTERNAL_ERROR, "internal error"),
                    false,
                );
            }
            CloseIntent::Shutdown => {
                self.begin_close(
                    close_frame(close_code::GOING_AWAY, "server shutting down"),
                    true,
                );
            }
            CloseIntent::Requested => {
                // Set with the intent, under the same lock, and never taken away.
                if let Some(requested) = self.queue.requested_close() {
                    let frame = CloseFrame {
                        code: CloseCode::from(requested.code),
                        reason: Utf8Bytes::from(String::from(requested.reason)),
                    };
                    self.begin_close(frame, true);
                }
            }
        }
    }

    /// Whether queued data waits for `next_take` (the current write interval), so that what
    /// arrives meanwhile goes out in the same write; if so, the timer fires then. `now` is
    /// `None` when the write interval is zero: nothing is held back. Nothing is held back
    /// while closing, while the wire is still being written, while a backlog is being worked
    /// through (`more_queued`), or when the hub asks for a close. A lone message after a quiet
    /// spell waits too while the hub is behind (`hub::backlog`).
    fn holds_back(&mut self, now: Option<Instant>) -> bool {
        let Some(now) = now else {
            return false;
        };
        if !matches!(self.phase, Phase::Open) || self.more_queued || self.wire.has_data() {
            return false;
        }
        if self.answering_until.is_some_and(|until| now < until) {
            self.next_take = None;
            return false;
        }
        let next_take = match self.next_take {
            Some(next_take) if now < next_take => next_take,
            _ => {
                self.next_take = None;
                return self.holds_back_for_backlog(now);
            }
        };
        // With nothing queued there is nothing to wait for: the next push wakes this task. A
        // hold for a backlog also ends once the queue is a quarter full (the queue wakes this
        // task then): waiting must not overflow the queue of a client that keeps up.
        let peek = self.queue.peek();
        if peek.queued == 0 || peek.close.is_some() || (self.backlog_held && peek.past_quarter) {
            return false;
        }
        if !self.take_waiting {
            self.take_waiting = true;
            if next_take < self.timer.deadline() {
                self.timer.as_mut().reset(next_take);
            }
        }
        true
    }

    /// No interval holds queued data back (`now` is past it, or there was none): whether a
    /// lone message after a quiet spell waits anyway, for `max_write_interval` or until the
    /// queue is a quarter full, because the hub is behind (`hub::backlog`). Not one that
    /// already waited for an interval (`take_waiting`), and once per take (`backlog_held`).
    fn holds_back_for_backlog(&mut self, now: Instant) -> bool {
        if self.backlog_held
            || self.take_waiting
            || !self.membership.hub().inner().backlog.is_behind(now)
            || !self.queue.hold_lone()
        {
            return false;
        }
        let config = self.config();
        let held = later(now, config.max_write_interval.max(config.write_interval));
        self.next_take = Some(held);
        self.backlog_held = true;
        self.take_waiting = true;
        Counters::incr(&self.counters().backlog_holds);
        if held < self.timer.deadline() {
            self.timer.as_mut().reset(held);
        }
        true
    }

    /// Moves what the queue hands over onto the wire (or drops all of it, when no data may go
    /// out), unless [`holds_back`](Self::holds_back). The queue hands the writer at most half
    /// its budget at a time; see `more_queued`.
    fn take_queued(&mut self) -> Option<CloseIntent> {
        let now = (!self.config().write_interval.is_zero()).then(Instant::now);
        if self.holds_back(now) {
            return None;
        }
        // Set: this take ends a hold that data arrived during, so data is coming steadily. Not
        // a hold for a backlog: its lone message says nothing of the stream.
        let backlog_held = std::mem::take(&mut self.backlog_held);
        let steady = std::mem::take(&mut self.take_waiting) && !backlog_held;
        let intent = if self.sends_data() {
            // A steady stream: the next take waits for the timer whatever arrives (unless the
            // client's message lifts the hold), so the queue need not wake this task for data
            // until then. One wake-up per write instead of two: the first push after a write,
            // then the timer.
            let hold = steady
                && matches!(self.phase, Phase::Open)
                && now.is_some_and(|now| self.answering_until.is_none_or(|until| now >= until));
            let taken = self.queue.take(&mut self.taken, hold);
            if let Some(now) = now
                && taken.messages > 0
            {
                let next_take = later(now, self.next_interval(hold, taken));
                self.next_take = Some(next_take);
                if hold {
                    self.take_waiting = true;
                    // Called from the timer, whose deadline has passed, this leaves the
                    // rearming to `poll_timer`.
                    if next_take < self.timer.deadline() {
                        self.timer.as_mut().reset(next_take);
                    }
                }
            }
            for frames in self.taken.drain(..) {
                self.wire.push_data(frames);
            }
            self.more_queued = taken.more;
            taken.close
        } else {
            // Under the lock, in one go: taking in turns would hand over nothing, for ever,
            // while a half-written frame still counts as in flight (see `OutboundQueue::take`).
            self.discard_queued()
        };
        if self.taken.capacity() > 16 {
            // The next swap hands this deque to the queue: do not let a burst's capacity live
            // on in either of them.
            self.taken = VecDeque::new();
        }
        intent
    }

    /// How long the next take waits after this one, which handed over `taken` (`hold`: it
    /// ended a hold that data arrived during). A steady stream of more than one message per
    /// `write_interval` (over the interval this take waited) is written less and less often,
    /// up to `max_write_interval`; anything else starts again from `write_interval`. (Per
    /// `write_interval`, not per take: a grown interval would otherwise keep collecting two
    /// messages of a slower stream, and hold it back for good.)
    fn next_interval(&mut self, hold: bool, taken: Taken) -> Duration {
        let config = self.config();
        let interval = config.write_interval;
        let max = config.max_write_interval.max(interval);
        let current = |intervals: u32| interval.saturating_mul(intervals).min(max);
        let waited = current(self.intervals);
        let faster =
            interval.saturating_mul(u32::try_from(taken.messages).unwrap_or(u32::MAX)) > waited;
        // Held-back messages count against the outbound queue: a take of more than a quarter
        // of it (the next one, over a longer wait, could bring half) stops the growth, so that
        // waiting longer does not overflow the queue of a client that keeps up.
        let roomy = taken.messages.saturating_mul(4) <= config.outbound_max_messages
            && taken.bytes.saturating_mul(4) <= config.outbound_max_bytes;
        self.intervals = if !hold || !faster || !roomy {
            1
        } else if waited < max {
            self.intervals + 1
        } else {
            self.intervals
        };
        current(self.intervals)
    }

    /// Takes what is queued and acts on the hub's close request, if any; ready when the
    /// connection must end at once.
    fn poll_take(&mut self) -> Poll<End> {
        match self.take_queued() {
            Some(CloseIntent::Abort) => return Poll::Ready(End::Aborted),
            Some(intent) => self.on_close_intent(intent),
            None => {}
        }
        Poll::Pending
    }

    /// Moves what tungstenite wrote (pong answers, close frames) onto the wire.
    fn take_control(&mut self) {
        if !self.control.is_empty() {
            self.wire.push_control(self.control.split().freeze());
        }
    }

    /// One data message from the client: rate limit, hook, then fan-out or reply.
    fn on_message(&mut self, message: Message) {
        let hub = self.membership.hub().inner();
        Counters::incr(&hub.counters.messages_received);
        let interval = hub.config.write_interval;
        let limited = self.rate.is_some() || hub.config.idle_timeout.is_some();
        if !interval.is_zero() || limited {
            let now = Instant::now();
            if !interval.is_zero() {
                // An answer to this message (a reply, an echo, the room's response) is not
                // held back.
                self.next_take = None;
                self.answering_until = Some(later(now, interval));
            }
            if limited {
                self.last_data = now;
                if !self.spend_rate_tokens(now, 1) {
                    return;
                }
            }
        }
        let hooked = hub.hooks.on_message.is_some();
        let Ok(action) = hub.inbound(self.context, message) else {
            // Messages read before this one were accepted and still go out (`flush_forward`).
            self.on_close_intent(CloseIntent::InternalError);
            return;
        };
        match action {
            // Fanned out with the rest of this poll's messages (`flush_forward`).
            InboundAction::Forward(message) => self.forward.push(message),
            InboundAction::Reply(message) => {
                // Messages read before this one go out first: with `echo_to_sender` the sender
                // sees its own messages and the reply in the order it sent them. (Any the
                // broker cannot take yet hold the read loop back: `forward_delivered`.)
                let _ = self.flush_forward();
                let room = self.membership.room().name();
                self.membership
                    .hub()
                    .inner()
                    .push_to_one(&self.queue, room, &message);
            }
            InboundAction::Drop => {}
        }
        // The hook may have closed its own connection (`ConnectionHandle::close`), or made it
        // a slow consumer (its reply, or a `send` to its own handle, overflowed the queue): the
        // close starts now, as after a panic, not at the next poll, so that what the client
        // sent after this message (read in this same loop, maybe) is neither run through the
        // hook nor delivered. (Without a hook, nothing in this task can have asked for either.)
        if hooked
            && let Some(intent @ (CloseIntent::Requested | CloseIntent::SlowConsumer)) =
                self.queue.close_intent()
        {
            self.on_close_intent(intent);
        }
    }

    /// Spends `n` tokens of the inbound rate limit, if there is one, for frames from the
    /// client (one per data message, ping or pong, and per fragment of a message not yet
    /// whole). Over the limit, the connection starts closing with 1008 and this returns
    /// `false`.
    fn spend_rate_tokens(&mut self, now: Instant, n: u32) -> bool {
        let Some(rate) = &mut self.rate else {
            return true;
        };
        if rate.take(now, n) || !matches!(self.phase, Phase::Open) {
            return true;
        }
        Counters::incr(&self.counters().rate_limit_closes);
        tracing::debug!(id = %self.context.id(), "tower-ws-hub: inbound rate limit exceeded");
        self.begin_close(
            close_frame(close_code::POLICY_VIOLATION, "rate limit exceeded"),
            false,
        );
        false
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if !matches!(self.phase, Phase::Open) {
                // Closing, and the peer never answered or never took our close frame.
                return Poll::Ready(End::CloseTimeout);
            }
            let now = Instant::now();
            // Whether bytes from the client wait unread, once looked at (see `unread`).
            let mut looked = None;
            if now >= self.heartbeat_at {
                let heartbeat = self.heartbeat;
                match heartbeat {
                    Heartbeat::Idle => {
                        self.wire.push_control(ping_frame());
                        self.heartbeat = Heartbeat::AwaitingPong(now);
                        self.heartbeat_at = later(now, self.config().pong_timeout);
                    }
                    Heartbeat::AwaitingPong(_) if self.unread(&mut looked) => {
                        // The pong may be among what the client sent and this task has not
                        // read yet, reading waiting for room in the broker's queue (or still
                        // reading the backlog such waits left): judge once that is read. The
                        // wait counts from now: once reading goes on, the client has a whole
                        // pong timeout for what it sent meanwhile to be read, as without the
                        // wait.
                        let recheck = UNREAD_RECHECK.min(self.config().pong_timeout);
                        self.heartbeat = Heartbeat::AwaitingPong(now);
                        self.heartbeat_at = later(now, recheck);
                    }
                    Heartbeat::AwaitingPong(since)
                        if now < later(since, self.config().pong_timeout) =>
                    {
                        // Reading waited on the broker until lately: judge a pong timeout
                        // after the last wait.
                        self.heartbeat_at = later(since, self.config().pong_timeout);
                    }
                    Heartbeat::AwaitingPong(_) => {
                        Counters::incr(&self.counters().pong_timeouts);
                        tracing::debug!(id = %self.context.id(), "tower-ws-hub: pong timeout");
                        self.begin_close(
                            close_frame(close_code::POLICY_VIOLATION, "pong timeout"),
                            false,
                        );
                        continue;
                    }
                    Heartbeat::Disabled => self.heartbeat_at = later(now, FAR_FUTURE),
                }
            }
            if let Some(idle) = self.config().idle_timeout
                && now >= later(self.last_data, idle)
            {
                if self.unread(&mut looked) {
                    // A data message may be among what is still unread: judge once that is
                    // read (the deadline moves to `recheck` from now).
                    let recheck = UNREAD_RECHECK.min(idle);
                    self.last_data = now
                        .checked_sub(idle.min(FAR_FUTURE) - recheck)
                        .unwrap_or(now);
                    self.rearm_timer();
                    continue;
                }
                Counters::incr(&self.counters().idle_timeouts);
                self.begin_close(close_frame(close_code::NORMAL, "idle timeout"), false);
                continue;
            }
            if self.take_waiting && self.next_take.is_some_and(|at| now >= at) {
                // The hold ran out since this poll's take: take now (a timer rearmed at a
                // passed deadline would fire again at once, round and round).
                if let Poll::Ready(end) = self.poll_take() {
                    return Poll::Ready(end);
                }
                if !matches!(self.phase, Phase::Open) {
                    continue;
                }
            }
            self.rearm_timer();
        }
        Poll::Pending
    }

    /// Whether bytes from the client may be waiting unread through no doing of its own, for a
    /// deadline that passed (looked at once per timer firing: `looked` keeps the answer).
    ///
    /// They may while reading waits for room in the broker's queue (the task is parked with
    /// the broker, or holds messages for it), or a wake to read (the socket's, or the
    /// broker's) has not been acted on yet. After such waits the task reads what the client
    /// sent meanwhile a read budget at a time, which under load can take longer than the
    /// deadline: the backlog counts as unread while the read budget runs out without
    /// draining the socket, for as many looks as found reading waiting (`catch_up`, at most
    /// `MAX_CATCH_UP`). Otherwise a spent read budget does not count: a client that sends
    /// faster than it is read (a ping flood, say) is judged like any other.
    fn unread(&mut self, looked: &mut Option<bool>) -> bool {
        if let Some(unread) = *looked {
            return unread;
        }
        let unread = if !matches!(self.input, Input::Frames) {
            false
        } else if self.readiness.parked.load(Ordering::Acquire) || self.forward_delivered > 0 {
            self.catch_up = self.catch_up.saturating_add(1).min(MAX_CATCH_UP);
            true
        } else if self.readiness.ready.load(Ordering::Acquire) {
            true
        } else if !self.read_blocked && self.catch_up > 0 {
            self.catch_up -= 1;
            true
        } else {
            false
        };
        *looked = Some(unread);
        unread
    }

    /// Points the timer at the next heartbeat event, idle deadline or held-back take,
    /// whichever comes first.
    fn rearm_timer(&mut self) {
        let mut at = match self.config().idle_timeout {
            Some(idle) => self.heartbeat_at.min(later(self.last_data, idle)),
            None => self.heartbeat_at,
        };
        if self.take_waiting
            && let Some(next_take) = self.next_take
        {
            at = at.min(next_take);
        }
        self.timer.as_mut().reset(at);
    }

    fn on_pong(&mut self) {
        if let (Phase::Open, Heartbeat::AwaitingPong(sent)) = (&self.phase, self.heartbeat) {
            self.heartbeat = Heartbeat::Idle;
            self.heartbeat_at = later(sent, self.config().ping_interval.unwrap_or(FAR_FUTURE));
            self.rearm_timer();
        }
    }

    /// Reads frames until the socket has no more, the budget is spent, or reading is over; then
    /// fans out what was read, as one batch per receiver.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let result = self.poll_read_frames(cx);
        // What the broker cannot take yet waits in `forward`: hand it over as room appears,
        // or stay parked with the broker, which wakes the task once there is room.
        while self.flush_forward() && self.broker_room(1).is_some() {}
        result
    }

    fn poll_read_frames(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.readiness.task.register(cx.waker());
        if self.readiness.ready.swap(false, Ordering::AcqRel) {
            self.read_blocked = false;
        }
        if self.read_blocked {
            return Poll::Pending;
        }
        let read_waker = self.read_waker.clone();
        let mut read_cx = Context::from_waker(&read_waker);
        // How many messages (counting `forward`) the broker takes now; looked up when reached.
        let mut broker_room = 0;
        // Fragments of messages not yet whole that this poll may still read.
        let mut fragment_allowance = READ_BUDGET as u32;
        for _ in 0..READ_BUDGET {
            match self.input {
                Input::Frames => {}
                Input::Discarding { .. } => return self.poll_discard(&mut read_cx),
                Input::Done => return Poll::Pending,
            }
            if self.wire.control_bytes() > MAX_PENDING_CONTROL {
                // Resumed when the wire drains: the socket wakes this task once writable.
                return Poll::Pending;
            }
            // With messages waiting for the broker (a reply hook's flush may have left some),
            // the room looked up before is stale: look at every message.
            if matches!(self.phase, Phase::Open)
                && (self.forward.len() >= broker_room || self.forward_delivered > 0)
            {
                if self.forward.len() >= READ_BUDGET {
                    // Messages the broker could not take yet fill a poll's worth: hand them
                    // over first. With room, `poll_read` does that and this reads on at the
                    // next poll; without, the task is parked until there is room.
                    if self.broker_room(1).is_some() {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
                match self.broker_room(self.forward.len() + 1) {
                    Some(room) => broker_room = room,
                    // Resumed by the broker once its queue has room.
                    None => return Poll::Pending,
                }
            }
            let result = self.ws.read(&mut PollIo {
                io: &mut self.io,
                cx: &mut read_cx,
                written: &mut self.control,
                boundary: &mut self.boundary,
                fragment_allowance,
            });
            self.take_control();
            // The fragments tungstenite read on its way to a whole message (or to giving up
            // for now) pay like messages: a message that never ends, sent as empty fragments,
            // would otherwise cost nothing however many of them come.
            let fragments = self.boundary.take_fragments();
            if fragments > 0 {
                fragment_allowance = fragment_allowance.saturating_sub(fragments);
                if self.rate.is_some() {
                    self.spend_rate_tokens(Instant::now(), fragments);
                }
            }
            match result {
                // For a ping, tungstenite queued the pong; it writes it at its next `read`
                // (or the flush before our close frame), and `take_control` puts it on the
                // wire. Both count against the inbound rate limit like messages: a flood of
                // them costs as much.
                Ok(control @ (tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_))) => {
                    if matches!(control, tungstenite::Message::Pong(_)) {
                        self.on_pong();
                    }
                    if self.rate.is_some() {
                        self.spend_rate_tokens(Instant::now(), 1);
                    }
                }
                Ok(tungstenite::Message::Frame(_)) => {}
                Ok(tungstenite::Message::Close(frame)) => {
                    // tungstenite replaces a code the RFC forbids on the wire (1005, 999, ...)
                    // with 1002 before handing the frame over; either way the connection ends
                    // on a protocol error.
                    if frame
                        .as_ref()
                        .is_some_and(|frame| frame.code == CloseCode::Protocol)
                    {
                        Counters::incr(&self.counters().protocol_closes);
                    }
                    if matches!(self.phase, Phase::Open | Phase::Closing { .. }) {
                        // Our answer is on the wire; data queued after it must not follow.
                        self.discard_unstarted_on_close();
                        self.phase = Phase::PeerClosed;
                        // The answer may wait behind a half-written frame: a client that
                        // closes and then stops reading gets `close_timeout`, as when we close.
                        self.arm_close_timer(self.config().close_timeout);
                    }
                }
                Ok(data) => {
                    // Data after we started closing is not delivered anywhere.
                    if let (Phase::Open, Some(message)) = (&self.phase, Message::from_ws(data)) {
                        self.on_message(message);
                    }
                }
                Err(WsError::Io(error))
                    if error.kind() == io::ErrorKind::WouldBlock && fragment_allowance == 0 =>
                {
                    // This poll's fragments are spent, with more possibly waiting: come back
                    // after others ran, as when the read budget is spent. (Not a wake through
                    // `read_waker`: what the client sends faster than it is read is its own
                    // doing, and must not put off a pong or idle verdict, see `unread`.)
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    // The socket registered `read_waker`: it flags readiness when data comes.
                    self.read_blocked = true;
                    self.shrink_read_buffer();
                    return Poll::Pending;
                }
                Err(error) => match classify(error) {
                    ReadFailure::Ended(End::Closed) => self.input = Input::Done,
                    ReadFailure::Ended(end) => return Poll::Ready(end),
                    ReadFailure::Close(frame) => {
                        // The stream cannot be trusted past a broken frame (tungstenite may not
                        // even have consumed it): parse no more; drain it until the client
                        // closes its end, once our close frame is written.
                        self.input = Input::Discarding { shut: false };
                        if !matches!(self.phase, Phase::Open) {
                            continue;
                        }
                        Counters::incr(&self.counters().protocol_closes);
                        tracing::debug!(id = %self.context.id(), code = u16::from(frame.code),
                            reason = %frame.reason, "tower-ws-hub: closing a misbehaving client");
                        self.begin_close(frame, false);
                    }
                },
            }
        }
        // Budget spent with frames possibly still buffered: come back after others ran.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads and drops what the client sends until it closes its end ([`Input::Discarding`]).
    /// Never inlined: its stack buffer stays out of every other connection's poll.
    #[inline(never)]
    fn poll_discard(&mut self, read_cx: &mut Context<'_>) -> Poll<End> {
        let mut scratch = [0u8; DISCARD_CHUNK];
        for _ in 0..READ_BUDGET {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(read_cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    self.input = Input::Done;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {}
                // The client reset the connection: nothing more to drain, nor to send.
                Poll::Ready(Err(error)) => return Poll::Ready(End::Io(error.to_string())),
                Poll::Pending => {
                    self.read_blocked = true;
                    return Poll::Pending;
                }
            }
        }
        // Budget spent: come back after others ran.
        read_cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Replaces tungstenite's protocol state with a fresh one, and so its read buffer with one
    /// of `read_buffer_size`, once the old buffer may have grown (see
    /// [`FrameBoundary::may_have_grown`]) and nothing is left in the old state: tungstenite
    /// has just asked for more bytes (so it has parsed every complete frame, and answered any
    /// ping: `read` flushes pongs before it reads), every byte it was given ends a frame, no
    /// fragmented message is half assembled, and the connection is open (no close handshake
    /// under way). The fresh state is then exactly the old one, minus the memory.
    fn shrink_read_buffer(&mut self) {
        let config = self.config();
        if !matches!(self.phase, Phase::Open)
            || self.input != Input::Frames
            || !self.boundary.at_message_boundary()
            || !self.boundary.may_have_grown(config.read_buffer_size)
        {
            return;
        }
        self.reset_protocol_state();
    }

    /// A fresh tungstenite state, and so a read buffer of `read_buffer_size`, with nothing
    /// buffered or half assembled.
    fn reset_protocol_state(&mut self) {
        self.ws = WebSocketContext::new(Role::Server, Some(self.config().websocket_config()));
        self.boundary.reset();
    }

    /// Puts our close frame on the wire once what must precede it is written.
    fn send_close_when_due(&mut self, cx: &mut Context<'_>) {
        let Phase::Closing { frame, drain } = &self.phase else {
            return;
        };
        if *drain {
            // What was queued after this poll's take goes out first too: the last word of a
            // message hook that then closed its own connection, or a room message pushed
            // before the close was asked for. The end of `poll` comes back for it. (A queue
            // with a close intent takes no more data, so this wait ends.)
            if !self.more_queued && self.queue.peek().queued > 0 {
                self.more_queued = true;
            }
            if self.wire.has_data() || self.more_queued {
                return;
            }
        }
        let frame = frame.clone();
        let mut io = PollIo {
            io: &mut self.io,
            cx,
            written: &mut self.control,
            boundary: &mut self.boundary,
            // Writes only: tungstenite reads nothing to flush or close.
            fragment_allowance: u32::MAX,
        };
        // tungstenite keeps the pong for a ping read last until its next write, and `close`
        // would write it after the close frame, where nothing may follow (RFC 6455 §5.5.1):
        // out with it first. (Writes go to `control`, in memory; they cannot fail.)
        let _ = self.ws.flush(&mut io);
        // tungstenite records that we sent a close (so the peer's answers it) and writes the
        // frame, which lands in `control`.
        let _ = self.ws.close(&mut io, Some(frame));
        self.take_control();
        self.phase = Phase::CloseSent;
        // From here on the client has `close_timeout` to answer, whatever the wait before was
        // (a shutdown allows for draining the queue first).
        self.arm_close_timer(self.config().close_timeout);
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let mut written = Written::default();
        let result = self.wire.poll_write(&mut self.io, cx, &mut written);
        self.release(written);
        match result {
            Poll::Ready(Ok(())) => {
                let closed = matches!(self.phase, Phase::CloseSent | Phase::PeerClosed);
                match self.input {
                    // Handshake complete (or the client closed its end) and our last frame
                    // written.
                    Input::Done if closed => return Poll::Ready(End::Closed),
                    // Our close frame is written and we read only to drain: tell the client we
                    // are done, so that it closes its end.
                    Input::Discarding { shut: false } if closed => {
                        match Pin::new(&mut self.io).poll_shutdown(cx) {
                            Poll::Ready(Ok(())) => {
                                self.input = Input::Discarding { shut: true };
                                // Nothing more is parsed or written: let go of what tungstenite
                                // holds (a read buffer grown by the oversized frame, a message
                                // half assembled) while the client takes its time to close.
                                self.reset_protocol_state();
                            }
                            Poll::Ready(Err(error)) => {
                                return Poll::Ready(End::Io(error.to_string()));
                            }
                            Poll::Pending => {}
                        }
                    }
                    _ => {}
                }
                Poll::Pending
            }
            Poll::Ready(Err(error)) => Poll::Ready(End::Io(error.to_string())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> Future for Driver<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Output = End;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = &mut *self;
        // Register before looking at the queue, so that a push between the two is not missed.
        this.queue.register(cx.waker());
        if let Poll::Ready(end) = this.poll_take() {
            return Poll::Ready(end);
        }
        if let Poll::Ready(end) = this.poll_timer(cx) {
            return Poll::Ready(end);
        }
        if let Poll::Ready(end) = this.poll_read(cx) {
            return Poll::Ready(end);
        }
        // A message from the client lifted the write interval's hold: what waited goes out in
        // this poll's write.
        if this.take_waiting
            && this.next_take.is_none()
            && let Poll::Ready(end) = this.poll_take()
        {
            return Poll::Ready(end);
        }
        // Reading may have started a close (protocol error, rate limit); a reply it queued woke
        // this task, which will take it on the next poll.
        this.send_close_when_due(cx);
        if let Poll::Ready(end) = this.poll_write(cx) {
            return Poll::Ready(end);
        }
        // Writing may have drained what had to precede our close frame.
        if matches!(this.phase, Phase::Closing { .. }) {
            this.send_close_when_due(cx);
            if let Poll::Ready(end) = this.poll_write(cx) {
                return Poll::Ready(end);
            }
        }
        if this.more_queued && !this.wire.has_data() {
            // The wire is written and the queue kept messages back: come back for them (a
            // push onto a non-empty queue wakes nobody).
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<S> Driver<'_, S> {
    /// Fans out the messages read: each local receiver's queue is locked, and its writer
    /// woken, once per batch instead of once per message; then hands them to the broker.
    ///
    /// A broker whose queue is full may take only the first ones (see
    /// `RedisConfig::client_backpressure`): the rest stay in `forward`, already delivered
    /// locally, and this returns `true`. Reading waits until they are handed over (the
    /// caller parks the task with the broker, see `broker_room`), or, once the connection
    /// ends, `Hub::publish_left_over` hands them over.
    #[must_use = "messages left in `forward` wait for the broker's room"]
    fn flush_forward(&mut self) -> bool {
        if self.forward.is_empty() {
            return false;
        }
        let hub = self.membership.hub().inner();
        let taken = hub.publish_from(
            self.membership.room(),
            &self.forward,
            usize::from(self.forward_delivered),
            self.context.id(),
        );
        self.forward.drain(..taken);
        // Every message left has reached the local members; `forward` holds at most
        // READ_BUDGET (the read loop stops there).
        self.forward_delivered = u8::try_from(self.forward.len()).unwrap_or(u8::MAX);
        if !self.forward.is_empty() {
            return true;
        }
        if self.forward.capacity() > 16 {
            // A burst's worth (up to READ_BUDGET messages) would otherwise stay with the
            // connection for good.
            self.forward = Vec::new();
        }
        false
    }

    /// How many messages the broker would take now for this connection's room
    /// (`usize::MAX` when it never refuses one for lack of room), if that is at least
    /// `wanted`. If it is not, the task is parked with the broker, which wakes it once there is
    /// room, and this returns `None`: the client is then not read meanwhile (its messages wait
    /// in its socket, and TCP pushes back on it) rather than having its messages refused.
    fn broker_room(&self, wanted: usize) -> Option<usize> {
        let hub = self.membership.hub().inner();
        let room = self.membership.room().name();
        let fits = |room_for: Option<usize>| match room_for {
            None => Some(usize::MAX),
            Some(left) if left >= wanted => Some(left),
            Some(_) => None,
        };
        if let Some(left) = fits(hub.broker.room_for(room)) {
            return Some(left);
        }
        if !self.readiness.parked.swap(true, Ordering::AcqRel) {
            hub.broker.park(room, self.read_waker.clone());
        }
        // Room freed before the broker held our waker woke nobody: look again.
        fits(hub.broker.room_for(room))
    }
}

impl<S> Drop for Driver<'_, S> {
    fn drop(&mut self) {
        // Messages already read and accepted (a hook panicked half-way through a batch, say)
        // still reach the room; the ones a full broker queue cannot take yet are handed over
        // by a task of their own, which waits for room.
        if self.flush_forward() {
            let hub = self.membership.hub();
            let room = Arc::clone(self.membership.room().name());
            hub.publish_left_over(room, std::mem::take(&mut self.forward));
        }
        // Whatever was taken and never written no longer counts against the queue.
        let pending = self.wire.pending_data();
        self.queue.release(pending.frames, pending.bytes);
        let unwritten =
            self.wire.unwritten_data_frames() + self.queue.release_taken(&mut self.taken);
        // Later pushes are refused (the connection is about to leave its room); everything
        // that was queued for it and never written is counted once, here.
        let discarded = self.discarded as usize + unwritten + self.queue.end();
        if discarded > 0 {
            let counters = &self.membership.hub().inner().counters;
            Counters::add(&counters.discarded_on_close, discarded as u64);
        }
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod size {
    use super::Driver;
    use crate::connection::io::Socket;

    /// Every idle connection pays for the driver, and tokio allocates a task in a cell aligned
    /// to 128 bytes: one field more has cost 128 bytes per connection twice already (BENCHMARKS.md,
    /// sessions 9 and 11), which the heap test did not see. If this fails after a change (or a
    /// dependency update), run `bench/run.sh idle` before and after, and make room (a smaller
    /// integer, a flag packed beside another) or raise the bound with the figures.
    #[test]
    fn the_driver_does_not_grow() {
        let size = std::mem::size_of::<Driver<'static, Socket>>();
        assert!(size <= 752, "Driver is {size} bytes (752 at session 11)");
    }
}

#[cfg(test)]
mod backlog_hold {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::time::Instant;

    use crate::{Hub, HubLayer, Message, SlowConsumerPolicy};

    /// A client that reads everything at once, with a queue that one message fills: a hold
    /// for the backlog must not make the next message overflow it.
    #[tokio::test]
    async fn a_backlog_hold_does_not_overflow_a_queue_one_message_fills() {
        let hub = Hub::builder()
            .outbound_queue(1, 1 << 20)
            .slow_consumer_policy(SlowConsumerPolicy::Disconnect)
            .max_write_interval(Duration::from_millis(500))
            .build();
        let app = axum::Router::new()
            .fallback(|| async { "fallback" })
            .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/r"))
            .await
            .unwrap();
        while hub.room_size("r") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // As a Redis subscriber that found a backlog marks it.
        hub.inner().backlog.behind_at(Instant::now());
        assert_eq!(hub.publish("r", Message::text("a")).await.unwrap(), 1);
        // The connection sees its lone message (and may hold it for up to 500 ms).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let queued = hub.publish("r", Message::text("b")).await.unwrap();
        assert_eq!(queued, 1, "\"b\" was not queued: {:?}", hub.stats());
        let mut texts = Vec::new();
        while texts.len() < 2 {
            let next = tokio::time::timeout(Duration::from_secs(2), client.next())
                .await
                .expect("a message in time")
                .expect("the connection is open")
                .unwrap();
            match next {
                tokio_tungstenite::tungstenite::Message::Text(text) => {
                    texts.push(text.to_string());
                }
                other => panic!("got {other:?} after {texts:?}: {:?}", hub.stats()),
            }
        }
        assert_eq!(texts, ["a", "b"]);
        let stats = hub.stats();
        assert_eq!(stats.slow_consumer_disconnects, 0, "{stats:?}");
    }
}
