//! Fan-out beyond this process.
//!
//! The hub always delivers to its local members itself, at once; a broker carries each publish to
//! the other instances and hands what they publish back through the hub's local delivery. With no
//! broker configured the hub is purely in-process ([`Broker::Local`]).
//!
//! The broker is told when a room gets its first local member and when it loses its last one,
//! so that it can subscribe only to rooms this instance has members in.

use std::sync::Arc;

use crate::error::PublishError;
use crate::message::Message;

/// The fan-out backend a hub was built with.
#[derive(Debug, Default)]
pub(crate) enum Broker {
    /// In-process only: local delivery is all there is.
    #[default]
    Local,
}

impl Broker {
    /// A room got its first local member. Called in join order; never blocks.
    pub(crate) fn room_joined(&self, _room: &Arc<str>) {
        match self {
            Self::Local => {}
        }
    }

    /// A room lost its last local member. Called in leave order; never blocks.
    pub(crate) fn room_left(&self, _room: &Arc<str>) {
        match self {
            Self::Local => {}
        }
    }

    /// Hands a message (already delivered locally) to the other instances. Never blocks: a
    /// broker that cannot take it now says so and the caller counts it.
    pub(crate) fn publish(&self, _room: &Arc<str>, _message: &Message) -> Result<(), PublishError> {
        match self {
            Self::Local => Ok(()),
        }
    }

    /// Stops the broker's tasks (after connections have drained).
    pub(crate) async fn shutdown(&self) {
        match self {
            Self::Local => {}
        }
    }
}
