//! Error types.

use crate::route::RoomNameError;

/// Why [`Hub::publish`](crate::Hub::publish) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The room name is not valid (empty, too long, with control characters, or `.` or `..`:
    /// see [`RoomNameError`]).
    InvalidRoom(RoomNameError),
    /// The hub is shutting down and takes no more messages.
    ShuttingDown,
    /// Local members got the message, but it could not be handed to the cross-instance broker
    /// (e.g. Redis is down or its publish queue is full). Other instances will not see it.
    BrokerUnavailable {
        /// Local members the message was queued for anyway.
        delivered_locally: usize,
        /// Why the broker refused it.
        reason: String,
    },
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidRoom(error @ RoomNameError::TooLong { .. }) => write!(
                f,
                "cannot publish: {error} (the limit is HubBuilder::max_room_name_len)"
            ),
            Self::InvalidRoom(error) => write!(f, "cannot publish: {error}"),
            Self::ShuttingDown => f.write_str("cannot publish: the hub is shutting down"),
            Self::BrokerUnavailable {
                delivered_locally,
                reason,
            } => write!(
                f,
                "delivered to {delivered_locally} local member(s), but not to other instances: \
                 {reason}. Do not publish it again: local members would get it twice. \
                 Hub::broker_status says what the broker is doing; \
                 Hub::publish_with_backpressure waits for room in a full publish queue \
                 instead of failing"
            ),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidRoom(error) => Some(error),
            _ => None,
        }
    }
}

impl From<RoomNameError> for PublishError {
    fn from(error: RoomNameError) -> Self {
        Self::InvalidRoom(error)
    }
}

/// Why [`ConnectionHandle::send`](crate::ConnectionHandle::send) did not queue a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection has ended or is closing: forget the handle (`on_disconnect` runs, or
    /// has run, for it).
    Closed,
    /// The connection's outbound queue is full and the policy is
    /// [`SlowConsumerPolicy::DropNewest`](crate::SlowConsumerPolicy::DropNewest), or it is
    /// [`SlowConsumerPolicy::DropOldest`](crate::SlowConsumerPolicy::DropOldest) and even an
    /// emptied queue could not take this message (the connection's writer holds the rest of
    /// the bounds): this message was dropped. The client reads more slowly than it is sent
    /// to; later messages may fit.
    QueueFull,
    /// The connection's outbound queue overflowed under
    /// [`SlowConsumerPolicy::Disconnect`](crate::SlowConsumerPolicy::Disconnect): the
    /// connection is being closed with 1013, and this message was dropped with what was
    /// queued.
    SlowConsumer,
    /// The message is larger than the outbound queue's whole byte bound: no connection could
    /// take it. Raise `max_bytes` in
    /// [`HubBuilder::outbound_queue`](crate::HubBuilder::outbound_queue), or send less.
    TooLarge,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Closed => {
                "not sent: the connection is closed or closing; drop this handle (on_disconnect \
                 runs, or has run, for it)"
            }
            Self::QueueFull => {
                "not sent: the connection's outbound queue is full (the client reads more \
                 slowly than it is sent to); the message was dropped"
            }
            Self::SlowConsumer => {
                "not sent: the connection's outbound queue overflowed, and the connection is \
                 being closed as a slow consumer (1013)"
            }
            Self::TooLarge => {
                "not sent: the message is larger than the outbound queue's byte bound; raise \
                 max_bytes in HubBuilder::outbound_queue"
            }
        })
    }
}

impl std::error::Error for SendError {}

/// Why [`ConnectionHandle::close`](crate::ConnectionHandle::close) did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseError {
    /// The connection has ended, or is closing already (with the code it has).
    Closed,
    /// No endpoint may send this close code (RFC 6455 §7.4): use 1000, another of the RFC's
    /// codes that may appear on the wire, or one of 3000–4999 (4000–4999 are for
    /// applications).
    InvalidCode(u16),
    /// The reason is longer than a close frame can carry (123 bytes,
    /// [`MAX_CLOSE_REASON_LEN`](crate::MAX_CLOSE_REASON_LEN)).
    ReasonTooLong {
        /// The reason's length, in bytes.
        len: usize,
    },
}

impl std::fmt::Display for CloseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("not closed: the connection is closed or closing already"),
            Self::InvalidCode(code) => write!(
                f,
                "not closed: {code} is not a close code an endpoint may send; use 1000, \
                 1001-1003, 1007-1013, or 3000-4999 (4000-4999 are for applications)"
            ),
            Self::ReasonTooLong { len } => write!(
                f,
                "not closed: the reason is {len} bytes; a close frame carries at most {} bytes \
                 of reason",
                crate::MAX_CLOSE_REASON_LEN
            ),
        }
    }
}

impl std::error::Error for CloseError {}
