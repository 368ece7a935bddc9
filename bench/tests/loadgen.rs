//! End to end: the load generator against the two benchmark servers.
//!
//! Each test starts its own `hub_server` or `baseline` process (the built binaries, on
//! 127.0.0.1:0, killed when the test ends, also on a panic), runs a small scenario of
//! [`loadgen::pubsub`] or [`loadgen::idle`] against it in this process, and checks the
//! accounting: on loopback, with a few dozen clients and nothing else going on, every expected
//! delivery must arrive exactly once and in order. A broken load generator (lost, double-counted
//! or misordered bookkeeping, a receiver that mis-parses frames) or a broken server (a lost,
//! duplicated or reordered fan-out, a wrong `/stats`) fails here.
//!
//! No Redis: the servers run without `--redis`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tower_ws_hub_bench::loadgen::{idle, pubsub};
use tower_ws_hub_bench::server_stats;

/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A benchmark server process, killed on drop.
/// A headline figure of a report, by name.
fn figure(figures: &tower_ws_hub_bench::report::Figures, name: &str) -> Option<f64> {
    figures.0.iter().find(|f| f.name == name).map(|f| f.value)
}

struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    /// What the server prints after its `listening on` line, line by line.
    rest: mpsc::Receiver<String>,
}

impl Server {
    fn start(name: &'static str, exe: &str) -> Self {
        let mut child = Command::new(exe)
            .args(["--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("{name}: cannot start {exe}: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        // Guard first, so that the process dies if the line never comes.
        let (rest_tx, rest) = mpsc::channel();
        let mut server = Self {
            name,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            rest,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let result = stdout.read_line(&mut line).map(|_| line);
            let _ = tx.send(result);
            // Keep reading, so that what the server prints later never meets a closed pipe.
            for line in stdout.lines().map_while(Result::ok) {
                let _ = rest_tx.send(line);
            }
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(error)) => panic!("{name}: reading stdout: {error}"),
            Err(_) => panic!("{name}: no `listening on` line within {START_TIMEOUT:?}"),
        };
        server.addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"));
        server
    }

    fn hub_server() -> Self {
        Self::start("hub_server", env!("CARGO_BIN_EXE_hub_server"))
    }

    fn baseline() -> Self {
        Self::start("baseline", env!("CARGO_BIN_EXE_baseline"))
    }

    /// The WebSocket URL template the load generator takes.
    fn url(&self) -> String {
        format!("ws://{}/ws/{{room}}", self.addr)
    }

    /// The open connections the server's `/stats` reports.
    async fn connections(&self) -> u64 {
        server_stats::fetch(&self.url())
            .await
            .unwrap_or_else(|error| panic!("{}: {error}", self.name))
            .connections
    }

    /// Waits (a few seconds at most) until the server reports `count` open connections.
    async fn wait_for_connections(&self, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.connections().await;
            if now == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: /stats still reports {now} connections, expected {count}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Server {
    /// Stops the server with SIGTERM, as `run.sh` does, and returns what it printed after
    /// its `listening on` line.
    fn stop_gracefully(mut self) -> Vec<String> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, not yet
        // waited for, so it cannot have been reused.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "{}: kill",
            self.name
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running 10 s after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{}: exited with {status}", self.name);
        let mut lines = Vec::new();
        while let Ok(line) = self.rest.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        lines
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small burst scenario with short timeouts: they only run out when something is broken.
fn options(server: &Server, label: &str) -> pubsub::Options {
    pubsub::Options {
        urls: vec![server.url()],
        subscribers: 40,
        rooms: 2,
        publishers: 2,
        messages: 50,
        size: 64,
        rate: None,
        duration: Duration::from_secs(1),
        publish_via: pubsub::PublishVia::First,
        publishers_share_thread: false,
        connect_concurrency: 16,
        ready_timeout: Duration::from_secs(5),
        settle: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(2),
        room_prefix: "t".into(),
        server_stats: true,
        watch_rss: None,
        label: label.into(),
    }
}

/// Deliveries a run must produce: each publisher's messages go to every subscriber of its
/// room. With at least as many rooms as publishers, publisher `p` has one stream into each room
/// `r` with `r % publishers == p`; subscriber `i` is in room `i % rooms`.
fn expected_deliveries(opts: &pubsub::Options, messages_per_publisher: u64) -> u64 {
    assert!(opts.rooms >= opts.publishers && opts.rooms.is_multiple_of(opts.publishers));
    let per_room = |room: usize| {
        (0..opts.subscribers)
            .filter(|i| i % opts.rooms == room)
            .count() as u64
    };
    let streams_per_publisher = (opts.rooms / opts.publishers) as u64;
    // Each publisher spreads its messages round-robin over its streams.
    assert!(messages_per_publisher.is_multiple_of(streams_per_publisher));
    (0..opts.rooms)
        .map(|room| messages_per_publisher / streams_per_publisher * per_room(room))
        .sum()
}

async fn run_pubsub(opts: pubsub::Options) -> pubsub::Report {
    let label = opts.label.clone();
    let report = pubsub::run(opts)
        .await
        .unwrap_or_else(|error| panic!("{label}: pubsub::run failed: {error}"));
    eprintln!("{}", report.human());
    report
}

/// The checks every pubsub run must pass; `expected` is computed here, not by the load generator.
fn assert_clean_pubsub(report: &pubsub::Report, opts: &pubsub::Options, expected: u64) {
    let json = serde_json::to_string_pretty(report).unwrap();
    let ctx = format!("{}\nreport: {json}", opts.label);
    let messages = report.messages_per_publisher;
    let streams = report.publisher_connections as u64;

    // Everyone connected and heard the readiness probe; nobody went away.
    assert_eq!(report.subscribers_connected, opts.subscribers, "{ctx}");
    assert_eq!(report.connect_failures, 0, "{ctx}");
    assert_eq!(report.subscribers_disconnected, 0, "{ctx}");
    assert!(report.ready, "{ctx}");
    assert_eq!(
        report.publisher_connections,
        opts.rooms.max(opts.publishers),
        "{ctx}"
    );

    // Everything sent arrived exactly once, in order.
    assert_eq!(report.sent, messages * opts.publishers as u64, "{ctx}");
    assert_eq!(report.expected, expected, "{ctx}");
    assert_eq!(report.delivered, expected, "{ctx}");
    assert_eq!(report.lost, 0, "{ctx}");
    assert_eq!(report.duplicated, 0, "{ctx}");
    assert_eq!(report.out_of_order, 0, "{ctx}");
    assert_eq!(report.foreign_messages, 0, "{ctx}");
    // Every message reached its room, each counted once whatever the room's size; the last
    // subscriber never before the first.
    assert_eq!(report.message_first_ms.count, report.sent, "{ctx}");
    assert_eq!(report.message_last_ms.count, report.sent, "{ctx}");
    assert!(
        report.message_first_ms.max <= report.message_last_ms.max
            && report.message_first_ms.p50 <= report.message_last_ms.p50,
        "{ctx}"
    );
    // And the table says so: what was not sent, went to the wrong room or never got ready.
    for name in ["lost", "unsent", "foreign_messages", "not_ready"] {
        assert_eq!(figure(&report.figures, name), Some(0.0), "{name}: {ctx}");
    }
    // One stream per room: a publisher hears no other publisher, and the server does not echo
    // its own messages back.
    if streams == opts.rooms as u64 {
        assert_eq!(report.publisher_received, 0, "{ctx}");
    }
    assert_eq!(report.per_publisher.len(), opts.publishers, "{ctx}");
    for publisher in &report.per_publisher {
        assert_eq!(publisher.error, None, "{ctx}");
        assert_eq!(publisher.sent, messages, "{ctx}");
        assert_eq!(publisher.lost, 0, "{ctx}");
        assert_eq!(publisher.delivered, publisher.expected, "{ctx}");
    }
    let per_publisher_delivered: u64 = report.per_publisher.iter().map(|p| p.delivered).sum();
    assert_eq!(per_publisher_delivered, report.delivered, "{ctx}");

    // Timing and latency.
    let l = &report.latency_ms;
    assert_eq!(l.count, report.delivered, "{ctx}");
    for (name, value) in [
        ("mean", l.mean),
        ("p50", l.p50),
        ("p90", l.p90),
        ("p99", l.p99),
        ("p999", l.p999),
        ("max", l.max),
    ] {
        assert!(
            value > 0.0 && value.is_finite(),
            "latency {name} {value}: {ctx}"
        );
    }
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{ctx}"
    );
    assert!(l.max < 10_000.0, "latency max {} ms: {ctx}", l.max);
    // Per URL: every delivery counted once, under its subscriber's URL; the overall extremes
    // are those of one URL or another.
    let by_url = &report.latency_ms_by_url;
    assert_eq!(by_url.len(), opts.urls.len(), "{ctx}");
    assert_eq!(
        by_url.iter().map(|l| l.count).sum::<u64>(),
        report.delivered,
        "{ctx}"
    );
    let largest = by_url.iter().map(|l| l.max).fold(0.0, f64::max);
    assert_eq!(largest, l.max, "{ctx}");
    for url in by_url {
        assert!(url.p50 <= url.p99 && url.p99 <= url.max, "{ctx}");
    }
    assert!(report.duration_s > 0.0, "{ctx}");
    assert!(report.deliveries_per_s > 0.0, "{ctx}");
    assert!(report.duration_s >= report.send_s, "{ctx}");

    // The /stats path: before and after, with every client connected.
    let connections = (opts.subscribers + report.publisher_connections) as u64;
    for stats in [&report.server_stats_before, &report.server_stats_after] {
        let stats = stats.as_ref().expect("server_stats asked for");
        // One entry per URL (the tests' URLs all lead to one server).
        assert_eq!(stats.len(), opts.urls.len(), "{ctx}");
        for stats in stats {
            assert_eq!(stats.connections, connections, "{ctx}");
            assert!(stats.vm_rss_kib > 0, "{ctx}");
            assert!(stats.vm_hwm_kib >= stats.vm_rss_kib, "{ctx}");
        }
    }
    assert!(report.server_cpu_ms.is_some(), "{ctx}");
    assert!(report.server_hwm_growth_kib.is_some(), "{ctx}");
    // The headline figures `loadgen summarize` reads include the server's CPU.
    let figure = |name: &str| figure(&report.figures, name);
    assert_eq!(figure("server_cpu_ms"), report.server_cpu_ms, "{ctx}");
    assert_eq!(figure("lost"), Some(0.0), "{ctx}");
    // The machine's segment counters span the load: every subscriber got at least one data
    // segment, and the figure is that count per delivery.
    if cfg!(target_os = "linux") {
        let segments = report.tcp_segments.expect("Linux has the counters");
        assert!(
            segments.data >= opts.subscribers as u64,
            "{ctx}: {segments:?}"
        );
        assert!(segments.all >= segments.data, "{ctx}: {segments:?}");
        let per_delivery = figure("data_segments_per_delivery").expect("figure present");
        let expected = segments.data as f64 / report.delivered as f64;
        assert!((per_delivery - expected).abs() < 0.001, "{ctx}");
    }
}

async fn burst(server: Server) {
    let opts = options(&server, &format!("{} burst", server.name));
    let expected = expected_deliveries(&opts, opts.messages);
    assert_eq!(expected, 2 * 50 * 20);
    let report = run_pubsub(opts.clone()).await;
    assert_eq!(report.mode, "burst");
    assert_eq!(report.messages_per_publisher, 50);
    assert_clean_pubsub(&report, &opts, expected);
    // The run dropped its clients: the server must notice and count them out.
    server.wait_for_connections(0).await;
}

#[tokio::test]
async fn burst_against_hub_server() {
    burst(Server::hub_server()).await;
}

/// `hub_server` stops on SIGTERM and prints the hub's counters, which agree with what the
/// load generator received.
#[tokio::test]
async fn hub_server_prints_its_counters_when_it_stops() {
    let server = Server::hub_server();
    let opts = options(&server, "hub_server burst, then stop");
    let expected = expected_deliveries(&opts, opts.messages);
    let report = run_pubsub(opts.clone()).await;
    assert_clean_pubsub(&report, &opts, expected);
    server.wait_for_connections(0).await;
    let lines = server.stop_gracefully();
    let stats = lines
        .iter()
        .find_map(|line| line.strip_prefix("hub stats: "))
        .unwrap_or_else(|| panic!("no `hub stats:` line in {lines:?}"));
    let counter = |name: &str| -> u64 {
        let (_, after) = stats
            .split_once(&format!(" {name}: "))
            .unwrap_or_else(|| panic!("no {name} in {stats}"));
        after
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not a number in {stats}"))
    };
    // The readiness probes are deliveries too: at least the measured ones, every one written.
    assert!(counter("deliveries") >= expected, "{stats}");
    assert_eq!(counter("dropped_messages"), 0, "{stats}");
    assert_eq!(counter("connections"), 0, "{stats}");
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("broker status (after shutdown): ")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn burst_against_baseline() {
    burst(Server::baseline()).await;
}

/// `--publishers-share-thread` (how burst runs worked before session 11, kept to reproduce
/// them): the same burst, as clean, with the publishers on the subscribers' runtime.
#[tokio::test]
async fn burst_with_publishers_on_the_subscribers_thread() {
    let server = Server::hub_server();
    let opts = pubsub::Options {
        publishers_share_thread: true,
        ..options(&server, "hub_server burst, shared thread")
    };
    let expected = expected_deliveries(&opts, opts.messages);
    let report = run_pubsub(opts.clone()).await;
    assert_eq!(report.mode, "burst");
    assert_clean_pubsub(&report, &opts, expected);
}

/// Two URLs (here both the same server, so that every room reaches every subscriber without
/// Redis): subscribers are spread over them, and each URL's latency counts its own subscribers'
/// deliveries.
#[tokio::test]
async fn latency_is_also_reported_per_url() {
    let server = Server::hub_server();
    let opts = pubsub::Options {
        urls: vec![server.url(), server.url()],
        ..options(&server, "hub_server two URLs")
    };
    let expected = expected_deliveries(&opts, opts.messages);
    let report = run_pubsub(opts.clone()).await;
    assert_clean_pubsub(&report, &opts, expected);
    // 40 subscribers, 2 rooms: each URL has 10 subscribers of each room, half the deliveries.
    let counts: Vec<u64> = report.latency_ms_by_url.iter().map(|l| l.count).collect();
    assert_eq!(counts, [expected / 2, expected / 2], "{}", report.human());
    assert!(report.human().contains("p99 by URL "), "{}", report.human());
    for (i, url) in report.latency_ms_by_url.iter().enumerate() {
        let name = format!("p99_ms_url{}", i + 1);
        assert_eq!(figure(&report.figures, &name), Some(url.p99), "{name}");
    }
}

#[tokio::test]
async fn fixed_rate_against_hub_server() {
    let server = Server::hub_server();
    let opts = pubsub::Options {
        subscribers: 20,
        rooms: 1,
        publishers: 1,
        rate: Some(200.0),
        duration: Duration::from_millis(500),
        ..options(&server, "hub_server rate")
    };
    let report = run_pubsub(opts.clone()).await;
    let ctx = serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(report.mode, "rate", "{ctx}");
    assert_eq!(report.rate, Some(200.0), "{ctx}");
    // 200/s for 0.5 s, not `messages` (50).
    assert_eq!(report.messages_per_publisher, 100, "{ctx}");
    assert_clean_pubsub(&report, &opts, expected_deliveries(&opts, 100));
    // On schedule: the 100th message leaves 99 periods (495 ms) after the first. A burst would
    // be done in a few ms.
    assert!(report.send_s >= 0.45, "sent too fast for the rate: {ctx}");
}

/// Messages larger than the subscribers' 16 KiB read: the receiver must grow its buffer for the
/// whole frame and still parse every message.
async fn large_messages(server: Server) {
    let opts = pubsub::Options {
        subscribers: 10,
        rooms: 1,
        publishers: 1,
        messages: 6,
        size: 40_000,
        ..options(&server, &format!("{} large", server.name))
    };
    let expected = expected_deliveries(&opts, opts.messages);
    assert_eq!(expected, 60);
    let report = run_pubsub(opts.clone()).await;
    assert_eq!(report.size, 40_000);
    assert_clean_pubsub(&report, &opts, expected);
}

#[tokio::test]
async fn large_messages_against_hub_server() {
    large_messages(Server::hub_server()).await;
}

#[tokio::test]
async fn large_messages_against_baseline() {
    large_messages(Server::baseline()).await;
}

/// Runs the idle scenario against `server` and returns the report with its JSON (for
/// assertion messages).
async fn run_idle(
    server: &Server,
    connections: usize,
    rooms: usize,
    send_once: Option<usize>,
) -> (idle::Report, String) {
    let opts = idle::Options {
        urls: vec![server.url()],
        connections,
        rooms,
        connect_concurrency: 16,
        settle: Duration::from_millis(50),
        hold: Duration::ZERO,
        send_once,
        room_prefix: "idle".into(),
        // As run.sh runs it: a browser's handshake (both servers must take its `Origin`).
        browser_headers: true,
        label: format!("{} idle", server.name),
    };
    let report = idle::run(opts)
        .await
        .unwrap_or_else(|error| panic!("{}: idle::run failed: {error}", server.name));
    eprintln!("{}", report.human());
    let ctx = serde_json::to_string_pretty(&report).unwrap();
    (report, ctx)
}

async fn idle_connections(server: Server) {
    let (report, ctx) = run_idle(&server, 50, 5, None).await;
    assert_eq!(report.kind, "idle", "{ctx}");
    assert_eq!(report.connected, 50, "{ctx}");
    assert_eq!(report.connect_failures, 0, "{ctx}");
    assert_eq!(report.rooms, 5, "{ctx}");
    assert!(report.servers_counted_all, "{ctx}");
    assert_eq!(report.before.len(), 1, "{ctx}");
    assert_eq!(report.after.len(), 1, "{ctx}");
    assert_eq!(report.before[0].connections, 0, "{ctx}");
    assert_eq!(report.after[0].connections, 50, "{ctx}");
    assert!(report.after[0].vm_rss_kib > 0, "{ctx}");
    assert!(report.rss_per_connection_kib.is_finite(), "{ctx}");
    assert!(report.loadgen_rss_kib > 0, "{ctx}");
    assert!(report.after_message.is_none(), "{ctx}");
    // The run closed its connections on the way out.
    server.wait_for_connections(0).await;
}

/// `--send-once`: every connection sends one message after the idle measurement, and the
/// memory is read a third time, with every connection still open.
async fn idle_then_one_message_each(server: Server) {
    let (report, ctx) = run_idle(&server, 20, 20, Some(10_000)).await;
    assert_eq!(report.connected, 20, "{ctx}");
    assert_eq!(report.message_bytes, Some(10_000), "{ctx}");
    let after = report
        .after_message
        .as_ref()
        .expect("measured after the messages");
    assert_eq!(after.len(), 1, "{ctx}");
    assert_eq!(
        after[0].connections, 20,
        "{ctx}: a connection closed over its message"
    );
    let figure = |name: &str| figure(&report.figures, name);
    assert_eq!(figure("messages_sent"), Some(20.0), "{ctx}");
    let per = report
        .rss_per_connection_after_message_kib
        .expect("the per-connection figure");
    let shown = figure("rss_per_conn_after_message_kib").expect("in the table");
    assert!((shown - per).abs() <= 0.01, "{ctx}");
    assert!(
        report.human().contains("after one 10000-byte message each"),
        "{ctx}"
    );
    server.wait_for_connections(0).await;
}

#[tokio::test]
async fn idle_then_one_message_against_hub_server() {
    idle_then_one_message_each(Server::hub_server()).await;
}

#[tokio::test]
async fn idle_then_one_message_against_baseline() {
    idle_then_one_message_each(Server::baseline()).await;
}

#[tokio::test]
async fn idle_against_hub_server() {
    idle_connections(Server::hub_server()).await;
}

#[tokio::test]
async fn idle_against_baseline() {
    idle_connections(Server::baseline()).await;
}

/// `--publish-queue 0` is refused by the argument parser (exit status 2, the flag named),
/// not by a panic in `RedisConfig::publish_queue`; 1 is taken.
#[test]
fn hub_server_refuses_an_empty_publish_queue() {
    let run = |places: &str| {
        Command::new(env!("CARGO_BIN_EXE_hub_server"))
            .args([
                "--redis",
                "redis://127.0.0.1:1",
                "--publish-queue",
                places,
                "--check",
            ])
            .output()
            .expect("hub_server runs")
    };
    let refused = run("0");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--publish-queue"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let taken = run("1");
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
}
