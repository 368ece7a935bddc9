//! tonic routes and WebSockets on one port: tonic 0.14 routes (here the standard gRPC health
//! service) become an axum router with `Routes::into_axum_router()`, the hub layer wraps it, and
//! `axum::serve` serves both gRPC (HTTP/2) and WebSocket upgrades (HTTP/1.1).

mod support;

use support::*;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower_ws_hub::{Hub, HubLayer};

async fn serve_health_and_hub() -> (Server, tonic_health::server::HealthReporter) {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("chat.Chat", ServingStatus::Serving)
        .await;
    let hub = Hub::builder().build();
    let app = tonic::service::Routes::new(health_service)
        .into_axum_router()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
    (serve_router(app, hub).await, reporter)
}

async fn health_client(server: &Server) -> HealthClient<tonic::transport::Channel> {
    let channel = tokio::time::timeout(
        PROMPTLY,
        tonic::transport::Endpoint::from_shared(server.http_url(""))
            .unwrap()
            .connect(),
    )
    .await
    .expect("gRPC connect timed out")
    .expect("gRPC connect failed");
    HealthClient::new(channel)
}

#[tokio::test]
async fn a_grpc_health_check_and_a_websocket_share_one_port() {
    let (server, _reporter) = serve_health_and_hub().await;

    let mut grpc = health_client(&server).await;
    let reply = grpc
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check failed")
        .into_inner();
    assert_eq!(reply.status, ServingStatus::Serving as i32);

    let mut a = server.connect("grpc-neighbours").await;
    let mut b = server.connect("grpc-neighbours").await;
    wait_members(&server.hub, "grpc-neighbours", 2).await;
    send_text(&mut a, "next to gRPC").await;
    assert_eq!(next_text(&mut b).await, "next to gRPC");

    // gRPC still works with WebSockets open on the same port.
    let reply = grpc
        .check(HealthCheckRequest {
            service: "chat.Chat".into(),
        })
        .await
        .expect("health check failed")
        .into_inner();
    assert_eq!(reply.status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn grpc_errors_pass_through_the_hub_layer_untouched() {
    let (server, _reporter) = serve_health_and_hub().await;
    let mut grpc = health_client(&server).await;
    let status = grpc
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(server.hub.stats().handshakes_rejected, 0);
}

#[tokio::test]
async fn grpc_health_changes_are_seen_while_websockets_stay_open() {
    let (server, reporter) = serve_health_and_hub().await;
    let mut ws = server.connect("watchers").await;
    wait_members(&server.hub, "watchers", 1).await;

    reporter
        .set_service_status("chat.Chat", ServingStatus::NotServing)
        .await;
    let mut grpc = health_client(&server).await;
    let reply = grpc
        .check(HealthCheckRequest {
            service: "chat.Chat".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, ServingStatus::NotServing as i32);

    server
        .hub
        .publish("watchers", tower_ws_hub::Message::text("still connected"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "still connected");
}
