//! Idle connections: how much resident memory a server spends per open WebSocket.
//!
//! Reads the servers' `/stats`, opens `connections` WebSockets spread over `rooms` rooms (and
//! round-robin over the URLs), waits until the servers count them all and a settle time has
//! passed, reads `/stats` again, and reports `(RSS after - RSS before) / connections`. The
//! clients keep reading (and so answer pings) until the run ends.
//!
//! With `send_once`, every connection then sends one binary message of that size, and after
//! another settle time the servers' RSS is read a third time: what the message left behind in
//! each connection (a read buffer that grew to hold it and never shrank, say). Put every
//! connection in a room of its own (`rooms` = `connections`), or the messages fan out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use super::{browser_headers, connect_with_headers, room_name, room_url};
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
    /// After the idle measurement, each connection sends one binary message of this many
    /// bytes, and the memory is measured again.
    pub send_once: Option<usize>,
    /// Room names are `{room_prefix}-{index}`.
    pub room_prefix: String,
    /// Handshakes carry a browser's headers ([`super::browser_headers`]), so that what a
    /// server keeps of them per connection shows in the figure.
    pub browser_headers: bool,
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
    /// With `send_once`: the message size, and `/stats` once every connection sent it and
    /// the settle time passed.
    pub message_bytes: Option<usize>,
    /// With `send_once`: `/stats` after the messages.
    pub after_message: Option<Vec<ServerStats>>,
    /// With `send_once`: `(sum of RSS after the messages - sum of RSS before) / connected`,
    /// KiB.
    pub rss_per_connection_after_message_kib: Option<f64>,
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
        let mut line = format!(
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
        );
        if let (Some(bytes), Some(after), Some(per)) = (
            self.message_bytes,
            &self.after_message,
            self.rss_per_connection_after_message_kib,
        ) {
            line += &format!(
                "; after one {bytes}-byte message each: {:.1} MiB = {per:.2} KiB per connection",
                rss(after)
            );
        }
        line
    }
}

/// Runs the scenario.
///
/// # Errors
///
/// When `/stats` cannot be read, no connection could be opened, or (with `browser_headers`)
/// a URL is not `ws://`.
pub async fn run(opts: Options) -> Result<Report, String> {
    if opts.urls.is_empty() {
        return Err("at least one --url is needed".into());
    }
    let before = server_stats::fetch_all(&opts.urls).await?;
    let rooms = opts.rooms.max(1);
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let (send_tx, send_rx) = watch::channel(false);
    let message = opts.send_once.map(|bytes| Bytes::from(vec![0x5a; bytes]));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let room = i % rooms;
        let url = room_url(
            &opts.urls[(i / rooms + room) % opts.urls.len()],
            &room_name(&opts.room_prefix, room),
        );
        let (gate, connected, failed, sent) = (
            Arc::clone(&gate),
            Arc::clone(&connected),
            Arc::clone(&failed),
            Arc::clone(&sent),
        );
        let (mut send_rx, message) = (send_rx.clone(), message.clone());
        let headers = if opts.browser_headers {
            browser_headers(&url)?
        } else {
            Vec::new()
        };
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire().await;
            let client = connect_with_headers(&url, false, &headers).await;
            drop(permit);
            match client {
                Ok(mut client) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    // Read (answering pings) until told to send, send, then read on.
                    let mut message = message;
                    loop {
                        tokio::select! {
                            read = client.next() => {
                                if !matches!(read, Some(Ok(_))) {
                                    break;
                                }
                            }
                            go = async { send_rx.wait_for(|go| *go).await.is_ok() },
                                if message.is_some() =>
                            {
                                if !go {
                                    break;
                                }
                                let bytes = message.take().expect("checked by the guard");
                                if client.send(Message::Binary(bytes)).await.is_ok() {
                                    sent.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
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

    let (after_message, rss_per_connection_after_message_kib) = if opts.send_once.is_some() {
        let _ = send_tx.send(true);
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent.load(Ordering::Relaxed) < open && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(opts.settle).await;
        let after_message = server_stats::fetch_all(&opts.urls).await?;
        let per = if open > 0 {
            (sum(&after_message) as f64 - sum(&before) as f64) / open as f64
        } else {
            0.0
        };
        figures.push("rss_per_conn_after_message_kib", round(per, 2));
        figures.push("messages_sent", sent.load(Ordering::Relaxed) as f64);
        (Some(after_message), Some(round(per, 3)))
    } else {
        (None, None)
    };
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
        message_bytes: opts.send_once,
        after_message,
        rss_per_connection_after_message_kib,
        loadgen_rss_kib,
        figures,
    })
}
