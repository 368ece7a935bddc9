//! [`OutboundQueue`]: the bounded queue between the hub's fan-out and one connection's writer.
//!
//! Producers (the fan-out of any room member, the application's `publish`, the connection's own
//! message hook replying) push under a short mutex and wake the connection task; the task takes
//! everything queued in one go and writes it with one flush. Nothing here ever waits on a socket,
//! so a slow client can only ever fill its own queue, and what happens then is the configured
//! [`SlowConsumerPolicy`].

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use futures_util::task::AtomicWaker;

use crate::config::SlowConsumerPolicy;
use bytes::Bytes;

/// Why the hub wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseIntent {
    /// Graceful shutdown: write what is queued, then close with 1001.
    Shutdown,
    /// The queue overflowed under [`SlowConsumerPolicy::Disconnect`]: close now.
    SlowConsumer,
    /// The shutdown grace period is over: drop the socket.
    Abort,
}

/// What became of a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushOutcome {
    /// Queued for writing.
    Queued,
    /// Queued, after dropping this many older messages ([`SlowConsumerPolicy::DropOldest`]).
    QueuedDroppingOldest(usize),
    /// Not queued: the queue is full ([`SlowConsumerPolicy::DropNewest`]), or this one message is
    /// larger than the whole byte budget.
    Dropped,
    /// Not queued: the queue overflowed and the connection is now being disconnected.
    Disconnecting,
    /// Not queued: the connection is already closing.
    Closed,
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
    queued: VecDeque<Bytes>,
    /// Messages in `queued` plus those taken by the writer and not yet handed to the socket
    /// layer, so that the bounds cover everything the server holds for this client.
    messages: usize,
    /// Frame bytes of the same messages.
    bytes: usize,
    close: Option<CloseIntent>,
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
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the connection task to be woken by pushes and close requests.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Queues an encoded frame for this connection, applying the slow-consumer policy when full.
    pub(crate) fn push(&self, frame: Bytes) -> PushOutcome {
        let mut outcome = PushOutcome::Closed;
        self.push_each(std::iter::once(frame), |result| outcome = result);
        outcome
    }

    /// Queues several encoded frames, in order, under one lock and with at most one wake-up,
    /// applying the slow-consumer policy to each as [`push`](Self::push) would. `outcome` hears
    /// what became of each frame, up to the first one refused because the connection is closing
    /// (the rest would be refused alike and are not reported).
    pub(crate) fn push_all(&self, frames: &[Bytes], outcome: impl FnMut(PushOutcome)) {
        self.push_each(frames.iter().cloned(), outcome);
    }

    fn push_each(&self, frames: impl Iterator<Item = Bytes>, mut outcome: impl FnMut(PushOutcome)) {
        let mut state = self.lock();
        // The writer always takes everything queued (under this lock), so it only needs waking
        // when the queue goes from empty to non-empty: a push onto a non-empty queue is already
        // covered by the wake-up of the push that made it non-empty.
        let was_empty = state.queued.is_empty();
        let mut wake = false;
        for frame in frames {
            let result = self.push_locked(&mut state, frame);
            outcome(result);
            match result {
                PushOutcome::Queued | PushOutcome::QueuedDroppingOldest(_) => wake |= was_empty,
                PushOutcome::Dropped => {}
                PushOutcome::Disconnecting => {
                    wake = true;
                    break;
                }
                PushOutcome::Closed => break,
            }
        }
        drop(state);
        if wake {
            self.waker.wake();
        }
    }

    fn push_locked(&self, state: &mut State, frame: Bytes) -> PushOutcome {
        let len = frame.len();
        let limits = self.limits;
        if state.close.is_some() {
            return PushOutcome::Closed;
        }
        let fits = |state: &State| {
            state.messages < limits.max_messages && state.bytes + len <= limits.max_bytes
        };
        let mut dropped_oldest = 0;
        if !fits(state) {
            match limits.policy {
                SlowConsumerPolicy::Disconnect => {
                    state.close = Some(CloseIntent::SlowConsumer);
                    state.clear_queued();
                    return PushOutcome::Disconnecting;
                }
                SlowConsumerPolicy::DropNewest => return PushOutcome::Dropped,
                SlowConsumerPolicy::DropOldest => {
                    while !fits(state) {
                        let Some(oldest) = state.queued.pop_front() else {
                            // Even an empty queue cannot take it (bytes in flight, or a message
                            // bigger than the whole budget): drop the newest after all.
                            return PushOutcome::Dropped;
                        };
                        state.messages -= 1;
                        state.bytes -= oldest.len();
                        dropped_oldest += 1;
                    }
                }
            }
        }
        state.messages += 1;
        state.bytes += len;
        state.queued.push_back(frame);
        if dropped_oldest > 0 {
            PushOutcome::QueuedDroppingOldest(dropped_oldest)
        } else {
            PushOutcome::Queued
        }
    }

    /// Moves everything queued to the end of `batch` and returns the close intent, if any.
    /// Taken messages stay counted against the bounds until [`release`](Self::release).
    pub(crate) fn take_all(&self, batch: &mut VecDeque<Bytes>) -> Option<CloseIntent> {
        let mut state = self.lock();
        if batch.is_empty() {
            // Swap rather than copy: the writer's empty deque becomes the new queue.
            std::mem::swap(batch, &mut state.queued);
        } else {
            batch.append(&mut state.queued);
        }
        state.close
    }

    /// The writer handed `messages` taken messages of `bytes` payload bytes to the socket layer
    /// (or discarded them).
    pub(crate) fn release(&self, messages: usize, bytes: usize) {
        let mut state = self.lock();
        state.messages = state.messages.saturating_sub(messages);
        state.bytes = state.bytes.saturating_sub(bytes);
    }

    /// Asks the connection to close. A stronger intent replaces a weaker one
    /// (`Abort` > `SlowConsumer` > `Shutdown`).
    pub(crate) fn close(&self, intent: CloseIntent) {
        let mut state = self.lock();
        let stronger = match (state.close, intent) {
            (None, _) => true,
            (Some(CloseIntent::Abort), _) => false,
            (Some(_), CloseIntent::Abort) => true,
            (Some(CloseIntent::Shutdown), CloseIntent::SlowConsumer) => true,
            (Some(_), _) => false,
        };
        if stronger {
            state.close = Some(intent);
            if intent != CloseIntent::Shutdown {
                state.clear_queued();
            }
        }
        drop(state);
        self.waker.wake();
    }

    /// The close intent, if any.
    #[cfg(test)]
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
    fn clear_queued(&mut self) {
        for frame in self.queued.drain(..) {
            self.messages -= 1;
            self.bytes -= frame.len();
        }
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

    fn text(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn drain(queue: &OutboundQueue) -> Vec<String> {
        let mut batch = VecDeque::new();
        let _ = queue.take_all(&mut batch);
        batch
            .into_iter()
            .map(|frame| String::from_utf8(frame.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn disconnect_policy_clears_the_queue_and_refuses_more() {
        let q = queue(2, 1024, SlowConsumerPolicy::Disconnect);
        assert_eq!(q.push(text("a")), PushOutcome::Queued);
        assert_eq!(q.push(text("b")), PushOutcome::Queued);
        assert_eq!(q.push(text("c")), PushOutcome::Disconnecting);
        assert_eq!(q.close_intent(), Some(CloseIntent::SlowConsumer));
        assert_eq!(q.push(text("d")), PushOutcome::Closed);
        assert!(drain(&q).is_empty());
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
        assert_eq!(q.push(text("12345678")), PushOutcome::Queued);
        assert_eq!(drain(&q).len(), 1);
        // Taken by the writer but not yet released: still counts.
        assert_eq!(q.push(text("abc")), PushOutcome::Dropped);
        q.release(1, 8);
        assert_eq!(q.push(text("abc")), PushOutcome::Queued);
    }

    #[test]
    fn a_message_larger_than_the_budget_is_dropped_under_drop_oldest() {
        let q = queue(100, 4, SlowConsumerPolicy::DropOldest);
        q.push(text("ab"));
        assert_eq!(q.push(text("abcdefgh")), PushOutcome::Dropped);
    }

    /// A waker that counts its wake-ups.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl futures_util::task::ArcWake for CountingWaker {
        fn wake_by_ref(arc: &std::sync::Arc<Self>) {
            arc.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_writer_is_woken_when_the_queue_becomes_non_empty_not_for_every_push() {
        use std::sync::Arc;
        use std::sync::atomic::Ordering;
        let q = queue(100, 1024, SlowConsumerPolicy::Disconnect);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = futures_util::task::waker(Arc::clone(&counter));
        q.register(&waker);
        for _ in 0..10 {
            q.push(text("x"));
        }
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        // Taken by the writer: the next push must wake it again.
        assert_eq!(drain(&q).len(), 10);
        q.register(&waker);
        q.push(text("y"));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_batch_is_queued_in_order_with_one_wake_up() {
        use std::sync::Arc;
        use std::sync::atomic::Ordering;
        let q = queue(100, 1024, SlowConsumerPolicy::Disconnect);
        let counter = Arc::new(CountingWaker(Default::default()));
        q.register(&futures_util::task::waker(Arc::clone(&counter)));
        let mut outcomes = Vec::new();
        q.push_all(&[text("a"), text("b"), text("c")], |o| outcomes.push(o));
        assert_eq!(outcomes, [PushOutcome::Queued; 3]);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(drain(&q), ["a", "b", "c"]);
    }

    #[test]
    fn a_batch_that_overflows_stops_at_the_disconnect() {
        let q = queue(2, 1024, SlowConsumerPolicy::Disconnect);
        let mut outcomes = Vec::new();
        q.push_all(&[text("a"), text("b"), text("c"), text("d")], |o| {
            outcomes.push(o);
        });
        assert_eq!(
            outcomes,
            [
                PushOutcome::Queued,
                PushOutcome::Queued,
                PushOutcome::Disconnecting
            ]
        );
        assert_eq!(q.close_intent(), Some(CloseIntent::SlowConsumer));
        assert!(drain(&q).is_empty());
    }

    #[test]
    fn a_batch_under_drop_oldest_keeps_the_newest() {
        let q = queue(2, 1024, SlowConsumerPolicy::DropOldest);
        let mut outcomes = Vec::new();
        q.push_all(&[text("a"), text("b"), text("c"), text("d")], |o| {
            outcomes.push(o);
        });
        assert_eq!(outcomes[3], PushOutcome::QueuedDroppingOldest(1));
        assert_eq!(drain(&q), ["c", "d"]);
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
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Take,
        ReleaseAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..300).prop_map(Op::Push),
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
            let mut taken: VecDeque<Bytes> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(len) => { queue.push(Bytes::from(vec![0u8; len])); }
                    Op::Take => { let _ = queue.take_all(&mut taken); }
                    Op::ReleaseAll => {
                        let bytes = taken.iter().map(Bytes::len).sum();
                        queue.release(taken.len(), bytes);
                        taken.clear();
                    }
                }
                let state = queue.lock();
                let held_bytes: usize = state.queued.iter().chain(taken.iter()).map(Bytes::len).sum();
                prop_assert_eq!(state.messages, state.queued.len() + taken.len());
                prop_assert_eq!(state.bytes, held_bytes);
                prop_assert!(state.messages <= max_messages);
                prop_assert!(state.bytes <= max_bytes);
            }
        }
    }
}
