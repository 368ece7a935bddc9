//! Redis test support: throwaway `redis-server` processes, a plain connection for checks, a TCP
//! proxy that can silently starve the connections passing through it, and one that delays them.
//!
//! Never touches the Redis that may run on 6379: every server here is started by the test on a
//! free port and killed when dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_ws_hub::redis::deadpool_redis::redis;

/// A `redis-server` of our own on a free loopback port.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a fresh server (no persistence) and waits until it answers PING.
    pub async fn start() -> Self {
        let port = free_port().await;
        let mut server = Self { port, child: None };
        server.spawn().await;
        server
    }

    /// A port nothing listens on, for "Redis is down" tests; `start_on` can bring it up later.
    pub async fn unused() -> Self {
        Self {
            port: free_port().await,
            child: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`: no goodbye to any client.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)), empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        assert_ne!(self.port, 6379, "tests never use the shared Redis on 6379");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--protected-mode", "no", "--logfile", ""])
            // For DEBUG SLEEP: a Redis that is up but too slow.
            .args(["--enable-debug-command", "local"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start `redis-server` ({error}): the Redis tests need it on PATH \
                     (Debian/Ubuntu: apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if ping(self.addr()).await {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server on port {} exited at start ({status}): the port may be \
                     taken, or the redis-server is older than 7.0, which the tests need \
                     (`--enable-debug-command`; `redis-server --version` says which)",
                    self.port
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A plain (non-hub) connection, for PUBLISH and PUBSUB checks.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// A connection whose commands wait for their reply however long it takes (the client's
    /// default gives up after 500 ms): for a `DEBUG SLEEP` whose reply marks the end of the
    /// stall.
    pub async fn patient_connection(&self) -> redis::aio::MultiplexedConnection {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        if port != 6379 {
            return port;
        }
    }
}

async fn ping(addr: SocketAddr) -> bool {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
    else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_millis(200), stream.read_exact(&mut reply)).await,
        Ok(Ok(_)) if &reply == b"+PONG\r\n"
    )
}

/// `PUBSUB NUMSUB channel`: how many connections are subscribed to it.
pub async fn numsub(connection: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(connection)
        .await
        .unwrap();
    count
}

/// `PUBLISH channel payload`, returning the receiver count.
pub async fn publish_raw(
    connection: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    payload: &[u8],
) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(connection)
        .await
        .unwrap()
}

/// A TCP proxy in front of Redis whose open connections can be made to go silent: bytes from
/// Redis stop reaching the client while the socket stays open, like a stuck middlebox.
/// Connections opened after a freeze work normally.
pub struct StarvingProxy {
    pub addr: SocketAddr,
    epoch: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl StarvingProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let epoch = Arc::new(AtomicU64::new(0));
        let shared_epoch = Arc::clone(&epoch);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let born = shared_epoch.load(Ordering::SeqCst);
                let epoch = Arc::clone(&shared_epoch);
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream =
                        async { tokio::io::copy(&mut client_read, &mut server_write).await };
                    let downstream = async {
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let n = server_read.read(&mut buffer).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            // Frozen: swallow what Redis sends, keep the socket open.
                            if epoch.load(Ordering::SeqCst) == born {
                                client_write.write_all(&buffer[..n]).await?;
                            }
                        }
                    };
                    tokio::select! {
                        _ = upstream => {}
                        _ = downstream => {}
                    }
                });
            }
        });
        Self { addr, epoch, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Every connection open now stops receiving, silently.
    pub fn starve_open_connections(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for StarvingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy in front of Redis that delays every byte by `delay` in each direction, order
/// kept: a Redis a few milliseconds away, so that every round trip (a SUBSCRIBE) takes time.
pub struct LatencyProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl LatencyProxy {
    pub async fn start(upstream: SocketAddr, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(delayed_copy(client_read, server_write, delay));
                tokio::spawn(delayed_copy(server_read, client_write, delay));
            }
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0
            || tx
                .send((tokio::time::Instant::now() + delay, buffer[..n].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
