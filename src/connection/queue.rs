//! [`OutboundQueue`]: the bounded queue between the hub's fan-out and one connection's writer.
//!
//! Producers (the fan-out of any room member, the application's `publish`, the connection's own
//! message hook replying) push under a short mutex and wake the connection task; the task takes
//! what is queued (at most half the budget at a time, and not while `write_interval` holds it
//! back) and writes it with one vectored write. Nothing here ever waits on a socket, so a slow
//! client can only ever fill its own queue, and what happens then is the configured
//! [`SlowConsumerPolicy`].

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use futures_util::task::AtomicWaker;

use super::frames::Frames;
use crate::config::SlowConsumerPolicy;
use bytes::Bytes;

/// Why the hub wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseIntent {
    /// Graceful shutdown: write what is queued, then close with 1001.
    Shutdown,
    /// The queue overflowed under [`SlowConsumerPolicy::Disconnect`]: close now.
    SlowConsumer,
    /// A hook panicked (`on_connect`): close now with 1011.
    InternalError,
    /// The shutdown grace period is over: drop the socket.
    Abort,
    /// The application asked for it ([`ConnectionHandle::close`](crate::ConnectionHandle::close)):
    /// write what is queued, then close with the code and reason it gave
    /// ([`OutboundQueue::requested_close`]).
    Requested,
}

impl CloseIntent {
    /// Which intent replaces which: a stronger one replaces a weaker one, never the other way
    /// round, and the first of two equals stays.
    fn strength(self) -> u8 {
        match self {
            Self::Shutdown => 0,
            Self::Requested => 1,
            Self::SlowConsumer | Self::InternalError => 2,
            Self::Abort => 3,
        }
    }

    /// Whether what is queued is written before the close frame (otherwise it is discarded).
    fn drains(self) -> bool {
        matches!(self, Self::Shutdown | Self::Requested)
    }
}

/// The close frame the application asked for ([`CloseIntent::Requested`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestedClose {
    pub(crate) code: u16,
    pub(crate) reason: Box<str>,
}

/// What became of a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushOutcome {
    /// Queued for writing.
    Queued,
    /// Queued, after dropping this many older messages ([`SlowConsumerPolicy::DropOldest`]).
    QueuedDroppingOldest(usize),
    /// Not queued: the queue is full ([`SlowConsumerPolicy::DropNewest`]), or, under
    /// [`SlowConsumerPolicy::DropOldest`], even an emptied queue could not take it while the
    /// writer holds bytes.
    Dropped,
    /// Not queued, under every policy: this one message is larger than the whole byte budget,
    /// so no queue could ever take it (a configuration problem, not a slow client).
    TooLarge,
    /// Not queued: the queue overflowed and the connection is now being disconnected; the
    /// messages still queued for it (this many) are discarded with it.
    Disconnecting(usize),
    /// Not queued: the connection is already closing.
    Closed,
    /// Counted as delivered and discarded at once (the queue counts it as discarded): the
    /// connection sends no more data, see [`OutboundQueue::stop_data`]. As if it had been
    /// queued and then discarded by the close, which is what happened before the connection
    /// knew. (A message larger than the whole byte budget is [`TooLarge`](Self::TooLarge)
    /// still: no queue could ever have taken it.)
    Discarded,
}

/// What [`OutboundQueue::take`] handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// The hub wants the connection closed.
    pub(crate) close: Option<CloseIntent>,
    /// Frames are still queued (the writer holds half the budget): take again once written.
    pub(crate) more: bool,
    /// Messages handed over by this take.
    pub(crate) messages: usize,
    /// Frame bytes of those messages.
    pub(crate) bytes: usize,
}

/// What [`OutboundQueue::peek`] sees.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peek {
    /// Messages queued (not taken yet).
    pub(crate) queued: usize,
    /// The queue holds more than a quarter of either bound (taken messages not yet written
    /// included).
    pub(crate) past_quarter: bool,
    /// The close intent, if any.
    pub(crate) close: Option<CloseIntent>,
}

/// Queue bounds and overflow policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
    pub(crate) policy: SlowConsumerPolicy,
}

#[derive(Debug, Default)]
struct State {
    /// Encoded frames (header and payload), shared with every other receiver.
    queued: VecDeque<Frames>,
    /// Messages in `queued` plus those taken by the writer and not yet handed to the socket
    /// layer, so that the bounds cover everything the server holds for this client.
    messages: usize,
    /// Frame bytes of the same messages.
    bytes: usize,
    /// Messages and bytes in `queued` alone (the rest of `messages` and `bytes` is in flight).
    queued_messages: usize,
    queued_bytes: usize,
    close: Option<CloseIntent>,
    /// The writer's timer will take what is queued (the write interval holds its next take
    /// back), so data pushes need not wake it; close requests and a slow-consumer
    /// disconnect still do. Set by [`OutboundQueue::take`] only when it hands over frames and the
    /// writer asks for it; any take that finds nothing clears it.
    writer_holding: bool,
    /// The writer holds a lone message back because the hub is behind (`hub::backlog`): wake
    /// it once the queue holds more than a quarter of either bound, so that the wait does not
    /// overflow the queue of a client that keeps up. Cleared by any take.
    wake_past_quarter: bool,
    /// Messages cleared from `queued` by a close request or the end of the connection (not by
    /// the slow-consumer policy, whose pusher counts them as dropped), and those refused
    /// because the connection sends no more data (`refuse_data`): [`OutboundQueue::end`]
    /// reports them.
    discarded: usize,
    /// The connection sends no more data (it is closing on its own, see
    /// [`OutboundQueue::stop_data`]): data pushes are discarded as they come, so that what
    /// the room sends while the client takes its time to answer the close never fills the
    /// queue and counts as a slow consumer.
    refuse_data: bool,
    /// The close frame of a [`CloseIntent::Requested`] (boxed: most connections never get
    /// one, and it costs them a pointer).
    requested: Option<Box<RequestedClose>>,
}

/// A connection's outbound queue. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct OutboundQueue {
    state: Mutex<State>,
    waker: AtomicWaker,
    limits: QueueLimits,
}

impl OutboundQueue {
    pub(crate) fn new(limits: QueueLimits) -> Self {
        Self {
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections below cannot panic half-way; a poisoned lock still holds a
        // consistent queue.
        crate::sync::lock(&self.state)
    }

    /// Registers the connection task to be woken by pushes and close requests.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Queues an encoded frame for this connection, applying the slow-consumer policy when full.
    pub(crate) fn push(&self, frame: Bytes) -> PushOutcome {
        let mut outcome = PushOutcome::Closed;
        self.push_all(&[Frames::one(frame)], |result, _| outcome = result);
        outcome
    }

    /// Queues runs of encoded frames, in order, under one lock and with at most one wake-up,
    /// applying the slow-consumer policy to each frame as [`push`](Self::push) would.
    /// `outcome(result, n)` hears that `n` frames had this result, up to the first one refused
    /// because the connection is closing (the rest would be refused alike and are not
    /// reported).
    pub(crate) fn push_all(&self, runs: &[Frames], mut outcome: impl FnMut(PushOutcome, u32)) {
        let mut state = self.lock();
        // The writer only needs waking when the queue goes from empty to non-empty: a push onto a
        // non-empty queue is covered by the wake-up of the push that made it non-empty (or, when
        // the writer left messages queued, by its own return for them; see `take`). A writer
        // whose timer takes next (`writer_holding`) needs no wake-up for data at all.
        let data_wakes = state.queued.is_empty() && !state.writer_holding;
        let mut wake = false;
        'runs: for run in runs {
            if state.close.is_some() {
                outcome(PushOutcome::Closed, run.count() as u32);
                break;
            }
            if state.refuse_data {
                self.refuse(&mut state, run, &mut outcome);
                continue;
            }
            if self.fits(&state, run.count(), run.len()) {
                // The whole run at once: the usual case.
                state.add(run.clone());
                outcome(PushOutcome::Queued, run.count() as u32);
                wake |= data_wakes;
                continue;
            }
            // Frame by frame, so that each one meets the policy as if pushed alone. A frame
            // admitted alone gets its own small copy: as a slice it would keep the whole run's
            // buffer alive while the byte bound counted only the frame.
            let split = run.count() > 1;
            for frame in run.clone().into_each() {
                let frame = if split {
                    Bytes::copy_from_slice(&frame)
                } else {
                    frame
                };
                let result = self.push_one(&mut state, frame);
                outcome(result, 1);
                match result {
                    PushOutcome::Queued | PushOutcome::QueuedDroppingOldest(_) => {
                        wake |= data_wakes;
                    }
                    // `push_one` never discards: `refuse_data` is checked per run above.
                    PushOutcome::Dropped | PushOutcome::TooLarge | PushOutcome::Discarded => {}
                    PushOutcome::Disconnecting(_) => {
                        wake = true;
                        break 'runs;
                    }
                    PushOutcome::Closed => break 'runs,
                }
            }
        }
        if state.wake_past_quarter && self.past_quarter(&state) {
            state.wake_past_quarter = false;
            wake = true;
        }
        drop(state);
        if wake {
            self.waker.wake();
        }
    }

    /// A run pushed to a queue that takes no more data (`refuse_data`): each frame is
    /// discarded as it comes, as if it had been queued and then discarded by the close, except
    /// one larger than the whole byte budget, which no queue could ever have taken: that one is
    /// [`TooLarge`](PushOutcome::TooLarge), as for an open connection, so that it is counted
    /// as dropped (and warned about), not as a delivery.
    fn refuse(&self, state: &mut State, run: &Frames, outcome: &mut impl FnMut(PushOutcome, u32)) {
        if run.len() <= self.limits.max_bytes {
            // No frame of it can be too large: the usual case, at once.
            state.discarded += run.count();
            outcome(PushOutcome::Discarded, run.count() as u32);
            return;
        }
        for frame in run.clone().into_each() {
            if frame.len() > self.limits.max_bytes {
                outcome(PushOutcome::TooLarge, 1);
            } else {
                state.discarded += 1;
                outcome(PushOutcome::Discarded, 1);
            }
        }
    }

    /// Whether the queue holds more than a quarter of either bound.
    fn past_quarter(&self, state: &State) -> bool {
        state.messages.saturating_mul(4) > self.limits.max_messages
            || state.bytes.saturating_mul(4) > self.limits.max_bytes
    }

    /// For a writer that would hold back a lone message because the hub is behind: `true`
    /// when exactly one message is queued, the queue is not past a quarter of either bound
    /// yet, and no close is asked for; and then a push that takes the queue past a quarter of
    /// a bound wakes the writer (see `wake_past_quarter`). A lone message already past a
    /// quarter (a queue of fewer than four messages, or a message of more than a quarter of
    /// the bytes) is not held: no push could end the hold before the next one overflows the
    /// queue of a client that keeps up.
    pub(crate) fn hold_lone(&self) -> bool {
        let mut state = self.lock();
        let lone =
            state.queued_messages == 1 && state.close.is_none() && !self.past_quarter(&state);
        state.wake_past_quarter = lone;
        lone
    }

    fn fits(&self, state: &State, messages: usize, bytes: usize) -> bool {
        state.messages + messages <= self.limits.max_messages
            && state.bytes + bytes <= self.limits.max_bytes
    }

    /// One frame, under the lock, with the slow-consumer policy.
    fn push_one(&self, state: &mut State, frame: Bytes) -> PushOutcome {
        let len = frame.len();
        if state.close.is_some() {
            return PushOutcome::Closed;
        }
        let mut dropped_oldest = 0;
        if len > self.limits.max_bytes {
            // Larger than the whole byte budget: no queue could ever take it, however fast its
            // client reads, so it says nothing about the client. Dropped (and counted), under
            // every policy; a `Disconnect` would close every member of the room.
            return PushOutcome::TooLarge;
        }
        if !self.fits(state, 1, len) {
            match self.limits.policy {
                SlowConsumerPolicy::Disconnect => {
                    state.close = Some(CloseIntent::SlowConsumer);
                    let discarded = state.queued_messages;
                    state.clear_queued();
                    return PushOutcome::Disconnecting(discarded);
                }
                SlowConsumerPolicy::DropNewest => return PushOutcome::Dropped,
                SlowConsumerPolicy::DropOldest => {
                    let (in_flight_messages, in_flight_bytes) = state.in_flight();
                    if in_flight_messages + 1 > self.limits.max_messages
                        || in_flight_bytes + len > self.limits.max_bytes
                    {
                        // Even an emptied queue could not take it (the writer holds bytes):
                        // drop the newest, and only it.
                        return PushOutcome::Dropped;
                    }
                    while !self.fits(state, 1, len) {
                        state.pop_oldest();
                        dropped_oldest += 1;
                    }
                }
            }
        }
        state.add(Frames::one(frame));
        if dropped_oldest > 0 {
            PushOutcome::QueuedDroppingOldest(dropped_oldest)
        } else {
            PushOutcome::Queued
        }
    }

    /// Moves queued frames, oldest first, to the end of `batch` for the writer, and returns the
    /// close intent, if any. Taken messages stay counted against the bounds until
    /// [`release`](Self::release).
    ///
    /// The writer is handed at most half of each bound at a time (and always at least one run
    /// when it holds nothing): the rest stays queued, where
    /// [`SlowConsumerPolicy::DropOldest`] can still drop it in favour of newer messages. Were
    /// the writer to hold the whole budget while its socket is blocked, nothing would be left
    /// to drop but the newest message.
    ///
    /// `hold`: the writer will take again when its timer fires (the write interval),
    /// whatever is pushed meanwhile, so data pushes need not wake it until its next take. This
    /// holds only if frames were handed over now; when the queue had nothing, pushes wake the
    /// writer again.
    pub(crate) fn take(&self, batch: &mut VecDeque<Frames>, hold: bool) -> Taken {
        let mut state = self.lock();
        state.wake_past_quarter = false;
        // Only the front run can have been trimmed (`pop_oldest`): the writer may hold what it
        // takes for long, behind a blocked socket, and a queue pins at most one run's buffer
        // beyond its byte bound, so what was trimmed leaves with a buffer of its own.
        if let Some(front) = state.queued.front_mut() {
            front.unshare_if_trimmed();
        }
        let (queued_messages, queued_bytes) = (state.queued_messages, state.queued_bytes);
        let half_messages = (self.limits.max_messages / 2).max(1);
        let half_bytes = (self.limits.max_bytes / 2).max(1);
        if state.messages <= half_messages && state.bytes <= half_bytes {
            // All of it: the usual case.
            if batch.is_empty() {
                // Swap rather than copy: the writer's empty deque becomes the new queue.
                std::mem::swap(batch, &mut state.queued);
            } else {
                batch.append(&mut state.queued);
            }
            state.queued_messages = 0;
            state.queued_bytes = 0;
        } else {
            let (mut held_messages, mut held_bytes) = state.in_flight();
            while let Some(front) = state.queued.front() {
                let over = held_messages + front.count() > half_messages
                    || held_bytes + front.len() > half_bytes;
                if over && held_messages > 0 {
                    break;
                }
                let run = state.queued.pop_front().expect("front exists");
                held_messages += run.count();
                held_bytes += run.len();
                state.queued_messages -= run.count();
                state.queued_bytes -= run.len();
                batch.push_back(run);
            }
        }
        let messages = queued_messages - state.queued_messages;
        state.writer_holding = hold && messages > 0;
        Taken {
            close: state.close,
            more: !state.queued.is_empty(),
            messages,
            bytes: queued_bytes - state.queued_bytes,
        }
    }

    /// The connection sends no more data (it started closing on its own: a pong or idle
    /// timeout, a protocol error, the rate limit, the client's close): discards what is
    /// queued, as [`discard_queued`](Self::discard_queued), and every data push from now on,
    /// counting them as discarded. A close request still reaches the writer.
    pub(crate) fn stop_data(&self) {
        let mut state = self.lock();
        state.refuse_data = true;
        state.discard_for_good();
    }

    /// Drops everything queued (taken runs are the writer's to release) and returns the close
    /// intent, if any: for a connection that may send no more data.
    pub(crate) fn discard_queued(&self) -> Option<CloseIntent> {
        let mut state = self.lock();
        state.discard_for_good();
        state.close
    }

    /// The connection has ended: refuses every later push (as closed), discards what is
    /// queued, and returns how many messages this queue discarded since it was made, other
    /// than by the slow-consumer policy (see `State::discarded`).
    pub(crate) fn end(&self) -> usize {
        let mut state = self.lock();
        state.close = Some(CloseIntent::Abort);
        state.discard_queued();
        state.discarded
    }

    /// The writer is done with these taken runs (written or discarded): releases them, empties
    /// `taken`, and returns how many messages they held.
    pub(crate) fn release_taken(&self, taken: &mut VecDeque<Frames>) -> usize {
        let messages = taken.iter().map(Frames::count).sum();
        let bytes = taken.iter().map(Frames::len).sum();
        taken.clear();
        self.release(messages, bytes);
        messages
    }

    /// The writer handed `messages` taken messages of `bytes` payload bytes to the socket layer
    /// (or discarded them).
    pub(crate) fn release(&self, messages: usize, bytes: usize) {
        let mut state = self.lock();
        state.messages = state.messages.saturating_sub(messages);
        state.bytes = state.bytes.saturating_sub(bytes);
    }

    /// Asks the connection to close. A stronger intent replaces a weaker one (`Abort` >
    /// `SlowConsumer` = `InternalError` > `Requested` > `Shutdown`). (`Requested` comes with its
    /// frame, through [`request_close`](Self::request_close).)
    pub(crate) fn close(&self, intent: CloseIntent) {
        let mut state = self.lock();
        let stronger = state
            .close
            .is_none_or(|current| intent.strength() > current.strength());
        if stronger {
            state.close = Some(intent);
            if !intent.drains() {
                state.discard_queued();
            }
        }
        drop(state);
        self.waker.wake();
    }

    /// The application asks for the connection to close with `code` and `reason`, after what
    /// is queued: [`CloseIntent::Requested`]. Returns `false`, changing nothing, when the
    /// connection is already closing, for whatever reason (a close asked for before, by the
    /// hub or the application, or the connection's own: a timeout, a protocol error, the
    /// client's close).
    pub(crate) fn request_close(&self, code: u16, reason: &str) -> bool {
        let mut state = self.lock();
        if !state.is_open() {
            return false;
        }
        state.close = Some(CloseIntent::Requested);
        state.requested = Some(Box::new(RequestedClose {
            code,
            reason: reason.into(),
        }));
        drop(state);
        self.waker.wake();
        true
    }

    /// The close frame of a [`CloseIntent::Requested`], if one was asked for.
    pub(crate) fn requested_close(&self) -> Option<RequestedClose> {
        self.lock().requested.as_deref().cloned()
    }

    /// Whether the connection still takes data: it is not closing, for any reason.
    pub(crate) fn is_open(&self) -> bool {
        self.lock().is_open()
    }

    /// What is queued, at a glance.
    pub(crate) fn peek(&self) -> Peek {
        let state = self.lock();
        Peek {
            queued: state.queued_messages,
            past_quarter: self.past_quarter(&state),
            close: state.close,
        }
    }

    /// The close intent, if any.
    pub(crate) fn close_intent(&self) -> Option<CloseIntent> {
        self.lock().close
    }

    /// `true` when nothing is queued (taken-but-unreleased messages do not count).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().queued.is_empty()
    }
}

impl State {
    /// Not closing, for any reason: no close asked for, and not closing on its own.
    fn is_open(&self) -> bool {
        self.close.is_none() && !self.refuse_data
    }

    /// Messages and bytes the writer has taken and not released yet.
    fn in_flight(&self) -> (usize, usize) {
        (
            self.messages.saturating_sub(self.queued_messages),
            self.bytes.saturating_sub(self.queued_bytes),
        )
    }

    fn add(&mut self, run: Frames) {
        self.messages += run.count();
        self.bytes += run.len();
        self.queued_messages += run.count();
        self.queued_bytes += run.len();
        self.queued.push_back(run);
    }

    /// Nothing queued will be written any more: discards it (counted), and the writer holds
    /// nothing back for its timer or for a quarter-full queue.
    fn discard_for_good(&mut self) {
        self.writer_holding = false;
        self.wake_past_quarter = false;
        self.discard_queued();
    }

    /// [`clear_queued`](Self::clear_queued), counting what it clears as discarded.
    fn discard_queued(&mut self) {
        self.discarded += self.queued_messages;
        self.clear_queued();
    }

    fn clear_queued(&mut self) {
        self.messages -= self.queued_messages;
        self.bytes -= self.queued_bytes;
        self.queued_messages = 0;
        self.queued_bytes = 0;
        self.queued.clear();
    }

    /// Drops the oldest queued frame, if any. When it came from a run, the rest of the run
    /// keeps sharing its buffer while queued, and gets one of its own when the writer takes it
    /// (`take`): a queue pins at most that one run (16 KiB) beyond its byte bound.
    fn pop_oldest(&mut self) {
        let Some(front) = self.queued.front_mut() else {
            return;
        };
        let oldest = front.split_first();
        if front.count() == 0 {
            self.queued.pop_front();
        }
        self.messages -= 1;
        self.bytes -= oldest.len();
        self.queued_messages -= 1;
        self.queued_bytes -= oldest.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_messages: usize, max_bytes: usize, policy: SlowConsumerPolicy) -> OutboundQueue {
        OutboundQueue::new(QueueLimits {
            max_messages,
            max_bytes,
            policy,
        })
    }

    /// The frame of a short text message (2 header bytes, then the text).
    fn text(s: &str) -> Bytes {
        crate::message::Message::text(s).encode_frame()
    }

    use crate::connection::frames::one_run as run;

    /// The texts queued, frame by frame, taken as a writer takes them: the queue hands over
    /// half its budget at a time, and each share is released before the next is taken; the
    /// last share stays taken (counted) without being released.
    fn drain(queue: &OutboundQueue) -> Vec<String> {
        let mut texts = Vec::new();
        loop {
            let mut batch = VecDeque::new();
            let taken = queue.take(&mut batch, false);
            let frames: Vec<Bytes> = batch.into_iter().flat_map(Frames::into_each).collect();
            let bytes = frames.iter().map(Bytes::len).sum();
            texts.extend(
                frames
                    .iter()
                    .map(|frame| String::from_utf8(frame[2..].to_vec()).unwrap()),
            );
            if !taken.more || frames.is_empty() {
                // All of it, or blocked by what an earlier take still holds.
                return texts;
            }
            queue.release(frames.len(), bytes);
        }
    }

    #[test]
    fn disconnect_policy_clears_the_queue_and_refuses_more() {
        let q = queue(2, 1024, SlowConsumerPolicy::Disconnect);
        assert_eq!(q.push(text("a")), PushOutcome::Queued);
        assert_eq!(q.push(text("b")), PushOutcome::Queued);
        assert_eq!(q.push(text("c")), PushOutcome::Disconnecting(2));
        assert_eq!(q.close_intent(), Some(CloseIntent::SlowConsumer));
        assert_eq!(q.push(text("d")), PushOutcome::Closed);
        assert!(drain(&q).is_empty());
    }

    #[test]
    fn a_queue_that_stopped_data_discards_what_it_holds_and_every_later_push() {
        let q = queue(2, 1024, SlowConsumerPolicy::Disconnect);
        assert_eq!(q.push(text("a")), PushOutcome::Queued);
        q.stop_data();
        assert!(q.is_empty());
        // More than the whole queue in one batch: discarded, never a slow-consumer disconnect.
        let runs: Vec<Frames> = (0..5).map(|_| Frames::one(text("b"))).collect();
        let mut outcomes = Vec::new();
        q.push_all(&runs, |outcome, n| outcomes.push((outcome, n)));
        assert_eq!(outcomes, [(PushOutcome::Discarded, 1); 5]);
        assert_eq!(q.close_intent(), None);
        // A close request still gets through, and then pushes are refused as closed.
        q.close(CloseIntent::Shutdown);
        assert_eq!(q.close_intent(), Some(CloseIntent::Shutdown));
        assert_eq!(q.push(text("c")), PushOutcome::Closed);
        assert_eq!(q.end(), 6, "\"a\" and the five discarded as they came");
    }

    #[test]
    fn a_queue_that_stopped_data_still_drops_a_frame_too_large_for_any_queue() {
        let q = queue(4, 16, SlowConsumerPolicy::Disconnect);
        q.stop_data();
        assert_eq!(q.push(text(&"x".repeat(32))), PushOutcome::TooLarge);
        // In a run, frame by frame: only the one too large.
        let messages = [
            crate::message::Message::text("a"),
            crate::message::Message::text("x".repeat(32)),
            crate::message::Message::text("b"),
        ];
        let mut outcomes = Vec::new();
        q.push_all(
            &crate::connection::frames::RunBuilder::pack(&messages),
            |outcome, n| outcomes.push((outcome, n)),
        );
        let too_large: u32 = outcomes
            .iter()
            .filter(|(outcome, _)| *outcome == PushOutcome::TooLarge)
            .map(|(_, n)| n)
            .sum();
        let discarded: u32 = outcomes
            .iter()
            .filter(|(outcome, _)| *outcome == PushOutcome::Discarded)
            .map(|(_, n)| n)
            .sum();
        assert_eq!((too_large, discarded), (1, 2), "{outcomes:?}");
        assert_eq!(q.end(), 2, "only \"a\" and \"b\" were discarded");
    }

    #[test]
    fn drop_newest_keeps_the_oldest() {
        let q = queue(2, 1024, SlowConsumerPolicy::DropNewest);
        q.push(text("a"));
        q.push(text("b"));
        assert_eq!(q.push(text("c")), PushOutcome::Dropped);
        assert_eq!(drain(&q), ["a", "b"]);
    }

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let q = queue(2, 1024, SlowConsumerPolicy::DropOldest);
        q.push(text("a"));
        q.push(text("b"));
        assert_eq!(q.push(text("c")), PushOutcome::QueuedDroppingOldest(1));
        assert_eq!(drain(&q), ["b", "c"]);
    }

    #[test]
    fn the_byte_bound_counts_taken_but_unwritten_messages() {
        let q = queue(100, 10, SlowConsumerPolicy::DropNewest);
        // A 10-byte frame.
        assert_eq!(q.push(text("12345678")), PushOutcome::Queued);
        assert_eq!(drain(&q).len(), 1);
        // Taken by the writer but not yet released: still counts.
        assert_eq!(q.push(text("abc")), PushOutcome::Dropped);
        q.release(1, 10);
        assert_eq!(q.push(text("abc")), PushOutcome::Queued);
    }

    #[test]
    fn a_message_larger_than_the_budget_is_too_large_under_every_policy() {
        for policy in [
            SlowConsumerPolicy::Disconnect,
            SlowConsumerPolicy::DropNewest,
            SlowConsumerPolicy::DropOldest,
        ] {
            let q = queue(100, 4, policy);
            q.push(text("ab"));
            assert_eq!(
                q.push(text("abcdefgh")),
                PushOutcome::TooLarge,
                "{policy:?}"
            );
            // The message that could never fit pushed nothing out and closed nothing.
            assert_eq!(drain(&q), ["ab"], "{policy:?}");
        }
    }

    #[test]
    fn drop_oldest_keeps_the_queue_when_bytes_in_flight_leave_no_room() {
        let q = queue(100, 12, SlowConsumerPolicy::DropOldest);
        q.push(text("12345678")); // 10 bytes, taken by the writer below
        assert_eq!(drain(&q).len(), 1);
        q.push(text("")); // 2 bytes, queued
        // 10 in flight + 3 > 12 even with the queue emptied: refuse it, keep "".
        assert_eq!(q.push(text("a")), PushOutcome::Dropped);
        q.release(1, 10);
        assert_eq!(drain(&q), [""]);
    }

    #[test]
    fn a_frame_admitted_alone_from_a_run_does_not_keep_the_run_alive() {
        // Room for one more message: the run is split and only its first frame admitted.
        let q = queue(2, 1024, SlowConsumerPolicy::DropNewest);
        q.push(text("x"));
        let big_run = run(&["a"; 100]);
        let handle = big_run.bytes().clone();
        let mut outcomes = Vec::new();
        q.push_all(std::slice::from_ref(&big_run), |o, n| outcomes.push((o, n)));
        assert_eq!(outcomes[0], (PushOutcome::Queued, 1));
        assert!(
            outcomes[1..]
                .iter()
                .all(|&o| o == (PushOutcome::Dropped, 1))
        );
        drop(big_run);
        // Only our handle is left on the run's buffer: the queued frame is a copy.
        assert!(
            handle.is_unique(),
            "the queued frame still shares the run's buffer"
        );
        assert_eq!(drain(&q), ["x", "a"]);
    }

    #[test]
    fn a_run_trimmed_by_drop_oldest_leaves_with_a_buffer_of_its_own() {
        let q = queue(100, 1024, SlowConsumerPolicy::DropOldest);
        let big_run = run(&["a"; 100]);
        let handle = big_run.bytes().clone();
        q.push_all(std::slice::from_ref(&big_run), |_, _| {});
        drop(big_run);
        // The 101st message pushes out the run's first frame: the rest of the run stays.
        assert_eq!(q.push(text("b")), PushOutcome::QueuedDroppingOldest(1));
        let mut taken = VecDeque::new();
        // The trimmed run, alone (it is more than half the budget): "b" stays queued.
        let handed = q.take(&mut taken, false);
        assert_eq!((handed.messages, handed.more), (99, true));
        // Only our handle is left on the run's buffer: the writer holds a copy of the rest,
        // however long its socket keeps it waiting.
        assert!(
            handle.is_unique(),
            "the trimmed run still shares the run's buffer"
        );
        let frames: Vec<Bytes> = taken.into_iter().flat_map(Frames::into_each).collect();
        assert_eq!(frames, vec![text("a"); 99]);
    }

    /// A waker that counts its wake-ups.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl CountingWaker {
        fn wakes(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A counting waker registered as `queue`'s writer: the counter, and the waker to register
    /// again after a wake-up (which uses the registration up, as a writer's next poll renews it).
    fn watch(queue: &OutboundQueue) -> (std::sync::Arc<CountingWaker>, Waker) {
        let counter = std::sync::Arc::new(CountingWaker(Default::default()));
        let waker = futures_util::task::waker(std::sync::Arc::clone(&counter));
        queue.register(&waker);
        (counter, waker)
    }

    impl futures_util::task::ArcWake for CountingWaker {
        fn wake_by_ref(arc: &std::sync::Arc<Self>) {
            arc.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_writer_is_woken_when_the_queue_becomes_non_empty_not_for_every_push() {
        let q = queue(100, 1024, SlowConsumerPolicy::Disconnect);
        let (counter, waker) = watch(&q);
        for _ in 0..10 {
            q.push(text("x"));
        }
        assert_eq!(counter.wakes(), 1);
        // Taken by the writer: the next push must wake it again.
        assert_eq!(drain(&q).len(), 10);
        q.register(&waker);
        q.push(text("y"));
        assert_eq!(counter.wakes(), 2);
    }

    #[test]
    fn a_holding_writer_is_woken_for_closes_not_for_data_until_a_take_finds_nothing() {
        let q = queue(100, 1024, SlowConsumerPolicy::Disconnect);
        let (counter, waker) = watch(&q);
        let wakes = || {
            q.register(&waker);
            counter.wakes()
        };
        let take = |hold: bool| {
            let mut batch = VecDeque::new();
            q.take(&mut batch, hold);
            let texts: Vec<String> = batch
                .iter()
                .flat_map(|run| run.clone().into_each())
                .map(|frame| String::from_utf8(frame[2..].to_vec()).unwrap())
                .collect();
            q.release_taken(&mut batch);
            texts
        };
        q.push(text("a"));
        assert_eq!(wakes(), 1);
        assert_eq!(take(true), ["a"]);
        // The writer's timer takes next: pushes onto the empty queue wake nobody.
        q.push(text("b"));
        q.push(text("c"));
        assert_eq!(wakes(), 1);
        assert_eq!(take(true), ["b", "c"]);
        q.push(text("d"));
        assert_eq!(wakes(), 1);
        // A take without holding (the client's message lifted the hold, say): pushes wake again.
        assert_eq!(take(false), ["d"]);
        q.push(text("e"));
        assert_eq!(wakes(), 2);
        assert_eq!(take(true), ["e"]);
        // The timer found nothing: the stream has stopped, and the next push must wake.
        assert!(take(true).is_empty());
        q.push(text("f"));
        assert_eq!(wakes(), 3);
        assert_eq!(take(true), ["f"]);
        // Close requests always wake, holding or not.
        q.close(CloseIntent::Shutdown);
        assert_eq!(wakes(), 4);
    }

    #[test]
    fn a_holding_writer_is_woken_for_a_slow_consumer_disconnect() {
        let q = queue(2, 1024, SlowConsumerPolicy::Disconnect);
        let (counter, waker) = watch(&q);
        q.push(text("a"));
        let mut batch = VecDeque::new();
        q.take(&mut batch, true);
        assert_eq!(counter.wakes(), 1);
        q.register(&waker);
        q.push(text("b"));
        assert_eq!(counter.wakes(), 1);
        // "a" is still in flight: the third message overflows the bound of two.
        assert_eq!(q.push(text("c")), PushOutcome::Disconnecting(1));
        assert_eq!(counter.wakes(), 2);
    }

    #[test]
    fn a_batch_is_queued_in_order_with_one_wake_up() {
        let q = queue(100, 1024, SlowConsumerPolicy::Disconnect);
        let (counter, _waker) = watch(&q);
        let mut outcomes = Vec::new();
        q.push_all(&[run(&["a", "b"]), Frames::one(text("c"))], |o, n| {
            outcomes.push((o, n));
        });
        assert_eq!(
            outcomes,
            [(PushOutcome::Queued, 2), (PushOutcome::Queued, 1)]
        );
        assert_eq!(counter.wakes(), 1);
        assert_eq!(drain(&q), ["a", "b", "c"]);
    }

    #[test]
    fn a_batch_that_overflows_stops_at_the_disconnect() {
        let q = queue(2, 1024, SlowConsumerPolicy::Disconnect);
        let mut outcomes = Vec::new();
        q.push_all(&[run(&["a", "b", "c", "d"])], |o, n| outcomes.push((o, n)));
        // The run does not fit: frame by frame, as if each were pushed alone.
        assert_eq!(
            outcomes,
            [
                (PushOutcome::Queued, 1),
                (PushOutcome::Queued, 1),
                (PushOutcome::Disconnecting(2), 1)
            ]
        );
        assert_eq!(q.close_intent(), Some(CloseIntent::SlowConsumer));
        assert!(drain(&q).is_empty());
    }

    #[test]
    fn a_batch_under_drop_oldest_keeps_the_newest() {
        let q = queue(3, 1024, SlowConsumerPolicy::DropOldest);
        q.push_all(&[run(&["a", "b"])], |_, _| {});
        let mut outcomes = Vec::new();
        q.push_all(&[run(&["c", "d", "e"])], |o, n| outcomes.push((o, n)));
        assert_eq!(
            outcomes,
            [
                (PushOutcome::Queued, 1),
                (PushOutcome::QueuedDroppingOldest(1), 1),
                (PushOutcome::QueuedDroppingOldest(1), 1)
            ]
        );
        // The oldest run was split to drop one frame at a time.
        assert_eq!(drain(&q), ["c", "d", "e"]);
        let q = queue(3, 1024, SlowConsumerPolicy::DropOldest);
        q.push_all(&[run(&["a", "b"])], |_, _| {});
        q.push(text("c"));
        assert_eq!(q.push(text("d")), PushOutcome::QueuedDroppingOldest(1));
        assert_eq!(drain(&q), ["b", "c", "d"]);
    }

    /// Takes what the queue hands over, as the writer does, without releasing it.
    fn take_texts(queue: &OutboundQueue) -> (Vec<String>, bool) {
        let mut batch = VecDeque::new();
        let taken = queue.take(&mut batch, false);
        let texts = batch
            .into_iter()
            .flat_map(Frames::into_each)
            .map(|frame| String::from_utf8(frame[2..].to_vec()).unwrap())
            .collect();
        (texts, taken.more)
    }

    #[test]
    fn the_writer_is_handed_half_the_budget_at_a_time() {
        let q = queue(10, 1024, SlowConsumerPolicy::Disconnect);
        for s in ["0", "1", "2", "3", "4", "5", "6", "7"] {
            q.push(text(s));
        }
        assert_eq!(
            take_texts(&q),
            (
                vec!["0", "1", "2", "3", "4"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                true
            )
        );
        // Nothing more while the writer holds its half.
        assert_eq!(take_texts(&q), (Vec::new(), true));
        q.release(5, 5 * 3);
        assert_eq!(
            take_texts(&q),
            (
                vec!["5", "6", "7"].into_iter().map(String::from).collect(),
                false
            )
        );
    }

    #[test]
    fn drop_oldest_keeps_the_newest_while_the_writer_is_blocked() {
        // The writer took its half and its socket is blocked: newer messages push out the
        // oldest still queued, not the newest.
        let q = queue(4, 1024, SlowConsumerPolicy::DropOldest);
        for s in ["a", "b", "c", "d"] {
            q.push(text(s));
        }
        assert_eq!(take_texts(&q).0, ["a", "b"]);
        assert_eq!(q.push(text("e")), PushOutcome::QueuedDroppingOldest(1));
        assert_eq!(q.push(text("f")), PushOutcome::QueuedDroppingOldest(1));
        q.release(2, 2 * 3);
        assert_eq!(take_texts(&q).0, ["e", "f"]);
    }

    #[test]
    fn a_lone_message_already_past_a_quarter_is_not_held() {
        // One message is already more than a quarter of a bound: no push can take the queue
        // past a quarter and end the hold in time, and the next one overflows the queue of a
        // client that keeps up (here: a disconnect).
        let q = queue(1, 1024, SlowConsumerPolicy::Disconnect);
        q.push(text("a"));
        assert!(!q.hold_lone(), "held a message that fills the queue");
        // The byte bound alike: a 600-byte frame of a 1000-byte budget.
        let q = queue(100, 1000, SlowConsumerPolicy::Disconnect);
        q.push(text(&"x".repeat(596)));
        assert!(!q.hold_lone(), "held a message past a quarter of the bytes");
        // Below a quarter of both bounds, a lone message is held.
        let q = queue(4, 1024, SlowConsumerPolicy::Disconnect);
        q.push(text("a"));
        assert!(q.hold_lone());
    }

    #[test]
    fn abort_overrides_shutdown_but_not_the_reverse() {
        let q = queue(4, 64, SlowConsumerPolicy::Disconnect);
        q.push(text("a"));
        q.close(CloseIntent::Shutdown);
        // Shutdown keeps what is queued so it can be written before the close frame.
        assert!(!q.is_empty());
        q.close(CloseIntent::Abort);
        q.close(CloseIntent::Shutdown);
        assert_eq!(q.close_intent(), Some(CloseIntent::Abort));
        assert!(q.is_empty());
    }

    #[test]
    fn a_requested_close_keeps_what_is_queued_and_refuses_what_comes_after() {
        let q = queue(4, 1024, SlowConsumerPolicy::Disconnect);
        q.push(text("last words"));
        assert!(q.is_open());
        assert!(q.request_close(4001, "banned"));
        assert!(!q.is_open());
        assert_eq!(q.close_intent(), Some(CloseIntent::Requested));
        assert_eq!(
            q.requested_close(),
            Some(RequestedClose {
                code: 4001,
                reason: "banned".into()
            })
        );
        assert_eq!(q.push(text("too late")), PushOutcome::Closed);
        assert_eq!(drain(&q), ["last words"]);
        // A connection asked to close once keeps that close.
        assert!(!q.request_close(4002, "again"));
        assert_eq!(q.requested_close().unwrap().code, 4001);
    }

    #[test]
    fn a_requested_close_ranks_above_shutdown_and_below_the_hubs_own_closes() {
        // Shutdown first: the connection is closing already, with 1001.
        let q = queue(4, 1024, SlowConsumerPolicy::Disconnect);
        q.close(CloseIntent::Shutdown);
        assert!(!q.request_close(4000, "mine"));
        assert_eq!(q.close_intent(), Some(CloseIntent::Shutdown));
        assert_eq!(q.requested_close(), None);
        // Asked first: a shutdown leaves it (and what is queued) as it is.
        let q = queue(4, 1024, SlowConsumerPolicy::Disconnect);
        q.push(text("a"));
        assert!(q.request_close(4000, "mine"));
        q.close(CloseIntent::Shutdown);
        assert_eq!(q.close_intent(), Some(CloseIntent::Requested));
        assert!(!q.is_empty());
        // A panicking hook, a slow consumer or the end of the grace period replace it, and
        // discard what is queued.
        for stronger in [
            CloseIntent::InternalError,
            CloseIntent::SlowConsumer,
            CloseIntent::Abort,
        ] {
            let q = queue(4, 1024, SlowConsumerPolicy::Disconnect);
            q.push(text("a"));
            assert!(q.request_close(4000, "mine"));
            q.close(stronger);
            assert_eq!(q.close_intent(), Some(stronger));
            assert!(q.is_empty());
        }
        // A connection closing on its own (it sends no more data) is not asked again.
        let q = queue(4, 1024, SlowConsumerPolicy::Disconnect);
        q.stop_data();
        assert!(!q.is_open());
        assert!(!q.request_close(4000, "mine"));
        assert_eq!(q.close_intent(), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        /// A run of this many frames of this payload size.
        PushRun(usize, usize),
        Take,
        ReleaseAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..300).prop_map(Op::Push),
            (1usize..6, 0usize..200).prop_map(|(n, len)| Op::PushRun(n, len)),
            Just(Op::Take),
            Just(Op::ReleaseAll),
        ]
    }

    fn policy() -> impl Strategy<Value = SlowConsumerPolicy> {
        prop_oneof![
            Just(SlowConsumerPolicy::Disconnect),
            Just(SlowConsumerPolicy::DropNewest),
            Just(SlowConsumerPolicy::DropOldest),
        ]
    }

    proptest! {
        /// Whatever producers and the writer do, the queue never holds more than its bounds.
        #[test]
        fn bounds_hold_under_any_interleaving(
            ops in proptest::collection::vec(op(), 1..200),
            max_messages in 1usize..20,
            max_bytes in 1usize..2000,
            policy in policy(),
        ) {
            let queue = OutboundQueue::new(QueueLimits { max_messages, max_bytes, policy });
            let mut taken: VecDeque<Frames> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(len) => { queue.push(Bytes::from(vec![0u8; len])); }
                    Op::PushRun(n, len) => {
                        let messages = vec![crate::message::Message::binary(vec![0u8; len]); n];
                        queue.push_all(&crate::connection::frames::RunBuilder::pack(&messages), |_, _| {});
                    }
                    Op::Take => { let _ = queue.take(&mut taken, false); }
                    Op::ReleaseAll => { queue.release_taken(&mut taken); }
                }
                let state = queue.lock();
                let held_bytes: usize = state.queued.iter().chain(taken.iter()).map(Frames::len).sum();
                let held: usize = state.queued.iter().chain(taken.iter()).map(Frames::count).sum();
                prop_assert_eq!(state.messages, held);
                prop_assert_eq!(state.queued_messages, state.queued.iter().map(Frames::count).sum::<usize>());
                prop_assert_eq!(state.queued_bytes, state.queued.iter().map(Frames::len).sum::<usize>());
                prop_assert_eq!(state.bytes, held_bytes);
                prop_assert!(state.messages <= max_messages);
                prop_assert!(state.bytes <= max_bytes);
            }
        }
    }

    /// A socket that takes at most `limit` bytes per write and `left` bytes in all, then is
    /// full (`Pending`); vectored writes stop at the first buffer not taken whole.
    struct Socket {
        out: Vec<u8>,
        limit: usize,
        left: usize,
    }

    impl tokio::io::AsyncWrite for Socket {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.left == 0 {
                return std::task::Poll::Pending;
            }
            let mut total = 0;
            for buf in bufs {
                let n = buf.len().min(self.left).min(self.limit - total);
                self.left -= n;
                total += n;
                self.out.extend_from_slice(&buf[..n]);
                if n < buf.len() || total == self.limit {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(total))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[derive(Debug, Clone)]
    enum WriterOp {
        Push(usize),
        /// A run of this many frames of this payload size.
        PushRun(usize, usize),
        /// The writer takes what the queue hands over onto its wire.
        Take,
        /// The socket takes this many bytes.
        Write(usize),
        /// A close that cannot wait: unstarted data frames leave the wire.
        DiscardUnstarted,
        /// A pong answer joins the wire.
        Pong(u8),
    }

    fn writer_op() -> impl Strategy<Value = WriterOp> {
        prop_oneof![
            (0usize..300).prop_map(WriterOp::Push),
            (1usize..6, 0usize..40).prop_map(|(n, len)| WriterOp::PushRun(n, len)),
            Just(WriterOp::Take),
            (0usize..64).prop_map(WriterOp::Write),
            Just(WriterOp::DiscardUnstarted),
            any::<u8>().prop_map(WriterOp::Pong),
        ]
    }

    /// Data frames in `out`, which must hold complete frames only.
    fn complete_data_frames(out: &[u8]) -> usize {
        use tokio_tungstenite::tungstenite::protocol::frame::{FrameHeader, coding::OpCode};
        let (mut at, mut data) = (0, 0);
        while at < out.len() {
            let mut cursor = std::io::Cursor::new(&out[at..]);
            let (header, len) = FrameHeader::parse(&mut cursor)
                .expect("a valid header")
                .expect("a complete header");
            at += cursor.position() as usize + len as usize;
            data += usize::from(matches!(header.opcode, OpCode::Data(_)));
        }
        assert_eq!(at, out.len(), "the stream ends inside a frame");
        data
    }

    proptest! {
        /// The queue with its writer, as the connection drives them: whatever is pushed,
        /// taken, partly written or discarded, the queue counts exactly what it holds plus
        /// what the wire has not finished (no drift that would leave it full, or never full,
        /// for good), the socket gets whole frames only, and every message queued is in the
        /// end written, dropped by the policy, or discarded.
        #[test]
        fn the_queue_and_its_writer_account_for_every_frame(
            ops in proptest::collection::vec(writer_op(), 1..150),
            max_messages in 1usize..12,
            max_bytes in 1usize..1500,
            policy in policy(),
            limit in 1usize..50,
        ) {
            use crate::connection::wire::{Wire, Written};
            let queue = OutboundQueue::new(QueueLimits { max_messages, max_bytes, policy });
            let mut wire = Wire::default();
            let mut socket = Socket { out: Vec::new(), limit, left: 0 };
            let waker = futures_util::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            let mut batch = VecDeque::new();
            let (mut queued, mut dropped, mut discarded, mut written) = (0, 0, 0, 0);
            let mut record = |outcome: PushOutcome, n: u32| match outcome {
                PushOutcome::Queued | PushOutcome::Discarded => queued += n as usize,
                PushOutcome::QueuedDroppingOldest(older) => {
                    queued += n as usize;
                    dropped += older;
                }
                PushOutcome::Disconnecting(older) => dropped += older,
                PushOutcome::Dropped | PushOutcome::TooLarge | PushOutcome::Closed => {}
            };
            let mut write = |wire: &mut Wire, socket: &mut Socket, left: usize| {
                socket.left = left;
                let mut done = Written::default();
                let _ = wire.poll_write(socket, &mut cx, &mut done);
                queue.release(done.frames, done.bytes);
                done.frames
            };
            for op in ops {
                match op {
                    WriterOp::Push(len) => {
                        let frame = crate::message::Message::binary(vec![0u8; len]).encode_frame();
                        record(queue.push(frame), 1);
                    }
                    WriterOp::PushRun(n, len) => {
                        let messages = vec![crate::message::Message::binary(vec![0u8; len]); n];
                        queue.push_all(&crate::connection::frames::RunBuilder::pack(&messages), &mut record);
                    }
                    WriterOp::Take => {
                        let _ = queue.take(&mut batch, false);
                        batch.drain(..).for_each(|frames| wire.push_data(frames));
                    }
                    WriterOp::Write(left) => written += write(&mut wire, &mut socket, left),
                    WriterOp::DiscardUnstarted => {
                        let (gone, completed) = wire.discard_unstarted_data();
                        queue.release(gone.frames, gone.bytes);
                        queue.release(completed.frames, completed.bytes);
                        discarded += gone.frames;
                        written += completed.frames;
                    }
                    WriterOp::Pong(payload) => wire.push_control(Bytes::from(vec![0x8A, 1, payload])),
                }
                let pending = wire.pending_data();
                let state = queue.lock();
                prop_assert_eq!(state.messages, state.queued_messages + pending.frames);
                prop_assert_eq!(state.bytes, state.queued_bytes + pending.bytes);
                prop_assert!(state.messages <= max_messages && state.bytes <= max_bytes);
            }
            // The client reads everything from now on.
            loop {
                let _ = queue.take(&mut batch, false);
                if batch.is_empty() && wire.is_empty() {
                    break;
                }
                batch.drain(..).for_each(|frames| wire.push_data(frames));
                written += write(&mut wire, &mut socket, usize::MAX);
                prop_assert!(wire.is_empty());
            }
            prop_assert_eq!(complete_data_frames(&socket.out), written);
            let state = queue.lock();
            prop_assert_eq!((state.messages, state.bytes), (0, 0));
            drop(state);
            prop_assert_eq!(queued, written + dropped + discarded + queue.end());
        }
    }
}
