//! [`ConnectionHandle`]: one connection, reachable from anywhere in the application.

use std::sync::{Arc, Weak};

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::context::ConnectionId;
use super::{Hub, HubInner};
use crate::connection::queue::{OutboundQueue, PushOutcome};
use crate::error::{CloseError, SendError};
use crate::message::Message;

/// The longest close reason, in bytes: a close frame's payload is at most 125 bytes, two of
/// them the code (RFC 6455 §5.5).
pub const MAX_CLOSE_REASON_LEN: usize = 123;

/// A handle to one connection on this instance: send it a message of its own, or close it,
/// from anywhere in the application (a handler, a background task), while it is open.
///
/// Get one from [`ConnectionContext::handle`](crate::ConnectionContext::handle) in a hook,
/// typically `on_connect`, and keep it where the application finds it again (a map from a user
/// or a session to its connections, emptied in `on_disconnect`). Cloning it is cheap. A handle
/// does not keep its connection open, nor anything of it but a small allocation, nor its hub
/// (the hooks, the rooms, the broker's tasks): once the connection has ended, or the hub has
/// gone, [`send`](Self::send) and [`close`](Self::close) say [`Closed`](SendError::Closed).
///
/// A message sent through a handle is a delivery like any other to that connection: it goes
/// through the connection's outbound queue, after what is already queued for it, under the
/// same bounds and [slow-consumer policy](crate::HubBuilder::slow_consumer_policy), and is
/// counted in [`HubStats`](crate::HubStats) (`deliveries`, `dropped_messages`, ...). It
/// reaches that connection only: not its room, not other instances. (To reach a connection on
/// another instance, publish to a room it is in.)
#[derive(Clone)]
pub struct ConnectionHandle {
    /// Weak, as the queue: a handle the application keeps (in a map its own hooks hold, say)
    /// must not keep the hub alive, nor its broker's tasks running.
    hub: Weak<HubInner>,
    id: ConnectionId,
    room: Arc<str>,
    queue: Weak<OutboundQueue>,
}

impl std::fmt::Debug for ConnectionHandle {
    /// The connection, not the hub (whose `Debug` lists every room).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id)
            .field("room", &self.room)
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl ConnectionHandle {
    pub(crate) fn new(
        hub: &Hub,
        id: ConnectionId,
        room: Arc<str>,
        queue: Weak<OutboundQueue>,
    ) -> Self {
        Self {
            hub: Arc::downgrade(&hub.inner),
            id,
            room,
            queue,
        }
    }

    /// The connection's id (the same as its context's).
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The room the connection is in.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// `true` while the connection takes messages: it has not ended and is not closing (for
    /// any reason: [`close`](Self::close), a [shutdown](crate::Hub::shutdown), a timeout, the
    /// client's close). The answer can be out of date as soon as it is returned; `send` says
    /// for sure.
    pub fn is_open(&self) -> bool {
        self.queue.upgrade().is_some_and(|queue| queue.is_open())
    }

    /// Queues `message` for this connection only, after what is already queued for it.
    /// Never waits. Text stays text, binary stays binary.
    ///
    /// Each call encodes the message into a frame of its own, a copy of the payload for this
    /// connection's queue: a large message sent through many handles is held as many times.
    /// To reach every member of a room, [`Hub::publish`](crate::Hub::publish) encodes it once
    /// for all of them.
    ///
    /// `Ok` means the message is queued: it is written unless the connection ends first (the
    /// client goes away, the shutdown grace period runs out). Under
    /// [`SlowConsumerPolicy::DropOldest`](crate::SlowConsumerPolicy::DropOldest), older
    /// messages may have been dropped to make room, as for any delivery.
    ///
    /// # Errors
    ///
    /// - [`SendError::Closed`]: the connection has ended, or is closing (nothing more is
    ///   written to it but what was queued before).
    /// - [`SendError::QueueFull`]: its outbound queue is full and the policy is
    ///   [`DropNewest`](crate::SlowConsumerPolicy::DropNewest), or it is
    ///   [`DropOldest`](crate::SlowConsumerPolicy::DropOldest) and even an emptied queue could
    ///   not take the message (the connection's writer holds the rest of the bounds, on its
    ///   way to the socket); the message is dropped.
    /// - [`SendError::SlowConsumer`]: its outbound queue is full and the policy is
    ///   [`Disconnect`](crate::SlowConsumerPolicy::Disconnect) (the default): the connection
    ///   is being closed with 1013, the message dropped with what was queued.
    /// - [`SendError::TooLarge`]: the message is larger than the outbound queue's whole byte
    ///   bound ([`HubBuilder::outbound_queue`](crate::HubBuilder::outbound_queue)); no
    ///   connection could take it.
    ///
    /// Drops are counted in [`HubStats`](crate::HubStats) and logged at most once a second,
    /// as for every delivery.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let Some(queue) = self.queue.upgrade() else {
            return Err(SendError::Closed);
        };
        // Alive with the queue: the connection that holds the queue holds the hub.
        let Some(hub) = self.hub.upgrade() else {
            return Err(SendError::Closed);
        };
        match hub.push_to_one(&queue, &self.room, &message.into()) {
            PushOutcome::Queued | PushOutcome::QueuedDroppingOldest(_) => Ok(()),
            PushOutcome::Dropped => Err(SendError::QueueFull),
            PushOutcome::TooLarge => Err(SendError::TooLarge),
            PushOutcome::Disconnecting(_) => Err(SendError::SlowConsumer),
            // Discarded: counted as delivered and discarded by the connection's own close,
            // like any delivery to it; the client never sees it.
            PushOutcome::Closed | PushOutcome::Discarded => Err(SendError::Closed),
        }
    }

    /// Closes the connection with `code` and `reason`, after writing what is already queued
    /// for it (a last message [sent](Self::send) just before goes out first). Nothing sent
    /// afterwards is queued. The client gets a close frame with this code and reason; it
    /// answers it, and the connection ends then, or after
    /// [`close_timeout`](crate::HubBuilder::close_timeout) (plus the
    /// [`shutdown_grace`](crate::HubBuilder::shutdown_grace) allowed for the queued data to
    /// go out) if it does not. `on_disconnect` runs as for any other end.
    ///
    /// Codes an application may send: 1000 ([`close_code::NORMAL`](crate::close_code::NORMAL)),
    /// the RFC's other codes that may appear on the wire (1001–1003, 1007–1013), and 3000–4999
    /// (4000–4999 are for applications to define: "banned", "session expired"...).
    ///
    /// # Errors
    ///
    /// - [`CloseError::InvalidCode`]: `code` is one no endpoint may send (below 1000, 1004–1006,
    ///   1014–2999, 5000 and above); nothing is done.
    /// - [`CloseError::ReasonTooLong`]: `reason` is longer than
    ///   [`MAX_CLOSE_REASON_LEN`] (123) bytes; nothing is done.
    /// - [`CloseError::Closed`]: the connection has ended, or is closing already (asked
    ///   before, a shutdown, a timeout, the client's close): it keeps the close it has.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), CloseError> {
        // tungstenite's rule, which its clients apply to what they receive (a code it does
        // not allow is answered as a protocol error): 1014 is among those it does not know.
        if !CloseCode::from(code).is_allowed() {
            return Err(CloseError::InvalidCode(code));
        }
        if reason.len() > MAX_CLOSE_REASON_LEN {
            return Err(CloseError::ReasonTooLong { len: reason.len() });
        }
        match self.queue.upgrade() {
            Some(queue) if queue.request_close(code, reason) => Ok(()),
            _ => Err(CloseError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle goes wherever the application keeps it (a map behind a mutex, another task),
    /// and its errors box into `Box<dyn Error + Send + Sync>`: checked at compile time.
    #[test]
    fn handles_and_their_errors_cross_threads() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        fn boxable<E: std::error::Error + Send + Sync + 'static>() {}
        shareable::<ConnectionHandle>();
        boxable::<SendError>();
        boxable::<CloseError>();
    }
}
