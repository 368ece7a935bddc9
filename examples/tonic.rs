//! gRPC and WebSocket rooms on one port: tonic routes turned into an axum `Router`, with a
//! `HubLayer` in front, served by `axum::serve`.
//!
//! The gRPC service here is the standard health service (`grpc.health.v1.Health`, from
//! tonic-health); your own services are added the same way with `Routes::add_service`, and
//! their names to [`SERVED`]. gRPC clients speak HTTP/2, WebSocket clients HTTP/1.1 (or HTTP/2
//! extended CONNECT): `axum::serve` (with axum's `http2` feature) tells them apart on the same
//! port.
//!
//! Run it:
//!
//! ```text
//! cargo run --example tonic                   # listens on 127.0.0.1:3001 ($ADDR to change)
//! SHUTDOWN_DRAIN_MS=10000 cargo run --example tonic   # 10 s for load balancers at shutdown
//! ```
//!
//! Try it with [grpcurl](https://github.com/fullstorydev/grpcurl) (the health service has no
//! reflection, so give it the proto file: `health.proto` from the grpc repository,
//! <https://github.com/grpc/grpc/blob/master/src/proto/grpc/health/v1/health.proto>; or use
//! `grpc-health-probe -addr=127.0.0.1:3001`) and
//! [websocat](https://github.com/vi/websocat):
//!
//! ```text
//! grpcurl -plaintext -proto health.proto 127.0.0.1:3001 grpc.health.v1.Health/Check
//! websocat ws://127.0.0.1:3001/ws/lobby
//! ```
//!
//! # Shutdown, in order
//!
//! On Ctrl-C or SIGTERM (a call to `Hub::shutdown` starts at step 3, with step 1 at the same
//! time; one during step 2 ends it):
//!
//! 1. every service in [`SERVED`] (`""`, the server as a whole, and `grpc.health.v1.Health`)
//!    reports NOT_SERVING, to `Check` and to every open `Watch`;
//! 2. for `$SHUTDOWN_DRAIN_MS` milliseconds (default 0) nothing else changes: WebSockets stay
//!    open and new ones are accepted, so that load balancers checking health have time to take
//!    this instance out of rotation (set it to their check interval times their unhealthy
//!    threshold). With 0, one that has not noticed yet may send it upgrades, answered `503`.
//!    Keep this delay plus steps 3 and 4 within your orchestrator's deadline before it kills
//!    the process (Kubernetes: `terminationGracePeriodSeconds`, 30 s by default);
//! 3. the hub closes every WebSocket with 1001 ("going away") once what is queued for it is
//!    written, and answers new upgrades with `503`, for up to its `shutdown_grace` (10 s);
//! 4. the server stops accepting connections and stops as soon as the requests in flight have
//!    finished; gRPC streams still open [`STREAMS_GRACE`] (5 s) later (a health `Watch` never
//!    ends on its own) do not keep it running.
//!
//! Once a shutdown is under way (from a signal or from `Hub::shutdown`), a Ctrl-C or SIGTERM
//! exits at once (status 1) without waiting for the rest. Two signals that come before the
//! first is handled count as one.
//!
//! # What `axum::serve` does not configure
//!
//! `axum::serve` takes no settings ("intentionally simple", say its docs: "use hyper or
//! hyper-util if you need configuration"). Each connection gets hyper-util's
//! `server::conn::auto::Builder` with its defaults, plus extended CONNECT for HTTP/2
//! WebSockets. So none of what `tonic::transport::Server` would let you set is here: HTTP/2
//! keepalive pings (`http2_keepalive_interval`, `http2_keepalive_timeout`: the idle connection
//! of a gRPC client that vanished stays open; the hub pings WebSockets itself),
//! `max_concurrent_streams`, flow-control windows, `max_frame_size`, `max_connection_age`, nor
//! its per-request `timeout`, `concurrency_limit_per_connection` and `load_shed`. TCP options
//! are the exception: set them on each accepted socket with `ListenerExt::tap_io`, as
//! `TCP_NODELAY` is below (TCP keepalive through socket2's `SockRef`).
//!
//! The same goes for `grpc-timeout`: tonic enforces a client's deadline in a layer that only
//! `transport::Server` adds (the generated service code and `Routes::into_axum_router` do not
//! read the header; tonic 0.14). Served this way, a call is not ended with DEADLINE_EXCEEDED at
//! its deadline; it ends when the client gives up on it (tonic's and grpc-go's clients enforce
//! their deadlines themselves), which resets its HTTP/2 stream, and hyper then drops the
//! handler's future.
//!
//! If you need any of these, serve each accepted connection yourself:
//! `hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())`, configured through
//! `.http2()` (`keep_alive_interval`, `max_concurrent_streams`, ... and
//! `enable_connect_protocol()` for HTTP/2 WebSockets; keepalive and other timeouts need
//! `.timer(TokioTimer::new())` too, or hyper panics with "You must supply a timer"), then
//! `.serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(app))`: the
//! `_with_upgrades` is what hands WebSocket connections over to the hub (without it the hub
//! answers `101` and the socket is dropped). Graceful shutdown is then yours too
//! (hyper-util's `server::graceful::GracefulShutdown`, feature `server-graceful`, watches the
//! connections). Server-side deadlines need a layer of your own that reads `grpc-timeout`.

use std::future::IntoFuture;
use std::time::Duration;

use axum::serve::ListenerExt;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_ws_hub::{Hub, HubLayer};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The names health checks ask about: `""` for the server as a whole, then every gRPC service it
/// serves. Each is SERVING from the start and NOT_SERVING once shutdown starts. Add your own
/// service's name here when you add the service to the routes below
/// (`<MyServiceServer<MyService> as tonic::server::NamedService>::NAME`, or the generated
/// `my_service_server::SERVICE_NAME`).
const SERVED: &[&str] = &["", tonic_health::pb::health_server::SERVICE_NAME];

/// How long streams other than WebSockets may go on once the hub has shut down.
const STREAMS_GRACE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let drain = match std::env::var("SHUTDOWN_DRAIN_MS") {
        Ok(ms) if !ms.is_empty() => Duration::from_millis(ms.parse().map_err(|error| {
            format!("$SHUTDOWN_DRAIN_MS ({ms}): {error} (milliseconds expected)")
        })?),
        _ => Duration::ZERO,
    };
    // Listening for Ctrl-C and SIGTERM starts here, before the port opens: a signal that
    // comes while the server starts up still stops it gracefully.
    let mut signals = Termination::listen()?;
    let hub = Hub::builder().build();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    report(&health_reporter, ServingStatus::Serving).await;

    // Why not `tonic::transport::Server`? It serves each connection without upgrade support:
    // it would let the hub answer `101 Switching Protocols` and then drop the socket, because
    // the connection is never handed over. Tonic routes are an axum `Router` underneath, so
    // serve that with `axum::serve`, which does support upgrades (HTTP/1.1 `Upgrade`, and
    // HTTP/2 extended CONNECT with axum's `http2` feature).
    let app = Routes::new(health_service)
        // .add_service(MyServiceServer::new(my_service)) // and its name to `SERVED`
        .prepare()
        .into_axum_router()
        // Wraps the gRPC routes and their fallback: `/ws/{room}` is answered before routing.
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));

    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|error| format!("cannot listen on $ADDR ({addr}): {error}"))?;

    let local_addr = listener.local_addr()?;

    // The hub writes each connection's queued frames in one go: Nagle's algorithm would only
    // delay them.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tracing::info!(
        %local_addr,
        "gRPC ({}) and WebSockets (ws://{local_addr}/ws/<room>) listening",
        SERVED[1..].join(", ")
    );

    // Steps 1 to 3 of the shutdown (module docs). `Hub::shutdown_signal` would close the
    // WebSockets as soon as the signal comes: the health status has to change first.
    let (force, forced) = tokio::sync::oneshot::channel();
    let stop = {
        let hub = hub.clone();
        async move {
            tokio::select! {
                () = signals.recv() => {}
                () = hub.shutdown_started() => {}
            }
            // From now on a Ctrl-C or SIGTERM stops the process at once (`main` returns).
            tokio::spawn(async move {
                signals.recv().await;
                let _ = force.send(());
            });
            report(&health_reporter, ServingStatus::NotServing).await;
            if !drain.is_zero() && !hub.is_shutting_down() {
                tracing::info!(
                    ?drain,
                    "NOT_SERVING: closing WebSockets after the drain delay"
                );
                tokio::select! {
                    () = tokio::time::sleep(drain) => {}
                    // `Hub::shutdown` called meanwhile: no point serving on.
                    () = hub.shutdown_started() => {}
                }
            }
            hub.shutdown().await;
        }
    };

    // A graceful stop waits for every HTTP/2 stream to end, and a streaming RPC may never end
    // on its own (a health `Watch` lasts as long as its client): once the hub has shut down,
    // the other streams get `STREAMS_GRACE`, then the server stops anyway.
    let (hub_done, hub_done_rx) = tokio::sync::oneshot::channel();
    let serve = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop.await;
            let _ = hub_done.send(());
        })
        .into_future();
    let mut serve = std::pin::pin!(serve);
    let run = async {
        tokio::select! {
            result = &mut serve => result,
            // The server is still draining: it stops as soon as its last stream ends, or after
            // the grace, whichever comes first.
            Ok(()) = hub_done_rx => match tokio::time::timeout(STREAMS_GRACE, &mut serve).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(
                        "gRPC streams still open {STREAMS_GRACE:?} after shutdown: stopping"
                    );
                    Ok(())
                }
            },
        }
    };
    tokio::select! {
        result = run => result?,
        Ok(()) = forced => {
            // Returning drops the server, the hub and every connection, unannounced.
            tracing::warn!("second termination signal: exiting without waiting");
            return Err("stopped by a second termination signal".into());
        }
    }

    tracing::info!("stopped");
    Ok(())
}

/// Sets every name in [`SERVED`] to `status`, which open `Watch` streams hear at once.
async fn report(health: &HealthReporter, status: ServingStatus) {
    for name in SERVED {
        health.set_service_status(name, status).await;
    }
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from [`listen`](Self::listen) on: unlike
/// `tokio::signal::ctrl_c()`, which starts listening when first polled, a signal that comes
/// before the server is polled is not lost (the process would die of it).
struct Termination {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl Termination {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(windows)]
        {
            Ok(Self {
                ctrl_c: tokio::signal::windows::ctrl_c()?,
            })
        }
        #[cfg(not(any(unix, windows)))]
        Ok(Self {})
    }

    /// The next Ctrl-C or SIGTERM (never, where the platform has neither).
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(windows)]
        self.ctrl_c.recv().await;
        #[cfg(not(any(unix, windows)))]
        std::future::pending::<()>().await;
    }
}
