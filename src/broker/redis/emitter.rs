//! [`Emitter`]: publish to a room from a process that is not a hub.

use std::sync::Arc;

use bytes::Bytes;
use deadpool_redis::redis::{self, RedisResult, aio::ConnectionLike};

use super::config::DEFAULT_CHANNEL_PREFIX;
use super::envelope::{Envelope, EnvelopeKey, InstanceId};
use crate::message::Message;

/// Publishes messages to rooms through Redis from anywhere: a worker, a cron job, another
/// service. Every hub instance with members in the room delivers the message to them.
///
/// It is only a codec and a channel name: it works with any Redis connection (a pooled one, a
/// multiplexed one) and keeps no state. Messages go out with origin
/// [`InstanceId::EXTERNAL`], so every instance, including one in the same process, delivers
/// them.
///
/// ```no_run
/// use tower_ws_hub::Message;
/// use tower_ws_hub::redis::Emitter;
///
/// # async fn run(pool: tower_ws_hub::redis::deadpool_redis::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let emitter = Emitter::new(); // the hubs' default prefix
/// let mut connection = pool.get().await?;
/// let instances = emitter.emit(&mut connection, "lobby", Message::text("maintenance at 5")).await?;
/// println!("{instances} instance(s) have members in lobby");
/// # Ok(()) }
/// ```
///
/// The room name is not checked here; the hubs only subscribe to valid ones.
#[derive(Debug, Clone)]
pub struct Emitter {
    prefix: Arc<str>,
    key: Option<EnvelopeKey>,
}

impl Default for Emitter {
    fn default() -> Self {
        Self::new()
    }
}

impl Emitter {
    /// An emitter for hubs using the default prefix,
    /// [`DEFAULT_CHANNEL_PREFIX`](super::DEFAULT_CHANNEL_PREFIX).
    pub fn new() -> Self {
        Self::with_prefix(DEFAULT_CHANNEL_PREFIX)
    }

    /// An emitter for hubs configured with
    /// [`RedisConfig::channel_prefix`](super::RedisConfig::channel_prefix)`(prefix)`.
    ///
    /// # Panics
    ///
    /// As `channel_prefix`: if `prefix` is empty or contains `:` or `#` (no hub can have such
    /// a prefix; `chat:staging` would reach room `staging:…` of the hubs using `chat`).
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        super::config::check_channel_prefix(&prefix);
        Self {
            prefix: Arc::from(prefix),
            key: None,
        }
    }

    /// Signs what it emits with `key`, for hubs configured with the same
    /// [`RedisConfig::signing_key`](super::RedisConfig::signing_key) (they drop unsigned
    /// envelopes). Default: unsigned.
    #[must_use]
    pub fn signing_key(mut self, key: EnvelopeKey) -> Self {
        self.key = Some(key);
        self
    }

    /// The channel of `room`: `{prefix}:{room}`.
    pub fn channel(&self, room: &str) -> String {
        format!("{}:{room}", self.prefix)
    }

    /// The bytes to publish for `message` in `room` (an envelope with the external origin,
    /// signed for the room's channel if the emitter has a key).
    pub fn envelope(&self, room: &str, message: &Message) -> Bytes {
        let envelope = Envelope::new(InstanceId::EXTERNAL, message.clone());
        match &self.key {
            Some(key) => envelope.encode_signed(&self.channel(room), key),
            None => envelope.encode(),
        }
    }

    /// Publishes `message` to `room`. Returns what Redis returns: how many subscriber
    /// connections received it (0 when no instance has members in the room).
    ///
    /// # Errors
    ///
    /// Whatever Redis or the connection reports.
    pub async fn emit<C: ConnectionLike + Send>(
        &self,
        connection: &mut C,
        room: &str,
        message: impl Into<Message>,
    ) -> RedisResult<usize> {
        let bytes = self.envelope(room, &message.into());
        redis::cmd("PUBLISH")
            .arg(self.channel(room))
            .arg(&bytes[..])
            .query_async(connection)
            .await
    }
}
