//! The layer in different stacks: inside and outside `tower_http::trace::TraceLayer`, behind an
//! auth layer, around a bare hyper `service_fn` served by hyper-util with upgrades, and over
//! HTTP/2 extended CONNECT (RFC 8441) from hyper's own HTTP/2 client — sharing rooms with
//! HTTP/1.1 clients.

#[path = "support/h2.rs"]
mod h2;
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, Version};
use axum::routing::get;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use h2::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::raw::Upgrade;
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultMakeSpan, DefaultOnRequest, OnResponse, TraceLayer};
use tower_ws_hub::{Hub, HubLayer, Message};

type Statuses = Arc<Mutex<Vec<u16>>>;

/// Records the status of every response a `TraceLayer` sees.
#[derive(Clone)]
struct RecordStatus(Statuses);

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, _latency: Duration, _span: &tracing::Span) {
        self.0.lock().unwrap().push(response.status().as_u16());
    }
}

type RecordingTraceLayer = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    DefaultMakeSpan,
    DefaultOnRequest,
    RecordStatus,
>;

/// A TraceLayer that records the status of every response it sees.
fn recording_trace_layer(statuses: Statuses) -> RecordingTraceLayer {
    TraceLayer::new_for_http().on_response(RecordStatus(statuses))
}

fn app_routes() -> Router {
    Router::new().route("/healthz", get(|| async { "ok" }))
}

/// Checks both halves of a server: an HTTP route and a WebSocket room.
async fn assert_http_and_websocket_work(server: &Server) {
    let reply = http_get(&server.http_url("/healthz")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    let mut a = server.connect("stack").await;
    let mut b = server.connect("stack").await;
    wait_members(&server.hub, "stack", 2).await;
    send_text(&mut a, "through the stack").await;
    assert_eq!(next_text(&mut b).await, "through the stack");
    // Rejections are still the hub's.
    let response = Upgrade::new("/ws/stack")
        .without("Sec-WebSocket-Key")
        .send(server.addr)
        .await;
    response.assert_rejection(400, "Sec-WebSocket-Key");
}

// ----- axum stacks ---------------------------------------------------------------------------

#[tokio::test]
async fn the_hub_works_outside_a_trace_layer_which_never_sees_websocket_requests() {
    let statuses = Statuses::default();
    let hub = Hub::builder().build();
    let app = app_routes()
        .layer(recording_trace_layer(Arc::clone(&statuses)))
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
    let server = serve_router(app, hub).await;
    assert_http_and_websocket_work(&server).await;
    assert_eq!(*statuses.lock().unwrap(), [200]);
}

#[tokio::test]
async fn the_hub_works_inside_a_trace_layer_which_sees_the_101_and_the_rejections() {
    let statuses = Statuses::default();
    let hub = Hub::builder().build();
    let app = app_routes()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        .layer(recording_trace_layer(Arc::clone(&statuses)));
    let server = serve_router(app, hub).await;
    assert_http_and_websocket_work(&server).await;
    let mut statuses = statuses.lock().unwrap().clone();
    statuses.sort_unstable();
    assert_eq!(statuses, [101, 101, 200, 400]);
}

#[tokio::test]
// tower-http's validator signature returns the whole rejection response as the error.
#[allow(clippy::result_large_err)]
async fn an_auth_layer_outside_the_hub_guards_websocket_upgrades() {
    use tower_http::validate_request::ValidateRequestHeaderLayer;
    let hub = Hub::builder().build();
    let app = app_routes()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        .layer(ValidateRequestHeaderLayer::custom(
            |request: &mut Request<Body>| match request.headers().get("authorization") {
                Some(value) if value == "Bearer let-me-in" => Ok(()),
                _ => Err(Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .body(Body::from("who are you?"))
                    .unwrap()),
            },
        ));
    let server = serve_router(app, hub).await;

    let response = Upgrade::new("/ws/private").send(server.addr).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.text(), "who are you?");
    assert_eq!(server.hub.stats().connections_opened, 0);

    let _member = Upgrade::new("/ws/private")
        .header("Authorization", "Bearer let-me-in")
        .open(server.addr)
        .await;
    wait_members(&server.hub, "private", 1).await;
}

// ----- bare hyper ----------------------------------------------------------------------------

/// Serves a bare hyper `service_fn`, wrapped in the hub layer with `tower::ServiceBuilder`,
/// with hyper-util's auto (HTTP/1.1 + HTTP/2) connection builder and upgrades enabled.
async fn serve_bare_hyper(hub: Hub) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(HubLayer::new(hub).route("/ws/{room}"))
        .service(tower::service_fn(|request: Request<Incoming>| async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("x-served-by", "bare-hyper")
                    .body(Full::new(Bytes::from(format!(
                        "bare hyper: {}",
                        request.uri().path()
                    ))))
                    .unwrap(),
            )
        }));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http2().enable_connect_protocol();
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_hub_wraps_a_bare_hyper_service_served_with_upgrades() {
    let hub = Hub::builder().build();
    let addr = serve_bare_hyper(hub.clone()).await;

    let reply = http_get(&format!("http://{addr}/hello")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["x-served-by"], "bare-hyper");
    assert_eq!(reply.body, "bare hyper: /hello");

    let mut a = connect(&format!("ws://{addr}/ws/bare")).await;
    let mut b = connect(&format!("ws://{addr}/ws/bare")).await;
    wait_members(&hub, "bare", 2).await;
    send_text(&mut a, "no framework at all").await;
    assert_eq!(next_text(&mut b).await, "no framework at all");

    let response = Upgrade::new("/ws/bare")
        .header("Sec-WebSocket-Version", "8")
        .send(addr)
        .await;
    response.assert_rejection(426, "13");
}

// ----- HTTP/2 extended CONNECT (RFC 8441) ----------------------------------------------------

#[tokio::test]
async fn an_http2_extended_connect_websocket_shares_a_room_with_http1_clients() {
    let versions: Arc<Mutex<Vec<Version>>> = Arc::default();
    let record = Arc::clone(&versions);
    let hub = Hub::builder()
        .on_connect(move |ctx| record.lock().unwrap().push(ctx.http_version()))
        .build();
    let server = serve_hub(hub).await;

    let mut sender = h2_connect(server.addr).await;
    let mut over_h2 = h2_websocket(&mut sender, server.addr, "mixed").await;
    let mut over_h1 = server.connect("mixed").await;
    wait_members(&server.hub, "mixed", 2).await;

    over_h2.send(WsMessage::text("from HTTP/2")).await.unwrap();
    assert_eq!(next_text(&mut over_h1).await, "from HTTP/2");
    send_text(&mut over_h1, "from HTTP/1.1").await;
    assert_eq!(h2_next_text(&mut over_h2).await, "from HTTP/1.1");
    server
        .hub
        .publish("mixed", Message::text("from the app"))
        .await
        .unwrap();
    assert_eq!(h2_next_text(&mut over_h2).await, "from the app");
    assert_eq!(next_text(&mut over_h1).await, "from the app");

    let mut versions = versions.lock().unwrap().clone();
    versions.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(versions, [Version::HTTP_11, Version::HTTP_2]);
}

#[tokio::test]
async fn two_websockets_share_one_http2_connection() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = h2_connect(server.addr).await;
    let mut first = h2_websocket(&mut sender, server.addr, "multiplexed").await;
    let mut second = h2_websocket(&mut sender, server.addr, "multiplexed").await;
    wait_members(&server.hub, "multiplexed", 2).await;
    first.send(WsMessage::text("stream one")).await.unwrap();
    assert_eq!(h2_next_text(&mut second).await, "stream one");
    second.send(WsMessage::text("stream two")).await.unwrap();
    assert_eq!(h2_next_text(&mut first).await, "stream two");

    // Closing one stream's WebSocket leaves the other working.
    first.close(None).await.unwrap();
    wait_members(&server.hub, "multiplexed", 1).await;
    server
        .hub
        .publish("multiplexed", Message::text("still here"))
        .await
        .unwrap();
    assert_eq!(h2_next_text(&mut second).await, "still here");
}

#[tokio::test]
async fn an_http2_connect_for_another_protocol_is_refused_with_400() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = h2_connect(server.addr).await;
    let response = sender
        .send_request(h2_websocket_request(
            server.addr,
            "/ws/room",
            "not-websocket",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains(":protocol websocket"));
    assert_eq!(server.hub.stats().connections_opened, 0);
}

/// A plain HTTP/2 `CONNECT` (no `:protocol`) carries no path (RFC 9113 §8.5), only the
/// authority to tunnel to: it names no WebSocket route, and goes to the inner service (here a
/// router without routes: `404`), never counted as a refused upgrade.
#[tokio::test]
async fn an_http2_connect_without_protocol_is_left_to_the_inner_service() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = h2_connect(server.addr).await;
    let mut request = h2_websocket_request(server.addr, "/ws/room", "websocket");
    request.extensions_mut().remove::<hyper::ext::Protocol>();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let stats = server.hub.stats();
    assert_eq!(stats.connections_opened, 0, "{stats:?}");
    assert_eq!(stats.handshakes_rejected, 0, "{stats:?}");
}

/// Over HTTP/2 the `426` for an unsupported version names version 13 and carries no
/// `Upgrade` or `Connection` header (connection-specific, not allowed in HTTP/2), so it reaches
/// the client as an answer, not a broken stream.
#[tokio::test]
async fn an_http2_connect_with_another_version_is_refused_with_426() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = h2_connect(server.addr).await;
    let mut request = h2_websocket_request(server.addr, "/ws/room", "websocket");
    request
        .headers_mut()
        .insert("sec-websocket-version", "8".parse().unwrap());
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["sec-websocket-version"], "13");
    assert!(response.headers().get("upgrade").is_none());
    // The connection still serves its other streams.
    let mut next = h2_websocket(&mut sender, server.addr, "room").await;
    wait_members(&server.hub, "room", 1).await;
    server
        .hub
        .publish("room", Message::text("after the 426"))
        .await
        .unwrap();
    assert_eq!(h2_next_text(&mut next).await, "after the 426");
}

/// Over HTTP/2 there is no `Host`: the same-origin check compares `Origin` with
/// `:authority`. The server's own origin is let in, another site's is refused with `403`.
#[tokio::test]
async fn an_http2_connect_is_checked_against_its_authority_for_the_origin() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = h2_connect(server.addr).await;
    let mut foreign = h2_websocket_request(server.addr, "/ws/room", "websocket");
    foreign
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    let response = sender.send_request(foreign).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body)
            .to_lowercase()
            .contains("origin")
    );
    let mut own = h2_websocket_request(server.addr, "/ws/room", "websocket");
    own.headers_mut()
        .insert("origin", format!("http://{}", server.addr).parse().unwrap());
    let response = sender.send_request(own).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    wait_members(&server.hub, "room", 1).await;
}

/// An authorizer that "refuses" with a success status would open the HTTP/2 tunnel for a
/// WebSocket nobody serves: the client gets `500` with the reason instead, and nobody joins.
#[tokio::test]
async fn an_http2_refusal_with_a_success_status_is_answered_500() {
    let hub = Hub::builder().build();
    let app = Router::new().layer(HubLayer::new(hub.clone()).route("/ws/{room}").authorize(
        |_: &axum::http::request::Parts, _: &str| async {
            Err::<(), _>(tower_ws_hub::Rejection::new(StatusCode::OK, "not really"))
        },
    ));
    let server = serve_router(app, hub).await;
    let mut sender = h2_connect(server.addr).await;
    let response = sender
        .send_request(h2_websocket_request(server.addr, "/ws/room", "websocket"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"not really");
    assert_eq!(server.hub.stats().connections_opened, 0);
}

/// An HTTP/2 stream reset while the authorizer is deciding gives the connection place back
/// (the connection itself stays open, so only the stream's future is dropped).
#[tokio::test]
async fn an_http2_stream_reset_during_authorization_gives_back_its_place() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pending = Arc::new(AtomicUsize::new(0));
    let never_decides = never_deciding_on("hang", Arc::clone(&pending));
    let hub = Hub::builder().max_connections(Some(1)).build();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .layer(
            HubLayer::new(hub.clone())
                .route("/ws/{room}")
                .authorize(never_decides),
        );
    let server = serve_router(app, hub).await;
    let mut sender = h2_connect(server.addr).await;
    let request = sender.send_request(h2_websocket_request(server.addr, "/ws/hang", "websocket"));
    let stream = tokio::spawn(request);
    eventually("the request reached the authorizer", || {
        pending.load(Ordering::SeqCst) == 1
    })
    .await;
    // Dropping the response future resets the stream.
    stream.abort();
    let _ = stream.await;
    let _client = connect_when_admitted(&server, "room").await;
    wait_members(&server.hub, "room", 1).await;
    drop(sender);
}

#[tokio::test]
async fn an_http2_get_on_a_websocket_route_is_refused_with_405_allow_connect() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = h2_connect(server.addr).await;
    let request = Request::get(format!("http://{}/ws/room", server.addr))
        .version(Version::HTTP_2)
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "CONNECT");
}

#[tokio::test]
async fn http2_requests_that_are_not_websockets_pass_through() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = h2_connect(server.addr).await;
    let request = Request::get(format!("http://{}/healthz", server.addr))
        .version(Version::HTTP_2)
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

#[tokio::test]
async fn a_bare_hyper_server_with_extended_connect_serves_http2_websockets() {
    let hub = Hub::builder().build();
    let addr = serve_bare_hyper(hub.clone()).await;
    let mut sender = h2_connect(addr).await;
    let mut over_h2 = h2_websocket(&mut sender, addr, "bare-h2").await;
    let mut over_h1 = connect(&format!("ws://{addr}/ws/bare-h2")).await;
    wait_members(&hub, "bare-h2", 2).await;
    send_text(&mut over_h1, "hello h2").await;
    assert_eq!(h2_next_text(&mut over_h2).await, "hello h2");
}

/// A server that cannot hand connections over (hyper's HTTP/1 server without `with_upgrades`,
/// like tonic's own server): the client gets its 101, then nothing; the hub counts the failure
/// and logs one error that says how to serve instead.
#[tokio::test(flavor = "current_thread")]
async fn a_server_without_upgrade_support_gets_an_actionable_error() {
    let (_guard, logs) = capture_logs(tracing::Level::ERROR);

    let hub = Hub::builder().build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        .service(tower::service_fn(|_: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"inner"))))
        }));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper_util::service::TowerToHyperService::new(service);
        // No `.with_upgrades()`: the connection ends after the response.
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });

    // The handshake "succeeds", but the socket is gone right after.
    if let Ok((mut client, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/r")).await
    {
        let next = tokio::time::timeout(PROMPTLY, client.next()).await.unwrap();
        assert!(!matches!(next, Some(Ok(WsMessage::Text(_)))), "{next:?}");
    }
    eventually("the failed hand-over is counted", || {
        hub.stats().handshakes_rejected == 1
    })
    .await;
    assert_eq!(hub.stats().connections, 0);
    assert!(hub.rooms().is_empty());
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("ERROR") && logged.contains("does not support upgrades"),
        "{logged}"
    );
    assert!(
        logged.contains("axum::serve"),
        "the error says what to do: {logged}"
    );
}

/// A server that hands the layer upgrade requests without hyper's upgrade handle (not hyper, or
/// a harness calling the service itself): each is answered `500` with a reason and counted, and
/// the error that says how to serve instead is logged at most once a second, not once per
/// request.
#[tokio::test(flavor = "current_thread")]
async fn requests_without_an_upgrade_handle_are_answered_500_and_logged_at_a_sane_rate() {
    let (_guard, logs) = capture_logs(tracing::Level::ERROR);

    let hub = Hub::builder().build();
    let layer = HubLayer::new(hub.clone()).route("/ws/{room}");
    let inner = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"inner"))))
    });
    let service = tower::Layer::layer(&layer, inner);
    for _ in 0..10 {
        let request = Request::get("/ws/lobby")
            .header("host", "localhost")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tower::ServiceExt::oneshot(service.clone(), request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("cannot upgrade connections"),
            "{body:?}"
        );
    }
    assert_eq!(hub.stats().handshakes_rejected, 10);
    assert_eq!(hub.stats().connections, 0);
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let lines = logged.matches("carries no upgrade handle").count();
    // Ten requests in process take far less than a second, two at most if one straddles it.
    assert!((1..=2).contains(&lines), "{lines} log lines:\n{logged}");
    assert!(
        logged.contains("axum::serve"),
        "the error says what to do: {logged}"
    );
}

/// Over HTTP/2 too, a close for an oversized message ends the client's stream cleanly (our
/// half shut down with END_STREAM after the 1009), and once the client lets go the server frees
/// the connection at once: `close_timeout` is far longer than any wait here. Another WebSocket
/// on the same HTTP/2 connection keeps working.
#[tokio::test]
async fn an_http2_websocket_closed_for_an_oversized_message_ends_cleanly() {
    let server = serve_hub(
        Hub::builder()
            .max_message_size(1024)
            .close_timeout(Duration::from_secs(600))
            .build(),
    )
    .await;
    let mut sender = h2_connect(server.addr).await;
    let mut big = h2_websocket(&mut sender, server.addr, "h2big").await;
    let mut other = h2_websocket(&mut sender, server.addr, "h2big").await;
    wait_members(&server.hub, "h2big", 2).await;

    let sent = big.send(WsMessage::binary(vec![7u8; 4 << 20])).await;
    assert!(sent.is_ok(), "{sent:?}");
    assert_close_then_clean_end(&mut big, 1009).await;
    drop(big);
    wait_members(&server.hub, "h2big", 1).await;
    server
        .hub
        .publish("h2big", Message::text("still here"))
        .await
        .unwrap();
    assert_eq!(h2_next_text(&mut other).await, "still here");
    assert_eq!(server.hub.stats().protocol_closes, 1);
}

// ----- pass-through at the Tower level --------------------------------------------------------

/// A request extension or response extension never crosses a socket, so only a test at the
/// Tower level can show that the layer hands the inner service the request itself and gives back
/// its response itself: method, URI, headers, extensions and body in, status, headers,
/// extensions, body and its size hint out. Also when a custom extractor looked at the head first
/// (it takes the request apart to show it the head) and said `Pass`.
#[tokio::test]
async fn pass_through_keeps_extensions_headers_and_bodies_both_ways() {
    #[derive(Clone, Debug, PartialEq)]
    struct Marker(&'static str);

    let hub = Hub::builder().build();
    let routes_only = HubLayer::new(hub.clone()).route("/ws/{room}");
    let with_extractor = routes_only
        .clone()
        .extractor(|_: &axum::http::request::Parts| tower_ws_hub::RoomMatch::Pass);
    for layer in [routes_only, with_extractor] {
        let inner = tower::service_fn(|request: Request<Full<Bytes>>| async move {
            assert_eq!(request.method(), Method::PUT);
            assert_eq!(request.uri(), "/ws/lobby/extra?x=1");
            assert_eq!(request.headers()["x-in"], "in");
            assert_eq!(
                request.extensions().get::<Marker>(),
                Some(&Marker("request"))
            );
            let body = request.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"request body");
            let mut response = Response::new(Full::new(Bytes::from_static(b"response body")));
            *response.status_mut() = StatusCode::CREATED;
            response
                .headers_mut()
                .insert("x-out", axum::http::HeaderValue::from_static("out"));
            response.extensions_mut().insert(Marker("response"));
            Ok::<_, Infallible>(response)
        });
        let mut request = Request::put("/ws/lobby/extra?x=1")
            .header("x-in", "in")
            .body(Full::new(Bytes::from_static(b"request body")))
            .unwrap();
        request.extensions_mut().insert(Marker("request"));

        let response = tower::ServiceExt::oneshot(tower::Layer::layer(&layer, inner), request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["x-out"], "out");
        assert_eq!(
            response.extensions().get::<Marker>(),
            Some(&Marker("response"))
        );
        assert_eq!(
            http_body::Body::size_hint(response.body()).exact(),
            Some(13)
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"response body");
    }
    assert_eq!(hub.stats().handshakes_rejected, 0);
}

/// The layer is ready exactly when its inner service is: it never lets a request through to an
/// inner service that has not said it is ready (a `Buffer` or `ConcurrencyLimit` would panic or
/// overshoot), and it does not hide an inner service's readiness either.
#[tokio::test]
async fn the_layer_is_ready_only_when_its_inner_service_is() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};

    #[derive(Clone)]
    struct Gate(Arc<AtomicBool>);
    impl tower::Service<Request<Body>> for Gate {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            assert!(self.0.load(Ordering::SeqCst), "called before it was ready");
            std::future::ready(Ok(Response::new(Body::from("inner"))))
        }
    }

    let open = Arc::new(AtomicBool::new(false));
    let layer = HubLayer::new(Hub::builder().build()).route("/ws/{room}");
    let mut service = tower::Layer::layer(&layer, Gate(Arc::clone(&open)));
    let ready = futures_util::FutureExt::now_or_never(tower::ServiceExt::ready(&mut service));
    assert!(ready.is_none(), "ready while the inner service is not");
    open.store(true, Ordering::SeqCst);
    let service = tower::ServiceExt::ready(&mut service).await.unwrap();
    let response = tower::Service::call(service, Request::new(Body::empty()))
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"inner");
}
