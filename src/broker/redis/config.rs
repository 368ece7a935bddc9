//! [`RedisConfig`]: where Redis is and how the hub uses it, with every default.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::redis::AsyncConnectionConfig;
use deadpool_redis::{Manager, Pool, Runtime};

use super::envelope::EnvelopeKey;
use crate::config::FAR_FUTURE;
use crate::sync::lock;

/// Default channel prefix: room `R` is published on channel `tower-ws-hub:R`.
pub const DEFAULT_CHANNEL_PREFIX: &str = "tower-ws-hub";
/// Default number of dedicated subscriber connections: 2.
pub const DEFAULT_SUBSCRIBER_CONNECTIONS: usize = 2;
/// Default number of publisher tasks (each owns the rooms that hash to it): 2.
pub const DEFAULT_PUBLISHER_TASKS: usize = 2;
/// Default publish queue bound, per publisher task, in messages: 4096.
pub const DEFAULT_PUBLISH_QUEUE: usize = 4096;
/// Default largest pipeline, in PUBLISH commands: 256 (a pipeline is also cut at 1 MiB of
/// payload).
pub const DEFAULT_MAX_PIPELINE: usize = 256;
/// Default interval between probes on each subscriber connection: 1 s.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Default time a published probe has to come back before its subscriber connection is
/// declared starved and replaced: 2 s.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default first reconnect delay: 50 ms (doubling per failed attempt, with jitter).
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Default longest reconnect delay: 500 ms (so that service resumes well within 2 s of Redis
/// coming back).
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_millis(500);
/// Default time limit for one Redis operation (connect, pool checkout, pipeline, subscribe):
/// 1 s.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a [`RedisConfig`] could not be made from a URL.
#[derive(Debug)]
pub struct RedisConfigError {
    message: String,
}

impl fmt::Display for RedisConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Redis configuration: {}", self.message)
    }
}

impl std::error::Error for RedisConfigError {}

/// Cross-instance fan-out through Redis pub/sub: where Redis is, and how the hub uses it.
///
/// Publishing goes through a [`deadpool_redis::Pool`] (yours, if you already have one).
/// Subscribing cannot: a pooled connection cannot enter subscriber mode, so the hub opens its
/// own dedicated subscriber connections from a [`redis::Client`](deadpool_redis::redis::Client)
/// that points at the same Redis.
///
/// ```no_run
/// use tower_ws_hub::Hub;
/// use tower_ws_hub::redis::{RedisConfig, deadpool_redis};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Everything from one URL: the hub makes its own pool and subscriber connections.
/// let config = RedisConfig::from_url("redis://127.0.0.1:6379")?
///     .channel_prefix("chat")
///     .subscriber_connections(4);
///
/// // Or reuse the application's pool; subscriber connections need a client (pooled
/// // connections cannot subscribe).
/// let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379")
///     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
/// let client = deadpool_redis::redis::Client::open("redis://127.0.0.1:6379")?;
/// let shared = RedisConfig::from_pool(pool, client);
///
/// // Returns at once and connects in the background (see `HubBuilder::build_connected`).
/// let hub = Hub::builder().redis(config).build();
/// # drop((hub, shared));
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisConfig {
    pub(crate) pool: Pool,
    pub(crate) subscriber_client: deadpool_redis::redis::Client,
    pub(crate) channel_prefix: String,
    pub(crate) subscriber_connections: usize,
    pub(crate) publisher_tasks: usize,
    pub(crate) publish_queue: usize,
    pub(crate) max_pipeline: usize,
    pub(crate) probe_interval: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) signing_key: Option<EnvelopeKey>,
    pub(crate) client_backpressure: bool,
    /// `Some` when the pool is [`from_url`](RedisConfig::from_url)'s own: the sum of what the
    /// hubs started with this config (and its clones, which share the pool) can use at once;
    /// see [`reserve_pool`](RedisConfig::reserve_pool).
    pub(crate) pool_reserved: Option<Arc<Mutex<usize>>>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client's connection info may hold a password: show where, not how.
        let addr = self.subscriber_client.get_connection_info().addr();
        f.debug_struct("RedisConfig")
            .field("subscriber_addr", &addr.to_string())
            .field("pool", &self.pool.status())
            .field("channel_prefix", &self.channel_prefix)
            .field("subscriber_connections", &self.subscriber_connections)
            .field("publisher_tasks", &self.publisher_tasks)
            .field("publish_queue", &self.publish_queue)
            .field("max_pipeline", &self.max_pipeline)
            .field("probe_interval", &self.probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("operation_timeout", &self.operation_timeout)
            .field("signed", &self.signing_key.is_some())
            .field("client_backpressure", &self.client_backpressure)
            .finish()
    }
}

/// Panics unless `prefix` can be a channel prefix (see [`RedisConfig::channel_prefix`]).
pub(crate) fn check_channel_prefix(prefix: &str) {
    assert!(!prefix.is_empty(), "channel_prefix must not be empty");
    assert!(
        !prefix.contains([':', '#']),
        "channel_prefix {prefix:?} contains ':' or '#', which would let another prefix's \
         channels overlap with its own (room names may contain ':'); use e.g. '-' instead"
    );
}

impl RedisConfig {
    /// The database number the subscriber connections select, if it is not 0 while the channel
    /// prefix is the default: the sign of a deployment that counts on its database number to
    /// keep it apart from others on the same Redis, which it does not for pub/sub channels.
    pub(crate) fn database_with_default_prefix(&self) -> Option<i64> {
        let db = database(&self.subscriber_client);
        (db != 0 && self.channel_prefix == DEFAULT_CHANNEL_PREFIX).then_some(db)
    }

    /// Uses the Redis at `url` (e.g. `redis://127.0.0.1:6379`, `redis://:password@host/0`) for
    /// everything: a new pool for publishing and dedicated subscriber connections. Nothing
    /// connects yet.
    ///
    /// The pool has room for what the hub uses at once, whatever the machine: one connection
    /// per [publisher task](Self::publisher_tasks) and one per
    /// [subscriber connection](Self::subscriber_connections) (for its probes), made by each
    /// hub as it starts rather than by deadpool's default of twice the CPU count. Clones of
    /// this config share the pool, and each hub built with one adds its share and keeps it
    /// (connections are only opened when used).
    ///
    /// The pool's connections have no time limits of their own (redis-rs would otherwise give
    /// up on a reply after 500 ms and on connecting after 1 s), so that
    /// [`operation_timeout`](Self::operation_timeout) is the one limit on every operation.
    ///
    /// **A database number in the URL (`redis://host/3`) does not keep deployments apart.**
    /// It selects keys, and the hub uses none: its rooms are pub/sub channels, which Redis
    /// shares between all the databases of a server. Two deployments on one Redis that
    /// differ only by database number (staging on `/1`, production on `/0`, say) receive each
    /// other's room messages. Give each deployment its own
    /// [`channel_prefix`](Self::channel_prefix); a hub whose URL names a database other than 0
    /// while it keeps the default prefix logs a warning at start.
    ///
    /// # Errors
    ///
    /// If `url` is not a valid Redis URL, or names a negative database number.
    pub fn from_url(url: &str) -> Result<Self, RedisConfigError> {
        let invalid = |error: deadpool_redis::redis::RedisError| RedisConfigError {
            message: format!(
                "{error} (expected redis://[[user]:password@]host[:port][/database], or \
                 redis+unix:///path/to/socket)"
            ),
        };
        let client = deadpool_redis::redis::Client::open(url).map_err(invalid)?;
        let db = database(&client);
        if db < 0 {
            // redis-rs parses it; Redis would refuse the SELECT at every connection attempt,
            // retried for ever instead of failing here.
            return Err(RedisConfigError {
                message: format!(
                    "database number {db} in the URL: Redis numbers its databases from 0"
                ),
            });
        }
        let unlimited = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(None);
        let manager = Manager::new_with_config(url, unlimited).map_err(invalid)?;
        // Sized by each hub at start (`reserve_pool`), not by deadpool's default of twice the
        // CPU count, which has nothing to do with what the hub uses.
        let pool = Pool::builder(manager)
            .runtime(Runtime::Tokio1)
            .max_size(0)
            .build()
            .map_err(|error| RedisConfigError {
                message: error.to_string(),
            })?;
        Ok(Self {
            pool_reserved: Some(Arc::default()),
            ..Self::from_pool(pool, client)
        })
    }

    /// The most pooled connections a hub with this config uses at once: one per publisher
    /// task (kept while it has messages to send) and one per subscriber connection (for its
    /// probe's `PUBLISH`, briefly).
    pub(crate) fn pool_connections_used(&self) -> usize {
        self.publisher_tasks + self.subscriber_connections
    }

    /// Makes room in `from_url`'s pool for one more hub started with this config: its
    /// [`pool_connections_used`](Self::pool_connections_used) on top of what earlier hubs took.
    /// `false` for a pool of the caller's ([`from_pool`](Self::from_pool)), sized by them.
    pub(crate) fn reserve_pool(&self) -> bool {
        let Some(reserved) = &self.pool_reserved else {
            return false;
        };
        let mut reserved = lock(reserved);
        *reserved += self.pool_connections_used();
        self.pool.resize(*reserved);
        true
    }

    /// Publishes through an existing pool (shared with the application, if you like) and opens
    /// subscriber connections from `subscriber_client`, which must point at the same Redis (a
    /// pooled connection cannot subscribe).
    ///
    /// The hub holds at most one pooled connection per publisher task, which keeps it between
    /// batches and gives it back after a second without messages to send, and briefly one per
    /// probe. Size the pool for that (`publisher_tasks + subscriber_connections`) plus what
    /// the application takes from it: a publisher task that gets no connection within
    /// [`operation_timeout`](Self::operation_timeout) counts as down, and its rooms' messages
    /// fail, until it gets one. Count every hub that shares the pool. A hub whose pool's
    /// `max_size` is below its own `publisher_tasks + subscriber_connections` logs a warning
    /// at start.
    ///
    /// The pool's own connection settings apply on top of
    /// [`operation_timeout`](Self::operation_timeout), whichever is shorter: a pool made with
    /// `deadpool_redis::Config::create_pool` gives up on a reply after redis-rs's default
    /// 500 ms. To make `operation_timeout` the only limit, build the pool from a
    /// `deadpool_redis::Manager::new_with_config` whose `AsyncConnectionConfig` has no response
    /// and connection timeouts, as [`from_url`](Self::from_url) does.
    pub fn from_pool(pool: Pool, subscriber_client: deadpool_redis::redis::Client) -> Self {
        Self {
            pool,
            subscriber_client,
            channel_prefix: DEFAULT_CHANNEL_PREFIX.to_owned(),
            subscriber_connections: DEFAULT_SUBSCRIBER_CONNECTIONS,
            publisher_tasks: DEFAULT_PUBLISHER_TASKS,
            publish_queue: DEFAULT_PUBLISH_QUEUE,
            max_pipeline: DEFAULT_MAX_PIPELINE,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            signing_key: None,
            client_backpressure: true,
            pool_reserved: None,
        }
    }

    /// Prefix of every channel: room `R` is channel `{prefix}:R`; probes use
    /// `{prefix}#probe:{instance}:{n}`. Instances that should form one hub need the same prefix;
    /// different prefixes keep several applications apart on one Redis. Default:
    /// [`DEFAULT_CHANNEL_PREFIX`] (`"tower-ws-hub"`).
    ///
    /// The prefix is what keeps deployments apart on a shared Redis, not the database number:
    /// pub/sub channels are global to a Redis server, whatever database a connection selected
    /// (`redis://host/3`), so two deployments (production and staging, two applications) that
    /// share a Redis and differ only by database number receive each other's room messages.
    /// Give each one its own prefix, e.g. `chat-production` and `chat-staging`. A hub whose
    /// Redis URL names a database other than 0 and that keeps the default prefix logs a
    /// warning at start.
    ///
    /// The prefix may not contain `:` or `#`: room names may contain `:`, so with prefixes
    /// `chat` and `chat:staging`, room `staging:lobby` of the first would be room `lobby` of
    /// the second (both `chat:staging:lobby`). Use `chat-staging`, say.
    ///
    /// A Redis ACL user for the hubs needs both channel patterns, `{prefix}:*` and
    /// `{prefix}#probe:*`: without the second, no subscriber connection can subscribe to its
    /// probe channel and the hub never connects (README, "Scaling out").
    ///
    /// # Panics
    ///
    /// If `prefix` is empty or contains `:` or `#`.
    pub fn channel_prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        check_channel_prefix(&prefix);
        self.channel_prefix = prefix;
        self
    }

    /// Dedicated subscriber connections; rooms are spread over them by hash, each is read by
    /// its own task. Default: [`DEFAULT_SUBSCRIBER_CONNECTIONS`] (2).
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn subscriber_connections(mut self, n: usize) -> Self {
        assert!(n > 0, "subscriber_connections must be at least 1");
        self.subscriber_connections = n;
        self
    }

    /// Publisher tasks; each owns the rooms that hash to it, so a room's messages always leave
    /// in order on one connection at a time. Default: [`DEFAULT_PUBLISHER_TASKS`] (2).
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn publisher_tasks(mut self, n: usize) -> Self {
        assert!(n > 0, "publisher_tasks must be at least 1");
        self.publisher_tasks = n;
        self
    }

    /// Messages waiting to be published, per publisher task. When it is full,
    /// [`Hub::publish`](crate::Hub::publish) fails at once
    /// ([`PublishError::BrokerUnavailable`](crate::PublishError::BrokerUnavailable), counted in
    /// `publish_dropped`); local members got the message regardless. Clients whose messages go
    /// through it are not read until it has room again, so their messages wait in their
    /// sockets instead of being refused (see [`client_backpressure`](Self::client_backpressure)).
    /// [`Hub::publish_with_backpressure`](crate::Hub::publish_with_backpressure) waits instead,
    /// once waiting publishes fill three quarters of it (at least one message), so that a bulk
    /// publisher leaves the last quarter to the publishes that never wait. Default:
    /// [`DEFAULT_PUBLISH_QUEUE`] (4096).
    ///
    /// # Panics
    ///
    /// If `messages` is 0 or above [`tokio::sync::Semaphore::MAX_PERMITS`] (`usize::MAX >> 3`,
    /// the most a tokio channel can hold).
    pub fn publish_queue(mut self, messages: usize) -> Self {
        assert!(messages > 0, "publish_queue must be at least 1");
        assert!(
            messages <= tokio::sync::Semaphore::MAX_PERMITS,
            "publish_queue must be at most {} (tokio::sync::Semaphore::MAX_PERMITS)",
            tokio::sync::Semaphore::MAX_PERMITS
        );
        self.publish_queue = messages;
        self
    }

    /// Most PUBLISH commands sent in one pipeline (one round trip). Default:
    /// [`DEFAULT_MAX_PIPELINE`] (256).
    ///
    /// # Panics
    ///
    /// If `commands` is 0.
    pub fn max_pipeline(mut self, commands: usize) -> Self {
        assert!(commands > 0, "max_pipeline must be at least 1");
        self.max_pipeline = commands;
        self
    }

    /// How often each subscriber connection proves it still receives: it publishes a probe on
    /// its own probe channel and waits for it to come back; one that does not return within
    /// `timeout` (or that Redis says nobody is subscribed to) gets the connection replaced.
    /// This also bounds how far behind a subscriber connection may fall: if its task were ever
    /// more than `timeout` behind Redis, the probe would be late and the backlog dropped with the
    /// connection, rather than memory and latency growing without end. Default:
    /// [`DEFAULT_PROBE_INTERVAL`] (1 s) and [`DEFAULT_PROBE_TIMEOUT`] (2 s).
    ///
    /// A duration too long to add to the clock (`Duration::MAX`) means "never", as for the
    /// hub's own timeouts: either is capped at a year.
    ///
    /// # Panics
    ///
    /// If either duration is zero.
    pub fn probe(mut self, interval: Duration, timeout: Duration) -> Self {
        assert!(
            !interval.is_zero() && !timeout.is_zero(),
            "probe interval and timeout must be positive"
        );
        // Both are added to the clock (the probe's tick, its deadline): `Duration::MAX` would
        // overflow there and end the subscriber connection's task.
        self.probe_interval = interval.min(FAR_FUTURE);
        self.probe_timeout = timeout.min(FAR_FUTURE);
        self
    }

    /// Reconnect delays: the first retry waits about `min`, each failure doubles it up to
    /// `max`; every delay is jittered (a random value between half and all of it) so that many
    /// instances do not reconnect in lockstep. Default: [`DEFAULT_RECONNECT_MIN`] (50 ms) to
    /// [`DEFAULT_RECONNECT_MAX`] (500 ms).
    ///
    /// # Panics
    ///
    /// If `min` is zero or greater than `max`.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        assert!(
            !min.is_zero() && min <= max,
            "reconnect backoff needs 0 < min <= max"
        );
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// Signs every envelope this instance publishes with `key` (HMAC-SHA256 over the channel,
    /// header and payload) and **drops every envelope that is not signed with it**: only
    /// processes holding the key can speak in rooms through Redis. Every instance of one hub
    /// needs the same key (and emitters too: [`Emitter::signing_key`](super::Emitter::signing_key)).
    /// Default: none — anyone who can `PUBLISH` on the Redis can speak in any room.
    ///
    /// Dropped envelopes are counted in
    /// [`BrokerStatus::invalid_envelopes`](crate::BrokerStatus::invalid_envelopes) and logged
    /// at most once a second, including forgeries that carry this instance's own id: each
    /// instance checks the signature of its own messages too when Redis sends them back
    /// before skipping them (one HMAC per message it publishes, besides one per message it
    /// receives from the others).
    pub fn signing_key(mut self, key: EnvelopeKey) -> Self {
        self.signing_key = Some(key);
        self
    }

    /// What happens to a client's messages when the publish queue they go through is full
    /// (Redis is slower than clients send). Default: `true`.
    ///
    /// - `true`: the client is read more slowly. Its connection stops reading it (the messages
    ///   wait in its socket, and TCP pushes back on the client) until the publisher task takes
    ///   messages off the queue, then reads on; nothing it sends is refused for a slow Redis.
    ///   What was already read reaches the local members at once and waits for its places in
    ///   the queue (reserved before anything is queued, so racing connections never overshoot
    ///   it); what is still in the socket, the client's pings, pongs and close frame among
    ///   it, waits there (its pong and idle deadlines are judged once it is read). The pause
    ///   ends at the latest when Redis stops answering for
    ///   [`operation_timeout`](Self::operation_timeout) (publishing goes down, and messages
    ///   reach local members only, as in any outage). Counted in
    ///   [`BrokerStatus::client_reads_paused`](crate::BrokerStatus::client_reads_paused). When a
    ///   connection ends while messages it read wait for room, a task of their own hands them
    ///   over, waiting as
    ///   [`Hub::publish_with_backpressure`](crate::Hub::publish_with_backpressure) does.
    /// - `false`: the client is read at full speed and its messages reach its instance's
    ///   members at once; the ones the full queue cannot take reach them only (never the
    ///   other instances), counted in
    ///   [`BrokerStatus::publish_dropped`](crate::BrokerStatus::publish_dropped) and logged at
    ///   most once a second. For an application whose rooms are mostly on one instance, and that
    ///   prefers local immediacy to cross-instance completeness.
    pub fn client_backpressure(mut self, enabled: bool) -> Self {
        self.client_backpressure = enabled;
        self
    }

    /// Time limit for one Redis operation: connecting, a pool checkout, a pipeline, a
    /// (un)subscribe. An operation over the limit counts as a failure (the connection is
    /// replaced; a pipeline's messages are counted as failed, never retried, although Redis
    /// may still have run a pipeline whose reply came too late). Default:
    /// [`DEFAULT_OPERATION_TIMEOUT`] (1 s).
    ///
    /// With [`from_pool`](Self::from_pool), the pool's own connection timeouts can cut an
    /// operation shorter; see there.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        assert!(!timeout.is_zero(), "operation_timeout must be positive");
        self.operation_timeout = timeout;
        self
    }
}

/// The database number `client`'s URL selects (0 when it names none).
fn database(client: &deadpool_redis::redis::Client) -> i64 {
    client.get_connection_info().redis_settings().db()
}

#[cfg(test)]
mod tests {
    use super::RedisConfig;

    #[test]
    fn from_urls_pool_holds_what_every_hub_started_with_the_config_uses() {
        let config = RedisConfig::from_url("redis://127.0.0.1:1")
            .unwrap()
            .publisher_tasks(7)
            .subscriber_connections(3);
        assert_eq!(
            config.pool.status().max_size,
            0,
            "sized by the hubs, not by the CPUs"
        );
        // Clones share the pool: each hub adds its own share.
        let other = config.clone().publisher_tasks(1);
        assert!(config.reserve_pool());
        assert_eq!(config.pool.status().max_size, 10);
        assert!(other.reserve_pool());
        assert_eq!(config.pool.status().max_size, 14);
        // A pool of the caller's is theirs to size.
        let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1")
            .builder()
            .unwrap()
            .max_size(2)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .unwrap();
        let client = deadpool_redis::redis::Client::open("redis://127.0.0.1:1").unwrap();
        let theirs = RedisConfig::from_pool(pool, client);
        assert!(!theirs.reserve_pool());
        assert_eq!(theirs.pool.status().max_size, 2);
    }

    #[test]
    fn a_negative_database_number_is_refused_at_once() {
        let error = RedisConfig::from_url("redis://127.0.0.1:6379/-1")
            .expect_err("a negative database number was accepted");
        assert!(error.to_string().contains("database number -1"), "{error}");
        assert!(RedisConfig::from_url("redis://127.0.0.1:6379/3").is_ok());
    }

    #[test]
    fn a_database_number_with_the_default_prefix_is_noticed() {
        let config = |url: &str| RedisConfig::from_url(url).unwrap();
        assert_eq!(
            config("redis://127.0.0.1:6379/3").database_with_default_prefix(),
            Some(3)
        );
        // Database 0, named or not, is what every deployment gets by default: nothing to say.
        assert_eq!(
            config("redis://127.0.0.1:6379/0").database_with_default_prefix(),
            None
        );
        assert_eq!(
            config("redis://127.0.0.1:6379").database_with_default_prefix(),
            None
        );
        // A prefix of its own is what keeps a deployment apart.
        assert_eq!(
            config("redis://127.0.0.1:6379/3")
                .channel_prefix("chat-staging")
                .database_with_default_prefix(),
            None
        );
    }

    /// Every duration of the Redis configuration refuses zero where it is set, as the hub's
    /// timeouts do: none of them has a meaning for zero.
    #[test]
    fn zero_durations_are_refused() {
        use std::time::Duration;
        let second = Duration::from_secs(1);
        type Set = fn(RedisConfig, Duration, Duration) -> RedisConfig;
        let cases: [(&str, Set); 5] = [
            ("probe interval", |c, zero, one| c.probe(zero, one)),
            ("probe timeout", |c, zero, one| c.probe(one, zero)),
            ("reconnect min", |c, zero, one| {
                c.reconnect_backoff(zero, one)
            }),
            ("reconnect min and max", |c, zero, _| {
                c.reconnect_backoff(zero, zero)
            }),
            ("operation_timeout", |c, zero, _| c.operation_timeout(zero)),
        ];
        for (what, set) in cases {
            let config = RedisConfig::from_url("redis://127.0.0.1:1").unwrap();
            let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                set(config, Duration::ZERO, second)
            }));
            assert!(refused.is_err(), "a zero {what} was accepted");
        }
        let config = RedisConfig::from_url("redis://127.0.0.1:1").unwrap();
        let _ = config
            .probe(Duration::from_nanos(1), Duration::from_nanos(1))
            .reconnect_backoff(Duration::from_nanos(1), Duration::from_nanos(1))
            .operation_timeout(Duration::from_nanos(1));
    }
}
