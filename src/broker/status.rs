//! [`BrokerStatus`]: what the fan-out backend is doing, for readiness checks and dashboards.

use std::time::Duration;

/// Which fan-out backend a hub runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerBackend {
    /// In-process only (no broker configured): there is nothing to connect to.
    Local,
    /// Redis pub/sub (`HubBuilder::redis`, feature `redis`).
    Redis,
}

/// A snapshot of the broker's health and counters ([`Hub::broker_status`](crate::Hub::broker_status)).
///
/// For a readiness check, [`connected`](Self::connected) is the one field to look at: it is
/// `true` when this instance can both publish to and hear from the other instances right now.
/// With the in-process backend it is always `true` and every counter stays 0.
///
/// Counters only grow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStatus {
    /// The backend.
    pub backend: BrokerBackend,
    /// `true` when the publisher side is up and every subscriber connection is connected
    /// (having subscribed, when it connected, to every room it had then) and not overdue on its
    /// probe: a probe Redis accepted has not been out longer than the probe timeout.
    pub connected: bool,
    /// `true` when every publisher task has a working connection to Redis: `false` until each
    /// has connected once, and after a publisher task's connection attempt or publish failed,
    /// until it reconnects (a publish that failed because a connection that had worked broke,
    /// while Redis answers a new one at once, does not count: the task goes on with the new
    /// one). While a publisher task is down (its attempt or a publish failed),
    /// [`Hub::publish`](crate::Hub::publish) and
    /// [`Hub::publish_with_backpressure`](crate::Hub::publish_with_backpressure) fail fast with
    /// [`PublishError::BrokerUnavailable`](crate::PublishError::BrokerUnavailable) for the rooms
    /// it owns; before its first attempt has failed, what is published is queued.
    pub publisher_connected: bool,
    /// Subscriber connections configured.
    pub subscriber_connections: usize,
    /// Subscriber connections connected and in sync now.
    pub subscribers_connected: usize,
    /// Rooms whose channel is subscribed now (rooms with local members, once confirmed by Redis).
    pub subscribed_rooms: usize,
    /// Age of the oldest "last successful probe" across subscriber connections: how long ago
    /// every subscriber connection last proved, end to end through Redis, that it receives what
    /// is published. `None` until each of them has done so once since it (re)connected.
    pub last_probe_age: Option<Duration>,
    /// Messages Redis accepted (PUBLISH replied).
    pub published: u64,
    /// Messages not known to be forwarded because Redis was unreachable or too slow, or the
    /// connection they were sent on broke: refused at once while the publisher was down (or,
    /// for `publish_with_backpressure`, when it went down during the wait), queued and then
    /// failed with a pipeline that failed or timed out (or with the queue behind it, when no
    /// new connection could be had at once), refused once the broker stopped at shutdown, or still
    /// queued or being sent when the runtime was dropped without [`Hub::shutdown`]. They are
    /// never retried, so never delivered twice; a pipeline whose reply came too late (or that
    /// was being sent when the runtime went away) may still have been run by Redis, so some of
    /// them may have reached other instances.
    ///
    /// [`Hub::shutdown`]: crate::Hub::shutdown
    pub publish_failures: u64,
    /// Messages refused because the publish queue was full (`Hub::publish`, and clients'
    /// messages with `RedisConfig::client_backpressure(false)`), and waits for room in it that
    /// the caller abandoned (a dropped `publish_with_backpressure` future).
    pub publish_dropped: u64,
    /// Times a connection waited to read its client because the publish queue its room's
    /// messages go through was full: once per wait, and once more each time it was woken for
    /// room that others took first. Nothing is refused or lost: the client's messages wait in
    /// its socket (TCP pushes back on it) and the connection reads on as soon as there is
    /// room. A count that keeps growing means clients send faster than Redis takes messages.
    pub client_reads_paused: u64,
    /// Valid envelopes received from other instances (or emitters) on the room channels this
    /// instance subscribes to, for their local members (a room whose last member left while
    /// its messages were on the way has nobody left to hand them to).
    pub received: u64,
    /// Payloads on room channels that were not valid envelopes, dropped.
    pub invalid_envelopes: u64,
    /// Times a subscriber connection that was up (connected, its rooms subscribed) went down
    /// and was sent back to reconnecting: the connection was lost, it was found starved (see
    /// [`starvations`](Self::starvations)), or its task panicked. Connection attempts that fail
    /// while Redis stays unreachable are not counted again, nor is whether the reconnect has
    /// succeeded yet: [`subscribers_connected`](Self::subscribers_connected) says that.
    pub reconnects: u64,
    /// Times a subscriber connection looked open but was found not to receive, and was
    /// replaced: a probe Redis accepted did not come back within the probe timeout, or Redis
    /// answered the probe's `PUBLISH` with 0 subscribers (the connection is dead on Redis's
    /// side, or the pool and the subscriber client point at different servers; a connection
    /// found so at every attempt is retried with the growing backoff).
    pub starvations: u64,
    /// Panics caught in the broker's background tasks (a publisher or a subscriber
    /// connection's task). Always 0 unless tower-ws-hub or one of its dependencies has a bug:
    /// please report it with the error log line, which carries the panic's message. The task
    /// is not lost: its connection is dropped and replaced as after a connection loss
    /// (counted in [`reconnects`](Self::reconnects) for a subscriber), and a publisher's batch
    /// that was being sent is counted in [`publish_failures`](Self::publish_failures).
    pub task_panics: u64,
    /// The most recent Redis error, if any happened since start.
    pub last_error: Option<String>,
}

impl BrokerStatus {
    /// The status of the in-process backend: connected, all counters 0.
    pub(crate) fn local() -> Self {
        Self {
            backend: BrokerBackend::Local,
            connected: true,
            publisher_connected: true,
            subscriber_connections: 0,
            subscribers_connected: 0,
            subscribed_rooms: 0,
            last_probe_age: None,
            published: 0,
            publish_failures: 0,
            publish_dropped: 0,
            client_reads_paused: 0,
            received: 0,
            invalid_envelopes: 0,
            reconnects: 0,
            task_panics: 0,
            starvations: 0,
            last_error: None,
        }
    }
}
