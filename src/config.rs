//! Hub settings and their defaults.
//!
//! Every setting is set through [`HubBuilder`](crate::HubBuilder); this module holds the values
//! and the defaults, each chosen to be safe for a server on the open internet.

use std::time::Duration;

/// Default largest inbound message: 64 KiB (larger → close 1009).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Default largest inbound frame payload: 64 KiB (larger → close 1009).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024;
/// Default socket read buffer: 2 KiB (tungstenite's own default is 128 KiB, which an idle
/// connection would carry forever). Larger inbound messages are read in several calls.
pub const DEFAULT_READ_BUFFER_SIZE: usize = 2 * 1024;
/// Default outbound queue bound in messages, per connection.
pub const DEFAULT_OUTBOUND_MAX_MESSAGES: usize = 1024;
/// Default outbound queue bound in bytes of encoded frames (payload and header), per
/// connection: 4 MiB. Frames are shared between receivers, so this bounds what one slow
/// client can pin, not a copy per client
/// (small messages that arrived together share one buffer of at most 16 KiB; under
/// `DropOldest` a queue can pin one such buffer beyond the bound).
pub const DEFAULT_OUTBOUND_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Default interval between server pings: 30 s.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default time a client has to answer a ping: 20 s.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time to wait for the client's close frame after sending ours (or, after the
/// client's, for our answer to be written): 5 s.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time the server may take to hand over an upgraded socket: 10 s.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time [`Hub::shutdown`](crate::Hub::shutdown) waits for connections to drain: 10 s.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default time a [`RoomAuthorizer`](crate::RoomAuthorizer) has to decide before its request
/// is answered `503` ([`HubLayer::authorize_timeout`](crate::HubLayer::authorize_timeout)):
/// 10 s.
///
/// Long enough for a permission service that is slow but working (a cold connection pool, a
/// retry), which answers in milliseconds to a few hundred. Short enough that an authorizer
/// that never decides (a lost wake-up, a call without a timeout of its own) does not hold its
/// connection place, its HTTP connection and a graceful shutdown of the HTTP server for ever,
/// and that the client hears the hub's `503` and `Retry-After` before the usual reverse proxy
/// timeouts (60 s in nginx and AWS load balancers) answer a bare `504`. It is the same as
/// [`DEFAULT_UPGRADE_TIMEOUT`] and [`DEFAULT_SHUTDOWN_GRACE`].
pub const DEFAULT_AUTHORIZE_TIMEOUT: Duration = Duration::from_secs(10);
/// Stands in for "never", and caps every configured duration that is added to the clock: a
/// configured `Duration::MAX` means "never", not an overflow. A year.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default shortest time between two writes of data to one connection: 4 ms
/// ([`HubBuilder::write_interval`](crate::HubBuilder::write_interval)).
pub const DEFAULT_WRITE_INTERVAL: Duration = Duration::from_millis(4);
/// Default longest the write interval grows to under a steady stream of messages: 12 ms
/// ([`HubBuilder::max_write_interval`](crate::HubBuilder::max_write_interval)).
pub const DEFAULT_MAX_WRITE_INTERVAL: Duration = Duration::from_millis(12);

/// What to do when a client does not read fast enough and its outbound queue is full.
///
/// The queue is bounded both in messages and in bytes
/// ([`HubBuilder::outbound_queue`](crate::HubBuilder::outbound_queue)). Every dropped message is
/// counted in [`HubStats`](crate::HubStats) and logged at most once a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the connection with code [`close_code::SLOW_CONSUMER`](crate::close_code::SLOW_CONSUMER)
    /// (1013, "try again later"), discarding what is queued. The default: a client that
    /// misses messages silently is worse than one that knows it must reconnect and catch up.
    #[default]
    Disconnect,
    /// Keep what is queued and drop the new message.
    DropNewest,
    /// Drop the oldest queued messages to make room for the new one. The connection's writer
    /// holds at most half of the queue's budget at a time (what it holds is already on its way
    /// to the socket and cannot be dropped), so a client that stops reading keeps getting the
    /// newest messages when it resumes.
    DropOldest,
}

/// All hub settings. Built by [`HubBuilder`](crate::HubBuilder).
#[derive(Debug, Clone)]
pub(crate) struct HubConfig {
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) read_buffer_size: usize,
    pub(crate) outbound_max_messages: usize,
    pub(crate) outbound_max_bytes: usize,
    pub(crate) slow_consumer: SlowConsumerPolicy,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) echo_to_sender: bool,
    pub(crate) retention: crate::hub::context::Retention,
    pub(crate) max_room_name_len: usize,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_room_connections: Option<usize>,
    pub(crate) inbound_rate: Option<RateLimit>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) upgrade_timeout: Duration,
    pub(crate) tcp_nodelay: bool,
    pub(crate) write_interval: Duration,
    pub(crate) max_write_interval: Duration,
}

/// A token-bucket rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RateLimit {
    pub(crate) per_second: f64,
    pub(crate) burst: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            outbound_max_messages: DEFAULT_OUTBOUND_MAX_MESSAGES,
            outbound_max_bytes: DEFAULT_OUTBOUND_MAX_BYTES,
            slow_consumer: SlowConsumerPolicy::default(),
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            echo_to_sender: false,
            retention: crate::hub::context::Retention::default(),
            max_room_name_len: crate::route::DEFAULT_MAX_ROOM_NAME_LEN,
            max_connections: None,
            max_room_connections: None,
            inbound_rate: None,
            idle_timeout: None,
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            tcp_nodelay: true,
            write_interval: DEFAULT_WRITE_INTERVAL,
            max_write_interval: DEFAULT_MAX_WRITE_INTERVAL,
        }
    }
}

impl HubConfig {
    /// The tungstenite settings for one socket. tungstenite only ever writes control frames
    /// (data frames bypass it, pre-encoded), so it writes them through at once.
    pub(crate) fn websocket_config(
        &self,
    ) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size))
    }
}
