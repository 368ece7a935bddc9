//! Error types.

use crate::route::RoomNameError;

/// Why [`Hub::publish`](crate::Hub::publish) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The room name is not valid (empty, too long, or with control characters).
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
            Self::InvalidRoom(error) => write!(f, "cannot publish: {error}"),
            Self::ShuttingDown => f.write_str("cannot publish: the hub is shutting down"),
            Self::BrokerUnavailable {
                delivered_locally,
                reason,
            } => write!(
                f,
                "delivered to {delivered_locally} local member(s), but not to other instances: \
                 {reason} (see Hub::broker_status)"
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
