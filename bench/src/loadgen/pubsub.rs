//! Publish/subscribe load: N subscribers in R rooms, P publishers, burst or fixed rate.
//!
//! A run goes through these steps, each finished before the next starts:
//!
//! 1. **Connect subscribers**, at most `connect_concurrency` handshakes at a time. Subscriber `i`
//!    joins room `i % R`; the subscribers of each room are spread round-robin over the URLs.
//! 2. **Connect publishers.** Every room gets one publisher connection (a *stream*) from
//!    publisher `room % P` (or, with more publishers than rooms, publisher `p` joins room
//!    `p % R`). Publishers are ordinary room members, which the server excludes from their own
//!    messages; they are never counted as subscribers. What they receive from other publishers
//!    is read and discarded, so that no server ever sees them as slow consumers.
//! 3. **Readiness probe.** Every stream sends a probe message every 100 ms until each connected
//!    subscriber has received a probe from every stream of its room. This proves that every
//!    path (including a cross-instance one through Redis) delivers before anything is measured.
//! 4. **Quiet** for `settle`, so that late probes are out of the way.
//! 5. **Load.** Burst: each publisher sends its messages as fast as its socket takes them,
//!    round-robin over its streams. Rate: each publisher sends `rate` messages per second on a
//!    fixed schedule for `duration`. Each payload carries stream id, sequence number and send
//!    time (see [`crate::payload`]); in rate mode the send time is when the message was due,
//!    so that a publisher running late adds to the latency instead of hiding it.
//! 6. **Drain** until every expected delivery arrived, or nothing arrived for `drain_timeout`.
//!
//! Latency is receive time minus send time on the process-wide monotonic clock, recorded in an
//! HDR histogram (µs resolution, 3 significant digits), never stored per sample.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::deadline::DeadlineTimer;
use super::receiver::Receiver;
use super::{Client, connect, room_name, room_url};
use crate::clock::{now_ns, ns_at};
use crate::cpustat::MachineCpu;
use crate::netstat::TcpSegments;
use crate::payload::{Header, Kind};
use crate::report::{Figures, round};
use crate::server_stats::{self, ServerStats};

/// Shards of the shared receive statistics: subscribers lock `index % SHARDS`.
const SHARDS: usize = 16;
/// Highest latency the histogram records, in µs (10 minutes); higher values are clamped.
const MAX_LATENCY_US: u64 = 600_000_000;
/// Interval between readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Interval between memory samples while watching RSS.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// How publishers choose the server for each of their connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishVia {
    /// Every publisher connection goes to the first URL (e.g. "publisher on instance 1").
    First,
    /// Publisher connections are spread round-robin over the URLs.
    All,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// WebSocket URL templates, one per server instance (`{room}` is replaced by the room name).
    pub urls: Vec<String>,
    /// Subscriber connections in total.
    pub subscribers: usize,
    /// Number of rooms.
    pub rooms: usize,
    /// Number of publishers.
    pub publishers: usize,
    /// Messages per publisher (burst mode).
    pub messages: u64,
    /// Payload size in bytes (at least the 24-byte header).
    pub size: usize,
    /// Messages per second per publisher: fixed-rate mode instead of burst.
    pub rate: Option<f64>,
    /// How long fixed-rate mode publishes.
    pub duration: Duration,
    /// Which server each publisher connection goes to.
    pub publish_via: PublishVia,
    /// Burst mode: publishers run on the subscribers' runtime instead of a thread of their own.
    pub publishers_share_thread: bool,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Longest wait for every subscriber to receive a probe.
    pub ready_timeout: Duration,
    /// Quiet time between the probes and the load.
    pub settle: Duration,
    /// The run ends when nothing arrived for this long.
    pub drain_timeout: Duration,
    /// Room names are `{room_prefix}-{index}`.
    pub room_prefix: String,
    /// Read the servers' `/stats` before and after the load.
    pub server_stats: bool,
    /// After the load, sample the servers' RSS for this long.
    pub watch_rss: Option<Duration>,
    /// Free text copied into the report.
    pub label: String,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Number of samples (unique deliveries).
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: histogram.len(),
            mean: round(histogram.mean() / 1000.0, 3),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// A latency histogram in µs, 1 µs to `MAX_LATENCY_US`, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Delivery accounting for one publisher (all its streams).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublisherReport {
    /// Publisher index.
    pub publisher: usize,
    /// Its connections (one per room it publishes to).
    pub connections: usize,
    /// Messages sent.
    pub sent: u64,
    /// Deliveries expected: each message times the connected subscribers of its room.
    pub expected: u64,
    /// Unique deliveries received.
    pub delivered: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Deliveries of a message the same subscriber had already received.
    pub duplicated: u64,
    /// Deliveries with a lower sequence number than one the subscriber already had.
    pub out_of_order: u64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// Memory of the servers after the load, sampled every 250 ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RssWatch {
    /// Total RSS of the servers with every client connected, before the load (KiB).
    pub idle_kib: u64,
    /// Highest sampled total RSS (KiB).
    pub peak_kib: u64,
    /// Last sampled total RSS (KiB).
    pub end_kib: u64,
    /// `end_kib / idle_kib`.
    pub end_over_idle: f64,
    /// First sample (seconds after the last delivery) within 10 % of idle; `None` if never.
    pub within_10pct_after_s: Option<f64>,
    /// `(seconds after the last delivery, total RSS KiB)`.
    pub samples: Vec<(f64, u64)>,
}

/// The outcome of a run, printed as JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Always `"pubsub"`.
    pub kind: &'static str,
    /// The `--label`.
    pub label: String,
    /// `"burst"` or `"rate"`.
    pub mode: &'static str,
    /// Server URLs.
    pub urls: Vec<String>,
    /// Rooms.
    pub rooms: usize,
    /// Subscribers asked for.
    pub subscribers: usize,
    /// Subscribers that connected.
    pub subscribers_connected: usize,
    /// Connections (subscribers and publishers) that failed to connect.
    pub connect_failures: usize,
    /// Subscribers whose connection ended before the run did.
    pub subscribers_disconnected: usize,
    /// Publishers.
    pub publishers: usize,
    /// Publisher connections (streams).
    pub publisher_connections: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages per publisher asked for (burst) or scheduled (rate).
    pub messages_per_publisher: u64,
    /// Messages per second per publisher (rate mode).
    pub rate: Option<f64>,
    /// Seconds to connect every client.
    pub connect_s: f64,
    /// Whether every subscriber received a probe before the timeout.
    pub ready: bool,
    /// Seconds from the first probe to readiness.
    pub ready_s: f64,
    /// Messages sent.
    pub sent: u64,
    /// Deliveries expected.
    pub expected: u64,
    /// Unique deliveries received.
    pub delivered: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Duplicate deliveries.
    pub duplicated: u64,
    /// Out-of-order deliveries.
    pub out_of_order: u64,
    /// Messages subscribers received that were not benchmark payloads of their room, or that
    /// carried a sequence number their publisher never sends.
    pub foreign_messages: u64,
    /// Messages publishers received (other publishers in their room) and discarded.
    pub publisher_received: u64,
    /// Seconds from the first send to the last send.
    pub send_s: f64,
    /// Seconds from the first send to the last delivery.
    pub duration_s: f64,
    /// `delivered / duration_s`.
    pub deliveries_per_s: f64,
    /// `sent / send_s`.
    pub sends_per_s: f64,
    /// Milliseconds from the last send to the last delivery.
    pub tail_after_last_send_ms: f64,
    /// Rate mode: furthest a publisher fell behind its schedule, ms (latency counts from the
    /// schedule, so this lag is inside the latency figures).
    pub max_publisher_lag_ms: f64,
    /// Rate mode: how far behind its schedule a message was sent on average, ms. With
    /// tokio's millisecond timer this was about 1 ms; [`DeadlineTimer`] makes it microseconds.
    pub mean_publisher_lag_ms: f64,
    /// CPU time the load generator used from the start of the load to the end of the drain, ms
    /// (to the microsecond). Close to `duration_s` means the load generator, not the server,
    /// was the bottleneck.
    pub loadgen_cpu_ms: f64,
    /// CPU time the servers used over the same span, ms to the microsecond (with `/stats`;
    /// a local burst takes the hub 15–30 ms, so whole milliseconds would be a coarse figure).
    pub server_cpu_ms: Option<f64>,
    /// `delivered / server CPU seconds`: throughput per unit of server work, which a machine
    /// shared with other work disturbs less than wall-clock throughput.
    pub deliveries_per_server_cpu_s: Option<f64>,
    /// TCP segments the whole machine sent over the same span (see [`crate::netstat`]):
    /// servers, load generator and Redis together; `None` off Linux.
    pub tcp_segments: Option<TcpSegments>,
    /// The machine's idle and steal time over the same span (see [`crate::cpustat`]): idle
    /// cores say the run was not limited by CPU, steal that the hypervisor took some of it;
    /// `None` off Linux.
    pub machine_cpu: Option<MachineCpu>,
    /// Growth of the servers' peak RSS (VmHWM) over the load, KiB: the transient memory of the
    /// load, which samples of the current RSS can miss.
    pub server_hwm_growth_kib: Option<u64>,
    /// Latency of unique deliveries.
    pub latency_ms: Latency,
    /// The same, for the subscribers of each URL (instance), in `urls` order: with several
    /// instances, tells what the path through another instance (and Redis) adds.
    pub latency_ms_by_url: Vec<Latency>,
    /// Per message (each message counted once, whatever its room's size): how long it took to
    /// reach the first of its room's subscribers that got it.
    pub message_first_ms: Latency,
    /// Per message: how long it took to reach the last of them, i.e. its whole room. In rate
    /// mode, a median close to (or above) the interval between two messages of a stream means
    /// that the previous message's reads had not ended when the next one came: the subscribers'
    /// side (the load generator, on a machine it shares) reads without pause, and the latency
    /// figures measure its backlog as much as the server.
    pub message_last_ms: Latency,
    /// Accounting per publisher.
    pub per_publisher: Vec<PublisherReport>,
    /// The servers' `/stats` before the load (with `--server-stats` or `--watch-rss`).
    pub server_stats_before: Option<Vec<ServerStats>>,
    /// The servers' `/stats` after the load.
    pub server_stats_after: Option<Vec<ServerStats>>,
    /// RSS after the load (with `--watch-rss`).
    pub rss_watch: Option<RssWatch>,
    /// The headline numbers, for `loadgen summarize`.
    pub figures: Figures,
}

impl Report {
    /// One line for people.
    pub fn human(&self) -> String {
        let l = &self.latency_ms;
        let mut line = format!(
            "{label}: {delivered}/{expected} deliveries in {dur:.3} s = {dps:.0}/s; latency ms \
             p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} p99.9 {p999:.2} max {max:.2}; lost {lost} \
             dup {dup} ooo {ooo}; tail {tail:.1} ms",
            label = if self.label.is_empty() {
                "pubsub"
            } else {
                &self.label
            },
            delivered = self.delivered,
            expected = self.expected,
            dur = self.duration_s,
            dps = self.deliveries_per_s,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
            lost = self.lost,
            dup = self.duplicated,
            ooo = self.out_of_order,
            tail = self.tail_after_last_send_ms,
        );
        if self.latency_ms_by_url.len() > 1 {
            let p99: Vec<String> = self
                .latency_ms_by_url
                .iter()
                .map(|l| format!("{:.2}", l.p99))
                .collect();
            line += &format!("; p99 by URL {}", p99.join(" / "));
        }
        if self.connect_failures > 0 || self.subscribers_disconnected > 0 || !self.ready {
            line += &format!(
                "; connect failures {}, disconnected {}, ready {}",
                self.connect_failures, self.subscribers_disconnected, self.ready
            );
        }
        if let Some(segments) = self.tcp_segments.filter(|_| self.delivered > 0) {
            line += &format!(
                "; {:.2} data segments per delivery",
                segments.data as f64 / self.delivered as f64
            );
        }
        if let Some(cpu) = self.machine_cpu {
            line += &format!(
                "; machine idle {} ms, steal {} ms",
                cpu.idle_ms, cpu.steal_ms
            );
        }
        if let Some(watch) = &self.rss_watch {
            line += &format!(
                "; RSS idle {:.1} MiB peak {:.1} MiB end {:.1} MiB ({:.2}x idle)",
                mib(watch.idle_kib),
                mib(watch.peak_kib),
                mib(watch.end_kib),
                watch.end_over_idle
            );
        }
        line
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Who connects where.
#[derive(Debug)]
struct Topology {
    room_names: Vec<String>,
    /// Per subscriber: (room, url index).
    subscribers: Vec<(usize, usize)>,
    streams: Vec<StreamSpec>,
    /// Stream ids per room.
    room_streams: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, Copy)]
struct StreamSpec {
    publisher: usize,
    room: usize,
    url: usize,
    /// Index of this stream in its room's list.
    slot: usize,
}

impl Topology {
    fn new(opts: &Options) -> Self {
        let rooms = opts.rooms.max(1);
        let urls = opts.urls.len().max(1);
        let room_names = (0..rooms)
            .map(|r| room_name(&opts.room_prefix, r))
            .collect();
        // Subscriber i joins room i % R; the k-th subscriber of room r goes to URL (k + r) % U,
        // so that every room has members on every instance and the instances get equal shares.
        let subscribers = (0..opts.subscribers)
            .map(|i| (i % rooms, (i / rooms + i % rooms) % urls))
            .collect();
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        if opts.publishers > 0 {
            if opts.publishers <= rooms {
                pairs.extend((0..rooms).map(|room| (room % opts.publishers, room)));
            } else {
                pairs.extend((0..opts.publishers).map(|p| (p, p % rooms)));
            }
        }
        let mut per_publisher = vec![0usize; opts.publishers];
        let mut room_streams = vec![Vec::new(); rooms];
        let streams = pairs
            .into_iter()
            .enumerate()
            .map(|(id, (publisher, room))| {
                let k = per_publisher[publisher];
                per_publisher[publisher] += 1;
                let url = match opts.publish_via {
                    PublishVia::First => 0,
                    PublishVia::All => (publisher + k) % urls,
                };
                let slot = room_streams[room].len();
                room_streams[room].push(id as u32);
                StreamSpec {
                    publisher,
                    room,
                    url,
                    slot,
                }
            })
            .collect();
        Self {
            room_names,
            subscribers,
            streams,
            room_streams,
        }
    }

    /// The index of `stream` among the streams of `room`, if it belongs there.
    fn slot_in_room(&self, stream: u32, room: usize) -> Option<usize> {
        let spec = self.streams.get(stream as usize)?;
        (spec.room == room).then_some(spec.slot)
    }

    /// Per stream, how many messages it sends when each publisher sends `total`, dealt
    /// round-robin over its streams as [`publisher`] does (fewer if a connection failed).
    fn messages_per_stream(&self, total: u64) -> Vec<usize> {
        let mut per_publisher: Vec<u64> = Vec::new();
        for spec in &self.streams {
            if per_publisher.len() <= spec.publisher {
                per_publisher.resize(spec.publisher + 1, 0);
            }
            per_publisher[spec.publisher] += 1;
        }
        let mut kth = vec![0u64; per_publisher.len()];
        self.streams
            .iter()
            .map(|spec| {
                let n = per_publisher[spec.publisher];
                let k = kth[spec.publisher];
                kth[spec.publisher] += 1;
                usize::try_from(total / n + u64::from(k < total % n)).unwrap_or(usize::MAX)
            })
            .collect()
    }

    fn streams_of(&self, publisher: usize) -> Vec<u32> {
        (0..self.streams.len() as u32)
            .filter(|&s| self.streams[s as usize].publisher == publisher)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct StreamCounts {
    delivered: u64,
    duplicated: u64,
    out_of_order: u64,
}

/// When one message reached its first and its last subscriber (of one shard), as latencies in
/// µs, clamped to [`MAX_LATENCY_US`] as the histograms clamp them (so that `u32` holds them).
/// One per message per shard that heard it (all 16 in a one-room run): 8 bytes, not 16.
#[derive(Debug, Clone, Copy)]
struct Reach {
    first_us: u32,
    last_us: u32,
}

const _: () = assert!(MAX_LATENCY_US < u32::MAX as u64);

impl Default for Reach {
    fn default() -> Self {
        Self {
            first_us: u32::MAX,
            last_us: 0,
        }
    }
}

impl Reach {
    fn add(&mut self, latency_us: u64) {
        let latency_us = latency_us.min(MAX_LATENCY_US) as u32;
        self.first_us = self.first_us.min(latency_us);
        self.last_us = self.last_us.max(latency_us);
    }

    fn merge(&mut self, other: Reach) {
        self.first_us = self.first_us.min(other.first_us);
        self.last_us = self.last_us.max(other.last_us);
    }

    fn reached(&self) -> bool {
        self.first_us != u32::MAX
    }
}

#[derive(Debug)]
struct Shard {
    /// One histogram per URL (instance), in `Options::urls` order.
    latency_us: Vec<Histogram<u64>>,
    streams: Vec<StreamCounts>,
    /// Per stream, per sequence number: when the message reached this shard's subscribers.
    reach: Vec<Vec<Reach>>,
    delivered: u64,
    last_receive_ns: u64,
}

impl Shard {
    fn new(urls: usize, streams: usize) -> Self {
        Self {
            latency_us: (0..urls).map(|_| new_histogram()).collect(),
            streams: vec![StreamCounts::default(); streams],
            reach: vec![Vec::new(); streams],
            delivered: 0,
            last_receive_ns: 0,
        }
    }

    /// Message `seq` of `stream` (which sends `expected` messages; `seq` is below that, see
    /// [`sent_by_its_publisher`]) reached one of this shard's subscribers after `latency_us`.
    /// The stream's list is sized for all its messages at the first one: no doubling slack,
    /// and no copy of it under the shard's lock as it grows.
    fn reached(&mut self, stream: usize, seq: u64, latency_us: u64, expected: usize) {
        let reach = &mut self.reach[stream];
        if reach.is_empty() {
            reach.resize(expected, Reach::default());
        }
        if let Some(message) = usize::try_from(seq).ok().and_then(|seq| reach.get_mut(seq)) {
            message.add(latency_us);
        }
    }
}

#[derive(Debug)]
struct Shared {
    topology: Topology,
    /// Per stream: how many messages it will send (see [`Topology::messages_per_stream`]).
    messages_per_stream: Vec<usize>,
    shards: Vec<Mutex<Shard>>,
    subscribers_connected: AtomicUsize,
    connect_failures: AtomicUsize,
    subscribers_disconnected: AtomicUsize,
    subscribers_ready: AtomicUsize,
    streams_connected: AtomicUsize,
    room_subscribers: Vec<AtomicU64>,
    foreign: AtomicU64,
    publisher_received: AtomicU64,
    first_error: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn note_error(&self, error: String) {
        lock(&self.first_error).get_or_insert(error);
    }

    fn delivered(&self) -> u64 {
        self.shards.iter().map(|shard| lock(shard).delivered).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connecting,
    Probe,
    Quiet,
    Go,
}

/// What one subscriber has seen of one stream.
#[derive(Debug, Default)]
struct Track {
    /// Bit per sequence number received.
    seen: Vec<u64>,
    highest: Option<u64>,
    probed: bool,
}

enum Seen {
    InOrder,
    OutOfOrder,
    Duplicate,
}

impl Track {
    fn observe(&mut self, seq: u64) -> Seen {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            return Seen::Duplicate;
        }
        self.seen[word] |= bit;
        let in_order = self.highest.is_none_or(|highest| seq > highest);
        if in_order {
            self.highest = Some(seq);
            Seen::InOrder
        } else {
            Seen::OutOfOrder
        }
    }
}

/// Whether a data message's sequence number is one its publisher sends: below `expected`, what
/// each stream sends in all.
fn sent_by_its_publisher(header: &Header, expected: &[usize]) -> bool {
    expected
        .get(header.stream as usize)
        .is_some_and(|&sent| header.seq < sent as u64)
}

/// Subscriber `index`, in `room`: connects to `url` (its URL in `Options::urls`, at
/// `url_index`, with the room filled in; its latencies go to that URL's histogram).
async fn subscriber(
    index: usize,
    url_index: usize,
    url: String,
    room: usize,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
) {
    let permit = gate.acquire_owned().await;
    let mut client = match Receiver::connect(&url).await {
        Ok(client) => client,
        Err(error) => {
            shared.note_error(error);
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    drop(permit);
    shared.room_subscribers[room].fetch_add(1, Ordering::Relaxed);
    shared.subscribers_connected.fetch_add(1, Ordering::Relaxed);
    let topology = &shared.topology;
    let shard = &shared.shards[index % SHARDS];
    let expected = &shared.messages_per_stream;
    let mut tracks: Vec<Track> = topology.room_streams[room]
        .iter()
        .map(|_| Track::default())
        .collect();
    let mut unprobed = tracks.len();
    if unprobed == 0 {
        shared.subscribers_ready.fetch_add(1, Ordering::Relaxed);
    }
    // What one read delivered, recorded under one lock of the shard.
    let mut batch: Vec<(u32, u64, u64, Seen)> = Vec::new();
    let mut last_receive_ns = 0;
    loop {
        let read = client
            .read_batch(now_ns, |payload, now| {
                // A sequence number past what its publisher sends is no message of this run
                // (and would make the tracks grow with whatever number arrived).
                let Some((header, slot)) = Header::decode(payload)
                    .filter(|h| h.kind == Kind::Probe || sent_by_its_publisher(h, expected))
                    .and_then(|h| Some((h, topology.slot_in_room(h.stream, room)?)))
                else {
                    shared.foreign.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let track = &mut tracks[slot];
                match header.kind {
                    Kind::Probe => {
                        if !track.probed {
                            track.probed = true;
                            unprobed -= 1;
                            if unprobed == 0 {
                                shared.subscribers_ready.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Kind::Data => {
                        let seen = track.observe(header.seq);
                        let latency_us = now.saturating_sub(header.sent_ns) / 1000;
                        batch.push((header.stream, header.seq, latency_us, seen));
                        last_receive_ns = now;
                    }
                }
            })
            .await;
        if !batch.is_empty() {
            let mut shard = lock(shard);
            for (stream, seq, latency_us, seen) in batch.drain(..) {
                let counts = &mut shard.streams[stream as usize];
                match seen {
                    Seen::Duplicate => {
                        counts.duplicated += 1;
                        continue;
                    }
                    Seen::OutOfOrder => counts.out_of_order += 1,
                    Seen::InOrder => {}
                }
                counts.delivered += 1;
                shard.delivered += 1;
                shard.reached(stream as usize, seq, latency_us, expected[stream as usize]);
                shard.latency_us[url_index].saturating_record(latency_us.clamp(1, MAX_LATENCY_US));
            }
            shard.last_receive_ns = shard.last_receive_ns.max(last_receive_ns);
        }
        match read {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => {
                shared.note_error(format!("subscriber {index}: {error}"));
                break;
            }
        }
    }
    shared
        .subscribers_disconnected
        .fetch_add(1, Ordering::Relaxed);
}

type Sink = SplitSink<Client, Message>;

#[derive(Debug, Default)]
struct PublisherOutcome {
    /// `(stream id, messages sent)`.
    sent: Vec<(u32, u64)>,
    first_send_ns: Option<u64>,
    last_send_ns: Option<u64>,
    max_lag_ns: u64,
    /// Sum of every message's lag behind its schedule (rate mode), for the mean.
    lag_sum_ns: u64,
    error: Option<String>,
    /// Kept open until the run ends: closing early would be a (small) event of its own.
    sinks: Vec<Sink>,
    readers: Vec<JoinHandle<()>>,
}

struct PublisherPlan {
    publisher: usize,
    streams: Vec<u32>,
    urls: Vec<String>,
    size: usize,
    messages: u64,
    rate: Option<f64>,
    duration: Duration,
}

async fn publisher(
    plan: PublisherPlan,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
) -> PublisherOutcome {
    let mut outcome = PublisherOutcome::default();
    for (&stream, url) in plan.streams.iter().zip(&plan.urls) {
        let permit = gate.acquire().await;
        match connect(url, true).await {
            Ok(client) => {
                let (sink, mut reader) = client.split();
                let shared_reader = Arc::clone(&shared);
                // Read what other publishers of the room send, so that this connection is
                // never a slow consumer; tungstenite answers pings while reading.
                outcome.readers.push(tokio::spawn(async move {
                    while let Some(Ok(_)) = reader.next().await {
                        shared_reader
                            .publisher_received
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }));
                outcome.sinks.push(sink);
                outcome.sent.push((stream, 0));
            }
            Err(error) => {
                shared.note_error(error.clone());
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                outcome.error = Some(error);
            }
        }
        drop(permit);
        shared.streams_connected.fetch_add(1, Ordering::Relaxed);
    }
    if outcome.error.is_some() || outcome.sinks.is_empty() {
        return outcome;
    }
    if phase.wait_for(|p| *p >= Phase::Probe).await.is_err() {
        return outcome;
    }
    while *phase.borrow() == Phase::Probe {
        for (sink, &(stream, _)) in outcome.sinks.iter_mut().zip(&outcome.sent) {
            let probe = Header {
                kind: Kind::Probe,
                stream,
                seq: 0,
                sent_ns: now_ns(),
            };
            // Probes are header-only: a large probe would warm up the very buffers that a
            // memory scenario measures.
            if let Err(error) = sink.send(Message::Binary(probe.encode(0))).await {
                outcome.error = Some(format!("publisher {}: {error}", plan.publisher));
                return outcome;
            }
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return outcome;
                }
            }
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
    if phase.wait_for(|p| *p >= Phase::Go).await.is_err() {
        return outcome;
    }
    let total = publisher_total(plan.rate, plan.duration, plan.messages);
    let period = plan.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
    let mut timer = match period.map(|_| DeadlineTimer::new()).transpose() {
        Ok(timer) => timer,
        Err(error) => {
            outcome.error = Some(format!("publisher {}: timer: {error}", plan.publisher));
            return outcome;
        }
    };
    let start = Instant::now();
    let streams = outcome.sinks.len();
    for i in 0..total {
        // Rate mode measures from when each message was due, not from when this task got round
        // to sending it: a publisher woken late (the load generator is busy reading) must not
        // hide that wait from the latency (coordinated omission). So the wait itself must be
        // precise: tokio's millisecond timer sent each message about 1 ms late, in both
        // servers' latency (`DeadlineTimer`).
        let sent_ns = match (period, timer.as_mut()) {
            (Some(period), Some(timer)) => {
                let due = start + period.mul_f64(i as f64);
                if let Err(error) = timer.sleep_until(due).await {
                    outcome.error = Some(format!("publisher {}: timer: {error}", plan.publisher));
                    break;
                }
                let due_ns = ns_at(due);
                let lag_ns = now_ns().saturating_sub(due_ns);
                outcome.max_lag_ns = outcome.max_lag_ns.max(lag_ns);
                outcome.lag_sum_ns += lag_ns;
                due_ns
            }
            _ => now_ns(),
        };
        let k = (i % streams as u64) as usize;
        let (stream, seq) = outcome.sent[k];
        let header = Header {
            kind: Kind::Data,
            stream,
            seq,
            sent_ns,
        };
        if let Err(error) = outcome.sinks[k]
            .send(Message::Binary(header.encode(plan.size)))
            .await
        {
            outcome.error = Some(format!("publisher {}: {error}", plan.publisher));
            break;
        }
        outcome.sent[k].1 += 1;
        outcome.first_send_ns.get_or_insert(sent_ns);
        outcome.last_send_ns = Some(sent_ns);
    }
    outcome
}

/// How many data messages each publisher sends: `messages` in a burst, `rate` per second for
/// `duration` otherwise.
fn publisher_total(rate: Option<f64>, duration: Duration, messages: u64) -> u64 {
    match rate {
        Some(rate) => (rate * duration.as_secs_f64()).round() as u64,
        None => messages,
    }
}

/// A runtime owned by an async function: shut down in the background when dropped (a runtime
/// cannot be dropped, blocking, inside another).
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

async fn wait_until(mut done: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn sum_rss(stats: &[ServerStats]) -> u64 {
    stats.iter().map(|s| s.vm_rss_kib).sum()
}

/// Runs the scenario.
///
/// # Errors
///
/// When no subscriber could connect, or the servers' `/stats` could not be read when asked for.
pub async fn run(opts: Options) -> Result<Report, String> {
    if opts.urls.is_empty() {
        return Err("at least one --url is needed".into());
    }
    let topology = Topology::new(&opts);
    let stream_count = topology.streams.len();
    let rooms = topology.room_names.len();
    let shared = Arc::new(Shared {
        shards: (0..SHARDS)
            .map(|_| Mutex::new(Shard::new(opts.urls.len(), stream_count)))
            .collect(),
        messages_per_stream: topology.messages_per_stream(publisher_total(
            opts.rate,
            opts.duration,
            opts.messages,
        )),
        topology,
        subscribers_connected: AtomicUsize::new(0),
        connect_failures: AtomicUsize::new(0),
        subscribers_disconnected: AtomicUsize::new(0),
        subscribers_ready: AtomicUsize::new(0),
        streams_connected: AtomicUsize::new(0),
        room_subscribers: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
        foreign: AtomicU64::new(0),
        publisher_received: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let connect_started = Instant::now();

    // 1. Subscribers.
    let mut tasks: Vec<JoinHandle<()>> = Vec::with_capacity(opts.subscribers);
    for (index, &(room, url)) in shared.topology.subscribers.iter().enumerate() {
        let address = room_url(&opts.urls[url], &shared.topology.room_names[room]);
        tasks.push(tokio::spawn(subscriber(
            index,
            url,
            address,
            room,
            Arc::clone(&shared),
            Arc::clone(&gate),
        )));
    }
    let s = Arc::clone(&shared);
    let subscribers = opts.subscribers;
    wait_until(
        || {
            s.subscribers_connected.load(Ordering::Relaxed)
                + s.connect_failures.load(Ordering::Relaxed)
                >= subscribers
        },
        Duration::from_secs(3600),
    )
    .await;
    let connected = shared.subscribers_connected.load(Ordering::Relaxed);
    if connected == 0 && opts.subscribers > 0 {
        let error = lock(&shared.first_error).clone().unwrap_or_default();
        return Err(format!("no subscriber could connect: {error}"));
    }

    // 2. Publishers, on a thread of their own, so that the subscribers' reads on this one do
    // not pace them. In rate mode they would be late (their lateness counts in the latency, see
    // `publisher`); in burst mode "as fast as possible" would become "as fast as this thread
    // gets round to it between reads": the load generator's own receive work, which grows with
    // every segment the server sends, would throttle the load it offers.
    let own_thread = opts.rate.is_some() || !opts.publishers_share_thread;
    let publisher_runtime = if own_thread {
        Some(BackgroundRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("loadgen-publishers")
                .enable_all()
                .build()
                .map_err(|e| format!("publisher runtime: {e}"))?,
        )))
    } else {
        None
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let mut publishers = Vec::with_capacity(opts.publishers);
    for p in 0..opts.publishers {
        let streams = shared.topology.streams_of(p);
        let urls = streams
            .iter()
            .map(|&s| {
                let spec = shared.topology.streams[s as usize];
                room_url(&opts.urls[spec.url], &shared.topology.room_names[spec.room])
            })
            .collect();
        let plan = PublisherPlan {
            publisher: p,
            streams,
            urls,
            size: opts.size,
            messages: opts.messages,
            rate: opts.rate,
            duration: opts.duration,
        };
        let task = publisher(
            plan,
            Arc::clone(&shared),
            Arc::clone(&gate),
            phase_rx.clone(),
        );
        publishers.push(match &publisher_runtime {
            Some(runtime) => runtime.handle().spawn(task),
            None => tokio::spawn(task),
        });
    }
    let s = Arc::clone(&shared);
    wait_until(
        || s.streams_connected.load(Ordering::Relaxed) >= stream_count,
        Duration::from_secs(3600),
    )
    .await;
    let connect_s = connect_started.elapsed().as_secs_f64();

    // 3. Readiness: every connected subscriber heard every stream of its room.
    let probe_started = Instant::now();
    let _ = phase_tx.send(Phase::Probe);
    let s = Arc::clone(&shared);
    let ready = wait_until(
        || {
            s.subscribers_ready.load(Ordering::Relaxed)
                + s.subscribers_disconnected.load(Ordering::Relaxed)
                >= s.subscribers_connected.load(Ordering::Relaxed)
        },
        opts.ready_timeout,
    )
    .await;
    let ready_s = probe_started.elapsed().as_secs_f64();
    if !ready {
        eprintln!(
            "loadgen: only {} of {} subscribers received a probe within {:?}; measuring anyway",
            shared.subscribers_ready.load(Ordering::Relaxed),
            connected,
            opts.ready_timeout
        );
    }

    // 4. Quiet.
    let _ = phase_tx.send(Phase::Quiet);
    tokio::time::sleep(opts.settle).await;
    let want_stats = opts.server_stats || opts.watch_rss.is_some();
    let stats_before = if want_stats {
        Some(server_stats::fetch_all(&opts.urls).await?)
    } else {
        None
    };

    // 5. Load.
    let loadgen_cpu_before = crate::sys::cpu_time();
    let segments_before = TcpSegments::read();
    let machine_cpu_before = MachineCpu::read();
    let _ = phase_tx.send(Phase::Go);
    let mut outcomes = Vec::with_capacity(publishers.len());
    for handle in publishers {
        outcomes.push(handle.await.map_err(|e| format!("publisher task: {e}"))?);
    }

    // 6. Drain.
    let expected_of = |stream: u32, sent: u64| {
        let room = shared.topology.streams[stream as usize].room;
        sent * shared.room_subscribers[room].load(Ordering::Relaxed)
    };
    let expected: u64 = outcomes
        .iter()
        .flat_map(|o| o.sent.iter())
        .map(|&(stream, sent)| expected_of(stream, sent))
        .sum();
    let mut last_progress = (shared.delivered(), Instant::now());
    loop {
        let delivered = shared.delivered();
        if delivered >= expected {
            break;
        }
        if delivered != last_progress.0 {
            last_progress = (delivered, Instant::now());
        } else if last_progress.1.elapsed() >= opts.drain_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let loadgen_cpu_ms = round(
        (crate::sys::cpu_time() - loadgen_cpu_before).as_secs_f64() * 1000.0,
        3,
    );
    let tcp_segments = segments_before
        .zip(TcpSegments::read())
        .map(|(before, after)| after.since(before));
    let machine_cpu = machine_cpu_before
        .zip(MachineCpu::read())
        .map(|(before, after)| after.since(before));
    let stats_after = if want_stats {
        Some(server_stats::fetch_all(&opts.urls).await?)
    } else {
        None
    };
    let rss_watch = match (opts.watch_rss, &stats_before) {
        (Some(watch), Some(before)) => Some(watch_rss(&opts.urls, sum_rss(before), watch).await?),
        _ => None,
    };

    // Tally.
    let mut latency_by_url: Vec<Histogram<u64>> =
        opts.urls.iter().map(|_| new_histogram()).collect();
    let mut per_stream = vec![StreamCounts::default(); stream_count];
    let mut reach: Vec<Vec<Reach>> = vec![Vec::new(); stream_count];
    let mut last_receive_ns = 0;
    for shard in &shared.shards {
        let mut shard = lock(shard);
        for (total, url) in latency_by_url.iter_mut().zip(&shard.latency_us) {
            total.add(url).expect("same histogram bounds");
        }
        for (total, counts) in per_stream.iter_mut().zip(&shard.streams) {
            total.delivered += counts.delivered;
            total.duplicated += counts.duplicated;
            total.out_of_order += counts.out_of_order;
        }
        // Taken: each shard's lists are freed as they are merged (a delivery still to come
        // finds an empty one).
        for (total, messages) in reach.iter_mut().zip(&mut shard.reach) {
            let messages = std::mem::take(messages);
            if total.is_empty() {
                *total = messages;
                continue;
            }
            if total.len() < messages.len() {
                total.resize(messages.len(), Reach::default());
            }
            for (total, message) in total.iter_mut().zip(messages) {
                total.merge(message);
            }
        }
        last_receive_ns = last_receive_ns.max(shard.last_receive_ns);
    }
    let mut per_publisher: Vec<PublisherReport> = (0..opts.publishers)
        .map(|publisher| PublisherReport {
            publisher,
            ..PublisherReport::default()
        })
        .collect();
    for (p, outcome) in outcomes.iter().enumerate() {
        let report = &mut per_publisher[p];
        report.connections = outcome.sent.len();
        report.error.clone_from(&outcome.error);
        for &(stream, sent) in &outcome.sent {
            let counts = per_stream[stream as usize];
            report.sent += sent;
            report.expected += expected_of(stream, sent);
            report.delivered += counts.delivered;
            report.duplicated += counts.duplicated;
            report.out_of_order += counts.out_of_order;
        }
        report.lost = report.expected.saturating_sub(report.delivered);
    }
    let first_send_ns = outcomes.iter().filter_map(|o| o.first_send_ns).min();
    let last_send_ns = outcomes.iter().filter_map(|o| o.last_send_ns).max();
    let sum = |f: fn(&PublisherReport) -> u64| per_publisher.iter().map(f).sum::<u64>();
    let delivered = sum(|p| p.delivered);
    let sent = sum(|p| p.sent);
    let secs = |ns: u64| ns as f64 / 1e9;
    let duration_s = match first_send_ns {
        Some(first) if last_receive_ns > first => secs(last_receive_ns - first),
        _ => 0.0,
    };
    let send_s = match (first_send_ns, last_send_ns) {
        (Some(first), Some(last)) => secs(last - first),
        _ => 0.0,
    };
    let tail_after_last_send_ms = match last_send_ns {
        Some(last) if last_receive_ns > last => (last_receive_ns - last) as f64 / 1e6,
        _ => 0.0,
    };
    let mut latency_us = new_histogram();
    for url in &latency_by_url {
        latency_us.add(url).expect("same histogram bounds");
    }
    let latency = Latency::of(&latency_us);
    let (mut first_us, mut last_us) = (new_histogram(), new_histogram());
    for message in reach.iter().flatten().filter(|message| message.reached()) {
        first_us.saturating_record(u64::from(message.first_us).clamp(1, MAX_LATENCY_US));
        last_us.saturating_record(u64::from(message.last_us).clamp(1, MAX_LATENCY_US));
    }
    let deliveries_per_s = if duration_s > 0.0 {
        delivered as f64 / duration_s
    } else {
        0.0
    };
    let server_cpu_ms = match (&stats_before, &stats_after) {
        (Some(before), Some(after)) => {
            let cpu =
                |stats: &[ServerStats]| stats.iter().map(ServerStats::cpu_time_us).sum::<u64>();
            Some(round(
                cpu(after).saturating_sub(cpu(before)) as f64 / 1000.0,
                3,
            ))
        }
        _ => None,
    };
    let server_hwm_growth_kib = match (&stats_before, &stats_after) {
        (Some(before), Some(after)) => {
            let hwm = |stats: &[ServerStats]| stats.iter().map(|s| s.vm_hwm_kib).sum::<u64>();
            Some(hwm(after).saturating_sub(hwm(before)))
        }
        _ => None,
    };
    let mut report = Report {
        kind: "pubsub",
        label: opts.label.clone(),
        mode: if opts.rate.is_some() { "rate" } else { "burst" },
        urls: opts.urls.clone(),
        rooms,
        subscribers: opts.subscribers,
        subscribers_connected: connected,
        connect_failures: shared.connect_failures.load(Ordering::Relaxed),
        subscribers_disconnected: shared.subscribers_disconnected.load(Ordering::Relaxed),
        publishers: opts.publishers,
        publisher_connections: stream_count,
        size: opts.size,
        messages_per_publisher: publisher_total(opts.rate, opts.duration, opts.messages),
        rate: opts.rate,
        connect_s: round(connect_s, 3),
        ready,
        ready_s: round(ready_s, 3),
        sent,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicated: sum(|p| p.duplicated),
        out_of_order: sum(|p| p.out_of_order),
        foreign_messages: shared.foreign.load(Ordering::Relaxed),
        publisher_received: shared.publisher_received.load(Ordering::Relaxed),
        send_s: round(send_s, 6),
        duration_s: round(duration_s, 6),
        deliveries_per_s: round(deliveries_per_s, 0),
        sends_per_s: if send_s > 0.0 {
            round(sent as f64 / send_s, 0)
        } else {
            0.0
        },
        tail_after_last_send_ms: round(tail_after_last_send_ms, 3),
        max_publisher_lag_ms: round(
            outcomes.iter().map(|o| o.max_lag_ns).max().unwrap_or(0) as f64 / 1e6,
            3,
        ),
        mean_publisher_lag_ms: round(
            outcomes.iter().map(|o| o.lag_sum_ns).sum::<u64>() as f64 / 1e6 / (sent.max(1) as f64),
            3,
        ),
        loadgen_cpu_ms,
        server_cpu_ms,
        deliveries_per_server_cpu_s: server_cpu_ms
            .filter(|&ms| ms > 0.0)
            .map(|ms| round(delivered as f64 / (ms / 1000.0), 0)),
        tcp_segments,
        machine_cpu,
        server_hwm_growth_kib,
        latency_ms: latency,
        latency_ms_by_url: latency_by_url.iter().map(Latency::of).collect(),
        message_first_ms: Latency::of(&first_us),
        message_last_ms: Latency::of(&last_us),
        per_publisher,
        server_stats_before: stats_before,
        server_stats_after: stats_after,
        rss_watch,
        figures: Figures::default(),
    };
    report.figures = figures(&report);

    for task in tasks {
        task.abort();
    }
    for outcome in outcomes {
        for reader in outcome.readers {
            reader.abort();
        }
    }
    Ok(report)
}

fn figures(report: &Report) -> Figures {
    let mut f = Figures::default();
    let l = &report.latency_ms;
    f.push("deliveries_per_s", report.deliveries_per_s);
    // No deliveries, no latency: a 0 here would be the table's best figure (`lost` shows why).
    if l.count > 0 {
        f.push("p50_ms", l.p50);
        f.push("p90_ms", l.p90);
        f.push("p99_ms", l.p99);
        f.push("p999_ms", l.p999);
        f.push("max_ms", l.max);
    }
    if report.latency_ms_by_url.len() > 1 {
        // Instance by instance: with `--publish-via first` and Redis, the other instances'
        // subscribers get every message through the first instance, Redis and their own.
        for (i, url) in report.latency_ms_by_url.iter().enumerate() {
            if url.count > 0 {
                f.push(&format!("p99_ms_url{}", i + 1), url.p99);
            }
        }
    }
    f.push("message_first_p50_ms", report.message_first_ms.p50);
    f.push("message_last_p50_ms", report.message_last_ms.p50);
    f.push("message_last_p99_ms", report.message_last_ms.p99);
    f.push("tail_after_last_send_ms", report.tail_after_last_send_ms);
    f.push("lost", report.lost as f64);
    f.push("duplicated", report.duplicated as f64);
    f.push("out_of_order", report.out_of_order as f64);
    // `lost` counts against what was sent: a publisher cut short (its connection failed)
    // must show too, as must a message in the wrong room, or a run that never saw every
    // subscriber ready.
    let planned = report.publishers as u64 * report.messages_per_publisher;
    f.push("unsent", planned.saturating_sub(report.sent) as f64);
    f.push("foreign_messages", report.foreign_messages as f64);
    f.push("not_ready", f64::from(u8::from(!report.ready)));
    // A run that measured fewer clients than asked for must show in the table.
    f.push(
        "subscribers_missing",
        (report.subscribers - report.subscribers_connected + report.subscribers_disconnected)
            as f64,
    );
    if report.rate.is_some() {
        f.push("max_publisher_lag_ms", report.max_publisher_lag_ms);
        f.push("mean_publisher_lag_ms", report.mean_publisher_lag_ms);
    }
    if let Some(cpu) = report.server_cpu_ms {
        f.push("server_cpu_ms", cpu);
    }
    if let Some(rate) = report.deliveries_per_server_cpu_s {
        f.push("deliveries_per_server_cpu_s", rate);
    }
    f.push("loadgen_cpu_ms", report.loadgen_cpu_ms);
    if let Some(segments) = report.tcp_segments.filter(|_| report.delivered > 0) {
        // Per delivery, so that runs of different lengths compare: 1.0 data segments per
        // delivery is one segment for every message to every subscriber.
        let per = |n: u64| round(n as f64 / report.delivered as f64, 3);
        f.push("data_segments_per_delivery", per(segments.data));
        f.push("segments_per_delivery", per(segments.all));
    }
    if let Some(cpu) = report.machine_cpu {
        f.push("machine_idle_ms", cpu.idle_ms as f64);
        f.push("steal_ms", cpu.steal_ms as f64);
    }
    if let Some(growth) = report.server_hwm_growth_kib {
        f.push("hwm_growth_mib", round(mib(growth), 1));
    }
    if let Some(watch) = &report.rss_watch {
        f.push("rss_idle_mib", round(mib(watch.idle_kib), 1));
        f.push("rss_peak_mib", round(mib(watch.peak_kib), 1));
        f.push("rss_end_mib", round(mib(watch.end_kib), 1));
        f.push("rss_end_over_idle", watch.end_over_idle);
        if let Some(after) = watch.within_10pct_after_s {
            f.push("rss_within_10pct_after_s", after);
        }
    }
    f
}

async fn watch_rss(urls: &[String], idle_kib: u64, watch: Duration) -> Result<RssWatch, String> {
    let started = Instant::now();
    let mut samples = Vec::new();
    loop {
        let t = started.elapsed();
        let rss = sum_rss(&server_stats::fetch_all(urls).await?);
        samples.push((round(t.as_secs_f64(), 3), rss));
        if t >= watch {
            break;
        }
        tokio::time::sleep(RSS_SAMPLE_INTERVAL).await;
    }
    let peak_kib = samples.iter().map(|&(_, rss)| rss).max().unwrap_or(0);
    let end_kib = samples.last().map_or(0, |&(_, rss)| rss);
    let limit = idle_kib as f64 * 1.1;
    Ok(RssWatch {
        idle_kib,
        peak_kib,
        end_kib,
        end_over_idle: if idle_kib > 0 {
            round(end_kib as f64 / idle_kib as f64, 3)
        } else {
            0.0
        },
        within_10pct_after_s: samples
            .iter()
            .find(|&&(_, rss)| rss as f64 <= limit)
            .map(|&(t, _)| t),
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(subscribers: usize, rooms: usize, publishers: usize, urls: usize) -> Options {
        Options {
            urls: (0..urls)
                .map(|i| format!("ws://127.0.0.1:{i}/ws"))
                .collect(),
            subscribers,
            rooms,
            publishers,
            messages: 1,
            size: 64,
            rate: None,
            duration: Duration::from_secs(1),
            publish_via: PublishVia::All,
            publishers_share_thread: false,
            connect_concurrency: 64,
            ready_timeout: Duration::from_secs(1),
            settle: Duration::ZERO,
            drain_timeout: Duration::from_secs(1),
            room_prefix: "r".into(),
            server_stats: false,
            watch_rss: None,
            label: String::new(),
        }
    }

    #[test]
    fn every_room_has_subscribers_on_every_instance() {
        let topology = Topology::new(&options(5000, 1000, 10, 2));
        for room in 0..1000 {
            let urls: Vec<usize> = topology
                .subscribers
                .iter()
                .filter(|(r, _)| *r == room)
                .map(|&(_, url)| url)
                .collect();
            assert_eq!(urls.len(), 5);
            assert!(urls.contains(&0) && urls.contains(&1));
        }
    }

    #[test]
    fn each_room_gets_one_stream_and_publishers_use_every_instance() {
        let topology = Topology::new(&options(5000, 1000, 10, 2));
        assert_eq!(topology.streams.len(), 1000);
        assert!(topology.room_streams.iter().all(|s| s.len() == 1));
        let of_first = topology.streams_of(0);
        assert_eq!(of_first.len(), 100);
        let on_second = of_first
            .iter()
            .filter(|&&s| topology.streams[s as usize].url == 1)
            .count();
        assert_eq!(on_second, 50);
    }

    #[test]
    fn more_publishers_than_rooms_share_rooms() {
        let topology = Topology::new(&options(10, 1, 3, 1));
        assert_eq!(topology.room_streams[0], vec![0, 1, 2]);
        assert_eq!(topology.slot_in_room(2, 0), Some(2));
        assert_eq!(topology.slot_in_room(3, 0), None);
    }

    #[test]
    fn each_stream_expects_its_share_of_its_publishers_messages() {
        // Publisher 0 has the streams of rooms 0 and 2, publisher 1 that of room 1.
        let topology = Topology::new(&options(3, 3, 2, 1));
        assert_eq!(topology.streams_of(0), vec![0, 2]);
        assert_eq!(topology.messages_per_stream(5), vec![3, 5, 2]);
        assert_eq!(topology.messages_per_stream(0), vec![0, 0, 0]);
    }

    /// Each of the 16 shards keeps a record per message of every stream its subscribers
    /// hear (a one-room run: every shard, every message): 8 bytes each, in a list the size
    /// of the stream (no doubling slack), else a long rate run holds hundreds of MiB.
    #[test]
    fn a_shard_keeps_eight_bytes_per_message_it_saw() {
        assert_eq!(std::mem::size_of::<Reach>(), 8);
        let messages = 1000;
        let mut shard = Shard::new(1, 2);
        for seq in 0..messages {
            shard.reached(1, seq as u64, 100 + seq as u64, messages);
        }
        assert_eq!(shard.reach[1].len(), messages);
        assert_eq!(shard.reach[1].capacity(), messages);
        assert_eq!(
            shard.reach[0].capacity(),
            0,
            "a stream never heard costs nothing"
        );
        let message = shard.reach[1][999];
        assert_eq!((message.first_us, message.last_us), (1099, 1099));
    }

    #[test]
    fn a_message_reaches_its_room_when_its_last_subscriber_reads_it() {
        let (mut one, mut other) = (Reach::default(), Reach::default());
        assert!(!one.reached());
        for latency in [300, 100, 200] {
            one.add(latency);
        }
        other.add(700);
        let mut total = Reach::default();
        total.merge(one);
        // A shard that never saw the message changes nothing.
        total.merge(Reach::default());
        total.merge(other);
        assert!(total.reached());
        assert_eq!((total.first_us, total.last_us), (100, 700));
    }

    #[test]
    fn a_sequence_number_its_publisher_never_sends_is_no_message_of_the_run() {
        let header = |stream, seq| Header {
            kind: Kind::Data,
            stream,
            seq,
            sent_ns: 0,
        };
        let expected = [3, 5];
        assert!(sent_by_its_publisher(&header(0, 2), &expected));
        assert!(!sent_by_its_publisher(&header(0, 3), &expected));
        assert!(sent_by_its_publisher(&header(1, 4), &expected));
        assert!(!sent_by_its_publisher(&header(1, u64::MAX), &expected));
        assert!(!sent_by_its_publisher(&header(2, 0), &expected));
    }

    #[test]
    fn tracks_tell_duplicates_and_reordering_apart() {
        let mut track = Track::default();
        assert!(matches!(track.observe(0), Seen::InOrder));
        assert!(matches!(track.observe(2), Seen::InOrder));
        assert!(matches!(track.observe(1), Seen::OutOfOrder));
        assert!(matches!(track.observe(2), Seen::Duplicate));
        assert!(matches!(track.observe(200), Seen::InOrder));
    }
}
