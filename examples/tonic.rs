//! gRPC and WebSocket rooms on one port: tonic routes turned into an axum `Router`, with a
//! `HubLayer` in front, served by `axum::serve`.
//!
//! The gRPC service here is the standard health service (`grpc.health.v1.Health`, from
//! tonic-health); your own services are added the same way with `Routes::add_service`. gRPC
//! clients speak HTTP/2, WebSocket clients HTTP/1.1 (or HTTP/2 extended CONNECT): `axum::serve`
//! (with axum's `http2` feature) tells them apart on the same port.
//!
//! Run it:
//!
//! ```text
//! cargo run --example tonic                   # listens on 127.0.0.1:3001 ($ADDR to change)
//! ```
//!
//! Try it with [grpcurl](https://github.com/fullstorydev/grpcurl) (the health service has no
//! reflection, so give it the proto file, or use `grpc-health-probe -addr=127.0.0.1:3001`) and
//! [websocat](https://github.com/vi/websocat):
//!
//! ```text
//! grpcurl -plaintext -proto health.proto 127.0.0.1:3001 grpc.health.v1.Health/Check
//! websocat ws://127.0.0.1:3001/ws/lobby
//! ```
//!
//! On Ctrl-C or SIGTERM the health status turns to NOT_SERVING while WebSocket clients are
//! closed with 1001, then the server stops; gRPC streams still open 5 s after that (a health
//! `Watch` never ends on its own) do not keep it running.

use axum::serve::ListenerExt;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tower_ws_hub::{Hub, HubLayer};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let hub = Hub::builder().build();

    // The overall health (service "") starts as SERVING.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();

    // Why not `tonic::transport::Server`? It serves each connection without upgrade support:
    // it would let the hub answer `101 Switching Protocols` and then drop the socket, because
    // the connection is never handed over. Tonic routes are an axum `Router` underneath, so
    // serve that with `axum::serve`, which does support upgrades (HTTP/1.1 `Upgrade`, and
    // HTTP/2 extended CONNECT with axum's `http2` feature).
    let app = Routes::new(health_service)
        // .add_service(MyServiceServer::new(my_service))
        .prepare()
        .into_axum_router()
        // Wraps the gRPC routes and their fallback: `/ws/{room}` is answered before routing.
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));

    // Report NOT_SERVING as soon as shutdown starts, so load balancers stop sending traffic
    // while the WebSocket clients are being closed.
    tokio::spawn({
        let hub = hub.clone();
        let health_reporter = health_reporter.clone();
        async move {
            hub.shutdown_started().await;
            health_reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
        }
    });

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
        "gRPC (grpc.health.v1.Health) and WebSockets (ws://{local_addr}/ws/<room>) listening"
    );

    // A graceful stop waits for every HTTP/2 stream to end, and a streaming RPC may never end
    // on its own (a health `Watch` lasts as long as its client): once the hub has shut down,
    // the other streams get `STREAMS_GRACE`, then the server stops anyway.
    let (hub_done, hub_done_rx) = tokio::sync::oneshot::channel();
    let signal = hub.shutdown_signal();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        signal.await;
        let _ = hub_done.send(());
    });
    tokio::select! {
        result = serve => result?,
        Ok(()) = hub_done_rx => {
            tokio::time::sleep(STREAMS_GRACE).await;
            tracing::warn!("gRPC streams still open {STREAMS_GRACE:?} after shutdown: stopping");
        }
    }

    tracing::info!("stopped");
    Ok(())
}

/// How long streams other than WebSockets may go on once the hub has shut down.
const STREAMS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
