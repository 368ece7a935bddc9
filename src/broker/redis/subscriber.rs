//! A subscriber task: one dedicated pub/sub connection, the rooms that hash to it, its probe.
//!
//! The task owns the connection for its whole life: (re)connect with backoff, subscribe the
//! probe channel and every room that has local members, then loop over three things — messages
//! (handed to local members at once, never waiting on anything), membership changes
//! (reconciled into one SUBSCRIBE/UNSUBSCRIBE, whose round trips run beside the loop, so that
//! rooms changing all the time hold up neither messages nor the probe), and the probe clock.
//! When the connection ends (a RESP2 stream just stops when Redis dies) or a probe does not
//! come back, it starts over.

use std::any::Any;
use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use deadpool_redis::redis::{self, Msg, aio::PubSubSink, aio::PubSubStream};
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::envelope::{
    EnvelopeError, EnvelopeKey, check_signed, check_unsigned, decode_frame_into, peek_origin,
    random_u64,
};
use super::{RedisConfig, Shared, SubscriberSlot};
use crate::connection::frames::RunBuilder;
use crate::hub::HubInner;
use crate::hub::backlog::BEHIND_BATCH;
use crate::sync::lock;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command when many rooms change at once.
const CHANNELS_PER_COMMAND: usize = 256;
/// Messages taken from the connection without waiting, once one arrived, before they are handed
/// to local members (consecutive messages for one room go out as one batch).
const RECEIVE_BATCH: usize = 128;

/// Consecutive messages for one room, delivered together: each local member's queue is locked,
/// and its writer woken, once per run instead of once per message.
#[derive(Default)]
struct Run {
    room: String,
    frames: RunBuilder,
}

impl Run {
    /// Adds the message of an envelope received for `room`, after its checks.
    fn push(
        &mut self,
        hub: &HubInner,
        room: &str,
        envelope: &[u8],
        key: Option<(&str, &EnvelopeKey)>,
    ) -> Result<(), EnvelopeError> {
        if self.room != room {
            self.deliver(hub);
            room.clone_into(&mut self.room);
        }
        decode_frame_into(envelope, key, &mut self.frames)
    }

    fn deliver(&mut self, hub: &HubInner) {
        if !self.frames.is_empty() {
            let runs = std::mem::take(&mut self.frames).finish();
            hub.deliver_from_broker(&self.room, &runs);
        }
    }
}

pub(crate) struct Subscriber {
    pub(crate) index: usize,
    pub(crate) slot: Arc<SubscriberSlot>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: Arc<RedisConfig>,
    pub(crate) hub: Weak<HubInner>,
    pub(crate) cancel: CancellationToken,
}

/// Why a session ended.
enum Ended {
    Cancelled,
    /// Could not connect or subscribe, or the connection dropped.
    Lost(String),
    /// Redis answered, and refused: bad credentials, or a user the ACL does not allow to
    /// subscribe to this hub's channels.
    Refused(String),
    /// The connection looked open but a probe did not come through.
    Starved(String),
    /// The session panicked (a bug), with the panic's payload.
    Panicked(Box<dyn Any + Send>),
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<i64, String>> + Send>>;

/// A reconcile running beside the session loop: it has the sink and the subscribed set, and
/// hands them back with its result.
type Reconciling<'a> =
    Pin<Box<dyn Future<Output = (PubSubSink, HashSet<Arc<str>>, Result<(), Ended>)> + Send + 'a>>;

/// End-to-end check that this connection still receives what is published.
struct Probe {
    channel: String,
    /// Random per session, in every probe's payload (`{token:016x}:{seq}`): only this
    /// session's own probes count, not a late one from an earlier session on the same channel,
    /// nor anything else published there.
    token: u64,
    /// Last sequence number sent.
    sent: u64,
    /// Highest sequence number received back.
    received: u64,
    /// A probe Redis accepted and that has not come back yet, with when it was accepted.
    outstanding: Option<(u64, Instant)>,
    /// The PUBLISH of a probe, running beside the message loop.
    publishing: Option<ProbeFuture>,
}

impl Probe {
    /// The sequence number of one of this session's probes that has been sent, or `None` for
    /// anything else on the channel.
    fn parse(&self, payload: &[u8]) -> Option<u64> {
        let (token, seq) = std::str::from_utf8(payload).ok()?.split_once(':')?;
        let token = u64::from_str_radix(token, 16).ok()?;
        let seq = seq.parse::<u64>().ok()?;
        (token == self.token && (1..=self.sent).contains(&seq)).then_some(seq)
    }
}

impl Subscriber {
    /// Runs `operation` with the operation timeout, giving up at once on shutdown.
    async fn bounded<T>(
        &self,
        what: &str,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Ended> {
        tokio::select! {
            () = self.cancel.cancelled() => Err(Ended::Cancelled),
            result = tokio::time::timeout(self.config.operation_timeout, operation) => match result {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) if is_refusal(&error) => {
                    Err(Ended::Refused(format!("{what}: {error}")))
                }
                Ok(Err(error)) => Err(Ended::Lost(format!("{what}: {error}"))),
                Err(_) => Err(Ended::Lost(format!(
                    "{what}: no reply within {:?}",
                    self.config.operation_timeout
                ))),
            },
        }
    }

    async fn subscribe(&self, sink: &mut PubSubSink, rooms: &[Arc<str>]) -> Result<(), Ended> {
        for chunk in rooms.chunks(CHANNELS_PER_COMMAND) {
            let channels: Vec<String> = chunk.iter().map(|r| self.shared.room_channel(r)).collect();
            self.bounded("SUBSCRIBE", sink.subscribe(channels)).await?;
        }
        Ok(())
    }

    async fn unsubscribe(&self, sink: &mut PubSubSink, rooms: &[Arc<str>]) -> Result<(), Ended> {
        for chunk in rooms.chunks(CHANNELS_PER_COMMAND) {
            let channels: Vec<String> = chunk.iter().map(|r| self.shared.room_channel(r)).collect();
            self.bounded("UNSUBSCRIBE", sink.unsubscribe(channels))
                .await?;
        }
        Ok(())
    }

    /// Brings the subscriptions in line with the rooms that changed since last time.
    async fn reconcile(
        &self,
        sink: &mut PubSubSink,
        subscribed: &mut HashSet<Arc<str>>,
    ) -> Result<(), Ended> {
        let (add, remove) = {
            let mut rooms = lock(&self.slot.rooms);
            let dirty = std::mem::take(&mut rooms.dirty);
            let mut add = Vec::new();
            let mut remove = Vec::new();
            for room in dirty {
                match (rooms.desired.contains(&room), subscribed.contains(&room)) {
                    (true, false) => add.push(room),
                    (false, true) => remove.push(room),
                    _ => {}
                }
            }
            (add, remove)
        };
        // On error the session ends and the next one subscribes the whole desired set, so
        // nothing taken from `dirty` is lost.
        self.subscribe(sink, &add).await?;
        subscribed.extend(add);
        self.unsubscribe(sink, &remove).await?;
        for room in &remove {
            subscribed.remove(room);
        }
        self.slot
            .subscribed
            .store(subscribed.len(), Ordering::Relaxed);
        Ok(())
    }

    fn start_probe(&self, probe: &mut Probe) {
        probe.sent += 1;
        let seq = probe.sent;
        let payload = format!("{:016x}:{seq}", probe.token);
        let pool = self.config.pool.clone();
        let channel = probe.channel.clone();
        let limit = self.config.operation_timeout;
        probe.publishing = Some(Box::pin(async move {
            let publish = async {
                let mut connection = pool.get().await.map_err(|e| e.to_string())?;
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&payload)
                    .query_async::<i64>(&mut *connection)
                    .await
                    .map_err(|e| e.to_string())
            };
            tokio::time::timeout(limit, publish)
                .await
                .map_err(|_| format!("no reply within {limit:?}"))?
        }));
    }

    fn probe_came_back(&self, probe: &mut Probe) {
        if let Some((seq, _)) = probe.outstanding
            && seq <= probe.received
        {
            probe.outstanding = None;
            *lock(&self.slot.probe_due) = None;
            *lock(&self.slot.last_probe_ok) = Some(Instant::now());
        }
    }

    /// A message from Redis: a probe, or an envelope for a room (added to `run`).
    fn on_message(&self, message: &Msg, probe: &mut Probe, hub: Option<&HubInner>, run: &mut Run) {
        let channel = message.get_channel_name();
        if channel == probe.channel {
            if let Some(seq) = probe.parse(message.get_payload_bytes()) {
                probe.received = probe.received.max(seq);
                self.probe_came_back(probe);
            }
            return;
        }
        let Some(room) = channel.strip_prefix(&self.shared.room_prefix) else {
            return;
        };
        let Some(hub) = hub else {
            return;
        };
        let payload = message.get_payload_bytes();
        #[cfg(test)]
        assert!(
            payload != super::recovery_tests::PANICKING_PAYLOAD,
            "test: a panic in the subscriber"
        );
        let key = self.config.signing_key.as_ref().map(|key| (channel, key));
        // Our own message, back from Redis: local members already have it. With a key, only
        // once the signature says it is ours: the instance id is no secret (it is in the probe
        // channels' names), and a forgery carrying it is as invalid as any other.
        // Without a key, the checks `Envelope::decode` makes (garbage carrying our id is
        // counted like any other).
        if peek_origin(payload) == Some(self.shared.instance) {
            let checked = match key {
                Some((channel, key)) => check_signed(payload, channel, key),
                None => check_unsigned(payload),
            };
            if let Err(error) = checked {
                self.invalid(room, &error, payload.len());
            }
            return;
        }
        match run.push(hub, room, payload, key) {
            Ok(()) => {
                self.shared.received.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => self.invalid(room, &error, payload.len()),
        }
    }

    /// Counts (and logs, at most once a second) a payload dropped from a room channel.
    fn invalid(&self, room: &str, error: &EnvelopeError, len: usize) {
        let shared = &self.shared;
        let total = shared.invalid_envelopes.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(suppressed) = shared.invalid_log.allow() {
            tracing::warn!(
                %room,
                %error,
                len,
                similar_events_suppressed = suppressed,
                total_invalid = total,
                "tower-ws-hub: dropped a payload on a room channel that is not a valid \
                 envelope (see tower_ws_hub::redis for the format)"
            );
        }
    }

    /// One connection, from connect to loss.
    async fn session(&self, probe_channel: &str, backoff: &mut Backoff) -> Ended {
        let client = &self.config.subscriber_client;
        let pubsub = match self.bounded("connect", client.get_async_pubsub()).await {
            Ok(pubsub) => pubsub,
            Err(ended) => return ended,
        };
        let (mut sink, mut stream) = pubsub.split();
        if let Err(ended) = self
            .bounded("SUBSCRIBE probe", sink.subscribe(probe_channel))
            .await
        {
            return ended;
        }
        let everything: Vec<Arc<str>> = {
            let mut rooms = lock(&self.slot.rooms);
            rooms.live = true;
            rooms.dirty.clear();
            rooms.desired.iter().cloned().collect()
        };
        if let Err(ended) = self.subscribe(&mut sink, &everything).await {
            return ended;
        }
        let subscribed: HashSet<Arc<str>> = everything.into_iter().collect();
        self.slot
            .subscribed
            .store(subscribed.len(), Ordering::Relaxed);
        self.slot.connected.store(true, Ordering::Release);
        if backoff.failures() > 0 {
            tracing::info!(
                subscriber = self.index,
                rooms = subscribed.len(),
                attempts = backoff.failures(),
                "tower-ws-hub: Redis subscriber connected, rooms resubscribed"
            );
        }
        // The backoff starts over only once this connection has proved that it receives (its
        // first probe came back, see the loop): one that connects and subscribes but is then
        // found starved at every attempt (Redis says nobody listens to its probe, or the probe
        // never arrives) is retried with growing delays, not every `reconnect_min` forever.

        let mut probe = Probe {
            channel: probe_channel.to_owned(),
            token: random_u64(),
            sent: 0,
            received: 0,
            outstanding: None,
            publishing: None,
        };
        let mut run = Run::default();
        let mut clock = tokio::time::interval(self.config.probe_interval);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The sink and the subscribed set, while no reconcile has them.
        let mut idle = Some((sink, subscribed));
        // A reconcile under way: its round trips to Redis run beside the loop, so that
        // messages, the probe and its clock never wait for them, however often rooms change.
        let mut reconciling: Option<Reconciling<'_>> = None;
        loop {
            if probe.received > 0 && backoff.failures() > 0 {
                backoff.reset();
            }
            // Not `biased`: of the branches that are ready, tokio polls a random one first, so
            // that a flood of messages cannot keep the others from their turn.
            tokio::select! {
                () = self.cancel.cancelled() => return Ended::Cancelled,
                // One reconcile at a time; changes meanwhile leave a permit in `changed`, and
                // the next reconcile takes them all.
                () = self.slot.changed.notified(), if reconciling.is_none() => {
                    let (mut sink, mut subscribed) = idle.take().expect("no reconcile under way");
                    reconciling = Some(Box::pin(async move {
                        let result = self.reconcile(&mut sink, &mut subscribed).await;
                        (sink, subscribed, result)
                    }));
                }
                (sink, subscribed, result) =
                    async { reconciling.as_mut().expect("checked").await },
                    if reconciling.is_some() =>
                {
                    reconciling = None;
                    idle = Some((sink, subscribed));
                    if let Err(ended) = result {
                        return ended;
                    }
                }
                result = async { probe.publishing.as_mut().expect("checked").await },
                    if probe.publishing.is_some() =>
                {
                    probe.publishing = None;
                    match result {
                        Ok(0) => {
                            return Ended::Starved(
                                "Redis reports nobody subscribed to this connection's probe \
                                 channel (the connection is dead, or the pool and the subscriber \
                                 client point at different servers)"
                                    .to_owned(),
                            );
                        }
                        Ok(_) => {
                            let now = Instant::now();
                            probe.outstanding = Some((probe.sent, now));
                            *lock(&self.slot.probe_due) = Some(now + self.config.probe_timeout);
                            #[cfg(test)]
                            super::recovery_tests::stall_after_a_probe_is_accepted(
                                &self.shared.channel_prefix,
                                self.config.probe_timeout,
                            );
                            self.probe_came_back(&mut probe);
                        }
                        // Publishing is down; the publisher reports it. Nothing learned here.
                        Err(error) => {
                            self.shared.record_error(&format!("probe PUBLISH: {error}"));
                            tracing::debug!(subscriber = self.index, %error,
                                "tower-ws-hub: probe not published");
                        }
                    }
                }
                _ = clock.tick() => {
                    // A probe's answer may be waiting behind other messages (the loop was
                    // busy): read what has arrived before looking at the deadline.
                    if let Err(ended) = self.receive(None, &mut stream, &mut probe, &mut run) {
                        return ended;
                    }
                    if let Err(ended) = self.check_probe(&probe) {
                        return ended;
                    }
                    if probe.outstanding.is_none() && probe.publishing.is_none() {
                        self.start_probe(&mut probe);
                    }
                }
                message = stream.next() => match message {
                    Some(message) => {
                        if let Err(ended) =
                            self.receive(Some(message), &mut stream, &mut probe, &mut run)
                        {
                            return ended;
                        }
                    }
                    None => return Ended::Lost("connection closed".to_owned()),
                },
            }
        }
    }

    /// Handles `first` (a message just received) and whatever else has already arrived,
    /// without waiting, up to [`RECEIVE_BATCH`] messages in all; then hands them to local
    /// members, in runs per room.
    fn receive(
        &self,
        first: Option<Msg>,
        stream: &mut PubSubStream,
        probe: &mut Probe,
        run: &mut Run,
    ) -> Result<(), Ended> {
        // `None` while the hub is being built (or once it is gone): probes are still handled,
        // room messages have nowhere to go.
        let hub = self.hub.upgrade();
        let hub = hub.as_deref();
        let mut ended = false;
        let mut taken = usize::from(first.is_some());
        if let Some(message) = &first {
            self.on_message(message, probe, hub, run);
        }
        while taken < RECEIVE_BATCH {
            match stream.next().now_or_never() {
                Some(Some(message)) => self.on_message(&message, probe, hub, run),
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
            taken += 1;
        }
        if let Some(hub) = hub {
            if taken > BEHIND_BATCH {
                hub.backlog.behind_at(tokio::time::Instant::now());
            }
            run.deliver(hub);
        }
        if ended {
            return Err(Ended::Lost("connection closed".to_owned()));
        }
        Ok(())
    }

    /// Ends the session when the probe Redis accepted has not come back within the probe
    /// timeout.
    fn check_probe(&self, probe: &Probe) -> Result<(), Ended> {
        match probe.outstanding {
            Some((seq, since)) if since.elapsed() >= self.config.probe_timeout => {
                Err(Ended::Starved(format!(
                    "probe {seq} published {:?} ago never arrived",
                    since.elapsed()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Whether Redis refused us: authentication failed (`WRONGPASS`, or a password Redis wants
/// and we did not give, `NOAUTH`) or the ACL forbids the command or channel (`NOPERM`).
fn is_refusal(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

pub(crate) async fn run(subscriber: Subscriber) {
    let shared = &subscriber.shared;
    let probe_channel = format!(
        "{}#probe:{}:{}",
        shared.channel_prefix, shared.instance, subscriber.index
    );
    let mut backoff = Backoff::new(
        subscriber.config.reconnect_min,
        subscriber.config.reconnect_max,
    );
    let mut ever_connected = false;
    loop {
        // A panic ends the session like a lost connection: the slot is marked down below and
        // the connection replaced, instead of the task ending with the slot still marked
        // connected and its rooms never received again.
        let ended = match AssertUnwindSafe(subscriber.session(&probe_channel, &mut backoff))
            .catch_unwind()
            .await
        {
            Ok(ended) => ended,
            Err(payload) => Ended::Panicked(payload),
        };
        let slot = &subscriber.slot;
        {
            let mut rooms = lock(&slot.rooms);
            rooms.live = false;
            rooms.dirty = HashSet::new();
        }
        let was_up = slot.connected.swap(false, Ordering::AcqRel);
        slot.subscribed.store(0, Ordering::Relaxed);
        *lock(&slot.last_probe_ok) = None;
        *lock(&slot.probe_due) = None;
        if !matches!(ended, Ended::Cancelled) {
            shared.sessions_ended.fetch_add(1, Ordering::Relaxed);
        }
        match ended {
            Ended::Cancelled => return,
            Ended::Lost(error) => {
                shared.record_error(&error);
                if was_up {
                    tracing::warn!(subscriber = subscriber.index, %error,
                        "tower-ws-hub: Redis subscriber connection lost, reconnecting");
                } else if !ever_connected && backoff.failures() == 0 {
                    tracing::warn!(subscriber = subscriber.index, %error,
                        "tower-ws-hub: cannot reach Redis, retrying in the background");
                } else {
                    tracing::debug!(subscriber = subscriber.index, %error,
                        "tower-ws-hub: Redis still unreachable");
                }
            }
            Ended::Refused(error) => {
                shared.record_error(&error);
                // Retried like any failure (the credentials or the ACL may be fixed while
                // the hub runs), but said once a second at most: it repeats at every attempt.
                if let Some(suppressed) = shared.subscriber_refused_log.allow() {
                    tracing::warn!(subscriber = subscriber.index, %error,
                        similar_events_suppressed = suppressed,
                        channels = %format!("{0}:* and {0}#probe:*", shared.channel_prefix),
                        "tower-ws-hub: Redis refused the subscriber connection or one of its \
                         commands (the error says which): check the credentials in the Redis \
                         URL, and that the Redis user may SUBSCRIBE to the hub's channels (see \
                         the README's ACL line); retrying in the background");
                }
            }
            Ended::Panicked(payload) => {
                shared.task_panicked("subscriber", subscriber.index, &*payload);
            }
            Ended::Starved(why) => {
                shared.starvations.fetch_add(1, Ordering::Relaxed);
                shared.record_error(&why);
                // A connection starved at every attempt (the pool and the subscriber client
                // on different servers, say) is replaced as often as the backoff allows.
                if let Some(suppressed) = shared.starved_log.allow() {
                    tracing::warn!(subscriber = subscriber.index, %why,
                        similar_events_suppressed = suppressed,
                        total_starvations = shared.starvations.load(Ordering::Relaxed),
                        "tower-ws-hub: Redis subscriber connection starved, replacing it");
                }
            }
        }
        if was_up {
            ever_connected = true;
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = subscriber.cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
