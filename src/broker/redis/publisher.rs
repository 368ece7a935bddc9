//! The publisher task: drains its queue into pipelines of PUBLISH commands.
//!
//! One task per slot of rooms, one pipeline in flight at a time: a room's messages leave in
//! order and never race each other on two connections. A pipeline that fails is counted and
//! dropped, never retried: Redis may have published part of it, and a retry could deliver a
//! message twice (at most once is the promise across an outage).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_redis::redis::{self, RedisWrite, ToRedisArgs};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::envelope::{EnvelopeKey, InstanceId, write_envelope};
use super::parked::ParkedReaders;
use super::{Outgoing, PublisherState, RedisConfig, Shared};
use crate::message::Message;

/// A pipeline is also cut once its payloads reach this many bytes, so one burst of large
/// messages does not become one huge write.
const MAX_PIPELINE_BYTES: usize = 1024 * 1024;

/// A publisher keeps its pooled connection between batches (a checkout costs a PING round
/// trip) and gives it back after this long without messages.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

pub(crate) struct Publisher {
    pub(crate) index: usize,
    pub(crate) queue: mpsc::Receiver<Outgoing>,
    pub(crate) state: Arc<PublisherState>,
    /// Woken whenever this task frees room in `queue`, goes down, or stops.
    pub(crate) parked: Arc<ParkedReaders>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: Arc<RedisConfig>,
    pub(crate) cancel: CancellationToken,
    /// Messages of the last batch taken off `queue` and not counted yet (published or failed):
    /// counted as failed if the task is dropped before it knows (the runtime went away).
    pub(crate) in_flight: usize,
    /// `Shared::sessions_ended` when the connection kept between batches was checked out: see
    /// [`kept`](Self::kept).
    pub(crate) checked_out_at: u64,
    /// The connection checked out last has carried a pipeline: when it breaks, a fresh one is
    /// tried at once (see `serve`), but not again for one that broke before proving itself.
    pub(crate) proven: bool,
}

/// `{prefix}:{room}` written straight into the command buffer.
struct ChannelArg<'a> {
    prefix: &'a str,
    room: &'a str,
}

impl ToRedisArgs for ChannelArg<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        use std::io::Write as _;
        let mut writer = out.writer_for_next_arg();
        let _ = writer.write_all(self.prefix.as_bytes());
        let _ = writer.write_all(self.room.as_bytes());
    }
}

/// The envelope written straight into the command buffer: the payload is copied once, from the
/// shared message into the bytes that go to the socket.
struct EnvelopeArg<'a> {
    origin: InstanceId,
    message: &'a Message,
    /// Key and channel (prefix, room) when envelopes are signed.
    signing: Option<(&'a EnvelopeKey, [&'a [u8]; 2])>,
}

impl ToRedisArgs for EnvelopeArg<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        let mut writer = out.writer_for_next_arg();
        let signing = self
            .signing
            .as_ref()
            .map(|(key, channel)| (*key, &channel[..]));
        write_envelope(&mut writer, self.origin, self.message, signing);
    }
}

/// Why a pipeline failed.
struct SendFailure {
    message: String,
    /// The connection broke (closed, reset) rather than Redis answering with an error or not
    /// in time: a fresh connection may well work.
    connection_dropped: bool,
}

/// A pipeline: `first`, then what `next` hands out while the pipeline holds fewer than
/// `max_items` items and fewer than `max_bytes` bytes (by `len`). The item that reaches
/// `max_bytes` still goes in, so a pipeline ends at most one message past the bound (a message
/// larger than the bound ends the pipeline it joins, or goes alone if it comes first); `next`
/// is not called once a bound is reached.
fn fill_pipeline<T>(
    first: T,
    len: impl Fn(&T) -> usize,
    max_items: usize,
    max_bytes: usize,
    mut next: impl FnMut() -> Option<T>,
) -> Vec<T> {
    let mut bytes = len(&first);
    let mut pipeline = vec![first];
    while pipeline.len() < max_items && bytes < max_bytes {
        let Some(item) = next() else { break };
        bytes += len(&item);
        pipeline.push(item);
    }
    pipeline
}

impl Publisher {
    /// A connection from the pool, which PINGs it first (a fresh one if that fails).
    async fn checkout(&mut self) -> Result<deadpool_redis::Connection, String> {
        // Read before the checkout: a subscriber session that ends while it runs makes the
        // next batch check out again, rather than trust a connection that may predate the end.
        self.checked_out_at = self.shared.sessions_ended.load(Ordering::Relaxed);
        self.proven = false;
        match tokio::time::timeout(self.config.operation_timeout, self.config.pool.get()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(format!("cannot get a Redis connection: {error}")),
            Err(_) => Err(format!(
                "no Redis connection within {:?}",
                self.config.operation_timeout
            )),
        }
    }

    /// The connection kept from the last batch, unless a subscriber session has ended since it
    /// was checked out (`Shared::sessions_ended` moved; a session that was still subscribing
    /// counts, so that a second restart right after a first is not missed): Redis may have gone
    /// away meanwhile (restarted, failed over, a proxy in front of it cut its clients), and a
    /// kept connection, unlike a checkout, is not PINGed first. A pipeline sent on a dead
    /// connection fails, and its messages with it: a restart quicker than `IDLE_RELEASE`, with
    /// nothing published during it, would cost the first messages after it. Dropped for good
    /// then (not back into the pool), and the caller checks out a fresh one.
    fn kept(
        &self,
        connection: &mut Option<deadpool_redis::Connection>,
    ) -> Option<deadpool_redis::Connection> {
        let held = connection.take()?;
        if self.shared.sessions_ended.load(Ordering::Relaxed) == self.checked_out_at {
            return Some(held);
        }
        drop(deadpool_redis::Connection::take(held));
        None
    }

    /// Takes what is queued after `first`, up to the pipeline limits.
    fn batch(&mut self, first: Outgoing) -> Vec<Outgoing> {
        let queue = &mut self.queue;
        let batch = fill_pipeline(
            first,
            |item| item.message.len(),
            self.config.max_pipeline,
            MAX_PIPELINE_BYTES,
            || queue.try_recv().ok(),
        );
        self.in_flight = batch.len();
        self.parked.wake_all();
        batch
    }

    /// The batch taken last was accepted by Redis.
    fn batch_published(&mut self) {
        self.proven = true;
        let n = std::mem::take(&mut self.in_flight);
        self.shared.published.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The batch taken last failed.
    fn batch_failed(&mut self) {
        let n = std::mem::take(&mut self.in_flight);
        self.count_failed(n);
    }

    /// Takes everything still queued off the queue; says how many.
    fn drain_queued(&mut self) -> usize {
        let mut n = 0;
        while self.queue.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    async fn send(
        &self,
        connection: &mut deadpool_redis::Connection,
        batch: &[Outgoing],
    ) -> Result<(), SendFailure> {
        #[cfg(test)]
        assert!(
            batch
                .iter()
                .all(|item| &*item.room != super::recovery_tests::PANICKING_ROOM),
            "test: a panic in the publisher"
        );
        let mut pipeline = redis::pipe();
        for item in batch {
            pipeline
                .cmd("PUBLISH")
                .arg(ChannelArg {
                    prefix: &self.shared.room_prefix,
                    room: &item.room,
                })
                .arg(EnvelopeArg {
                    origin: self.shared.instance,
                    message: &item.message,
                    signing: self.config.signing_key.as_ref().map(|key| {
                        (
                            key,
                            [self.shared.room_prefix.as_bytes(), item.room.as_bytes()],
                        )
                    }),
                })
                .ignore();
        }
        match tokio::time::timeout(
            self.config.operation_timeout,
            pipeline.query_async::<()>(&mut **connection),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SendFailure {
                message: format!("PUBLISH pipeline failed: {error}"),
                connection_dropped: error.is_connection_dropped(),
            }),
            Err(_) => Err(SendFailure {
                message: format!(
                    "PUBLISH pipeline got no reply within {:?}",
                    self.config.operation_timeout
                ),
                connection_dropped: false,
            }),
        }
    }

    fn count_failed(&self, n: usize) {
        self.shared
            .publish_failures
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Once the queue is closed, without Redis: fails what is queued and what still comes
    /// through places reserved before the close (see [`next_late`](Self::next_late)), counted
    /// and logged once, not dropped with the queue.
    async fn fail_remaining(&mut self) {
        let mut n = 0;
        while self.next_late().await.is_some() {
            n += 1;
        }
        if n > 0 {
            self.count_failed(n);
            tracing::warn!(
                publisher = self.index,
                messages_lost = n,
                "tower-ws-hub: Redis publisher stopping without Redis; messages that were \
                 queued for Redis are delivered locally only"
            );
        }
    }

    /// From the closed queue: the next message, if one is queued, or comes through a place
    /// reserved before the close within `operation_timeout`; `None` once none is left.
    ///
    /// A place is filled right after it is reserved (`publish_waiting`, and `publish_reserved`
    /// for clients' messages), so the wait runs out only for a place held longer than that:
    /// one the channel handed to a waiting publish whose future nobody polls any more (kept
    /// in a `select!` that went on to shut down, say), which is refused and counted when it
    /// is polled, or dropped with it; or, the one case left uncounted, a publish whose thread
    /// was descheduled for longer than an operation may take between the two steps. Waiting
    /// any longer would hold the shutdown up for the Redis tasks' whole limit.
    async fn next_late(&mut self) -> Option<Outgoing> {
        match self.queue.try_recv() {
            Ok(message) => Some(message),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            // `recv` returns `None` only once every place reserved before the close has been
            // filled or given back.
            Err(mpsc::error::TryRecvError::Empty) => {
                tokio::time::timeout(self.config.operation_timeout, self.queue.recv())
                    .await
                    .ok()
                    .flatten()
            }
        }
    }

    /// Fails whatever is queued now (it was queued behind a pipeline that failed, or raced
    /// the switch to DOWN), counted and logged: only the failed pipeline itself is in the log
    /// line that said publishing went down.
    fn fail_queued(&mut self) {
        let n = self.drain_queued();
        self.parked.wake_all();
        if n > 0 {
            self.count_failed(n);
            // At most one line per reconnect attempt while down, and none once the queue
            // is empty: publishes are refused at once while down.
            tracing::warn!(
                publisher = self.index,
                messages_lost = n,
                "tower-ws-hub: Redis publishing down; messages that were queued for Redis are \
                 delivered locally only"
            );
        }
    }

    /// Publishes what comes through the queue until shutdown (or the queue's senders are
    /// gone), reconnecting with `backoff` while Redis is down. `connection` is the one kept
    /// between batches.
    async fn serve(
        &mut self,
        connection: &mut Option<deadpool_redis::Connection>,
        backoff: &mut Backoff,
    ) {
        loop {
            if self.state.get() == PublisherState::DOWN {
                self.fail_queued();
                let delay = backoff.next_delay();
                tokio::select! {
                    // What raced in since `fail_queued` is failed (and counted) on the way out.
                    () = self.cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                match self.checkout().await {
                    Ok(fresh) => {
                        *connection = Some(fresh);
                        self.state.set(PublisherState::UP);
                        tracing::info!(
                            publisher = self.index,
                            attempts = backoff.failures(),
                            "tower-ws-hub: Redis publishing back up"
                        );
                        backoff.reset();
                    }
                    Err(error) => self.went_down(&error, 0),
                }
                continue;
            }
            let first = tokio::select! {
                biased;
                first = self.queue.recv() => first,
                () = self.cancel.cancelled() => None,
                // Idle for a while: give the connection back to the (possibly shared) pool.
                () = tokio::time::sleep(IDLE_RELEASE), if connection.is_some() => {
                    *connection = None;
                    continue;
                }
            };
            let Some(first) = first else { break };
            let batch = self.batch(first);
            let mut held = match self.kept(connection) {
                Some(held) => held,
                None => match self.checkout().await {
                    Ok(fresh) => fresh,
                    Err(error) => {
                        self.batch_failed();
                        self.went_down(&error, batch.len());
                        continue;
                    }
                },
            };
            match self.send(&mut held, &batch).await {
                Ok(()) => {
                    self.batch_published();
                    self.state.set(PublisherState::UP);
                    // Keep the connection for the next batch (no checkout, no PING).
                    *connection = Some(held);
                }
                Err(failure) => {
                    // Out of the pool for good: its state is unknown.
                    drop(deadpool_redis::Connection::take(held));
                    self.batch_failed();
                    match self.replace_broken(failure, batch.len()).await {
                        Ok(fresh) => *connection = Some(fresh),
                        Err(error) => self.went_down(&error, batch.len()),
                    }
                }
            }
        }
    }

    /// After a pipeline of `lost` messages failed: a new connection at once, if the one that
    /// failed had carried a pipeline and then broke (killed, cut by a proxy, stale after a
    /// restart nobody here saw) and Redis answers a fresh one's PING. It was the connection,
    /// not Redis: only that pipeline is lost, and what is queued behind it goes out on the new
    /// one. Otherwise (Redis too slow or answering with an error, a connection that broke
    /// before carrying anything, so no loop of fresh failures; no new connection) the error
    /// to go down with.
    async fn replace_broken(
        &mut self,
        failure: SendFailure,
        lost: usize,
    ) -> Result<deadpool_redis::Connection, String> {
        let error = failure.message;
        if !(failure.connection_dropped && self.proven) {
            return Err(error);
        }
        match self.checkout().await {
            Ok(fresh) => {
                self.shared.record_error(&error);
                if let Some(suppressed) = self.shared.broken_log.allow() {
                    tracing::warn!(
                        publisher = self.index,
                        %error,
                        messages_lost = lost,
                        similar_events_suppressed = suppressed,
                        "tower-ws-hub: Redis publish connection broke; its pipeline is lost, \
                         publishing goes on with a new connection"
                    );
                }
                Ok(fresh)
            }
            Err(again) => Err(format!("{error}; then {again}")),
        }
    }

    fn went_down(&self, error: &str, lost: usize) {
        let was_up = self.state.get() != PublisherState::DOWN;
        self.state.set(PublisherState::DOWN);
        // A full queue no longer holds anyone back: publishes are refused at once now.
        self.parked.wake_all();
        self.shared.record_error(&error);
        if was_up {
            tracing::warn!(
                publisher = self.index,
                %error,
                messages_lost = lost,
                "tower-ws-hub: Redis publishing down; messages are delivered locally only until \
                 it reconnects"
            );
        } else {
            tracing::debug!(publisher = self.index, %error, "tower-ws-hub: Redis still down");
        }
    }
}

impl Drop for Publisher {
    /// However the task ends (a panic included), nobody is left waiting for room in a queue
    /// nobody takes from: closed, it refuses at once.
    fn drop(&mut self) {
        self.queue.close();
        // Dropped before it knew them published (the runtime went away without
        // `Hub::shutdown`, or a panic): the batch being sent, which Redis may still run, and
        // whatever is still queued are counted as failed, not lost without a trace.
        let lost = std::mem::take(&mut self.in_flight) + self.drain_queued();
        if lost > 0 {
            self.count_failed(lost);
            tracing::warn!(
                publisher = self.index,
                messages_lost = lost,
                "tower-ws-hub: Redis publisher dropped (runtime gone without Hub::shutdown) \
                 before it knew its messages published; they reached local members only (a \
                 pipeline in flight may still have been run by Redis)"
            );
        }
        self.parked.wake_all();
    }
}

pub(crate) async fn run(mut publisher: Publisher) {
    let mut backoff = Backoff::new(
        publisher.config.reconnect_min,
        publisher.config.reconnect_max,
    );
    // Connect at once, so that status and fail-fast reflect reality from the start.
    let mut connection = match publisher.checkout().await {
        Ok(connection) => {
            publisher.state.set(PublisherState::UP);
            Some(connection)
        }
        Err(error) => {
            publisher.went_down(&error, 0);
            None
        }
    };
    // A panic (a bug) costs the batch being sent and the connection, not the task: without
    // this the queue would close for good while the status still said connected.
    while let Err(payload) = AssertUnwindSafe(publisher.serve(&mut connection, &mut backoff))
        .catch_unwind()
        .await
    {
        // Out of the pool for good: its state is unknown. (A connection that was in the
        // middle of a pipeline went back to the pool as the panic unwound; the pool's
        // recycling check, a PING that must echo its own argument, weeds it out.)
        if let Some(held) = connection.take() {
            drop(deadpool_redis::Connection::take(held));
        }
        let lost = publisher.in_flight;
        publisher.batch_failed();
        publisher.went_down("the publisher task panicked", lost);
        // Last, so that the status's `last_error` carries the panic's message.
        publisher
            .shared
            .task_panicked("publisher", publisher.index, &*payload);
    }
    flush_on_shutdown(publisher, connection).await;
}

/// Sends what is still queued once (best effort, one attempt per pipeline), then stops.
async fn flush_on_shutdown(
    mut publisher: Publisher,
    mut connection: Option<deadpool_redis::Connection>,
) {
    publisher.queue.close();
    // A closed queue refuses everything: nobody waits for room in it any more.
    publisher.parked.wake_all();
    if publisher.state.get() == PublisherState::DOWN {
        publisher.fail_remaining().await;
        return;
    }
    // Not `try_recv` alone: a publish that reserved its place before the close and had not
    // filled it yet is still coming (`try_recv` would say empty), and must be sent or counted,
    // not dropped with the queue.
    while let Some(first) = publisher.next_late().await {
        let batch = publisher.batch(first);
        let mut held = match publisher.kept(&mut connection) {
            Some(held) => held,
            None => match publisher.checkout().await {
                Ok(fresh) => fresh,
                Err(_) => {
                    publisher.batch_failed();
                    publisher.fail_remaining().await;
                    return;
                }
            },
        };
        if publisher.send(&mut held, &batch).await.is_ok() {
            publisher.batch_published();
            connection = Some(held);
        } else {
            publisher.batch_failed();
            publisher.fail_remaining().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_PIPELINE_BYTES, fill_pipeline};

    /// Fills a pipeline from `sizes` (the queued messages' sizes, the first is `first`); says
    /// the sizes it took and how many queued messages it left.
    fn fill(sizes: &[usize], max_items: usize) -> (Vec<usize>, usize) {
        let mut queued = sizes[1..].iter().copied();
        let pipeline = fill_pipeline(
            sizes[0],
            |n| *n,
            max_items,
            MAX_PIPELINE_BYTES,
            || queued.next(),
        );
        (pipeline, queued.len())
    }

    #[test]
    fn a_pipeline_stops_at_max_items() {
        let (pipeline, left) = fill(&[10; 300], 256);
        assert_eq!(pipeline.len(), 256);
        assert_eq!(left, 44);
    }

    #[test]
    fn a_pipeline_is_cut_once_its_payloads_reach_1_mib() {
        // 64 KiB messages: the sixteenth reaches 1 MiB and ends the pipeline.
        let (pipeline, left) = fill(&[64 * 1024; 40], 256);
        assert_eq!(pipeline.len(), 16);
        assert_eq!(pipeline.iter().sum::<usize>(), MAX_PIPELINE_BYTES);
        assert_eq!(left, 24, "nothing taken past the cut");
        // Just under the bound, one more message goes in.
        let mut sizes = vec![64 * 1024; 15];
        sizes.push(64 * 1024 - 1);
        sizes.extend([10, 10, 10]);
        let (pipeline, left) = fill(&sizes, 256);
        assert_eq!(pipeline.len(), 17);
        assert_eq!(left, 2);
    }

    #[test]
    fn a_message_larger_than_the_bound_goes_alone() {
        let (pipeline, left) = fill(&[2 * MAX_PIPELINE_BYTES, 10, 10], 256);
        assert_eq!(pipeline, [2 * MAX_PIPELINE_BYTES]);
        assert_eq!(left, 2);
        // And one that follows small ones ends their pipeline.
        let (pipeline, left) = fill(&[10, 10, 2 * MAX_PIPELINE_BYTES, 10], 256);
        assert_eq!(pipeline, [10, 10, 2 * MAX_PIPELINE_BYTES]);
        assert_eq!(left, 1);
    }

    #[test]
    fn a_pipeline_takes_what_is_queued_and_no_more() {
        let (pipeline, left) = fill(&[1, 2, 3], 256);
        assert_eq!(pipeline, [1, 2, 3]);
        assert_eq!(left, 0);
        let (pipeline, _) = fill(&[1, 2, 3], 1);
        assert_eq!(pipeline, [1]);
    }
}
