//! Entry points for the fuzz targets in `fuzz/` and the benchmarks in `benches/`. Not public
//! API: enabled by the `internals` feature only, and may change at any time.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;

use crate::config::SlowConsumerPolicy;
use crate::connection::frames::{Frames, RunBuilder};
use crate::connection::queue::{OutboundQueue, QueueLimits};
use crate::handshake::{Handshake, Subprotocols};
use crate::hub::ConnectionId;
use crate::hub::registry::{Member, Room, RoomRegistry};
use crate::message::Message;
use crate::origin::OriginPolicy;
use crate::rejection::Rejection;
use crate::route::{RoomNameError, RoutePattern, decode_room_segment};

/// Runs every handshake check the layer runs before an upgrade: RFC 6455/8441 validation, the
/// same-origin policy and subprotocol selection (with `chat` and `superchat` supported).
pub fn check_handshake(request: Request<()>) -> Result<(), Rejection> {
    let handshake = Handshake::validate(&request)?;
    let (parts, ()) = request.into_parts();
    OriginPolicy::SameOrigin.check(&parts)?;
    let protocols = Subprotocols {
        supported: vec![
            http::HeaderValue::from_static("chat"),
            http::HeaderValue::from_static("superchat"),
        ],
        required: false,
    };
    let protocol = protocols.select(&parts.headers)?;
    let response = handshake.response(protocol.as_ref());
    assert!(response.status().is_success() || response.status() == 101);
    Ok(())
}

/// Matches `path` against `/ws/{room}` and `/t/{tenant}/chat/{room}` and decodes the room.
pub fn room_from_path(path: &str, max_len: usize) -> Option<Result<String, RoomNameError>> {
    static PATTERNS: std::sync::OnceLock<[RoutePattern; 2]> = std::sync::OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        [
            RoutePattern::parse("/ws/{room}").expect("valid pattern"),
            RoutePattern::parse("/t/{tenant}/chat/{room}").expect("valid pattern"),
        ]
    });
    patterns
        .iter()
        .find_map(|pattern| pattern.matches(path))
        .map(|raw| decode_room_segment(raw, max_len))
}

/// Parses an arbitrary route pattern (must never panic).
pub fn parse_pattern(pattern: &str) -> bool {
    RoutePattern::parse(pattern).is_ok()
}

/// One room with `members` in-process receivers, for measuring local fan-out without sockets.
#[derive(Debug)]
pub struct FanOutFixture {
    room: Arc<Room>,
    queues: Vec<Arc<OutboundQueue>>,
    scratch: VecDeque<Frames>,
}

impl FanOutFixture {
    /// A room of `members` receivers with queues large enough for `burst` messages each.
    pub fn new(members: usize, burst: usize) -> Self {
        let registry = RoomRegistry::default();
        let mut queues = Vec::with_capacity(members);
        let mut room = None;
        for id in 0..members {
            let queue = Arc::new(OutboundQueue::new(QueueLimits {
                max_messages: burst.max(1),
                max_bytes: usize::MAX / 2,
                policy: SlowConsumerPolicy::Disconnect,
            }));
            queues.push(Arc::clone(&queue));
            room = Some(registry.join(
                "bench",
                Member {
                    id: ConnectionId(id as u64),
                    queue,
                },
                |_| {},
            ));
        }
        Self {
            room: room.expect("at least one member"),
            queues,
            scratch: VecDeque::new(),
        }
    }

    /// Encodes `message` once and queues it for every member; returns how many got it.
    pub fn publish(&self, message: &Message) -> u64 {
        self.room
            .fan_out(|| [Frames::one(message.encode_frame())], None)
            .queued
    }

    /// Encodes each of `messages` once and queues them, as one batch, for every member (what
    /// a connection does with the messages one read gave it); returns the deliveries queued.
    pub fn publish_batch(&self, messages: &[Message]) -> u64 {
        self.room
            .fan_out(|| RunBuilder::pack(messages), None)
            .queued
    }

    /// Empties every member's queue, as their writers would.
    pub fn drain(&mut self) {
        for queue in &self.queues {
            // As a writer does: take, write (here: forget), release, until nothing is left.
            while {
                let taken = queue.take(&mut self.scratch, false);
                queue.release_taken(&mut self.scratch);
                taken.more
            } {}
        }
    }
}

/// The frame a message is sent as (encoded once per publish).
pub fn encode_frame(message: &Message) -> Bytes {
    message.encode_frame()
}

/// What a Redis subscriber does with one received envelope: the checks of
/// [`Envelope::decode`](crate::redis::Envelope::decode) (and the signature with `key`), then
/// the message's WebSocket frame built straight from the bytes. Returns the frame's length.
#[cfg(feature = "redis")]
pub fn envelope_to_frame(
    bytes: &[u8],
    key: Option<(&str, &crate::redis::EnvelopeKey)>,
) -> Result<usize, crate::redis::EnvelopeError> {
    let mut runs = RunBuilder::default();
    crate::broker::redis::envelope::decode_frame_into(bytes, key, &mut runs)?;
    Ok(runs.finish().iter().map(Frames::len).sum())
}

/// Places the instance limit counts now: connections from their accepted handshake until
/// their task has ended (a place comes back just after the connection left its room).
pub fn reserved_places(hub: &crate::Hub) -> usize {
    hub.inner()
        .reserved
        .load(std::sync::atomic::Ordering::Acquire)
}
