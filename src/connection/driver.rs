//! [`Driver`]: the future that runs one connection.
//!
//! Each `poll` does, in order:
//! 1. take everything the outbound queue holds (and any close request from the hub);
//! 2. the timer: heartbeat ping, pong timeout, or close deadline;
//! 3. read frames (a bounded number per poll, so one chatty client cannot starve its worker
//!    thread), running the message hook and the fan-out for each data message;
//! 4. write the pending ping, the taken messages, the close frame when due, then flush once.
//!
//! The task is woken by the socket (tokio-tungstenite registers the waker for reads and
//! writes), by the timer, and by the outbound queue (pushes and close requests).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

use crate::close_code;
use crate::config::RateLimit;
use crate::connection::queue::{CloseIntent, OutboundQueue, PushOutcome};
use crate::hub::stats::Counters;
use crate::hub::{ConnectionContext, InboundAction, Membership};
use crate::message::Message;

/// Frames read per poll before yielding to other tasks.
const READ_BUDGET: usize = 64;
/// Stands in for "never" when pings are disabled.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a connection ended (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The close handshake completed (either side started it).
    Closed,
    /// The socket failed or the peer vanished without a close frame.
    Io(String),
    /// We sent a close frame and the peer never answered in time.
    CloseTimeout,
    /// The shutdown grace period ran out.
    Aborted,
}

#[derive(Debug)]
enum Phase {
    /// Reading and writing data.
    Open,
    /// We want to send `frame`; with `drain`, only after everything queued is written.
    Closing {
        frame: Option<CloseFrame>,
        drain: bool,
    },
    /// Our close frame is sent; waiting for the peer's.
    ClosedByUs,
    /// The peer sent a close frame; tungstenite queued our answer, which the next read flushes.
    ClosedByPeer,
}

#[derive(Debug, Clone, Copy)]
enum Heartbeat {
    Disabled,
    /// Next ping due at `heartbeat_at`.
    Idle,
    /// A ping went out at this instant; `heartbeat_at` is the pong deadline.
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

    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub(crate) struct Driver<'a, S> {
    ws: WebSocketStream<S>,
    queue: Arc<OutboundQueue>,
    membership: &'a Membership,
    context: &'a ConnectionContext,
    /// Messages taken from the queue and not yet handed to tungstenite.
    batch: VecDeque<Message>,
    /// Fires at the earliest of the heartbeat event and the idle deadline, or at the close
    /// deadline once closing.
    timer: Pin<Box<Sleep>>,
    heartbeat: Heartbeat,
    heartbeat_at: Instant,
    /// Last data message from the client (kept only with an idle timeout).
    last_data: Instant,
    rate: Option<TokenBucket>,
    ping_due: bool,
    needs_flush: bool,
    phase: Phase,
}

impl<S> std::fmt::Debug for Driver<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("id", &self.context.id())
            .field("phase", &self.phase)
            .field("batch", &self.batch.len())
            .finish_non_exhaustive()
    }
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    }
}

/// What a read error means for the connection.
enum ReadFailure {
    /// Nothing more can be read or written.
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
        ws: WebSocketStream<S>,
        queue: Arc<OutboundQueue>,
        membership: &'a Membership,
        context: &'a ConnectionContext,
    ) -> Self {
        let config = &membership.hub().inner().config;
        let now = Instant::now();
        let (heartbeat, heartbeat_at) = match config.ping_interval {
            Some(interval) => (Heartbeat::Idle, now + interval),
            None => (Heartbeat::Disabled, now + FAR_FUTURE),
        };
        let first_deadline = match config.idle_timeout {
            Some(idle) => heartbeat_at.min(now + idle),
            None => heartbeat_at,
        };
        Self {
            ws,
            queue,
            membership,
            context,
            batch: VecDeque::new(),
            timer: Box::pin(tokio::time::sleep_until(first_deadline)),
            heartbeat,
            heartbeat_at,
            last_data: now,
            rate: config
                .inbound_rate
                .map(|limit| TokenBucket::new(limit, now)),
            ping_due: false,
            needs_flush: false,
            phase: Phase::Open,
        }
    }

    fn config(&self) -> &crate::config::HubConfig {
        &self.membership.hub().inner().config
    }

    fn counters(&self) -> &Counters {
        &self.membership.hub().inner().counters
    }

    /// Starts the close handshake (once): `frame` goes out after the queue drains if `drain`.
    fn begin_close(&mut self, frame: CloseFrame, drain: bool) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        if !drain {
            self.discard_batch();
        }
        let deadline = self.config().close_timeout
            + if drain {
                self.config().shutdown_grace
            } else {
                Duration::ZERO
            };
        self.timer.as_mut().reset(Instant::now() + deadline);
        self.phase = Phase::Closing {
            frame: Some(frame),
            drain,
        };
    }

    fn discard_batch(&mut self) {
        let bytes = self.batch.iter().map(Message::len).sum();
        self.queue.release(self.batch.len(), bytes);
        self.batch.clear();
    }

    fn on_close_intent(&mut self, intent: CloseIntent) -> Poll<End> {
        match intent {
            CloseIntent::Abort => return Poll::Ready(End::Aborted),
            CloseIntent::SlowConsumer => self.begin_close(
                close_frame(
                    close_code::SLOW_CONSUMER,
                    "slow consumer: outbound queue full",
                ),
                false,
            ),
            CloseIntent::Shutdown => self.begin_close(
                close_frame(close_code::GOING_AWAY, "server shutting down"),
                true,
            ),
        }
        Poll::Pending
    }

    /// One data message from the client: rate limit, hook, then fan-out or reply.
    fn on_message(&mut self, message: Message) {
        let hub = self.membership.hub().inner();
        Counters::incr(&hub.counters.messages_received);
        if self.rate.is_some() || hub.config.idle_timeout.is_some() {
            let now = Instant::now();
            self.last_data = now;
            if let Some(rate) = &mut self.rate
                && !rate.take(now)
            {
                Counters::incr(&hub.counters.rate_limit_closes);
                tracing::debug!(id = %self.context.id(), "tower-ws-hub: inbound rate limit exceeded");
                self.begin_close(
                    close_frame(close_code::POLICY_VIOLATION, "rate limit exceeded"),
                    false,
                );
                return;
            }
        }
        match hub.hooks.inbound(self.context, message) {
            InboundAction::Forward(message) => {
                hub.publish_from(self.membership.room(), message, self.context.id());
            }
            InboundAction::Reply(message) => {
                if let PushOutcome::Dropped | PushOutcome::Disconnecting = self.queue.push(message)
                {
                    Counters::incr(&hub.counters.dropped_messages);
                }
            }
            InboundAction::Drop => {}
        }
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if !matches!(self.phase, Phase::Open) {
                // Closing and the peer never answered, or could not even take our close frame.
                return Poll::Ready(End::CloseTimeout);
            }
            let now = Instant::now();
            if now >= self.heartbeat_at {
                match self.heartbeat {
                    Heartbeat::Idle => {
                        self.ping_due = true;
                        self.heartbeat = Heartbeat::AwaitingPong(now);
                        self.heartbeat_at = now + self.config().pong_timeout;
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
                    Heartbeat::Disabled => self.heartbeat_at = now + FAR_FUTURE,
                }
            }
            if let Some(idle) = self.config().idle_timeout
                && now >= self.last_data + idle
            {
                Counters::incr(&self.counters().idle_timeouts);
                self.begin_close(close_frame(close_code::NORMAL, "idle timeout"), false);
                continue;
            }
            self.rearm_timer();
        }
        Poll::Pending
    }

    /// Points the timer at the next heartbeat event or idle deadline, whichever comes first.
    fn rearm_timer(&mut self) {
        let at = match self.config().idle_timeout {
            Some(idle) => self.heartbeat_at.min(self.last_data + idle),
            None => self.heartbeat_at,
        };
        self.timer.as_mut().reset(at);
    }

    fn on_pong(&mut self) {
        if let (Phase::Open, Heartbeat::AwaitingPong(sent)) = (&self.phase, self.heartbeat) {
            self.heartbeat = Heartbeat::Idle;
            self.heartbeat_at = sent + self.config().ping_interval.unwrap_or(FAR_FUTURE);
            self.rearm_timer();
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        for _ in 0..READ_BUDGET {
            let item = match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(End::Closed),
                Poll::Ready(Some(item)) => item,
            };
            match item {
                Ok(tungstenite::Message::Pong(_)) => self.on_pong(),
                // tungstenite queued the pong; make sure it is flushed even if nothing else is
                // written this round.
                Ok(tungstenite::Message::Ping(_)) => self.needs_flush = true,
                Ok(tungstenite::Message::Close(_)) => {
                    if matches!(self.phase, Phase::Open | Phase::Closing { .. }) {
                        self.discard_batch();
                        self.phase = Phase::ClosedByPeer;
                    }
                    self.needs_flush = true;
                }
                Ok(tungstenite::Message::Frame(_)) => {}
                Ok(data) => {
                    // Data after we started closing is not delivered anywhere.
                    if let (Phase::Open, Some(message)) = (&self.phase, Message::from_ws(data)) {
                        self.on_message(message);
                    }
                }
                Err(error) => match classify(error) {
                    ReadFailure::Ended(end) => return Poll::Ready(end),
                    ReadFailure::Close(frame) => {
                        if !matches!(self.phase, Phase::Open) {
                            // A second failure while closing: nothing more to say.
                            return Poll::Ready(End::Closed);
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

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if matches!(self.phase, Phase::ClosedByPeer | Phase::ClosedByUs) {
            return self.poll_flush(cx);
        }
        if self.ping_due {
            match self.poll_send(cx, tungstenite::Message::Ping(Bytes::new())) {
                Poll::Ready(Ok(true)) => self.ping_due = false,
                Poll::Ready(Ok(false)) => return self.poll_flush(cx),
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Pending => {}
            }
        }
        let (mut sent, mut sent_bytes) = (0, 0);
        let mut failure: Option<End> = None;
        while let Some(message) = self.batch.front() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    failure = Some(End::Io(error.to_string()));
                    break;
                }
                Poll::Pending => break,
            }
            sent_bytes += message.len();
            sent += 1;
            let message = self.batch.pop_front().expect("front() was Some");
            if let Err(error) = Pin::new(&mut self.ws).start_send(message.into_ws()) {
                failure = Some(End::Io(error.to_string()));
                break;
            }
            self.needs_flush = true;
        }
        if sent > 0 {
            self.queue.release(sent, sent_bytes);
        }
        if let Some(end) = failure {
            return Poll::Ready(end);
        }
        if let Phase::Closing { frame, drain } = &mut self.phase
            && (!*drain || self.batch.is_empty())
        {
            let frame = frame.take();
            match self.poll_send(cx, tungstenite::Message::Close(frame.clone())) {
                Poll::Ready(Ok(_)) => self.phase = Phase::ClosedByUs,
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Pending => {
                    if let Phase::Closing { frame: slot, .. } = &mut self.phase {
                        *slot = frame;
                    }
                }
            }
        }
        if self.batch.capacity() > 64 && self.batch.is_empty() {
            // Do not keep a burst's worth of capacity on an idle connection.
            self.batch = VecDeque::new();
        }
        self.poll_flush(cx)
    }

    /// Sends one frame if the sink is ready. `Ok(false)`: the connection can no longer send
    /// (closing), which is not an error.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frame: tungstenite::Message,
    ) -> Poll<Result<bool, End>> {
        match Pin::new(&mut self.ws).poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => Poll::Ready(Err(End::Io(error.to_string()))),
            Poll::Ready(Ok(())) => match Pin::new(&mut self.ws).start_send(frame) {
                Ok(()) => {
                    self.needs_flush = true;
                    Poll::Ready(Ok(true))
                }
                Err(WsError::Protocol(ProtocolError::SendAfterClosing)) => Poll::Ready(Ok(false)),
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    Poll::Ready(Err(End::Closed))
                }
                Err(error) => Poll::Ready(Err(End::Io(error.to_string()))),
            },
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if !self.needs_flush {
            return Poll::Pending;
        }
        match Pin::new(&mut self.ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.needs_flush = false;
                Poll::Pending
            }
            Poll::Ready(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                Poll::Ready(End::Closed)
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
        if let Some(intent) = this.queue.take_all(&mut this.batch)
            && let Poll::Ready(end) = this.on_close_intent(intent)
        {
            return Poll::Ready(end);
        }
        if !matches!(this.phase, Phase::Open | Phase::Closing { drain: true, .. }) {
            // Closing without draining: what arrives now is never written.
            this.discard_batch();
        }
        if let Poll::Ready(end) = this.poll_timer(cx) {
            return Poll::Ready(end);
        }
        if let Poll::Ready(end) = this.poll_read(cx) {
            return Poll::Ready(end);
        }
        // Reading may have started a close (protocol error, peer close) or queued replies.
        if let Poll::Ready(end) = this.poll_write(cx) {
            return Poll::Ready(end);
        }
        Poll::Pending
    }
}

impl<S> Drop for Driver<'_, S> {
    fn drop(&mut self) {
        // Whatever was taken and never written no longer counts against the queue.
        let bytes = self.batch.iter().map(Message::len).sum();
        self.queue.release(self.batch.len(), bytes);
    }
}
