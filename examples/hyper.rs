//! WebSocket rooms in front of a plain hyper service: no axum, no router, just a Tower service
//! served by hyper-util.
//!
//! What it shows:
//! - `HubLayer` around a bare `tower::service_fn` (here a tiny page and a `404` for the rest):
//!   `/ws/{room}` becomes WebSocket rooms, every other request reaches the service untouched;
//! - serving with hyper-util's `auto::Builder` and `serve_connection_with_upgrades`, HTTP/1.1
//!   and HTTP/2 on one port, with RFC 8441's extended CONNECT enabled so that HTTP/2 clients
//!   can open WebSockets too;
//! - the settings `axum::serve` does not expose: a timer, a header-read timeout (a client that
//!   never finishes its HTTP/1.1 request head is dropped, and so is an idle keep-alive
//!   connection, after 10 s), HTTP/2 keepalive pings; and a deadline for the first bytes,
//!   which the auto builder reads without one to tell HTTP/1.1 from HTTP/2 (HTTP/2 itself has
//!   no request-head timeout in hyper: a proxy in front should bound its connections);
//! - the client's address handed to the hub as a `SocketAddr` request extension;
//! - graceful shutdown: on Ctrl-C or SIGTERM every WebSocket gets 1001 ("going away") and
//!   the hub waits for them to close (up to its grace period, 10 s by default; new upgrades
//!   get `503` meanwhile, other requests are still served); then the listener closes and the
//!   HTTP connections still open finish what they are doing (hyper-util's `GracefulShutdown`,
//!   up to 5 s more), and the process exits with status 0. Another Ctrl-C or SIGTERM while
//!   that is under way exits at once, with status 1.
//!
//! Run it:
//!
//! ```text
//! cargo run --example hyper                  # listens on 127.0.0.1:3003 ($ADDR to change)
//! websocat ws://127.0.0.1:3003/ws/lobby      # in two terminals: what one sends, the other gets
//! curl -i http://127.0.0.1:3003/
//! ```

use std::convert::Infallible;
use std::io::ErrorKind;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::{Layer, ServiceBuilder};
use tower_ws_hub::{Hub, HubLayer, OriginPolicy};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a client may take to send its request head (and the first bytes of its connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// What an HTTP/2 client sends first, "prior knowledge" (h2c) style.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long open HTTP connections get to finish after the WebSockets closed at shutdown.
const HTTP_GRACE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3003".to_owned());
    let hub = Hub::builder()
        .on_connect(|ctx| {
            tracing::info!(id = %ctx.id(), room = ctx.room(), remote = ?ctx.remote_addr(), "joined");
        })
        .on_disconnect(|ctx| tracing::info!(id = %ctx.id(), room = ctx.room(), "left"))
        .build();

    // The application: any Tower service whose body the layer can wrap.
    let app = tower::service_fn(|request: Request<hyper::body::Incoming>| async move {
        let response = match request.uri().path() {
            "/" => Response::new(Full::new(Bytes::from_static(
                b"WebSocket rooms at /ws/{room}\n",
            ))),
            _ => {
                let mut not_found = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *not_found.status_mut() = StatusCode::NOT_FOUND;
                not_found
            }
        };
        Ok::<_, Infallible>(response)
    });
    let layer = HubLayer::new(hub.clone())
        .route("/ws/{room}")
        // Only pages served from this host may open sockets (non-browser clients send no
        // `Origin` and are let in): see README, "Security".
        .origin(OriginPolicy::SameOrigin);
    let service = ServiceBuilder::new().layer(layer).service(app);

    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|error| format!("cannot listen on $ADDR ({addr}): {error}"))?;
    tracing::info!(local_addr = %listener.local_addr()?, "hyper example listening");

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper needs a timer for the timeouts and pings below (it panics without one when they
    // are set).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        // RFC 8441: WebSockets over HTTP/2 (a CONNECT with `:protocol = websocket`).
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(20)));

    let graceful = GracefulShutdown::new();
    // The first Ctrl-C or SIGTERM starts the graceful shutdown (`shutdown_signal` below hears
    // it); a second one, while that is under way, ends the process at once.
    tokio::spawn(exit_on_second_signal());
    // Resolves on Ctrl-C, SIGTERM or `Hub::shutdown`, once the hub has closed every WebSocket
    // with 1001 and waited (up to its grace period) for them to finish.
    let mut stop = std::pin::pin!(hub.shutdown_signal());
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // A client that gave up while in the queue: nothing to do with the listener.
                Err(error) if matches!(
                    error.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
                ) => continue,
                Err(error) => {
                    // Out of file descriptors, say: wait a little instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // The hub writes each connection's queued frames in one go: Nagle's algorithm would
        // only delay them.
        let _ = stream.set_nodelay(true);
        // The client's address, as a request extension: the layer's default `remote_addr`
        // finder reads a `SocketAddr` extension.
        let service = TowerToHyperService::new(
            tower::util::MapRequestLayer::new(move |mut request: Request<_>| {
                request.extensions_mut().insert(remote);
                request
            })
            .layer(service.clone()),
        );
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            if !tokio::time::timeout(HEADER_READ_TIMEOUT, protocol_known(&stream))
                .await
                .unwrap_or(false)
            {
                tracing::debug!(%remote, "no request within {HEADER_READ_TIMEOUT:?}, or gone");
                return;
            }
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%remote, %error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("every HTTP connection finished"),
        () = tokio::time::sleep(HTTP_GRACE) => {
            tracing::warn!("HTTP connections still open after {HTTP_GRACE:?}; stopping anyway");
        }
    }
    tracing::info!("hyper example stopped");
    Ok(())
}

/// Waits until the connection's first bytes say which protocol it speaks: 24 bytes, or fewer
/// that are already not the HTTP/2 preface. `false` if the client closed first. (The auto
/// builder reads these bytes itself, with no deadline; the caller bounds this wait.)
async fn protocol_known(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    loop {
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n == first.len() || first[..n] != HTTP2_PREFACE[..n] => return true,
            // Part of the preface so far: `peek` would return the same bytes at once, so give
            // the rest a moment to arrive.
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Listens for termination signals from now on (Ctrl-C or SIGTERM; the first also reaches
/// `Hub::shutdown_signal`) and returns a future that, at the second one, exits with status 1
/// without waiting for anything.
fn exit_on_second_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?)))
    };
    async move {
        #[cfg(unix)]
        {
            let Ok((mut interrupt, mut terminate)) = signals else {
                return;
            };
            for _ in 0..2 {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
        }
        #[cfg(not(unix))]
        for _ in 0..2 {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
        }
        tracing::warn!("second termination signal: exiting without waiting");
        std::process::exit(1);
    }
}
