//! [`RoomRegistry`]: which connections are in which room, and local fan-out.
//!
//! The registry map is locked only to join, leave and look a room up; fan-out runs under the
//! room's own read lock and only pushes into bounded queues (it never touches a socket), so a
//! burst in one room never stalls another and a slow client never stalls a room.

use std::collections::HashMap;
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
            PushOutcome::Queued => self.queued += frames,
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
    /// Adds a member to a room, creating the room if needed. Returns the room and whether this
    /// member is the room's first (the moment to subscribe to it elsewhere). `on_first` runs
    /// under the registry lock, so that subscribe and unsubscribe notices keep their order.
    pub(crate) fn join(
        &self,
        room: &str,
        member: Member,
        on_first: impl FnOnce(&Arc<str>),
    ) -> Arc<Room> {
        let mut rooms = write(&self.rooms);
        if let Some(existing) = rooms.get(room) {
            write(&existing.members).push(member);
            return Arc::clone(existing);
        }
        let name: Arc<str> = Arc::from(room);
        let created = Arc::new(Room {
            name: Arc::clone(&name),
            members: RwLock::new(vec![member]),
        });
        rooms.insert(Arc::clone(&name), Arc::clone(&created));
        on_first(&name);
        created
    }

    /// Removes a member; when it was the last, removes the room and runs `on_last` (under the
    /// registry lock, see [`join`](Self::join)).
    pub(crate) fn leave(
        &self,
        room: &Arc<Room>,
        id: ConnectionId,
        on_last: impl FnOnce(&Arc<str>),
    ) {
        let mut rooms = write(&self.rooms);
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
        if now_empty
            && rooms
                .get(room.name())
                .is_some_and(|current| Arc::ptr_eq(current, room))
        {
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
