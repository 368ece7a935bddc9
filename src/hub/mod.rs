//! The hub: rooms, local fan-out, and the [`Hub`] handle the application holds.

pub(crate) mod backlog;
pub(crate) mod context;
pub(crate) mod handle;
pub(crate) mod hooks;
pub(crate) mod registry;
pub(crate) mod stats;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerConfig, BrokerConnectError, BrokerStatus};
use crate::config::{HubConfig, SlowConsumerPolicy};
use crate::connection;
use crate::connection::frames::{Frames, RunBuilder};
use crate::connection::queue::{CloseIntent, OutboundQueue, PushOutcome, QueueLimits};
use crate::error::PublishError;
use crate::handshake::Handshake;
use crate::log_throttle::LogThrottle;
use crate::message::Message;
use crate::rejection::Rejection;
use crate::route::validate_room_name;
use crate::sync::lock;

pub use context::{ConnectionContext, ConnectionId};
pub use handle::ConnectionHandle;
pub use hooks::InboundAction;
pub use stats::HubStats;

use hooks::Hooks;
use registry::{FanOut, Member, Room, RoomRegistry};
use stats::Counters;

/// A cloneable handle to a hub of WebSocket rooms.
///
/// Build one with [`Hub::builder`], give a clone to each [`HubLayer`](crate::HubLayer), and keep
/// clones wherever the application publishes. All clones are the same hub.
///
/// ```
/// use tower_ws_hub::{Hub, Message};
///
/// # async fn run() -> Result<(), tower_ws_hub::PublishError> {
/// let hub = Hub::builder().build();
/// // Queued for every member of "lobby" (none yet, so 0).
/// let delivered = hub.publish("lobby", Message::text("hello")).await?;
/// assert_eq!(delivered, 0);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
pub(crate) struct HubInner {
    pub(crate) config: HubConfig,
    pub(crate) hooks: Hooks,
    pub(crate) registry: RoomRegistry,
    pub(crate) counters: Counters,
    pub(crate) backlog: backlog::Backlog,
    pub(crate) broker: Broker,
    next_id: AtomicU64,
    /// Connections from accepted handshake to end (for the instance limit).
    pub(crate) reserved: AtomicUsize,
    /// The same per room, kept only with a room limit (`max_room_connections`).
    room_reserved: Mutex<HashMap<Arc<str>, usize>>,
    shutting_down: AtomicBool,
    shutdown_started: tokio::sync::Notify,
    /// Cancelled when the shutdown grace period is over: upgrades still waiting for their
    /// socket give up, and anything that joins from then on is aborted at once.
    grace_over: CancellationToken,
    tasks: TaskTracker,
    drop_log: LogThrottle,
    upgrade_failure_log: LogThrottle,
    hook_panic_log: LogThrottle,
    callback_panic_log: LogThrottle,
    authorize_timeout_log: LogThrottle,
    origin_refusal_log: LogThrottle,
}

/// Messages a connection left for the broker ([`Hub::publish_left_over`]), still to hand over.
/// Dropped with some left (its task never ran, or was dropped while it waited: the runtime
/// went away), it hands them over at once: what the broker refuses is counted and logged, never
/// lost silently.
struct LeftOver {
    hub: Hub,
    room: Arc<str>,
    messages: std::collections::VecDeque<Message>,
}

impl Drop for LeftOver {
    fn drop(&mut self) {
        self.hub.inner.publish_now(&self.room, &self.messages);
    }
}

/// The error for a message its local members got and the broker refused.
fn broker_unavailable(delivered_locally: usize) -> impl FnOnce(String) -> PublishError {
    move |reason| PublishError::BrokerUnavailable {
        delivered_locally,
        reason,
    }
}

impl Hub {
    /// A builder with production-safe defaults (see [`HubBuilder`]).
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }

    pub(crate) fn inner(&self) -> &HubInner {
        &self.inner
    }

    /// Publishes a message to every local member of `room` and, with a broker configured, to
    /// the room's members on every other instance.
    ///
    /// Returns how many local members it was queued for, counting members that have begun closing
    /// and will write no more data (their close discards it, counted in
    /// [`HubStats::discarded_on_close`]): a count of members, not of deliveries that will happen.
    /// Never waits: local delivery never waits on the broker, and a broker that cannot take the
    /// message now (Redis known to be down, because a connection attempt failed, or a publish
    /// failed and no new connection could be had at once; or its publish queue full because Redis
    /// is slower than you publish, see `RedisConfig::publish_queue`) refuses it at once, counted in
    /// [`BrokerStatus`]. Before the first connection attempt has failed, the message is queued. To
    /// wait for room in the queue instead, use
    /// [`publish_with_backpressure`](Self::publish_with_backpressure).
    ///
    /// Calling it again after [`PublishError::BrokerUnavailable`] delivers the message to the
    /// local members a second time.
    ///
    /// # Errors
    ///
    /// [`PublishError::InvalidRoom`] for a bad room name, [`PublishError::ShuttingDown`] once
    /// [`shutdown`](Self::shutdown) started, [`PublishError::BrokerUnavailable`] when local
    /// members got it but the broker could not take it.
    pub async fn publish(
        &self,
        room: &str,
        message: impl Into<Message>,
    ) -> Result<usize, PublishError> {
        let (name, message, delivered_locally) = self.publish_locally(room, message.into())?;
        self.inner
            .broker
            .publish(&name, &message)
            .map_err(broker_unavailable(delivered_locally))?;
        Ok(delivered_locally)
    }

    /// Like [`publish`](Self::publish), but when the broker's publish queue
    /// (`RedisConfig::publish_queue`) is full (Redis connected but slower than you publish),
    /// waits for room in it instead of refusing the message: the backpressure a bulk publisher
    /// (a feed replayed, a queue consumer) needs to hand every message to Redis at the pace
    /// Redis takes them, without a retry loop (retrying a refused `publish` delivers to the
    /// local members twice).
    ///
    /// - Local members get the message at once, before any wait, exactly as with `publish`.
    /// - `Ok` means what it means for `publish`: the message is queued for Redis. The same
    ///   at-most-once rule applies if Redis fails before it takes the queue (counted in
    ///   `publish_failures`; see the crate's delivery guarantees).
    /// - Waiting publishes hold at most three quarters of the queue's places (queued, or in the
    ///   pipeline being sent). The rest stays for the publishes that never wait and for
    ///   clients' messages, so a bulk publisher that keeps the queue full does not hold every
    ///   client's reads back.
    /// - The wait lasts as long as Redis takes to work through what is queued ahead, and is
    ///   bounded per Redis operation: if Redis stops answering, the publisher gives up after
    ///   `RedisConfig::operation_timeout` (a connection checkout and a pipeline each have that
    ///   long), fails what is queued and refuses what waits. While Redis is down it refuses
    ///   at once, as `publish` does. Waiters get their places in the order they came. Without a
    ///   broker, or with room in the queue, it never waits.
    /// - If the future is dropped while it waits (a timeout around it, say), the message has
    ///   reached the local members only; that is counted in `publish_dropped`.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish), except that a full queue is not one of them.
    pub async fn publish_with_backpressure(
        &self,
        room: &str,
        message: impl Into<Message>,
    ) -> Result<usize, PublishError> {
        let (name, message, delivered_locally) = self.publish_locally(room, message.into())?;
        self.inner
            .broker
            .publish_waiting(&name, &message)
            .await
            .map_err(broker_unavailable(delivered_locally))?;
        Ok(delivered_locally)
    }

    /// The local half of a publish: checks, then queues the message for the room's local
    /// members. Returns the room's name (shared with the registry when it has members), the
    /// message and how many local members it was queued for.
    fn publish_locally(
        &self,
        room: &str,
        message: Message,
    ) -> Result<(Arc<str>, Message, usize), PublishError> {
        validate_room_name(room, self.inner.config.max_room_name_len)?;
        if self.is_shutting_down() {
            return Err(PublishError::ShuttingDown);
        }
        let local = self.inner.registry.get(room);
        let fan_out = match &local {
            Some(room) => {
                self.inner
                    .fan_out(room, 1, || [Frames::one(message.encode_frame())], None)
            }
            None => {
                Counters::incr(&self.inner.counters.messages_published);
                FanOut::default()
            }
        };
        let name: Arc<str> = match &local {
            Some(room) => Arc::clone(room.name()),
            None => Arc::from(room),
        };
        let delivered_locally = usize::try_from(fan_out.queued).unwrap_or(usize::MAX);
        Ok((name, message, delivered_locally))
    }

    /// Number of local members of `room` (0 for a room nobody joined).
    pub fn room_size(&self, room: &str) -> usize {
        self.inner.registry.get(room).map_or(0, |room| room.len())
    }

    /// Names of the rooms that have local members.
    pub fn rooms(&self) -> Vec<String> {
        self.inner.registry.names()
    }

    /// Number of open connections on this instance.
    pub fn connection_count(&self) -> u64 {
        self.inner.counters.open_connections()
    }

    /// A snapshot of the hub's counters.
    pub fn stats(&self) -> HubStats {
        self.inner.counters.snapshot(self.inner.registry.len())
    }

    /// The cross-instance broker's health and counters, for readiness checks: with Redis,
    /// whether it is connected, how many rooms are subscribed, when the subscriber connections
    /// last proved they receive, and how many publishes failed or were dropped. Always
    /// connected for an in-process hub.
    pub fn broker_status(&self) -> BrokerStatus {
        self.inner.broker.status()
    }

    /// `true` once [`shutdown`](Self::shutdown) has started.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Shuts the hub down gracefully.
    ///
    /// New upgrade requests get `503`, and so do those whose
    /// [authorizer](crate::HubLayer::authorize) is still deciding (at once: they would be
    /// refused whatever it decides); every connection writes what is queued for it, then
    /// closes with code 1001 ("going away"). Waits up to the
    /// [shutdown grace period](HubBuilder::shutdown_grace) for connections to finish, then drops
    /// the ones left, and abandons upgrades it had accepted whose socket the server has not
    /// handed over yet: once this returns, no connection opens and no `on_connect` runs.
    /// Calling it again (or concurrently) waits for the same shutdown.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let first = !inner.shutting_down.swap(true, Ordering::SeqCst);
        // Pairs with the fence in `start`: either that connection sees the flag, or the
        // tracker below counts it (see there).
        fence(Ordering::SeqCst);
        if first {
            tracing::info!(
                connections = self.connection_count(),
                "tower-ws-hub: shutting down, closing connections with 1001"
            );
            inner.shutdown_started.notify_waiters();
            inner.close_all(CloseIntent::Shutdown);
            inner.tasks.close();
        }
        let grace = inner.config.shutdown_grace;
        if tokio::time::timeout(grace, inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = inner.tasks.len(),
                ?grace,
                "tower-ws-hub: shutdown grace period over, dropping the connections left"
            );
            inner.grace_over.cancel();
            inner.close_all(CloseIntent::Abort);
            // Aborted drivers finish at their next poll, which the close request triggers.
            let _ = tokio::time::timeout(Duration::from_secs(1), inner.tasks.wait()).await;
        }
        inner.broker.shutdown().await;
    }

    /// Messages a connection read and delivered locally, and could not hand to the broker
    /// before it ended because the broker's queue was full ([`HubInner::publish_from`]): a
    /// task of their own hands them over in order, waiting for room as the connection would
    /// have (bounded by the broker, as for
    /// [`publish_with_backpressure`](Self::publish_with_backpressure)); shutdown waits for it.
    /// Whatever that task cannot wait for (there is no runtime to run it, or the runtime drops
    /// it: [`LeftOver`]) is handed over at once, refused if there is no room, and counted.
    pub(crate) fn publish_left_over(&self, room: Arc<str>, messages: Vec<Message>) {
        let mut left = LeftOver {
            hub: self.clone(),
            room,
            messages: messages.into(),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.inner.tasks.spawn(async move {
            while let Some(message) = left.messages.pop_front() {
                // Taken out first: if this wait is abandoned, it counts this message itself.
                if let Err(error) = left
                    .hub
                    .inner
                    .broker
                    .publish_waiting(&left.room, &message)
                    .await
                {
                    left.hub.inner.not_forwarded(&left.room, &error);
                }
            }
        });
    }

    /// Resolves once [`shutdown`](Self::shutdown) has been called (by anyone).
    pub async fn shutdown_started(&self) {
        let notified = self.inner.shutdown_started.notified();
        if self.is_shutting_down() {
            return;
        }
        notified.await;
    }

    /// A future for `axum::serve(..).with_graceful_shutdown(..)`: waits for Ctrl-C, SIGTERM or a
    /// call to [`shutdown`](Self::shutdown), shuts the hub down gracefully, then resolves so the
    /// HTTP server can stop too.
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router, hub: tower_ws_hub::Hub) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(hub.shutdown_signal())
    ///     .await
    /// # }
    /// ```
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let hub = self.clone();
        async move {
            tokio::select! {
                () = os_shutdown_signal() => {}
                () = hub.shutdown_started() => {}
            }
            hub.shutdown().await;
        }
    }

    /// Takes a place for one more connection in `room`, or refuses: `503` while shutting down
    /// or when the instance or the room is full.
    pub(crate) fn reserve(&self, room: &str) -> Result<Reservation, Rejection> {
        let inner = &self.inner;
        if self.is_shutting_down() {
            return Err(shutting_down());
        }
        // Both limits count from the accepted handshake: upgrades still in flight (an
        // authorizer deciding, a `101` on its way) hold their place too. Room first, under its
        // lock, then the instance place with a compare-and-swap: a request refused by either
        // limit never holds a place, not even for a moment.
        let mut rooms = inner
            .config
            .max_room_connections
            .map(|max| (max, lock(&inner.room_reserved)));
        if let Some((max, rooms)) = &rooms
            && rooms.get(room).copied().unwrap_or(0) >= *max
        {
            return Err(unavailable("room is full", "10"));
        }
        let max_connections = inner.config.max_connections;
        if inner
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                max_connections.is_none_or(|max| n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(unavailable("server is at its connection limit", "10"));
        }
        let mut reservation = Reservation {
            hub: self.clone(),
            room: None,
        };
        if let Some((_, rooms)) = &mut rooms {
            let room: Arc<str> = Arc::from(room);
            *rooms.entry(Arc::clone(&room)).or_insert(0) += 1;
            reservation.room = Some(room);
        }
        drop(rooms);
        Ok(reservation)
    }

    /// Starts a connection whose handshake passed every check: spawns its task (which waits
    /// for the server to hand the socket over) and returns the `101`/`200` response.
    pub(crate) fn start(&self, pending: PendingConnection) -> Result<Response<Bytes>, Rejection> {
        // Counted by the task tracker from before the check to the spawn: a shutdown that
        // begins in between waits for this connection too (whose join closes it with 1001)
        // instead of returning while it is still to come.
        let in_flight = self.inner.tasks.token();
        // The token's count and the flag are two locations, written in opposite orders here
        // and in `shutdown`: without a full fence on both sides, a weakly ordered CPU (ARM)
        // may let this read miss the flag while `shutdown` misses the token, and a connection
        // open after `shutdown` returned. (x86's locked instructions fence already.)
        fence(Ordering::SeqCst);
        // Shutdown may have begun while an authorizer was deciding.
        if self.is_shutting_down() {
            return Err(shutting_down());
        }
        let PendingConnection {
            parts,
            on_upgrade,
            room,
            handshake,
            protocol,
            remote_addr,
            reservation,
        } = pending;
        let response = handshake.response(protocol.as_ref());
        let id = ConnectionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let context = ConnectionContext::new(
            self.clone(),
            id,
            Arc::from(room),
            parts,
            protocol,
            remote_addr,
            &self.inner.config.retention,
        );
        let upgrade_timeout = self.inner.config.upgrade_timeout;
        self.inner.tasks.spawn(async move {
            let _reservation = reservation;
            let hub = context.hub();
            let upgraded = tokio::select! {
                biased;
                // A shutdown that is over does not wait for sockets still to come: nothing may
                // connect (or run `on_connect`) after `shutdown` returned.
                () = hub.inner.grace_over.cancelled() => {
                    Counters::incr(&hub.inner.counters.handshakes_rejected);
                    tracing::debug!(id = %context.id(),
                        "tower-ws-hub: upgrade abandoned, the shutdown grace period is over");
                    return;
                }
                upgraded = tokio::time::timeout(upgrade_timeout, on_upgrade) => upgraded,
            };
            match upgraded {
                Ok(Ok(upgraded)) => connection::serve_upgraded(context, upgraded).await,
                Ok(Err(error)) => hub.inner.upgrade_failed(context.id(), &error),
                Err(_) => {
                    Counters::incr(&hub.inner.counters.handshakes_rejected);
                    tracing::debug!(id = %context.id(), "tower-ws-hub: upgrade not completed in time");
                }
            }
        });
        // The task counts now.
        drop(in_flight);
        Ok(response)
    }

    /// Counts an upgrade request refused with `status`.
    pub(crate) fn note_rejection(&self, status: http::StatusCode) {
        self.inner.counters.handshake_refused(status);
    }

    /// Logs (at most once a second, sharing the throttle of the failed hand-overs after a
    /// `101`: the same misconfiguration) an upgrade request that reached the layer without
    /// hyper's upgrade handle, and returns the answer for it: `500`. The server cannot hand
    /// connections over (it is not hyper, or not with upgrades): every such request would
    /// otherwise log its own error line.
    pub(crate) fn no_upgrade_handle(&self) -> Rejection {
        if let Some(suppressed) = self.inner.upgrade_failure_log.allow() {
            tracing::error!(
                similar_events_suppressed = suppressed,
                "tower-ws-hub: the request carries no upgrade handle: this server cannot hand \
                 over connections. Serve with axum::serve or hyper-util's \
                 serve_connection_with_upgrades (for HTTP/2, enable the extended CONNECT \
                 protocol)"
            );
        }
        Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this server cannot upgrade connections to WebSocket",
        )
    }

    /// Logs (at most once a second) an upgrade refused for its `Origin`, with what was
    /// compared: the usual cause is a misconfiguration (a proxy rewriting `Host`, a page served
    /// from another origin), not an attack, and the 403 itself tells the browser nothing it
    /// shows.
    pub(crate) fn note_origin_refused(
        &self,
        parts: &http::request::Parts,
        policy: &crate::OriginPolicy,
    ) {
        let Some(suppressed) = self.inner.origin_refusal_log.allow() else {
            return;
        };
        let header = |name: http::header::HeaderName| {
            parts
                .headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        let origin = header(http::header::ORIGIN);
        // What `SameOrigin` compared it with (`Host`, unless the request target names the
        // authority).
        let host = crate::origin::request_authority(parts).map(str::to_owned);
        let why = match policy {
            crate::OriginPolicy::SameOrigin => {
                "OriginPolicy::SameOrigin wants Origin to name the request's Host (or the \
                 authority its target names). Behind a reverse proxy that rewrites Host, have \
                 it keep Host, or list your pages' origins with OriginPolicy::allow_list"
            }
            crate::OriginPolicy::AllowList(_) => {
                "its Origin is not in the layer's OriginPolicy::allow_list"
            }
            _ => "the layer's OriginPolicy refused its Origin",
        };
        tracing::info!(
            origin,
            host,
            similar_events_suppressed = suppressed,
            "tower-ws-hub: upgrade refused (403): {why}"
        );
    }

    /// Counts and logs (at most once a second, with the callback's name, the request's path,
    /// its room when known and the panic message) a layer callback that panicked while the
    /// request with head `parts` was being answered, and returns the answer for it: `500`
    /// with a reason that says nothing of the panic, which may hold anything the application
    /// put in its message.
    pub(crate) fn callback_panicked(
        &self,
        callback: &'static str,
        parts: &http::request::Parts,
        room: Option<&str>,
        payload: &(dyn std::any::Any + Send),
    ) -> Rejection {
        self.note_callback_panic(callback, parts, room, payload, "answered 500");
        Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error while checking the upgrade request",
        )
    }

    /// Counts and logs, as [`callback_panicked`](Self::callback_panicked) does, a panic in the
    /// drop of a layer callback's future (an authorizer's, dropped undecided), which changes
    /// nothing for its request: that keeps the answer it was due (a `503` past
    /// `authorize_timeout` or at shutdown), or has none, its client having gone.
    pub(crate) fn callback_drop_panicked(
        &self,
        callback: &'static str,
        parts: &http::request::Parts,
        room: Option<&str>,
        payload: &(dyn std::any::Any + Send),
    ) {
        self.note_callback_panic(
            callback,
            parts,
            room,
            payload,
            "its request keeps the answer it was due",
        );
    }

    /// Counts a layer callback's panic in `callback_panics` and logs it (at most once a
    /// second), saying what became of the request (`outcome`).
    fn note_callback_panic(
        &self,
        callback: &'static str,
        parts: &http::request::Parts,
        room: Option<&str>,
        payload: &(dyn std::any::Any + Send),
        outcome: &'static str,
    ) {
        let inner = &self.inner;
        let total = inner
            .counters
            .callback_panics
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if let Some(suppressed) = inner.callback_panic_log.allow() {
            tracing::error!(
                callback,
                path = parts.uri.path(),
                room,
                panic = hooks::panic_message(payload),
                similar_events_suppressed = suppressed,
                total_callback_panics = total,
                "tower-ws-hub: a layer callback panicked while answering an upgrade request; \
                 {outcome}"
            );
        }
    }

    /// Counts and logs (at most once a second) an authorizer that did not decide within
    /// `timeout` for the request with head `parts` and `room`, and returns the answer for it:
    /// `503` with `Retry-After`, as for a server at its limit (the authorizer's backend, most
    /// likely, is slow or down).
    pub(crate) fn authorization_timed_out(
        &self,
        parts: &http::request::Parts,
        room: &str,
        timeout: Duration,
    ) -> Rejection {
        let inner = &self.inner;
        let total = inner
            .counters
            .authorize_timeouts
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if let Some(suppressed) = inner.authorize_timeout_log.allow() {
            tracing::warn!(
                path = parts.uri.path(),
                room,
                ?timeout,
                similar_events_suppressed = suppressed,
                total_authorize_timeouts = total,
                "tower-ws-hub: the authorizer did not decide within HubLayer::authorize_timeout; \
                 answered 503"
            );
        }
        unavailable("authorization took too long", "10")
    }

    /// Joins a new connection to its room; the returned membership leaves on drop.
    pub(crate) fn join(
        &self,
        context: &ConnectionContext,
        queue: Arc<OutboundQueue>,
    ) -> Membership {
        let inner = &self.inner;
        let id = context.id();
        let room = inner.registry.join(
            context.room(),
            Member {
                id,
                queue: Arc::clone(&queue),
            },
            |name| {
                inner.broker.room_joined(name);
            },
        );
        Counters::incr(&inner.counters.connections_opened);
        // Joined after shutdown began (the upgrade was in flight): close like everyone else,
        // or at once if the grace period is already over.
        if inner.grace_over.is_cancelled() {
            queue.close(CloseIntent::Abort);
        } else if self.is_shutting_down() {
            queue.close(CloseIntent::Shutdown);
        }
        Membership {
            hub: self.clone(),
            room,
            id,
        }
    }

    pub(crate) fn queue_limits(&self) -> QueueLimits {
        let config = &self.inner.config;
        QueueLimits {
            max_messages: config.outbound_max_messages,
            max_bytes: config.outbound_max_bytes,
            policy: config.slow_consumer,
        }
    }
}

impl HubInner {
    /// Runs `call`, the application hook named `hook`, catching a panic (counted, and logged
    /// at most once a second): a hook's bug must end its own connection (with 1011), not skip
    /// the rest of the connection's bookkeeping (`on_disconnect`, the close handshake).
    pub(crate) fn guard_hook<T>(
        &self,
        hook: &'static str,
        context: &ConnectionContext,
        call: impl FnOnce() -> T,
    ) -> Result<T, hooks::HookPanicked> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).map_err(|payload| {
            let total = self.counters.hook_panics.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(suppressed) = self.hook_panic_log.allow() {
                tracing::error!(id = %context.id(), room = context.room(), hook,
                    panic = hooks::panic_message(&*payload), similar_events_suppressed = suppressed,
                    total_hook_panics = total,
                    "tower-ws-hub: a hook panicked; its connection is closed with 1011");
            }
            hooks::HookPanicked
        })
    }

    /// The message hook's decision for `message` (forward unchanged without a hook).
    pub(crate) fn inbound(
        &self,
        context: &ConnectionContext,
        message: Message,
    ) -> Result<InboundAction, hooks::HookPanicked> {
        match &self.hooks.on_message {
            Some(hook) => self.guard_hook("on_message", context, || hook(context, message)),
            None => Ok(InboundAction::Forward(message)),
        }
    }

    /// Local fan-out of the `messages` frames `frames` builds (only if someone receives them),
    /// plus bookkeeping. Never blocks.
    pub(crate) fn fan_out<F: AsRef<[Frames]>>(
        &self,
        room: &Room,
        messages: usize,
        frames: impl FnOnce() -> F,
        exclude: Option<ConnectionId>,
    ) -> FanOut {
        let result = room.fan_out(frames, exclude);
        Counters::add(&self.counters.messages_published, messages as u64);
        self.record_pushes(room.name(), result);
        result
    }

    /// Queues `message` for one connection of `room` (its `queue`): a reply of the message hook,
    /// or a [`ConnectionHandle::send`]. Counted, dropped or disconnected like any other
    /// delivery to that connection ([`record_pushes`](Self::record_pushes)).
    pub(crate) fn push_to_one(
        &self,
        queue: &OutboundQueue,
        room: &str,
        message: &Message,
    ) -> PushOutcome {
        let outcome = queue.push(message.encode_frame());
        let mut result = FanOut::default();
        result.record(outcome, 1);
        self.record_pushes(room, result);
        outcome
    }

    /// Counts what a fan-out (or a push to one connection) queued, dropped and disconnected in
    /// `room`, and logs the drops at most once a second.
    pub(crate) fn record_pushes(&self, room: &str, result: FanOut) {
        let counters = &self.counters;
        Counters::add(&counters.deliveries, result.queued);
        if result.dropped > 0 || result.disconnected > 0 {
            Counters::add(&counters.dropped_messages, result.dropped);
            Counters::add(&counters.slow_consumer_disconnects, result.disconnected);
            if let Some(suppressed) = self.drop_log.allow() {
                let total_dropped = counters.dropped_messages.load(Ordering::Relaxed);
                if result.too_large > 0 {
                    tracing::warn!(
                        %room,
                        dropped = result.dropped,
                        too_large = result.too_large,
                        disconnected = result.disconnected,
                        max_bytes = self.config.outbound_max_bytes,
                        similar_events_suppressed = suppressed,
                        total_dropped,
                        "tower-ws-hub: dropped messages larger than the outbound queue's byte \
                         bound (raise HubBuilder::outbound_queue's max_bytes above the largest \
                         message plus 10 bytes of frame header); any other drops or \
                         disconnections here are slow consumers"
                    );
                } else {
                    tracing::warn!(
                        %room,
                        dropped = result.dropped,
                        disconnected = result.disconnected,
                        similar_events_suppressed = suppressed,
                        total_dropped,
                        "tower-ws-hub: slow consumers: outbound queues full"
                    );
                }
            }
        }
    }

    /// A message another instance published to `room`, already encoded as a frame: delivered
    /// to the room's local members, if it still has any. Never blocks.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn deliver_from_broker(&self, room: &str, runs: &[Frames]) {
        if let Some(room) = self.registry.get(room) {
            // Counted as published where it was published (and in the broker's `received`
            // here), not once more per instance it reaches.
            let result = room.fan_out(|| runs, None);
            self.record_pushes(room.name(), result);
        }
    }

    /// Messages a client sent (after the message hook), in order: local fan-out of the ones
    /// from `delivered` on (the ones before it reached the local members at an earlier call)
    /// as one batch, then the broker. Returns how many, from the front, the broker took or
    /// refused for good: all of them, unless the broker has clients wait for room in a full
    /// queue ([`Broker::publish_reserved`]); the rest are to be handed over again, with the
    /// same `messages` from the front and `delivered` counting them, once the broker's room
    /// (`Broker::room_for`) allows.
    pub(crate) fn publish_from(
        &self,
        room: &Room,
        messages: &[Message],
        delivered: usize,
        sender: ConnectionId,
    ) -> usize {
        if let Some(fresh) = messages.get(delivered..).filter(|fresh| !fresh.is_empty()) {
            let exclude = (!self.config.echo_to_sender).then_some(sender);
            self.fan_out(room, fresh.len(), || RunBuilder::pack(fresh), exclude);
        }
        if let Some(taken) = self.broker.publish_reserved(room.name(), messages) {
            return taken;
        }
        self.publish_now(room.name(), messages);
        messages.len()
    }

    /// Hands a client's messages to the broker without waiting; what it refuses (it counts
    /// them) is logged.
    fn publish_now<'m>(&self, room: &Arc<str>, messages: impl IntoIterator<Item = &'m Message>) {
        for message in messages {
            if let Err(error) = self.broker.publish(room, message) {
                self.not_forwarded(room, &error);
            }
        }
    }

    /// Logs (at a sane rate) a client's message the broker refused; the broker counted it.
    fn not_forwarded(&self, room: &str, error: &str) {
        if let Some(suppressed) = self.drop_log.allow() {
            tracing::warn!(%room, %error, similar_events_suppressed = suppressed,
                "tower-ws-hub: message not forwarded to other instances");
        }
    }

    fn close_all(&self, intent: CloseIntent) {
        for room in self.registry.all() {
            room.for_each_member(|member| member.queue.close(intent));
        }
    }

    /// The server never handed the socket over after our `101`.
    fn upgrade_failed(&self, id: ConnectionId, error: &hyper::Error) {
        if !error.is_user() {
            // The client went away (or the connection failed) before the hand-over: its
            // business, not a server misconfiguration.
            tracing::debug!(%id, %error, "tower-ws-hub: client gone before the upgrade completed");
            return;
        }
        // hyper's "upgrade expected but low level API in use": the server has no upgrade support.
        Counters::incr(&self.counters.handshakes_rejected);
        if let Some(suppressed) = self.upgrade_failure_log.allow() {
            tracing::error!(
                %error,
                similar_events_suppressed = suppressed,
                "tower-ws-hub: the HTTP server answered 101 but did not hand over the connection. \
                 It does not support upgrades (tonic's own Server is one such): serve the router \
                 with axum::serve (tonic: Routes::into_axum_router()) or hyper-util's \
                 serve_connection_with_upgrades"
            );
        }
    }
}

/// `503` with `Retry-After` (seconds).
fn unavailable(reason: &'static str, retry_after: &'static str) -> Rejection {
    Rejection::new(StatusCode::SERVICE_UNAVAILABLE, reason)
        .with_header(header::RETRY_AFTER, HeaderValue::from_static(retry_after))
}

/// `503`: the hub is shutting down.
pub(crate) fn shutting_down() -> Rejection {
    unavailable("server is shutting down", "5")
}

/// A place reserved for one connection, from the handshake until the connection ends.
#[derive(Debug)]
pub(crate) struct Reservation {
    hub: Hub,
    /// The room's place, with a room limit.
    room: Option<Arc<str>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let inner = &self.hub.inner;
        inner.reserved.fetch_sub(1, Ordering::AcqRel);
        if let Some(room) = self.room.take() {
            let mut rooms = lock(&inner.room_reserved);
            if let Some(count) = rooms.get_mut(&room) {
                *count -= 1;
                if *count == 0 {
                    rooms.remove(&room);
                }
            }
        }
    }
}

/// An upgrade request that passed the handshake, origin, subprotocol, limit and authorization
/// checks, waiting for [`Hub::start`].
#[derive(Debug)]
pub(crate) struct PendingConnection {
    pub(crate) parts: http::request::Parts,
    pub(crate) on_upgrade: OnUpgrade,
    pub(crate) room: String,
    pub(crate) handshake: Handshake,
    pub(crate) protocol: Option<HeaderValue>,
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) reservation: Reservation,
}

/// A connection's place in its room; leaving happens on drop, whatever ended the connection.
#[derive(Debug)]
pub(crate) struct Membership {
    hub: Hub,
    room: Arc<Room>,
    id: ConnectionId,
}

impl Membership {
    pub(crate) fn room(&self) -> &Arc<Room> {
        &self.room
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let inner = &self.hub.inner;
        inner
            .registry
            .leave(&self.room, self.id, |name| inner.broker.room_left(name));
        inner.counters.connection_closed();
    }
}

async fn os_shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Builds a [`Hub`]. Every setting has a production-safe default, listed with its setter.
///
/// ```
/// use std::time::Duration;
/// use tower_ws_hub::{Hub, InboundAction, SlowConsumerPolicy};
///
/// let hub = Hub::builder()
///     .max_message_size(16 * 1024)
///     .ping_interval(Some(Duration::from_secs(15)))
///     .slow_consumer_policy(SlowConsumerPolicy::DropOldest)
///     .on_message(|ctx, msg| {
///         tracing::debug!(room = ctx.room(), len = msg.len(), "message");
///         InboundAction::Forward(msg)
///     })
///     .build();
/// # drop(hub);
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct HubBuilder {
    config: HubConfig,
    hooks: Hooks,
    /// Set by the broker's own builder methods (`HubBuilder::redis` lives in `broker::redis`).
    pub(crate) broker: BrokerConfig,
}

impl HubBuilder {
    /// Largest inbound message in bytes; a larger one closes the connection with 1009.
    /// Default: 64 KiB.
    ///
    /// # Panics
    ///
    /// If `bytes` is 0.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "max_message_size must be at least 1 byte");
        self.config.max_message_size = bytes;
        self
    }

    /// Largest inbound frame payload in bytes; a larger one closes the connection with 1009.
    /// Default: 64 KiB.
    ///
    /// # Panics
    ///
    /// If `bytes` is 0.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "max_frame_size must be at least 1 byte");
        self.config.max_frame_size = bytes;
        self
    }

    /// Per-connection socket read buffer. Small keeps idle connections cheap; large reads
    /// floods of big messages in fewer syscalls. The buffer grows to hold a large frame (one
    /// of more than about half its size may double it) and goes back to this size once the
    /// client's bytes so far are read and nothing else is buffered (the connection starts a
    /// fresh parser between messages), so a client that once sent a large message does not
    /// keep its size for the rest of the connection. While a frame is arriving, the buffer
    /// holds up to [`max_frame_size`](Self::max_frame_size) plus this size; while a fragmented
    /// message is, the connection holds up to [`max_message_size`](Self::max_message_size).
    /// Default: [`DEFAULT_READ_BUFFER_SIZE`](crate::DEFAULT_READ_BUFFER_SIZE) (2 KiB).
    ///
    /// # Panics
    ///
    /// If `bytes` is 0.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "read_buffer_size must be at least 1 byte");
        self.config.read_buffer_size = bytes;
        self
    }

    /// Bounds of each connection's outbound queue: at most `max_messages` messages and
    /// `max_bytes` bytes of encoded frames (each message's payload plus its 2–10-byte frame
    /// header) waiting for the socket (including what the writer took and has not handed to
    /// the socket yet). Default: 1024 messages, 4 MiB. Frames are shared between receivers, so
    /// the byte bound limits what one slow client can keep alive; small messages that arrived
    /// together share one buffer of at most 16 KiB, and under
    /// [`SlowConsumerPolicy::DropOldest`] a queue can keep one such buffer beyond the bound.
    ///
    /// A message whose frame is larger than `max_bytes` can never be queued: whatever the
    /// [policy](Self::slow_consumer_policy), it is dropped for every receiver (counted in
    /// [`HubStats::dropped_messages`](crate::HubStats::dropped_messages) and logged), and
    /// nobody is disconnected for it. Keep `max_bytes` above
    /// [`max_message_size`](Self::max_message_size) plus 10 if clients' messages must always
    /// go through.
    ///
    /// # Panics
    ///
    /// If either bound is 0.
    pub fn outbound_queue(mut self, max_messages: usize, max_bytes: usize) -> Self {
        assert!(
            max_messages > 0 && max_bytes > 0,
            "outbound queue bounds must be at least 1"
        );
        self.config.outbound_max_messages = max_messages;
        self.config.outbound_max_bytes = max_bytes;
        self
    }

    /// What to do when a client's outbound queue is full. Default:
    /// [`SlowConsumerPolicy::Disconnect`] (close code 1013).
    pub fn slow_consumer_policy(mut self, policy: SlowConsumerPolicy) -> Self {
        self.config.slow_consumer = policy;
        self
    }

    /// Interval between server pings; `None` disables them (and with them the detection of dead
    /// peers). Default: 30 s. Durations over a year count as a year.
    ///
    /// # Panics
    ///
    /// If the interval is zero.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        assert!(
            interval != Some(Duration::ZERO),
            "ping_interval must be positive (use None to disable pings)"
        );
        self.config.ping_interval = interval;
        self
    }

    /// How long a client has to answer a ping before it is closed with 1008. Default: 20 s.
    /// Durations over a year count as a year. While reading the client waits for room in a
    /// full Redis publish queue, the verdict waits until what the client sent has been read:
    /// a pong behind messages the hub could not read yet still counts. Reading the backlog
    /// such waits left may take as long again as they lasted (at most 25 s); the timeout
    /// then counts again from the last look.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: no client could answer in time, and a connection whose reading
    /// waits on Redis would be woken about once a millisecond to look again. To stop checking
    /// for pongs, turn pings off with [`ping_interval(None)`](Self::ping_interval).
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "pong_timeout must be positive (use ping_interval(None) to stop pinging and \
             waiting for pongs)"
        );
        self.config.pong_timeout = timeout;
        self
    }

    /// How long to wait for the client's close frame after sending ours, and, once the client
    /// has sent its close frame, for our answer to be written, before dropping the socket.
    /// Default: 5 s. Durations over a year count as a year.
    ///
    /// After a close for a broken frame or a limit (1002, 1007, 1009), where the rest of what
    /// the client sends can no longer be parsed, the hub writes its close frame, closes its
    /// side of the TCP connection, and reads and drops whatever the client still sends until
    /// the client closes its side, for at most this long. Dropping the socket with that data
    /// unread would make the kernel answer with a reset, which can cost the client our close
    /// frame: a browser still sending an oversized message would report 1006 instead of 1009.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: the socket would be dropped at the timer's next tick, whether our
    /// close frame was written or not and with whatever the client still sends unread (the
    /// reset described above). To drop unresponsive clients quickly, use a short timeout such
    /// as 100 ms.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "close_timeout must be positive: our close frame needs time to be written and the \
             client's to be read (use a short timeout such as 100 ms to close quickly)"
        );
        self.config.close_timeout = timeout;
        self
    }

    /// How long [`Hub::shutdown`] waits for connections to drain and close. Default: 10 s.
    ///
    /// `Duration::ZERO` does not wait for the drain: the connections still open are dropped at
    /// once (at the timer's next tick), losing what they had not written by then, queued
    /// messages and close frame included (`on_disconnect` still runs for each), and accepted
    /// upgrades still waiting for their socket are abandoned.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Longest room name in bytes (after percent-decoding), for upgrade requests and for
    /// [`Hub::publish`]. Default: 256.
    ///
    /// # Panics
    ///
    /// If `bytes` is 0.
    pub fn max_room_name_len(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "max_room_name_len must be at least 1 byte");
        self.config.max_room_name_len = bytes;
        self
    }

    /// Most connections this instance serves at once (counted from the accepted handshake);
    /// further upgrade requests get `503` with `Retry-After`. Default: `None` (only the
    /// process's file-descriptor limit applies).
    pub fn max_connections(mut self, max: Option<usize>) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Most local members of one room; further upgrade requests for that room get `503` with
    /// `Retry-After`. Counted from the accepted handshake, like
    /// [`max_connections`](Self::max_connections): upgrades still in flight (an authorizer
    /// deciding, a `101` on its way) hold their place, so the limit is never overshot.
    /// Default: `None`.
    pub fn max_room_connections(mut self, max: Option<usize>) -> Self {
        self.config.max_room_connections = max;
        self
    }

    /// Inbound rate limit per connection: a token bucket refilled at `per_second` messages a
    /// second holding at most `burst`; a client that sends faster is closed with 1008
    /// ("rate limit exceeded"). Data messages, pings and pongs each take a token (a ping flood
    /// costs the server as much as a message flood; the pong that answers the hub's own ping
    /// once per [ping interval](Self::ping_interval) takes one too), and so does every frame
    /// of a fragmented message: one sent in five frames takes five (a message that never
    /// ends, sent as endless empty fragments, costs like a flood of messages). Set `burst` to
    /// at least the most frames your clients split a message into. Default: `None` (no
    /// limit).
    ///
    /// # Panics
    ///
    /// If `per_second` is not a positive, finite number or `burst` is 0.
    pub fn inbound_rate_limit(mut self, per_second: f64, burst: u32) -> Self {
        assert!(
            per_second > 0.0 && per_second.is_finite() && burst > 0,
            "inbound_rate_limit needs a positive rate and burst"
        );
        self.config.inbound_rate = Some(crate::config::RateLimit { per_second, burst });
        self
    }

    /// Closes a connection (1000, "idle timeout") after this long without a data message from
    /// the client. Pings and pongs do not count as activity. Default: `None` (dead peers are
    /// still detected by the [ping interval](Self::ping_interval)). Durations over a year count
    /// as a year. Like the pong timeout, it is judged once what the client sent has been read
    /// while reading it waits for room in a full Redis publish queue.
    ///
    /// # Panics
    ///
    /// If the timeout is zero: every client would be closed as soon as it connected, and a
    /// connection whose reading waits on Redis would be woken about once a millisecond to
    /// look again. Use `None` for no idle timeout.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        assert!(
            timeout != Some(Duration::ZERO),
            "idle_timeout must be positive (use None for no idle timeout)"
        );
        self.config.idle_timeout = timeout;
        self
    }

    /// How long the server may take to hand over the socket after the `101`/`200` answer
    /// before the connection is abandoned. Default: 10 s.
    ///
    /// It counts from when the hub returns that answer to the layers in front of it, so time
    /// a middleware outside the hub spends before the answer reaches the client (holding the
    /// response, or rewriting it) counts too.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: whether a connection opened would depend on the server handing
    /// the socket over before the timer's next tick. Keep the default, or a few seconds.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "upgrade_timeout must be positive: the server hands the socket over only after \
             the answer is sent (keep the default 10 s, or a few seconds)"
        );
        self.config.upgrade_timeout = timeout;
        self
    }

    /// Whether the hub turns Nagle's algorithm off (`TCP_NODELAY`) on the WebSocket sockets it
    /// takes over. Default: `true`.
    ///
    /// The hub already coalesces whatever is queued for a connection into one write, so Nagle's
    /// algorithm mostly delays frames: a small frame written while the previous one is not yet
    /// acknowledged waits for the client's (possibly delayed) ACK, tens of milliseconds. This
    /// applies when the server hands over a plain TCP socket (`axum::serve`, hyper-util's
    /// `TokioIo<TcpStream>`); over TLS or HTTP/2 set it where the server accepts connections.
    ///
    /// What `false` buys: when the machine is saturated and clients fall behind, Nagle holds
    /// what a client has not acknowledged yet and sends it with the next frame, so fewer
    /// segments go out. Measured on a 2-core VM run flat out (BENCHMARKS.md, `rate100`: 100
    /// messages/s to each of 1000 subscribers, a message every 10 ms, which the write interval
    /// does not coalesce), `false` sent a quarter fewer segments (0.74–0.77 per delivery
    /// against 0.98–0.99) but doubled the median latency (24–25 ms against 10.5–11.4 ms), and
    /// p99 was no better (37.0–39.6 ms against 29.3–39.2 ms). The server's own CPU time fell
    /// by about 40 %, but on loopback most of that is the client's receive work, which then
    /// runs in the client's process: server and client together used about 12 % less.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.config.tcp_nodelay = nodelay;
        self
    }

    /// The shortest time between two writes of data to one connection. Default: 4 ms
    /// ([`DEFAULT_WRITE_INTERVAL`](crate::DEFAULT_WRITE_INTERVAL)); `Duration::ZERO`
    /// writes every message as soon as the connection's task runs.
    ///
    /// A message for a connection that has had nothing written for this long (for the
    /// current interval, if a steady stream grew it; see below) goes out at once. One that
    /// comes sooner after the last write waits for the rest of the interval,
    /// and everything that arrives meanwhile goes out with it in one vectored write. So a
    /// message is held back only while messages for its connection come faster than one per
    /// interval. Order is kept.
    ///
    /// While a held-back write keeps finding more than one message per `write_interval`
    /// since the last write (a steady stream), the interval grows by this much at each
    /// write, up to [`max_write_interval`](Self::max_write_interval) (12 ms by default); it
    /// is back to this value at the first write that finds fewer, or when the client sends
    /// a data message. A message is held back by at most the current interval, except while
    /// the hub is behind (next paragraph).
    ///
    /// While the hub is behind, a message that would go out at once waits too: when a Redis
    /// subscriber connection finds more than 32 messages already waiting (messages come in
    /// faster than this instance hands them out), then for the next 50 ms a lone message for
    /// a connection that had nothing written for an interval waits for
    /// [`max_write_interval`](Self::max_write_interval), once, or until the
    /// [outbound queue](Self::outbound_queue) holds a quarter of its bound, so that what comes
    /// next for it shares the write. (A message that already waited for the interval is not
    /// held again, nor one that is already past a quarter of the queue's bound on its own.)
    /// Under such a backlog a write costs the machine about as much for one
    /// message as for several, and each write saved is CPU for the backlog: measured
    /// (BENCHMARKS.md, `rooms_long`: 1000 rooms of 5 on two instances, 100 000 messages as
    /// fast as they go, each subscriber getting one every 20–30 ms), p99 latency was lower
    /// than the same hub's without these waits in 8 of 10 pairs (median 0.82×, p50 0.88×), at
    /// the same throughput. A connection with several messages waiting is written at once as
    /// before, and a hub that keeps up (or runs without Redis) never waits this way.
    /// [`HubStats::backlog_holds`] counts these waits.
    ///
    /// Never held back:
    /// - anything for a client that sent a data message less than an interval ago: a client
    ///   that waits for each answer (a reply from the message hook, its own echo, the room's
    ///   response) is not slowed down to one exchange per interval;
    /// - control frames (pongs, pings, close frames), and the messages still queued when a
    ///   [shutdown](crate::Hub::shutdown) starts draining the connection;
    /// - the rest of a backlog the writer is working through (it takes half the
    ///   [outbound queue](Self::outbound_queue) at a time).
    ///
    /// Held-back messages stay in the outbound queue and count against its bounds: at a
    /// steady `r` messages per second to one connection, about `r × max_write_interval` of
    /// them wait.
    ///
    /// Why: each write is a system call and, on the client's side, a wake-up and a read.
    /// Under a steady stream of messages to many connections, writing each message on its
    /// own spends the CPU on those instead of on delivering, and latency grows with the
    /// backlog. Measured on a 2-core machine (BENCHMARKS.md, `rate1000`: 1000 messages/s to
    /// 1000 subscribers on two instances), 4 ms took p99 latency from 29–63 ms down to
    /// 10.5–15 ms and the servers' CPU time down by about a quarter; 1 ms did not help there
    /// (56 ms), 2 ms most of the way (17 ms).
    ///
    /// Where each write costs more (a slower machine, or one the server shares) and the
    /// stream still saturates the cores at 4 ms, a longer interval trades a bounded wait for
    /// the queueing: on a VM where a loopback write cost about 14 µs, the same scenario
    /// measured p99 108–123 ms at 4 ms, 104 ms at 8 ms, 65 ms at 12 ms and 41–78 ms at 16 ms.
    /// [`max_write_interval`](Self::max_write_interval) lets a steady stream get there
    /// without holding back the first message after a write for that long.
    pub fn write_interval(mut self, interval: Duration) -> Self {
        self.config.write_interval = interval;
        self
    }

    /// The longest the [write interval](Self::write_interval) grows to under a steady stream,
    /// and how long a lone message waits while the hub is behind (see
    /// [`write_interval`](Self::write_interval)). Default: 12 ms
    /// ([`DEFAULT_MAX_WRITE_INTERVAL`](crate::DEFAULT_MAX_WRITE_INTERVAL)); a value not above
    /// `write_interval` keeps the interval fixed.
    ///
    /// A connection whose held-back writes keep finding more than one message per
    /// `write_interval` since its last write is in a stream faster than the interval: it is
    /// written less often, the interval growing by `write_interval` at each such write up to
    /// this. Each write then carries more messages, for less CPU per message on both ends
    /// (server and client), at the price of waiting up to this long. The first write that
    /// finds fewer (the stream slowed down or stopped), or a data message from the client,
    /// puts the interval back to `write_interval`. Slower streams (a message every 10 ms
    /// with the default 4 ms interval, say) never grow it. Nor does a write that carries more
    /// than a quarter of the [outbound queue](Self::outbound_queue)'s bound (in messages or
    /// bytes): held-back messages count against the queue, and waiting longer must not
    /// overflow it for a client that keeps up.
    ///
    /// Measured (BENCHMARKS.md, `rate1000`: 1000 messages/s to each of 1000 subscribers on
    /// two instances, a 2-core VM): with the interval fixed at 4 ms, p99 latency 25.7–33.3
    /// ms; fixed at 8 ms 13.1–27.3 ms; 12 ms 16.3–17.9 ms; 16 ms 19.9–20.8 ms; 20 ms
    /// 23.3–24.4 ms. From 4 ms growing to 12 ms (the defaults): 18.0–20.4 ms against
    /// 19.6–63.6 ms fixed at 4 ms in the same run, with a quarter less CPU for the servers
    /// and for the load generator; `rate100` (a message every 10 ms) measured the same
    /// either way.
    ///
    /// The best maximum depends on what a write costs. On a VM where a write cost more
    /// (about 10 µs of server CPU per delivery at 100 messages/s, both cores saturated),
    /// 16 ms had the lower p99 in 7 of 8 pairs against 12 ms run by hand (21.4–29.7 ms
    /// against 21.5–42.4 ms; 20 ms: 24.9–26.0 ms), though in only 2 of 4 in a later, noisier
    /// run; it took less server CPU in every pair (10–16 % less in that run).
    /// If your servers run the cores flat out under streams like these, try a longer one.
    pub fn max_write_interval(mut self, interval: Duration) -> Self {
        self.config.max_write_interval = interval;
        self
    }

    /// Whether a client's messages are also delivered back to itself. Default: `false` (the
    /// sender is excluded).
    pub fn echo_to_sender(mut self, echo: bool) -> Self {
        self.config.echo_to_sender = echo;
        self
    }

    /// Whether each connection keeps all of its upgrade request's headers for hooks
    /// ([`ConnectionContext::headers`]), copied into their own allocation. Default: `false`
    /// (none kept but those named with [`keep_request_header`](Self::keep_request_header)).
    ///
    /// Independent of [`keep_request_header`](Self::keep_request_header), whatever the order
    /// of the calls: `false` does not forget the named headers, which are kept either way.
    ///
    /// They live as long as the connection: measured (BENCHMARKS.md, `idle`), a Chrome
    /// handshake's headers (a dozen, about 700 bytes with a session cookie) take 3.3 KiB per
    /// connection, an idle connection 8.3 KiB instead of 5.0. Authentication belongs in the
    /// middleware in front of the layer, whose results reach hooks as request extensions.
    pub fn keep_request_headers(mut self, keep: bool) -> Self {
        self.config.retention.headers.all = keep;
        self
    }

    /// Keeps this request header (every value of it) for hooks
    /// ([`ConnectionContext::headers`]); call once per header. Without
    /// [`keep_request_headers(true)`](Self::keep_request_headers), only the named headers are
    /// kept, at the cost of their own size. Default: none kept.
    ///
    /// A named header is kept whatever [`keep_request_headers`](Self::keep_request_headers)
    /// says and in whichever order the two are called: `keep_request_headers(false)` after
    /// this still keeps it.
    ///
    /// ```
    /// use tower_ws_hub::Hub;
    ///
    /// let hub = Hub::builder()
    ///     .keep_request_header(http::header::USER_AGENT)
    ///     .on_connect(|ctx| {
    ///         let agent = ctx.headers().get(http::header::USER_AGENT);
    ///         tracing::info!(?agent, "connected");
    ///     })
    ///     .build();
    /// # drop(hub);
    /// ```
    pub fn keep_request_header(mut self, name: http::HeaderName) -> Self {
        let named = &mut self.config.retention.headers.named;
        if !named.contains(&name) {
            named.push(name);
        }
        self
    }

    /// Keeps only the listed request extension types for hooks
    /// ([`ConnectionContext::extensions`]): call once per type (e.g. the `User` your auth
    /// middleware inserts). Default: every extension is kept.
    ///
    /// Kept extensions live as long as the WebSocket, and can hold on to much more than
    /// themselves: a value that is a slice of the request (a cloned `HeaderValue`, `Uri` or
    /// `Bytes`) keeps hyper's whole connection read buffer (8 KiB or more) alive. Store owned
    /// copies in your middleware's extensions, or list only the types hooks need. axum's
    /// `OriginalUri`, which axum's `Router` inserts into every request, is such a slice: with
    /// the `axum` cargo feature (on by default) the connection keeps its own copy of it.
    ///
    /// ```
    /// #[derive(Clone)]
    /// struct User { name: String }
    ///
    /// let hub = tower_ws_hub::Hub::builder().keep_extension::<User>().build();
    /// # drop(hub);
    /// ```
    pub fn keep_extension<T: Clone + Send + Sync + 'static>(mut self) -> Self {
        self.config
            .retention
            .extensions
            .get_or_insert_with(Vec::new)
            .push(context::copy_extension::<T>);
        self
    }

    /// Keeps no request extensions for hooks (the leanest connections). Default: all kept.
    pub fn keep_no_extensions(mut self) -> Self {
        self.config.retention.extensions = Some(Vec::new());
        self
    }

    /// Called once per connection after it joined its room. If it panics, the connection is
    /// closed with 1011 and [`on_disconnect`](Self::on_disconnect) still runs. Default: none.
    ///
    /// Runs on the connection's task, before it reads or writes anything, so it must not
    /// block: spawn a task for slow work (a database lookup, a call to another service). A
    /// hook that blocks holds up a runtime worker, and [`Hub::shutdown`] does not wait for it
    /// past its grace period and one more second.
    pub fn on_connect(mut self, hook: impl Fn(&ConnectionContext) + Send + Sync + 'static) -> Self {
        self.hooks.on_connect = Some(Arc::new(hook));
        self
    }

    /// Called once per connection after it left its room, however it ended (a panicking hook
    /// included). Like [`on_connect`](Self::on_connect), it must not block. Default: none.
    pub fn on_disconnect(
        mut self,
        hook: impl Fn(&ConnectionContext) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_disconnect = Some(Arc::new(hook));
        self
    }

    /// Called for every data message a client sends, before it reaches the room: forward it
    /// (as is or transformed), reply to the sender only, or drop it. Runs on the connection's
    /// task, in order, so it must not block; the default forwards everything unchanged. If it
    /// panics, the connection is closed with 1011 (what the client sent before still reaches
    /// the room), counted in [`HubStats::hook_panics`] and logged.
    ///
    /// Messages a client sends in a burst are read together: the hook runs for each of them,
    /// then the forwarded ones go to the room as one batch (a reply is queued after the
    /// forwarded messages before it). A message the hook itself publishes with
    /// [`Hub::publish`] may therefore reach the room before messages the same client sent just
    /// before, in the same burst.
    pub fn on_message(
        mut self,
        hook: impl Fn(&ConnectionContext, Message) -> InboundAction + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_message = Some(Arc::new(hook));
        self
    }

    /// Builds the hub. Returns at once: with a broker configured (e.g. Redis) it connects in
    /// the background and keeps retrying; [`Hub::broker_status`] says when it is connected.
    ///
    /// # Panics
    ///
    /// With a broker configured, outside a Tokio runtime (the broker's tasks start here).
    pub fn build(self) -> Hub {
        let broker = self.broker;
        Hub {
            // Cyclic: the broker's tasks deliver into the hub through a weak reference, so
            // they never keep it alive.
            inner: Arc::new_cyclic(|hub| HubInner {
                config: self.config,
                hooks: self.hooks,
                registry: RoomRegistry::default(),
                counters: Counters::default(),
                backlog: backlog::Backlog::default(),
                broker: Broker::start(broker, hub),
                next_id: AtomicU64::new(1),
                reserved: AtomicUsize::new(0),
                room_reserved: Mutex::default(),
                shutting_down: AtomicBool::new(false),
                grace_over: CancellationToken::new(),
                shutdown_started: tokio::sync::Notify::new(),
                tasks: TaskTracker::new(),
                drop_log: LogThrottle::per_second(),
                upgrade_failure_log: LogThrottle::per_second(),
                hook_panic_log: LogThrottle::per_second(),
                callback_panic_log: LogThrottle::per_second(),
                authorize_timeout_log: LogThrottle::per_second(),
                origin_refusal_log: LogThrottle::per_second(),
            }),
        }
    }

    /// Builds the hub and waits up to `timeout` for its broker to connect: for an application
    /// that would rather not start than start without Redis. An in-process hub is ready at
    /// once.
    ///
    /// `Duration::ZERO` does not wait: the hub is returned only if its broker is connected
    /// already, which an in-process hub always is and a Redis hub, which starts connecting
    /// here, practically never. `Duration::MAX` waits for as long as it takes.
    ///
    /// # Errors
    ///
    /// [`BrokerConnectError`] (with the last Redis error) if the broker is not connected in
    /// time; the half-built hub is shut down.
    ///
    /// # Panics
    ///
    /// As [`build`](Self::build).
    pub async fn build_connected(self, timeout: Duration) -> Result<Hub, BrokerConnectError> {
        let hub = self.build();
        // `None`: a timeout too long to add to the clock (`Duration::MAX`), i.e. no deadline.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let status = hub.broker_status();
            if status.connected {
                return Ok(hub);
            }
            if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                hub.inner.broker.shutdown().await;
                return Err(BrokerConnectError {
                    waited: timeout,
                    status,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::time::Duration;

    use super::{Hub, HubBuilder};

    /// The panic message of `set` applied to a fresh builder, or `None` if it did not panic.
    fn refusal(set: impl FnOnce(HubBuilder) -> HubBuilder) -> Option<String> {
        let payload = catch_unwind(AssertUnwindSafe(|| drop(set(Hub::builder())))).err()?;
        Some(super::hooks::panic_message(&*payload).to_owned())
    }

    /// A zero timeout that waits on the client is a configuration error, refused where it is
    /// set with what to use instead (a zero pong or idle timeout used to be accepted, and woke
    /// a connection whose reading waits on Redis about once a millisecond).
    #[test]
    fn zero_timeouts_on_the_client_are_refused_with_what_to_use_instead() {
        type Set = fn(HubBuilder) -> HubBuilder;
        let cases: [(&str, Set, &str); 5] = [
            (
                "ping_interval",
                |b| b.ping_interval(Some(Duration::ZERO)),
                "use None",
            ),
            (
                "pong_timeout",
                |b| b.pong_timeout(Duration::ZERO),
                "use ping_interval(None)",
            ),
            (
                "idle_timeout",
                |b| b.idle_timeout(Some(Duration::ZERO)),
                "use None",
            ),
            (
                "close_timeout",
                |b| b.close_timeout(Duration::ZERO),
                "100 ms",
            ),
            (
                "upgrade_timeout",
                |b| b.upgrade_timeout(Duration::ZERO),
                "keep the default",
            ),
        ];
        for (option, set, instead) in cases {
            let message = refusal(set).unwrap_or_else(|| panic!("{option}(0) was accepted"));
            assert!(message.starts_with(option), "{option}: {message}");
            assert!(message.contains("positive"), "{option}: {message}");
            assert!(message.contains(instead), "{option}: {message}");
        }
    }

    /// The smallest positive value, the largest, and `None` where it is an option, are all
    /// accepted: only zero is refused.
    #[test]
    fn positive_timeouts_and_none_are_accepted() {
        for value in [Duration::from_nanos(1), Duration::MAX] {
            let accepted = refusal(|b| {
                b.ping_interval(Some(value))
                    .pong_timeout(value)
                    .idle_timeout(Some(value))
                    .close_timeout(value)
                    .upgrade_timeout(value)
            });
            assert_eq!(accepted, None, "{value:?}");
        }
        assert_eq!(refusal(|b| b.ping_interval(None).idle_timeout(None)), None);
    }

    /// Where zero has a documented meaning, it is accepted: no shutdown drain, no write
    /// interval (a maximum not above the interval keeps it fixed).
    #[test]
    fn zero_is_accepted_where_it_has_a_documented_meaning() {
        let accepted = refusal(|b| {
            b.shutdown_grace(Duration::ZERO)
                .write_interval(Duration::ZERO)
                .max_write_interval(Duration::ZERO)
        });
        assert_eq!(accepted, None);
    }
}
