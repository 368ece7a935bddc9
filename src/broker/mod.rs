//! Fan-out beyond this process.
//!
//! The hub always delivers to its local members itself, at once; a broker carries each publish to
//! the other instances and hands what they publish back through the hub's local delivery
//! (`HubInner::deliver_from_broker`). With no broker configured the hub is purely in-process
//! ([`Broker::Local`]); with feature `redis` and `HubBuilder::redis` it is [`Broker::Redis`].
//!
//! The broker is told when a room gets its first local member and when it loses its last one,
//! so that it can subscribe only to rooms this instance has members in.

#[cfg(feature = "redis")]
pub mod redis;
pub(crate) mod status;

use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::Duration;

use crate::hub::HubInner;
use crate::message::Message;

pub use status::{BrokerBackend, BrokerStatus};

/// Broker settings collected by the builder.
#[derive(Debug, Default)]
pub(crate) struct BrokerConfig {
    /// Set by `HubBuilder::redis`.
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<redis::RedisConfig>,
}

/// The fan-out backend a hub was built with.
#[derive(Debug, Default)]
pub(crate) enum Broker {
    /// In-process only: local delivery is all there is.
    #[default]
    Local,
    /// Redis pub/sub between instances.
    #[cfg(feature = "redis")]
    Redis(redis::RedisBroker),
}

impl Broker {
    /// The broker `config` asks for, its tasks started (they only hold `hub` weakly).
    pub(crate) fn start(config: BrokerConfig, hub: &Weak<HubInner>) -> Self {
        #[cfg(feature = "redis")]
        if let Some(redis) = config.redis {
            return Self::Redis(redis::RedisBroker::start(redis, hub));
        }
        let _ = (config, hub);
        Self::Local
    }

    /// A room got its first local member. Called in join order; never blocks.
    pub(crate) fn room_joined(&self, room: &Arc<str>) {
        match self {
            Self::Local => {}
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.room_joined(room),
        }
        let _ = room;
    }

    /// A room lost its last local member. Called in leave order; never blocks.
    pub(crate) fn room_left(&self, room: &Arc<str>) {
        match self {
            Self::Local => {}
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.room_left(room),
        }
        let _ = room;
    }

    /// Hands a message (already delivered locally) to the other instances. Never blocks: a
    /// broker that cannot take it now says so and the caller counts it.
    /// `Err(reason)` when the broker cannot take it now.
    pub(crate) fn publish(&self, room: &Arc<str>, message: &Message) -> Result<(), String> {
        match self {
            Self::Local => {
                let _ = (room, message);
                Ok(())
            }
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.publish(room, message),
        }
    }

    /// How many more of a client's messages for `room` [`publish`](Self::publish) would take
    /// now without refusing one for lack of room; `None` when the client is not to wait for
    /// room: in-process, Redis down (then it refuses everything at once, room or not), or
    /// `RedisConfig::client_backpressure` off.
    pub(crate) fn room_for(&self, room: &str) -> Option<usize> {
        match self {
            Self::Local => {
                let _ = room;
                None
            }
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.room_for(room),
        }
    }

    /// Hands over as many of a client's `messages` (already delivered locally) as the broker
    /// has room for, from the front, and says how many (0 when its queue is full): the rest
    /// wait for room ([`room_for`](Self::room_for), [`park`](Self::park)). `None` when the
    /// client is not to wait for room (`room_for` is `None`): [`publish`](Self::publish) each.
    pub(crate) fn publish_reserved(&self, room: &Arc<str>, messages: &[Message]) -> Option<usize> {
        match self {
            Self::Local => {
                let _ = (room, messages);
                None
            }
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.publish_reserved(room, messages),
        }
    }

    /// Wakes `waker` once [`room_for`](Self::room_for) may have grown (or become `None`).
    /// Look again after this returns: room freed just before it woke nobody.
    pub(crate) fn park(&self, room: &str, waker: Waker) {
        match self {
            Self::Local => {
                // Never full: `room_for` is always `None`. Wake at once rather than never.
                let _ = room;
                waker.wake();
            }
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.park(room, waker),
        }
    }

    /// [`publish`](Self::publish), but waits while the broker's queue is full instead of
    /// refusing; still refuses at once when the broker is down. Never called from a
    /// connection's task.
    pub(crate) async fn publish_waiting(
        &self,
        room: &Arc<str>,
        message: &Message,
    ) -> Result<(), String> {
        match self {
            Self::Local => {
                let _ = (room, message);
                Ok(())
            }
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.publish_waiting(room, message).await,
        }
    }

    /// Stops the broker's tasks (after connections have drained).
    pub(crate) async fn shutdown(&self) {
        match self {
            Self::Local => {}
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.shutdown().await,
        }
    }

    /// Health and counters, for readiness checks.
    pub(crate) fn status(&self) -> BrokerStatus {
        match self {
            Self::Local => BrokerStatus::local(),
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.status(),
        }
    }
}

/// Why [`HubBuilder::build_connected`](crate::HubBuilder::build_connected) gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConnectError {
    /// How long it waited.
    pub waited: Duration,
    /// The broker's status when it gave up (`last_error` says what went wrong).
    pub status: BrokerStatus,
}

impl std::fmt::Display for BrokerConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the broker did not connect within {:?} ({} of {} subscriber connections up, \
             publisher {})",
            self.waited,
            self.status.subscribers_connected,
            self.status.subscriber_connections,
            if self.status.publisher_connected {
                "up"
            } else {
                "down"
            }
        )?;
        if let Some(error) = &self.status.last_error {
            write!(f, ": {error}")?;
        }
        f.write_str(
            ". Check that Redis runs at the configured URL and accepts this client (password, \
             ACL user, database), or use HubBuilder::build to start without waiting (the hub \
             then connects in the background)",
        )
    }
}

impl std::error::Error for BrokerConnectError {}
