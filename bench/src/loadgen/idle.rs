//! Idle connections: how much resident memory a server spends per open WebSocket.
//!
//! Reads the servers' `/stats`, opens `connections` WebSockets spread over `rooms` rooms (and
//! round-robin over the URLs), waits until the servers count them all and a settle time has
//! passed, reads `/stats` again, and reports `(RSS after - RSS before) / connections`. The
//! clients keep reading (and so answer pings) until the run ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{connect, room_name, room_url};
use crate::report::{Figures, round};
use crate::server_stats::{self, ServerStats};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// WebSocket URL templates, one per server instance.
    pub urls: Vec<String>,
    /// Connections to open.
    pub connections: usize,
    /// Rooms to spread them over.
    pub rooms: usize,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Wait after the servers count every connection, before reading their memory.
    pub settle: Duration,
    /// Keep the connections open this long after measuring.
    pub hold: Duration,
    /// Room names are `{room_prefix}-{index}`.
    pub room_prefix: String,
    /// Free text copied into the report.
    pub label: String,
}

/// The outcome, printed as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `"idle"`.
    pub kind: &'static str,
    /// The `--label`.
    pub label: String,
    /// Server URLs.
    pub urls: Vec<String>,
    /// Connections asked for.
    pub connections: usize,
    /// Connections that opened.
    pub connected: usize,
    /// Connections that failed to open.
    pub connect_failures: usize,
    /// Rooms.
    pub rooms: usize,
    /// Seconds to open them all.
    pub connect_s: f64,
    /// Whether the servers counted every connection before the measurement.
    pub servers_counted_all: bool,
    /// `/stats` before connecting.
    pub before: Vec<ServerStats>,
    /// `/stats` with every connection open and settled.
    pub after: Vec<ServerStats>,
    /// `(sum of RSS after - sum of RSS before) / connected`, KiB.
    pub rss_per_connection_kib: f64,
    /// The load generator's own RSS with every connection open, KiB.
    pub loadgen_rss_kib: u64,
    /// The headline numbers, for `loadgen summarize`.
    pub figures: Figures,
}

impl Report {
    /// One line for people.
    pub fn human(&self) -> String {
        let rss =
            |stats: &[ServerStats]| stats.iter().map(|s| s.vm_rss_kib).sum::<u64>() as f64 / 1024.0;
        format!(
            "{label}: {connected}/{connections} idle connections in {rooms} rooms: server RSS \
             {before:.1} MiB -> {after:.1} MiB = {per:.2} KiB per connection (connect {secs:.1} s)",
            label = if self.label.is_empty() {
                "idle"
            } else {
                &self.label
            },
            connected = self.connected,
            connections = self.connections,
            rooms = self.rooms,
            before = rss(&self.before),
            after = rss(&self.after),
            per = self.rss_per_connection_kib,
            secs = self.connect_s,
        )
    }
}

/// Runs the scenario.
///
/// # Errors
///
/// When `/stats` cannot be read or no connection could be opened.
pub async fn run(opts: Options) -> Result<Report, String> {
    if opts.urls.is_empty() {
        return Err("at least one --url is needed".into());
    }
    let before = server_stats::fetch_all(&opts.urls).await?;
    let rooms = opts.rooms.max(1);
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let room = i % rooms;
        let url = room_url(
            &opts.urls[(i / rooms + room) % opts.urls.len()],
            &room_name(&opts.room_prefix, room),
        );
        let (gate, connected, failed) = (
            Arc::clone(&gate),
            Arc::clone(&connected),
            Arc::clone(&failed),
        );
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire().await;
            let client = connect(&url, false).await;
            drop(permit);
            match client {
                Ok(mut client) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    while let Some(Ok(_)) = client.next().await {}
                }
                Err(error) => {
                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("loadgen: {error}");
                    }
                }
            }
        }));
    }
    while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < opts.connections {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    let open = connected.load(Ordering::Relaxed);
    if open == 0 && opts.connections > 0 {
        return Err("no connection could be opened".into());
    }
    // The server counts a connection once its task has joined the room, a moment after the
    // client saw the 101.
    let expected = before.iter().map(|s| s.connections).sum::<u64>() + open as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut servers_counted_all = false;
    while Instant::now() < deadline {
        let now = server_stats::fetch_all(&opts.urls).await?;
        if now.iter().map(|s| s.connections).sum::<u64>() >= expected {
            servers_counted_all = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(opts.settle).await;
    let after = server_stats::fetch_all(&opts.urls).await?;
    let sum = |stats: &[ServerStats]| stats.iter().map(|s| s.vm_rss_kib).sum::<u64>();
    let per_connection = if open > 0 {
        (sum(&after) as f64 - sum(&before) as f64) / open as f64
    } else {
        0.0
    };
    let loadgen_rss_kib = ServerStats::current(0).vm_rss_kib;
    let mut figures = Figures::default();
    figures.push("rss_per_conn_kib", round(per_connection, 2));
    figures.push("rss_before_mib", round(sum(&before) as f64 / 1024.0, 1));
    figures.push("rss_after_mib", round(sum(&after) as f64 / 1024.0, 1));
    figures.push("connect_s", round(connect_s, 2));
    tokio::time::sleep(opts.hold).await;
    for task in tasks {
        task.abort();
    }
    Ok(Report {
        kind: "idle",
        label: opts.label,
        urls: opts.urls,
        connections: opts.connections,
        connected: open,
        connect_failures: failed.load(Ordering::Relaxed),
        rooms,
        connect_s: round(connect_s, 3),
        servers_counted_all,
        before,
        after,
        rss_per_connection_kib: round(per_connection, 3),
        loadgen_rss_kib,
        figures,
    })
}
