//! [`RoomRegistry`]: which connections are in which room, and local fan-out.
//!
//! The registry map is locked only to look a room up, and to create or remove one; fan-out runs
//! under the room's own read lock and only pushes into bounded queues (it never touches a
//! socket), and joining or leaving an existing room takes that room's lock without holding the
//! map's, so a burst in one room never stalls another and a slow client never stalls a room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::connection::frames::Frames;
use crate::connection::queue::{OutboundQueue, PushOutcome};
use crate::hub::context::ConnectionId;
use crate::sync::{read, write};

/// A room member: its id and the queue its writer drains.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) id: ConnectionId,
    pub(crate) queue: Arc<OutboundQueue>,
}

/// One room and its local members.
#[derive(Debug)]
pub(crate) struct Room {
    name: Arc<str>,
    members: RwLock<Vec<Member>>,
    /// Set (under the members' lock) when the room, empty, is taken out of the registry: a
    /// join that found it before must not add a member nobody's fan-out would reach.
    removed: AtomicBool,
}

/// What one fan-out did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FanOut {
    /// Deliveries queued (receivers × messages).
    pub(crate) queued: u64,
    /// Messages dropped by a full queue (the new one or older ones), or too large for any.
    pub(crate) dropped: u64,
    /// Of `dropped`, messages larger than a queue's whole byte bound.
    pub(crate) too_large: u64,
    /// Receivers disconnected because their queue overflowed.
    pub(crate) disconnected: u64,
}

impl FanOut {
    /// `frames` frames had this outcome.
    pub(crate) fn record(&mut self, outcome: PushOutcome, frames: u32) {
        let frames = u64::from(frames);
        match outcome {
            // Discarded: for a connection that sends no more data, a delivery its close
            // discards (`HubStats::discarded_on_close` counts it).
            PushOutcome::Queued | PushOutcome::Discarded => self.queued += frames,
            PushOutcome::QueuedDroppingOldest(n) => {
                self.queued += frames;
                self.dropped += n as u64;
            }
            PushOutcome::Dropped => self.dropped += frames,
            PushOutcome::TooLarge => {
                self.dropped += frames;
                self.too_large += frames;
            }
            PushOutcome::Disconnecting(discarded) => {
                // The new message, and those still queued for the connection it closes.
                self.dropped += frames + discarded as u64;
                self.disconnected += 1;
            }
            PushOutcome::Closed => {}
        }
    }
}

impl Room {
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn len(&self) -> usize {
        read(&self.members).len()
    }

    /// Adds `member`, unless the room has been removed from the registry (then hands it back).
    fn add(&self, member: Member) -> Result<(), Member> {
        let mut members = write(&self.members);
        if self.removed.load(Ordering::Relaxed) {
            return Err(member);
        }
        members.push(member);
        Ok(())
    }

    /// Queues frames, in order, for every member but `exclude`. `frames` builds them (runs of
    /// encoded frames), once, and only if someone receives them; every receiver's queue and
    /// socket write share those buffers. Each receiver's queue is locked (and its writer woken)
    /// once for the whole batch.
    pub(crate) fn fan_out<F: AsRef<[Frames]>>(
        &self,
        frames: impl FnOnce() -> F,
        exclude: Option<ConnectionId>,
    ) -> FanOut {
        let mut result = FanOut::default();
        let members = read(&self.members);
        if members.iter().all(|member| Some(member.id) == exclude) {
            return result;
        }
        let frames = frames();
        let frames = frames.as_ref();
        for member in members.iter() {
            if Some(member.id) == exclude {
                continue;
            }
            member
                .queue
                .push_all(frames, |outcome, n| result.record(outcome, n));
        }
        result
    }

    /// Runs `f` on every member.
    pub(crate) fn for_each_member(&self, mut f: impl FnMut(&Member)) {
        read(&self.members).iter().for_each(&mut f);
    }
}

/// All rooms with local members.
#[derive(Debug, Default)]
pub(crate) struct RoomRegistry {
    rooms: RwLock<HashMap<Arc<str>, Arc<Room>>>,
}

impl RoomRegistry {
    /// Adds a member to a room, creating the room if needed, and returns the room. `on_first`
    /// runs when the member is the room's first (the moment to subscribe to it elsewhere),
    /// under the registry lock, so that subscribe and unsubscribe notices keep their order.
    ///
    /// An existing room is joined under its own lock only: a join waiting for a fan-out in
    /// its room to finish holds up nobody else.
    pub(crate) fn join(
        &self,
        room: &str,
        mut member: Member,
        on_first: impl FnOnce(&Arc<str>),
    ) -> Arc<Room> {
        loop {
            if let Some(existing) = self.get(room) {
                match existing.add(member) {
                    Ok(()) => return existing,
                    // Emptied and removed since the lookup: look again.
                    Err(back) => member = back,
                }
            }
            let mut rooms = write(&self.rooms);
            if rooms.contains_key(room) {
                // Created since the lookup: join it without holding the map.
                continue;
            }
            let name: Arc<str> = Arc::from(room);
            let created = Arc::new(Room {
                name: Arc::clone(&name),
                members: RwLock::new(vec![member]),
                removed: AtomicBool::new(false),
            });
            rooms.insert(Arc::clone(&name), Arc::clone(&created));
            on_first(&name);
            return created;
        }
    }

    /// Removes a member; when it was the last, removes the room and runs `on_last` (under the
    /// registry lock, see [`join`](Self::join)). The member leaves under the room's lock only;
    /// the map is locked only when the room is left empty.
    pub(crate) fn leave(
        &self,
        room: &Arc<Room>,
        id: ConnectionId,
        on_last: impl FnOnce(&Arc<str>),
    ) {
        let now_empty = {
            let mut members = write(&room.members);
            if let Some(index) = members.iter().position(|m| m.id == id) {
                members.swap_remove(index);
            }
            if members.capacity() > 4 * members.len().max(4) {
                members.shrink_to_fit();
            }
            members.is_empty()
        };
        if !now_empty {
            return;
        }
        let mut rooms = write(&self.rooms);
        // A join may have come in since; one that comes later sees `removed` (it needs the
        // write lock this read lock keeps out) and creates the room anew. (A room already
        // removed is no longer the one listed under its name.)
        let members = read(&room.members);
        if members.is_empty()
            && rooms
                .get(room.name())
                .is_some_and(|current| Arc::ptr_eq(current, room))
        {
            room.removed.store(true, Ordering::Relaxed);
            rooms.remove(room.name());
            on_last(room.name());
        }
    }

    /// The room, if it has local members.
    pub(crate) fn get(&self, room: &str) -> Option<Arc<Room>> {
        read(&self.rooms).get(room).cloned()
    }

    /// Names of all rooms with local members.
    pub(crate) fn names(&self) -> Vec<String> {
        read(&self.rooms)
            .keys()
            .map(|name| name.to_string())
            .collect()
    }

    /// Number of rooms with local members.
    pub(crate) fn len(&self) -> usize {
        read(&self.rooms).len()
    }

    /// Every room, for shutdown (a snapshot: the map lock is not held while the caller works).
    pub(crate) fn all(&self) -> Vec<Arc<Room>> {
        read(&self.rooms).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;
    use crate::connection::frames::RunBuilder;
    use crate::connection::queue::QueueLimits;
    use crate::message::Message;
    use bytes::Bytes;

    fn member(id: u64) -> Member {
        Member {
            id: ConnectionId(id),
            queue: Arc::new(OutboundQueue::new(QueueLimits {
                max_messages: 8,
                max_bytes: 1024,
                policy: SlowConsumerPolicy::Disconnect,
            })),
        }
    }

    #[test]
    fn first_join_and_last_leave_are_reported_once() {
        let registry = RoomRegistry::default();
        let mut firsts = 0;
        let mut lasts = 0;
        let a = registry.join("r", member(1), |_| firsts += 1);
        let b = registry.join("r", member(2), |_| firsts += 1);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((firsts, registry.len(), a.len()), (1, 1, 2));
        registry.leave(&a, ConnectionId(1), |_| lasts += 1);
        assert_eq!(lasts, 0);
        registry.leave(&b, ConnectionId(2), |_| lasts += 1);
        assert_eq!((lasts, registry.len()), (1, 0));
        assert!(registry.get("r").is_none());
    }

    #[test]
    fn a_join_waiting_behind_a_fan_out_stalls_no_other_room() {
        let registry = Arc::new(RoomRegistry::default());
        let big = registry.join("big", member(1), |_| {});
        registry.join("other", member(2), |_| {});
        // A long fan-out in "big": its read lock held.
        let fan_out = read(&big.members);
        let joiner = {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || {
                registry.join("big", member(3), |_| {});
            })
        };
        // The join is now waiting for "big"'s members.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (found, other) = std::sync::mpsc::channel();
        {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || {
                let _ = found.send(registry.get("other").is_some());
            });
        }
        let looked_up = other.recv_timeout(std::time::Duration::from_secs(2));
        drop(fan_out);
        joiner
            .join()
            .expect("the join completes once the fan-out is done");
        assert_eq!(
            looked_up,
            Ok(true),
            "another room's lookup waited for a fan-out in \"big\""
        );
        assert_eq!(big.len(), 2);
    }

    #[test]
    fn joins_and_leaves_racing_on_one_room_keep_every_member_reachable() {
        use std::sync::atomic::{AtomicI64, Ordering};
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 2000;
        let registry = Arc::new(RoomRegistry::default());
        // Subscribe (+1) and unsubscribe (-1) notices, in the order the registry gives them:
        // never two of a kind in a row, so the running sum stays 0 or 1.
        let notices = Arc::new(AtomicI64::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let registry = Arc::clone(&registry);
                let notices = Arc::clone(&notices);
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        let id = thread * ROUNDS + round;
                        let room = registry.join("r", member(id), |_| {
                            let before = notices.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(before, 0, "two subscribe notices in a row");
                        });
                        // The room a member joined is the one fan-outs find.
                        let current = registry.get("r").expect("a room with a member is listed");
                        assert!(
                            Arc::ptr_eq(&current, &room),
                            "member {id} joined a dropped room"
                        );
                        registry.leave(&room, ConnectionId(id), |_| {
                            let before = notices.fetch_sub(1, Ordering::SeqCst);
                            assert_eq!(before, 1, "two unsubscribe notices in a row");
                        });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no thread panicked");
        }
        assert_eq!(notices.load(Ordering::SeqCst), 0);
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn fan_out_skips_the_excluded_member() {
        let registry = RoomRegistry::default();
        let room = registry.join("r", member(1), |_| {});
        registry.join("r", member(2), |_| {});
        let hi = || [Frames::one(Message::text("hi").encode_frame())];
        let result = room.fan_out(hi, Some(ConnectionId(1)));
        assert_eq!(result.queued, 1);
        let result = room.fan_out(hi, None);
        assert_eq!(result.queued, 2);
    }

    #[test]
    fn a_batch_reaches_every_member_in_order_and_counts_each_delivery() {
        let registry = RoomRegistry::default();
        let room = registry.join("r", member(1), |_| {});
        let second = member(2);
        let queue = Arc::clone(&second.queue);
        registry.join("r", second, |_| {});
        let messages: Vec<Message> = (0..3).map(|i| Message::text(format!("m{i}"))).collect();
        let result = room.fan_out(|| RunBuilder::pack(&messages), Some(ConnectionId(1)));
        assert_eq!(
            result,
            FanOut {
                queued: 3,
                ..FanOut::default()
            }
        );
        let mut taken = std::collections::VecDeque::new();
        let _ = queue.take(&mut taken, false);
        // One run for the three small messages: one queue entry.
        assert_eq!(taken.len(), 1);
        let frames: Vec<Bytes> = taken.into_iter().flat_map(Frames::into_each).collect();
        let expected: Vec<Bytes> = messages.iter().map(Message::encode_frame).collect();
        assert_eq!(frames, expected);
    }

    #[test]
    fn a_batch_that_overflows_a_queue_counts_the_overflow_once() {
        let registry = RoomRegistry::default();
        // `member` queues hold 8 messages and disconnect on overflow.
        let room = registry.join("r", member(1), |_| {});
        let messages: Vec<Message> = (0..12).map(|i| Message::text(format!("m{i}"))).collect();
        let result = room.fan_out(|| RunBuilder::pack(&messages), None);
        assert_eq!(
            result,
            FanOut {
                queued: 8,
                // The overflowing message and the 8 queued ones the disconnect discards; the
                // rest of the batch is for a closing connection.
                dropped: 9,
                too_large: 0,
                disconnected: 1
            }
        );
    }

    #[test]
    fn thousands_of_joins_and_leaves_leave_nothing_behind() {
        let registry = RoomRegistry::default();
        for i in 0..10_000 {
            let room = registry.join(&format!("room-{}", i % 37), member(i), |_| {});
            registry.leave(&room, ConnectionId(i), |_| {});
        }
        assert_eq!(registry.len(), 0);
    }
}
