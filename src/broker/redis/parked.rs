//! [`ParkedReaders`]: connection tasks that stopped reading their clients because a publish
//! queue was full, woken when its publisher task takes messages off it.
//!
//! A client's messages are never refused for a full queue: its connection task stops reading
//! the client instead (the bytes wait in the socket, and TCP pushes back on the client), parks
//! here, and reads on once there is room. The publisher task frees room each time it takes a
//! batch off its queue, fails what is queued (Redis down: nothing is refused for lack of room
//! then), or stops; each of those wakes every parked task, which looks again. Waking all is
//! what keeps this simple and safe: a task woken for room it then does not use (it closed, its
//! hook dropped the message) can never leave another one parked with nobody to wake it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::task::Waker;

use crate::sync::lock;

/// The tasks waiting for room in one publisher task's queue.
#[derive(Debug, Default)]
pub(crate) struct ParkedReaders {
    /// `wakers` is not empty: spares the publisher task the lock at every batch otherwise.
    any: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl ParkedReaders {
    /// Wakes `waker` at the next [`wake_all`](Self::wake_all). The caller must look at the
    /// queue's room again after this returns (and not sleep if there is some): room freed
    /// before the registration woke nobody. Callers register each task once per wake (the
    /// connection keeps a flag), so the list holds at most one waker per parked task.
    pub(crate) fn park(&self, waker: Waker) {
        lock(&self.wakers).push(waker);
        self.any.store(true, Ordering::SeqCst);
        // Pairs with the fence in `wake_all`: either the publisher task sees `any`, or the
        // caller's second look at the queue sees the room freed.
        fence(Ordering::SeqCst);
    }

    /// Wakes every parked task. Called by the publisher task after it freed room in its
    /// queue, or changed what a full queue means (went down, stopped).
    pub(crate) fn wake_all(&self) {
        fence(Ordering::SeqCst);
        if !self.any.load(Ordering::SeqCst) {
            return;
        }
        let wakers = {
            let mut wakers = lock(&self.wakers);
            self.any.store(false, Ordering::SeqCst);
            std::mem::take(&mut *wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use futures_util::task::{ArcWake, waker};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl ArcWake for Count {
        fn wake_by_ref(arc: &Arc<Self>) {
            arc.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_parked_task_is_woken_once_and_then_forgotten() {
        let parked = ParkedReaders::default();
        let counts: Vec<Arc<Count>> = (0..3).map(|_| Arc::default()).collect();
        for count in &counts {
            parked.park(waker(Arc::clone(count)));
        }
        parked.wake_all();
        parked.wake_all();
        for count in &counts {
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
        }
        assert!(lock(&parked.wakers).is_empty());
    }
}
