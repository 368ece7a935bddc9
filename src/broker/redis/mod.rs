//! Cross-instance fan-out through Redis pub/sub (feature `redis`, on by default).
//!
//! Several instances of a server behind a load balancer behave as one hub when each is built
//! with the same Redis: a message sent in room `R` on instance A reaches every member of `R` on
//! every instance, once, in the order its sender sent it. Instances never talk to each other or
//! know of each other: each publishes to Redis and listens to Redis.
//!
//! ```no_run
//! use tower_ws_hub::Hub;
//! use tower_ws_hub::redis::RedisConfig;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::builder()
//!     .redis(RedisConfig::from_url("redis://127.0.0.1:6379")?)
//!     .build();
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! ```text
//!  instance A                          Redis                         instance B
//!  ──────────                          ─────                         ──────────
//!  client sends m in room R
//!  ├─ local members of R get m now
//!  └─ publisher task (R's by hash) ─► PUBLISH {prefix}:R envelope ─► subscriber connection
//!     pipelines of PUBLISHes,                                         (R's by hash) ─► members
//!     one pool checkout per burst                                     of R on B
//!  subscriber connection ◄─────────── same envelope, origin = A ─► skipped by A (already
//!                                                                  delivered locally)
//! ```
//!
//! - **Channels.** Room `R` is the channel `{prefix}:R` ([`RedisConfig::channel_prefix`],
//!   default `tower-ws-hub`). An instance subscribes to `{prefix}:R` when `R` gets its first
//!   local member and unsubscribes when its last local member leaves; no pattern subscription,
//!   so an instance only receives the rooms it has members in.
//! - **Publishing** goes through a deadpool-redis pool, batched: each publisher task owns the
//!   rooms that hash to it and sends what is queued as one pipeline (up to
//!   [`max_pipeline`](RedisConfig::max_pipeline) PUBLISHes per round trip), keeping a pooled
//!   connection while it has work (given back after 1 s without any, and not trusted further
//!   once a subscriber session of its instance has ended: the next batch goes on a
//!   connection the pool has just PINGed). A room's messages therefore never race each other.
//! - **Subscribing** uses a few dedicated connections
//!   ([`subscriber_connections`](RedisConfig::subscriber_connections)), rooms spread over them
//!   by hash, each read by its own task that hands messages straight to the local members'
//!   queues (which never block).
//! - **Probes.** Each subscriber connection also subscribes to its own probe channel,
//!   `{prefix}#probe:{instance id}:{n}`, and every [probe interval](RedisConfig::probe) publishes
//!   a probe to it through the pool (payload `{session token, 16 hex digits}:{sequence number}`;
//!   only the current session's own probes count). A probe that does not come back within the
//!   probe timeout (or that Redis says nobody is subscribed to) means the connection is open but
//!   starved: it is replaced and every room resubscribed.
//!
//! # The envelope
//!
//! What is published on a room channel is a small binary envelope, so that text stays text and
//! binary stays binary, and so that an instance recognises the copy of its own message that
//! Redis sends back to it. Version 1, offsets in bytes:
//!
//! | offset | size | field   | value |
//! | ------ | ---- | ------- | ----- |
//! | 0      | 1    | magic   | `0xF7` ([`ENVELOPE_MAGIC`]; never valid UTF-8, so plain text is never taken for an envelope) |
//! | 1      | 1    | version | `0x01` ([`ENVELOPE_VERSION`]) |
//! | 2      | 1    | kind    | `0x01` text (payload must be valid UTF-8) or `0x02` binary |
//! | 3      | 16   | origin  | publishing instance's id; all zeros ([`InstanceId::EXTERNAL`]) for anything else |
//! | 19     | rest | payload | the message itself, up to the end of the Redis message; may be empty |
//!
//! There is no length field: a Redis message carries its own length. The room is the channel
//! name. Anything on a room channel that is not a valid version-1 envelope (too short, wrong
//! magic, unknown version or kind, text that is not UTF-8) is dropped, counted in
//! [`BrokerStatus::invalid_envelopes`](crate::BrokerStatus::invalid_envelopes) and logged at
//! most once a second; clients never notice.
//!
//! Any process can therefore publish to a room ("emit") with a plain `PUBLISH`, e.g. from
//! Python:
//!
//! ```text
//! r.publish("tower-ws-hub:lobby", b"\xf7\x01\x01" + bytes(16) + "hello".encode())
//! ```
//!
//! or from Rust with [`Emitter`].
//!
//! # Trust: signed envelopes
//!
//! Without a key, anyone who can `PUBLISH` on the Redis can speak in every room. With
//! [`RedisConfig::signing_key`], every envelope carries an HMAC-SHA256 tag over its channel,
//! header and payload (kind byte `0x81`/`0x82`, 32-byte tag after the origin; see [`EnvelopeKey`])
//! and every instance drops envelopes not signed with the key. Signing binds a message to its
//! room but does not prevent replays within it.
//!
//! # Guarantees, plainly
//!
//! - **Per-sender FIFO**: messages one client (or one task calling `Hub::publish` or
//!   `Hub::publish_with_backpressure`) sends to a room arrive at every member, on every
//!   instance, in the order sent.
//! - **Exactly once while Redis is up**; **at most once across an outage**: a message published
//!   while Redis is unreachable is delivered locally only (publish reports
//!   [`PublishError::BrokerUnavailable`](crate::PublishError::BrokerUnavailable) when it knows;
//!   a pipeline that fails is counted and never retried, so nothing arrives twice later).
//!   Redis pub/sub keeps no history: a member of an instance that was cut off misses what was
//!   sent meanwhile.
//! - **Recovery is automatic**: lost connections are reopened with capped, jittered backoff
//!   (50–500 ms by default) and every current room is resubscribed; clients stay connected.
//!
//! # Redis down at start-up
//!
//! [`HubBuilder::build`](crate::HubBuilder::build) never waits for Redis: it returns at once
//! and connects in the background, retrying forever, while
//! [`Hub::broker_status`](crate::Hub::broker_status) reports `connected: false` and publishes
//! fail fast once the first attempt has failed. To refuse to start without Redis instead, use
//! [`HubBuilder::build_connected`](crate::HubBuilder::build_connected), which waits up to a
//! timeout and returns a [`BrokerConnectError`](crate::BrokerConnectError) saying why.

mod backoff;
mod config;
mod emitter;
pub(crate) mod envelope;
mod parked;
mod publisher;
#[cfg(test)]
mod recovery_tests;
mod subscriber;

use std::any::Any;
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::status::{BrokerBackend, BrokerStatus};
use crate::hub::hooks::panic_message;
use crate::hub::{HubBuilder, HubInner};
use crate::log_throttle::LogThrottle;
use crate::message::Message;
use crate::sync::lock;
use parked::ParkedReaders;

pub use config::{
    DEFAULT_CHANNEL_PREFIX, DEFAULT_MAX_PIPELINE, DEFAULT_OPERATION_TIMEOUT,
    DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT, DEFAULT_PUBLISH_QUEUE, DEFAULT_PUBLISHER_TASKS,
    DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN, DEFAULT_SUBSCRIBER_CONNECTIONS, RedisConfig,
    RedisConfigError,
};
pub use emitter::Emitter;
pub use envelope::{
    ENVELOPE_HEADER_LEN, ENVELOPE_MAGIC, ENVELOPE_TAG_LEN, ENVELOPE_VERSION, Envelope,
    EnvelopeError, EnvelopeKey, InstanceId,
};

/// The deadpool-redis crate this feature is built with (and, through it, `redis` as
/// `deadpool_redis::redis`), so that your pool and client have the exact types
/// [`RedisConfig::from_pool`] takes.
pub use deadpool_redis;

impl HubBuilder {
    /// Fans out across instances through Redis pub/sub (see [`crate::redis`]). Default: none
    /// (in-process only).
    ///
    /// With Redis configured, [`build`](Self::build) must run inside a Tokio runtime (it starts
    /// the broker's tasks) and returns without waiting for Redis.
    pub fn redis(mut self, config: RedisConfig) -> Self {
        self.broker.redis = Some(config);
        self
    }
}

/// Which of `n` tasks owns `room`. Stable for the life of the process, which is all that
/// ordering needs (each instance routes its own publishes and subscriptions).
fn slot_of(room: &str, n: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    room.hash(&mut hasher);
    usize::try_from(hasher.finish() % n as u64).unwrap_or(0)
}

/// What all broker tasks share: identity, counters, and log throttles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) instance: InstanceId,
    /// `{prefix}:`, the start of every room channel.
    pub(crate) room_prefix: String,
    pub(crate) channel_prefix: String,
    pub(crate) published: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
    pub(crate) publish_dropped: AtomicU64,
    pub(crate) client_reads_paused: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) invalid_envelopes: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    /// Subscriber sessions that ended other than by shutdown (lost, found starved, failed to
    /// connect or subscribe, panicked), up or not: the sign that Redis may have gone away,
    /// which tells the publisher tasks not to trust the connections they kept (see
    /// `publisher::Publisher::kept`). Internal; `reconnects` is the documented figure.
    pub(crate) sessions_ended: AtomicU64,
    pub(crate) starvations: AtomicU64,
    /// Panics caught in the publisher and subscriber tasks (see `BrokerStatus::task_panics`).
    pub(crate) task_panics: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) refused_log: LogThrottle,
    /// Publisher connections that broke and were replaced at once (see
    /// `publisher::Publisher::replace_broken`).
    pub(crate) broken_log: LogThrottle,
    pub(crate) invalid_log: LogThrottle,
    /// Subscriber connections refused by Redis (credentials, ACL), across subscribers.
    pub(crate) subscriber_refused_log: LogThrottle,
    /// Subscriber connections found starved, across subscribers.
    pub(crate) starved_log: LogThrottle,
    pub(crate) panic_log: LogThrottle,
}

impl Shared {
    pub(crate) fn record_error(&self, error: &dyn std::fmt::Display) {
        *lock(&self.last_error) = Some(error.to_string());
    }

    /// A panic caught in a broker task (`task`: "publisher" or "subscriber", `index` its
    /// number): counted, kept as the last error, logged at most once a second. The caller
    /// replaces the task's connection.
    pub(crate) fn task_panicked(&self, task: &str, index: usize, payload: &(dyn Any + Send)) {
        let message = panic_message(payload);
        let total = self.task_panics.fetch_add(1, Ordering::Relaxed) + 1;
        self.record_error(&format_args!(
            "Redis {task} task {index} panicked: {message}"
        ));
        if let Some(suppressed) = self.panic_log.allow() {
            tracing::error!(
                task,
                index,
                panic = message,
                similar_events_suppressed = suppressed,
                total_task_panics = total,
                "tower-ws-hub: a Redis broker task panicked, a bug in tower-ws-hub or a \
                 dependency (please report it with this line); its connection is dropped and \
                 replaced"
            );
        }
    }

    pub(crate) fn room_channel(&self, room: &str) -> String {
        let mut channel = String::with_capacity(self.room_prefix.len() + room.len());
        channel.push_str(&self.room_prefix);
        channel.push_str(room);
        channel
    }
}

/// Why a publish was refused while the publisher task is reconnecting.
const UNREACHABLE: &str = "Redis is unreachable (reconnecting in the background)";
/// Why a publish was refused once the broker stopped (the hub shut down).
const STOPPED: &str = "the Redis broker has stopped";

/// A message waiting for its publisher task.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) room: Arc<str>,
    pub(crate) message: Message,
    /// For a message that waited for its place (`publish_waiting`): its share of the queue,
    /// given back when the message is published or failed (dropped).
    #[expect(dead_code, reason = "held for its Drop, which gives the share back")]
    pub(crate) waited: Option<OwnedSemaphorePermit>,
}

/// How many of a publisher's `publish_queue` places waiting publishes may hold at a time, queued
/// or in the pipeline being sent: three quarters, at least one. The rest is for publishes that
/// never wait (the connection tasks' clients), which a bulk publisher keeping the queue full
/// would otherwise get refused nearly every time.
fn waiting_share(publish_queue: usize) -> usize {
    (publish_queue - publish_queue / 4).max(1)
}

/// Counts a wait for a place in the queue as a dropped publish if the caller gives up on it
/// (drops the future) before the wait ends: its local members got the message, the other
/// instances never will. The place it may have been handed goes back to the queue without a
/// batch being taken, so parked connections are woken to look at it (with a `publish_queue` of
/// 3 or less, waiting publishes may hold every place).
struct CountIfAbandoned<'a> {
    dropped: Option<&'a AtomicU64>,
    parked: &'a ParkedReaders,
}

impl CountIfAbandoned<'_> {
    fn finished(mut self) {
        self.dropped = None;
    }
}

impl Drop for CountIfAbandoned<'_> {
    fn drop(&mut self) {
        if let Some(counter) = self.dropped {
            counter.fetch_add(1, Ordering::Relaxed);
            self.parked.wake_all();
        }
    }
}

/// A publisher task's state as the connection tasks see it (to fail fast).
#[derive(Debug)]
pub(crate) struct PublisherState(AtomicU8);

impl Default for PublisherState {
    fn default() -> Self {
        Self(AtomicU8::new(Self::CONNECTING))
    }
}

impl PublisherState {
    /// Not connected yet: publishes are queued (and fail if the first attempt does).
    pub(crate) const CONNECTING: u8 = 0;
    pub(crate) const UP: u8 = 1;
    pub(crate) const DOWN: u8 = 2;

    pub(crate) fn set(&self, state: u8) {
        self.0.store(state, Ordering::Release);
    }

    pub(crate) fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct PublisherHandle {
    queue: mpsc::Sender<Outgoing>,
    /// The places in `queue` waiting publishes may take ([`waiting_share`]).
    waiting: Arc<Semaphore>,
    state: Arc<PublisherState>,
    /// Connection tasks waiting for room in `queue`.
    parked: Arc<ParkedReaders>,
}

/// The rooms one subscriber connection should be subscribed to. The registry's join/leave
/// notices update it (never blocking); the subscriber task reconciles its subscriptions with
/// it, so a burst of joins and leaves costs one SUBSCRIBE and one UNSUBSCRIBE, and after a
/// reconnect it is exactly what to resubscribe.
#[derive(Debug, Default)]
pub(crate) struct SlotRooms {
    pub(crate) desired: HashSet<Arc<str>>,
    /// Rooms whose membership changed since the task last looked; kept only while `live`.
    pub(crate) dirty: HashSet<Arc<str>>,
    /// A session is subscribed (or subscribing) and will reconcile `dirty`. Otherwise the
    /// next session subscribes all of `desired` anyway, and recording changes would only keep
    /// the name of every room used while Redis is down.
    pub(crate) live: bool,
}

impl SlotRooms {
    fn changed(&mut self, room: &Arc<str>) {
        if self.live {
            self.dirty.insert(Arc::clone(room));
        }
    }
}

/// One subscriber connection as seen from outside its task.
#[derive(Debug, Default)]
pub(crate) struct SubscriberSlot {
    pub(crate) rooms: Mutex<SlotRooms>,
    pub(crate) changed: Notify,
    pub(crate) connected: AtomicBool,
    pub(crate) subscribed: AtomicUsize,
    pub(crate) last_probe_ok: Mutex<Option<Instant>>,
    /// When the probe Redis accepted last must be back by, while it is out.
    pub(crate) probe_due: Mutex<Option<Instant>>,
}

impl SubscriberSlot {
    /// Connected, and not overdue on its probe. A starved connection is replaced at the next
    /// probe tick; until then, it must not count as healthy.
    fn healthy(&self, now: Instant) -> bool {
        self.connected.load(Ordering::Acquire) && lock(&self.probe_due).is_none_or(|due| now < due)
    }
}

/// The Redis broker's handle, owned by the hub. Dropping it stops its tasks.
#[derive(Debug)]
pub(crate) struct RedisBroker {
    shared: Arc<Shared>,
    publishers: Vec<PublisherHandle>,
    subscribers: Vec<Arc<SubscriberSlot>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    operation_timeout: Duration,
    /// `RedisConfig::client_backpressure`.
    client_backpressure: bool,
}

impl RedisBroker {
    /// Starts the publisher and subscriber tasks; they connect in the background.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub(crate) fn start(config: RedisConfig, hub: &Weak<HubInner>) -> Self {
        assert!(
            tokio::runtime::Handle::try_current().is_ok(),
            "a hub with Redis must be built inside a Tokio runtime (HubBuilder::build starts the \
             broker's tasks)"
        );
        let shared = Arc::new(Shared {
            instance: InstanceId::random(),
            room_prefix: format!("{}:", config.channel_prefix),
            channel_prefix: config.channel_prefix.clone(),
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            publish_dropped: AtomicU64::new(0),
            client_reads_paused: AtomicU64::new(0),
            received: AtomicU64::new(0),
            invalid_envelopes: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            sessions_ended: AtomicU64::new(0),
            starvations: AtomicU64::new(0),
            task_panics: AtomicU64::new(0),
            last_error: Mutex::new(None),
            refused_log: LogThrottle::per_second(),
            broken_log: LogThrottle::per_second(),
            invalid_log: LogThrottle::per_second(),
            subscriber_refused_log: LogThrottle::per_second(),
            starved_log: LogThrottle::per_second(),
            panic_log: LogThrottle::per_second(),
        });
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let config = Arc::new(config);
        tracing::info!(
            instance = %shared.instance,
            prefix = %config.channel_prefix,
            subscriber_connections = config.subscriber_connections,
            publisher_tasks = config.publisher_tasks,
            "tower-ws-hub: Redis broker starting"
        );
        if !config.reserve_pool() {
            let max_size = config.pool.status().max_size;
            let needed = config.pool_connections_used();
            if max_size < needed {
                tracing::warn!(
                    max_size,
                    needed,
                    publisher_tasks = config.publisher_tasks,
                    subscriber_connections = config.subscriber_connections,
                    "tower-ws-hub: the pool given to RedisConfig::from_pool holds at most \
                     {max_size} connections, fewer than this hub uses at once ({needed}: one per \
                     publisher task while it has messages to send, one per subscriber \
                     connection's probe); a publisher task that gets none within \
                     operation_timeout counts as down and its rooms' messages fail. Raise the \
                     pool's max_size, counting what the application itself takes from it"
                );
            }
        }
        if let Some(db) = config.database_with_default_prefix() {
            tracing::warn!(
                db,
                prefix = %config.channel_prefix,
                "tower-ws-hub: the Redis URL selects database {db}, but pub/sub channels are \
                 shared by every database of a Redis server: another deployment on this Redis \
                 with the default channel prefix exchanges room messages with this one, whatever \
                 its database. Give each deployment its own RedisConfig::channel_prefix"
            );
        }

        let publishers = (0..config.publisher_tasks)
            .map(|index| {
                let (queue, receiver) = mpsc::channel(config.publish_queue);
                let state = Arc::new(PublisherState::default());
                let parked = Arc::new(ParkedReaders::default());
                tasks.spawn(publisher::run(publisher::Publisher {
                    index,
                    queue: receiver,
                    state: Arc::clone(&state),
                    parked: Arc::clone(&parked),
                    shared: Arc::clone(&shared),
                    config: Arc::clone(&config),
                    cancel: cancel.clone(),
                    in_flight: 0,
                    checked_out_at: 0,
                    proven: false,
                }));
                PublisherHandle {
                    queue,
                    waiting: Arc::new(Semaphore::new(waiting_share(config.publish_queue))),
                    state,
                    parked,
                }
            })
            .collect();

        let subscribers = (0..config.subscriber_connections)
            .map(|index| {
                let slot = Arc::new(SubscriberSlot::default());
                tasks.spawn(subscriber::run(subscriber::Subscriber {
                    index,
                    slot: Arc::clone(&slot),
                    shared: Arc::clone(&shared),
                    config: Arc::clone(&config),
                    hub: hub.clone(),
                    cancel: cancel.clone(),
                }));
                slot
            })
            .collect();
        tasks.close();

        Self {
            shared,
            publishers,
            subscribers,
            cancel,
            tasks,
            operation_timeout: config.operation_timeout,
            client_backpressure: config.client_backpressure,
        }
    }

    fn slot(&self, room: &str) -> &SubscriberSlot {
        &self.subscribers[slot_of(room, self.subscribers.len())]
    }

    pub(crate) fn room_joined(&self, room: &Arc<str>) {
        let slot = self.slot(room);
        {
            let mut rooms = lock(&slot.rooms);
            rooms.desired.insert(Arc::clone(room));
            rooms.changed(room);
        }
        slot.changed.notify_one();
    }

    pub(crate) fn room_left(&self, room: &Arc<str>) {
        let slot = self.slot(room);
        {
            let mut rooms = lock(&slot.rooms);
            rooms.desired.remove(room);
            rooms.changed(room);
        }
        slot.changed.notify_one();
    }

    fn publisher(&self, room: &str) -> &PublisherHandle {
        &self.publishers[slot_of(room, self.publishers.len())]
    }

    /// The publisher task for `room`, if clients are to wait for room in its queue: not when
    /// `client_backpressure` is off, nor while it never refuses a message for lack of room
    /// (it is down, and refuses everything at once, full queue or not; or it stopped).
    fn waited_on(&self, room: &str) -> Option<&PublisherHandle> {
        let publisher = self.publisher(room);
        let refuses_for_room =
            publisher.state.get() != PublisherState::DOWN && !publisher.queue.is_closed();
        (self.client_backpressure && refuses_for_room).then_some(publisher)
    }

    /// How many more of a client's messages for `room` [`publish`](Self::publish) would take
    /// now; `None` when clients are not to wait for room ([`waited_on`](Self::waited_on)).
    pub(crate) fn room_for(&self, room: &str) -> Option<usize> {
        self.waited_on(room)
            .map(|publisher| publisher.queue.capacity())
    }

    /// Queues as many of a client's `messages` as `room`'s publish queue has places for, from
    /// the front, and says how many (0 when it is full); `None` when clients are not to wait
    /// for room (see [`room_for`](Self::room_for)): [`publish`](Self::publish) each instead.
    /// Places are reserved before anything is queued, so connections racing for the last
    /// ones never overshoot the queue.
    pub(crate) fn publish_reserved(&self, room: &Arc<str>, messages: &[Message]) -> Option<usize> {
        let publisher = self.waited_on(room)?;
        let (places, permits) = loop {
            let places = messages.len().min(publisher.queue.capacity());
            if places == 0 {
                return Some(0);
            }
            match publisher.queue.try_reserve_many(places) {
                Ok(permits) => break (places, permits),
                // Others took places since we looked: look again.
                Err(mpsc::error::TrySendError::Full(())) => {}
                Err(mpsc::error::TrySendError::Closed(())) => return None,
            }
        };
        for (permit, message) in permits.zip(messages) {
            permit.send(Outgoing {
                room: Arc::clone(room),
                message: message.clone(),
                waited: None,
            });
        }
        Some(places)
    }

    /// Wakes `waker` once `room`'s publish queue may have room again, or `room_for` may have
    /// become `None`. The caller looks again after this returns (see [`ParkedReaders::park`]).
    pub(crate) fn park(&self, room: &str, waker: Waker) {
        self.shared
            .client_reads_paused
            .fetch_add(1, Ordering::Relaxed);
        self.publisher(room).parked.park(waker);
    }

    /// Counts a publish the broker could not take and says why.
    fn refused(counter: &AtomicU64, why: &'static str) -> String {
        counter.fetch_add(1, Ordering::Relaxed);
        why.to_owned()
    }

    fn refused_down(&self) -> String {
        Self::refused(&self.shared.publish_failures, UNREACHABLE)
    }

    pub(crate) fn publish(&self, room: &Arc<str>, message: &Message) -> Result<(), String> {
        let publisher = self.publisher(room);
        let shared = &self.shared;
        if publisher.state.get() == PublisherState::DOWN {
            return Err(self.refused_down());
        }
        match publisher.queue.try_send(Outgoing {
            room: Arc::clone(room),
            message: message.clone(),
            waited: None,
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(suppressed) = shared.refused_log.allow() {
                    tracing::warn!(
                        room = %room,
                        similar_events_suppressed = suppressed,
                        total_dropped = shared.publish_dropped.load(Ordering::Relaxed) + 1,
                        "tower-ws-hub: Redis publish queue full (Redis slower than this \
                         instance publishes): message delivered locally only. Raise \
                         RedisConfig::publish_queue for bursts, or publish with \
                         Hub::publish_with_backpressure to wait for room"
                    );
                }
                Err(Self::refused(
                    &shared.publish_dropped,
                    "the Redis publish queue is full (Redis is too slow)",
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(Self::refused(&shared.publish_failures, STOPPED))
            }
        }
    }

    /// [`publish`](Self::publish), except that a full queue is waited on instead of refused.
    ///
    /// Waiting publishes fill at most [`waiting_share`] of the queue, so that one that keeps it
    /// full (a bulk publisher) leaves room for the publishes that never wait. The wait is bounded
    /// by the publisher task: it empties the queue by publishing it, or, once an operation fails
    /// or times out (`operation_timeout`), by failing it, and a waiter that gets its place while
    /// Redis is down is refused as `publish` would refuse it. A wait the caller abandons is
    /// counted in `publish_dropped`.
    pub(crate) async fn publish_waiting(
        &self,
        room: &Arc<str>,
        message: &Message,
    ) -> Result<(), String> {
        let publisher = self.publisher(room);
        if publisher.state.get() == PublisherState::DOWN {
            return Err(self.refused_down());
        }
        // Dropped after the wait below when the caller abandons it (locals go in reverse order):
        // any place the wait was handed is back in the queue by then.
        let abandoned = CountIfAbandoned {
            dropped: Some(&self.shared.publish_dropped),
            parked: &publisher.parked,
        };
        let places = async {
            // The queue's receiver gives every share back when it goes (a stopped publisher
            // drops what it held), so neither wait outlives the publisher task.
            let share = Arc::clone(&publisher.waiting).acquire_owned().await.ok()?;
            let place = publisher.queue.reserve().await.ok()?;
            Some((share, place))
        }
        .await;
        abandoned.finished();
        let Some((share, place)) = places else {
            return Err(Self::refused(&self.shared.publish_failures, STOPPED));
        };
        if publisher.state.get() == PublisherState::DOWN {
            // Our place was freed by the publisher failing its queue: Redis went down while we
            // waited. Giving the place back frees room nobody was told of: a connection that
            // parked for it (after the publisher's own wake-up) must not wait for the next one.
            drop(place);
            publisher.parked.wake_all();
            return Err(self.refused_down());
        }
        #[cfg(test)]
        recovery_tests::pause_before_filling_a_place(room, &publisher.queue);
        place.send(Outgoing {
            room: Arc::clone(room),
            message: message.clone(),
            waited: Some(share),
        });
        Ok(())
    }

    /// Stops the tasks: publishers send what is queued (one attempt each), subscribers close.
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        let limit = self.operation_timeout.saturating_mul(3);
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            // Places taken in the queues: messages not yet handed to Redis (or places about to
            // be filled).
            let still_queued: usize = self
                .publishers
                .iter()
                .map(|publisher| publisher.queue.max_capacity() - publisher.queue.capacity())
                .sum();
            tracing::warn!(
                remaining = self.tasks.len(),
                still_queued,
                "tower-ws-hub: Redis broker tasks did not stop within {limit:?} (three times \
                 RedisConfig::operation_timeout): publishers go on sending what was queued in \
                 the background while the runtime lives, and count what they cannot send in \
                 publish_failures. If Redis is slow rather than gone, a longer \
                 operation_timeout gives the shutdown more time"
            );
        }
    }

    pub(crate) fn status(&self) -> BrokerStatus {
        let shared = &self.shared;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let publisher_connected = self
            .publishers
            .iter()
            .all(|p| p.state.get() == PublisherState::UP);
        let subscribers_connected = self
            .subscribers
            .iter()
            .filter(|s| s.connected.load(Ordering::Acquire))
            .count();
        let now = Instant::now();
        let subscribers_healthy = self.subscribers.iter().all(|s| s.healthy(now));
        let last_probe_age = self
            .subscribers
            .iter()
            .map(|s| lock(&s.last_probe_ok).map(|at| now.saturating_duration_since(at)))
            .try_fold(Duration::ZERO, |oldest, age| age.map(|age| oldest.max(age)));
        BrokerStatus {
            backend: BrokerBackend::Redis,
            connected: publisher_connected && subscribers_healthy,
            publisher_connected,
            subscriber_connections: self.subscribers.len(),
            subscribers_connected,
            subscribed_rooms: self
                .subscribers
                .iter()
                .map(|s| s.subscribed.load(Ordering::Relaxed))
                .sum(),
            last_probe_age,
            published: get(&shared.published),
            publish_failures: get(&shared.publish_failures),
            publish_dropped: get(&shared.publish_dropped),
            client_reads_paused: get(&shared.client_reads_paused),
            received: get(&shared.received),
            invalid_envelopes: get(&shared.invalid_envelopes),
            reconnects: get(&shared.reconnects),
            starvations: get(&shared.starvations),
            task_panics: get(&shared.task_panics),
            last_error: lock(&shared.last_error).clone(),
        }
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        // The tasks hold no strong reference to the hub; without this they would outlive it.
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_spread_over_slots_and_stay_put() {
        let mut used = HashSet::new();
        for i in 0..100 {
            let room = format!("room-{i}");
            let slot = slot_of(&room, 4);
            assert!(slot < 4);
            assert_eq!(slot, slot_of(&room, 4));
            used.insert(slot);
        }
        assert_eq!(used.len(), 4);
    }
}
