//! Application hooks: `on_connect` / `on_disconnect` run once per connection, `on_message`
//! forwards (possibly transformed), replies to the sender only, or drops, and the
//! [`ConnectionContext`] they get carries the room, the request headers, the extensions left by
//! middleware in front of the layer, and the client's address.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Version};
use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tower_ws_hub::{
    ConnectionContext, ConnectionId, Hub, HubBuilder, HubLayer, InboundAction, Message,
};

type Events = Arc<Mutex<Vec<(&'static str, ConnectionId, String)>>>;

fn recording_hub(events: &Events) -> Hub {
    let on_connect = Arc::clone(events);
    let on_disconnect = Arc::clone(events);
    Hub::builder()
        .on_connect(move |ctx| {
            on_connect
                .lock()
                .unwrap()
                .push(("connect", ctx.id(), ctx.room().to_owned()));
        })
        .on_disconnect(move |ctx| {
            on_disconnect
                .lock()
                .unwrap()
                .push(("disconnect", ctx.id(), ctx.room().to_owned()));
        })
        .build()
}

fn count(events: &Events, kind: &str) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.0 == kind)
        .count()
}

#[tokio::test]
async fn on_connect_and_on_disconnect_run_once_per_connection() {
    let events = Events::default();
    let server = serve_hub(recording_hub(&events)).await;

    let a = server.connect("one").await;
    let b = server.connect("one").await;
    let c = server.connect("two").await;
    eventually("three connects", || count(&events, "connect") == 3).await;
    assert_eq!(count(&events, "disconnect"), 0);

    // However the connection ends: a close handshake, a dropped socket, a protocol error.
    close_client(a).await;
    drop(b);
    let mut raw = support::raw::Upgrade::new("/ws/three")
        .open(server.addr)
        .await;
    raw.send_bytes(&support::raw::encode_frame(true, 0, 0x1, None, b"unmasked"))
        .await;
    raw.wait_eof().await;
    drop(c);
    eventually("four disconnects", || count(&events, "disconnect") == 4).await;
    // Nothing more trickles in.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let events = events.lock().unwrap().clone();
    let mut per_id: HashMap<ConnectionId, Vec<&str>> = HashMap::new();
    for (kind, id, _) in &events {
        per_id.entry(*id).or_default().push(kind);
    }
    assert_eq!(per_id.len(), 4, "{events:?}");
    for (id, kinds) in per_id {
        assert_eq!(kinds, ["connect", "disconnect"], "connection {id}");
    }
    let rooms: Vec<&str> = events
        .iter()
        .filter(|e| e.0 == "connect")
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(rooms.iter().filter(|r| **r == "one").count(), 2);
    assert!(rooms.contains(&"two") && rooms.contains(&"three"));
}

#[tokio::test]
async fn on_connect_runs_after_the_connection_joined_its_room() {
    // A message published from on_connect reaches the new member itself.
    let hub_slot: Arc<Mutex<Option<Hub>>> = Arc::default();
    let slot = Arc::clone(&hub_slot);
    let hub = Hub::builder()
        .on_connect(move |ctx| {
            let hub = slot.lock().unwrap().clone().unwrap();
            let room = ctx.room().to_owned();
            let size = hub.room_size(&room);
            tokio::spawn(async move {
                hub.publish(&room, Message::text(format!("welcome, {size} here")))
                    .await
                    .unwrap();
            });
        })
        .build();
    *hub_slot.lock().unwrap() = Some(hub.clone());
    let server = serve_hub(hub).await;
    let mut client = server.connect("greet").await;
    assert_eq!(next_text(&mut client).await, "welcome, 1 here");
}

#[tokio::test]
async fn on_message_forward_can_transform_the_message() {
    let hub = Hub::builder()
        .on_message(|ctx, msg| match msg.as_text() {
            Some(text) => InboundAction::Forward(Message::text(format!(
                "[{}] {}",
                ctx.room(),
                text.to_uppercase()
            ))),
            None => InboundAction::Forward(Message::binary(
                msg.payload().iter().rev().copied().collect::<Vec<u8>>(),
            )),
        })
        .build();
    let server = serve_hub(hub).await;
    let mut sender = server.connect("loud").await;
    let mut receiver = server.connect("loud").await;
    wait_members(&server.hub, "loud", 2).await;

    send_text(&mut sender, "hello").await;
    assert_eq!(next_text(&mut receiver).await, "[loud] HELLO");
    sender
        .send(WsMessage::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut receiver).await, [3, 2, 1]);

    // The application's own publishes do not go through the inbound hook.
    server
        .hub
        .publish("loud", Message::text("quiet"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut receiver).await, "quiet");
}

#[tokio::test]
async fn on_message_reply_goes_to_the_sender_only() {
    let hub = Hub::builder()
        .on_message(|_, msg| match msg.as_text() {
            Some("/ping") => InboundAction::Reply(Message::text("pong (just for you)")),
            _ => InboundAction::Forward(msg),
        })
        .build();
    let server = serve_hub(hub).await;
    let mut sender = server.connect("cmd").await;
    let mut other = server.connect("cmd").await;
    wait_members(&server.hub, "cmd", 2).await;

    send_text(&mut sender, "/ping").await;
    assert_eq!(next_text(&mut sender).await, "pong (just for you)");
    // The other member gets the next forwarded message first: the reply never reached it.
    send_text(&mut sender, "for the room").await;
    assert_eq!(next_text(&mut other).await, "for the room");
    assert_silent(&mut sender, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_reply_keeps_its_place_among_the_senders_echoed_messages() {
    // Messages a client writes together are read (and fanned out) as a batch; a reply must
    // still come after the echo of what the client sent before it, and before what it sent
    // after.
    let hub = Hub::builder()
        .echo_to_sender(true)
        .on_message(|_, msg| match msg.as_text() {
            Some("/ping") => InboundAction::Reply(Message::text("pong")),
            _ => InboundAction::Forward(msg),
        })
        .build();
    let server = serve_hub(hub).await;
    let mut sender = server.connect("order").await;
    wait_members(&server.hub, "order", 1).await;

    for text in ["m1", "m2", "/ping", "m3"] {
        sender.feed(WsMessage::text(text)).await.unwrap();
    }
    sender.flush().await.unwrap();
    for expected in ["m1", "m2", "pong", "m3"] {
        assert_eq!(next_text(&mut sender).await, expected);
    }
}

#[tokio::test]
async fn on_message_drop_delivers_nothing() {
    let hub = Hub::builder()
        .on_message(|_, msg| {
            if msg.as_text().is_some_and(|t| t.starts_with("secret")) {
                InboundAction::Drop
            } else {
                InboundAction::Forward(msg)
            }
        })
        .build();
    let server = serve_hub(hub).await;
    let mut sender = server.connect("filtered").await;
    let mut other = server.connect("filtered").await;
    wait_members(&server.hub, "filtered", 2).await;

    send_text(&mut sender, "secret plan").await;
    send_text(&mut sender, "public news").await;
    assert_eq!(next_text(&mut other).await, "public news");
    assert_silent(&mut sender, Duration::from_millis(100)).await;
    assert_silent(&mut other, Duration::from_millis(100)).await;
    let stats = server.hub.stats();
    assert_eq!(stats.messages_received, 2);
    assert_eq!(stats.messages_published, 1);
}

#[tokio::test]
async fn on_message_runs_for_each_message_in_order() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = Arc::clone(&seen);
    let hub = Hub::builder()
        .on_message(move |_, msg| {
            record
                .lock()
                .unwrap()
                .push(msg.as_text().unwrap_or("<binary>").to_owned());
            InboundAction::Drop
        })
        .build();
    let server = serve_hub(hub).await;
    let mut client = server.connect("log").await;
    for i in 0..50 {
        send_text(&mut client, &i.to_string()).await;
    }
    eventually("50 messages seen", || seen.lock().unwrap().len() == 50).await;
    let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(*seen.lock().unwrap(), expected);
}

#[derive(Clone, Debug, PartialEq)]
struct User(&'static str);

#[derive(Debug, Clone)]
struct Seen {
    room: String,
    header: Option<String>,
    header_count: usize,
    user: Option<User>,
    version: Version,
    remote_addr: Option<SocketAddr>,
}

fn seen_hub(builder: HubBuilder, seen: &Arc<Mutex<Vec<Seen>>>) -> Hub {
    let seen = Arc::clone(seen);
    builder
        .on_connect(move |ctx: &ConnectionContext| {
            seen.lock().unwrap().push(Seen {
                room: ctx.room().to_owned(),
                header: ctx
                    .headers()
                    .get("x-client")
                    .map(|v| v.to_str().unwrap().to_owned()),
                header_count: ctx.headers().len(),
                user: ctx.extensions().get::<User>().cloned(),
                version: ctx.http_version(),
                remote_addr: ctx.remote_addr(),
            });
        })
        .build()
}

async fn connect_with_header(url: &str) -> (Client, SocketAddr) {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-client", "integration-test".parse().unwrap());
    let client = connect_request(request).await;
    let local = match client.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(stream) => stream.local_addr().unwrap(),
        _ => unreachable!("plain TCP"),
    };
    (client, local)
}

#[tokio::test]
async fn connection_context_exposes_room_headers_and_middleware_extensions() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let hub = seen_hub(Hub::builder().keep_request_headers(true), &seen);
    // Authentication-like middleware *outside* the hub layer (added after it) runs first.
    let app = Router::new()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        .layer(tower::util::MapRequestLayer::new(
            |mut request: Request<Body>| {
                request.extensions_mut().insert(User("alice"));
                request
            },
        ));
    let server = serve_router(app, hub).await;
    let (_client, _) = connect_with_header(&server.ws_url("ctx")).await;
    eventually("on_connect ran", || !seen.lock().unwrap().is_empty()).await;

    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.room, "ctx");
    assert_eq!(seen.header.as_deref(), Some("integration-test"));
    assert_eq!(seen.user, Some(User("alice")));
    assert_eq!(seen.version, Version::HTTP_11);
}

#[tokio::test]
async fn by_default_no_headers_are_kept_but_extensions_are() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let hub = seen_hub(Hub::builder(), &seen);
    let app = Router::new()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        .layer(tower::util::MapRequestLayer::new(
            |mut request: Request<Body>| {
                request.extensions_mut().insert(User("bob"));
                request
            },
        ));
    let server = serve_router(app, hub).await;
    let (_client, _) = connect_with_header(&server.ws_url("lean")).await;
    eventually("on_connect ran", || !seen.lock().unwrap().is_empty()).await;
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.header_count, 0);
    assert_eq!(seen.user, Some(User("bob")));
}

/// `keep_request_header` keeps the named headers and nothing else, and
/// `keep_request_headers(false)` does not undo it, before or after (it used to forget the
/// named headers when it came after).
#[tokio::test]
async fn keep_request_header_keeps_only_the_named_ones_whatever_the_order() {
    let x_client = || http::HeaderName::from_static("x-client");
    for (order, builder) in [
        ("named only", Hub::builder().keep_request_header(x_client())),
        (
            "named, then all off",
            Hub::builder()
                .keep_request_header(x_client())
                .keep_request_headers(false),
        ),
        (
            "all off, then named",
            Hub::builder()
                .keep_request_headers(false)
                .keep_request_header(x_client()),
        ),
        (
            "all on and off again around named",
            Hub::builder()
                .keep_request_headers(true)
                .keep_request_header(x_client())
                .keep_request_headers(false),
        ),
    ] {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let hub = seen_hub(builder, &seen);
        let server = serve_hub(hub).await;
        let (_client, _) = connect_with_header(&server.ws_url("named")).await;
        eventually("on_connect ran", || !seen.lock().unwrap().is_empty()).await;
        let seen = seen.lock().unwrap()[0].clone();
        // The handshake carries Host, Upgrade, Sec-WebSocket-Key and others besides x-client.
        assert_eq!(
            (seen.header.as_deref(), seen.header_count),
            (Some("integration-test"), 1),
            "{order}"
        );
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Tenant(&'static str);

#[tokio::test]
async fn listed_extension_types_are_kept_and_the_others_dropped() {
    type Kept = Vec<(Option<User>, Option<Tenant>)>;
    let kept: Arc<Mutex<Kept>> = Arc::default();
    let record = Arc::clone(&kept);
    let hub = Hub::builder()
        .keep_extension::<User>()
        .on_connect(move |ctx| {
            let extensions = ctx.extensions();
            record.lock().unwrap().push((
                extensions.get::<User>().cloned(),
                extensions.get::<Tenant>().cloned(),
            ));
        })
        .build();
    let app = Router::new()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        .layer(tower::util::MapRequestLayer::new(
            |mut request: Request<Body>| {
                request.extensions_mut().insert(User("carol"));
                request.extensions_mut().insert(Tenant("acme"));
                request
            },
        ));
    let server = serve_router(app, hub).await;
    let (_client, _) = connect_with_header(&server.ws_url("listed")).await;
    eventually("on_connect ran", || !kept.lock().unwrap().is_empty()).await;
    assert_eq!(kept.lock().unwrap()[0], (Some(User("carol")), None));
}

#[tokio::test]
async fn keep_no_extensions_keeps_none() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let hub = seen_hub(
        Hub::builder()
            .keep_no_extensions()
            .keep_request_headers(true),
        &seen,
    );
    let app = Router::new()
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        .layer(tower::util::MapRequestLayer::new(
            |mut request: Request<Body>| {
                request.extensions_mut().insert(User("dave"));
                request
            },
        ));
    let server = serve_router(app, hub).await;
    let (_client, _) = connect_with_header(&server.ws_url("none")).await;
    eventually("on_connect ran", || !seen.lock().unwrap().is_empty()).await;
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.user, None);
    // Headers are still kept (copied), independently of extensions.
    assert_eq!(seen.header.as_deref(), Some("integration-test"));
}

/// axum's `ConnectInfo<SocketAddr>` (from `into_make_service_with_connect_info`) is found
/// without being pointed at.
#[cfg(feature = "axum")]
#[tokio::test]
async fn connection_context_knows_the_client_address_from_axums_connect_info_by_default() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let hub = seen_hub(Hub::builder(), &seen);
    let app = Router::new().layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
    // serve_router serves with `into_make_service_with_connect_info::<SocketAddr>()`.
    let server = serve_router(app, hub).await;
    let (_client, local) = connect_with_header(&server.ws_url("addr")).await;
    eventually("on_connect ran", || !seen.lock().unwrap().is_empty()).await;
    assert_eq!(seen.lock().unwrap()[0].remote_addr, Some(local));
}

#[tokio::test]
async fn connection_context_knows_the_client_address_when_told_where_to_find_it() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let hub = seen_hub(Hub::builder(), &seen);
    // Port 1 instead of the client's: what the finder says, not what the default would find.
    let app = Router::new().layer(HubLayer::new(hub.clone()).route("/ws/{room}").remote_addr(
        |parts| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| SocketAddr::new(info.0.ip(), 1))
        },
    ));
    // serve_router serves with `into_make_service_with_connect_info::<SocketAddr>()`.
    let server = serve_router(app, hub).await;
    let (_client, local) = connect_with_header(&server.ws_url("addr")).await;
    eventually("on_connect ran", || !seen.lock().unwrap().is_empty()).await;
    assert_eq!(
        seen.lock().unwrap()[0].remote_addr,
        Some(SocketAddr::new(local.ip(), 1))
    );
}

/// With the `axum` feature, the hub knows axum's `OriginalUri`.
#[cfg(feature = "axum")]
mod original_uri {
    use super::*;

    /// Where a request's `OriginalUri` keeps its path: hyper parses the request target as a slice of
    /// its connection read buffer, and axum's `OriginalUri` is a clone of that `Uri`.
    fn path_address(uri: &axum::extract::OriginalUri) -> usize {
        uri.0.path().as_ptr() as usize
    }

    /// Serves a hub whose `on_connect` records the `OriginalUri` it sees (as text, and where its
    /// path lives); a middleware between axum's router and the hub layer records where the
    /// request's own `OriginalUri` lives. Returns (request address, (hook address, hook text)).
    async fn original_uri_as_seen(builder: HubBuilder, path: &str) -> (usize, (usize, String)) {
        let in_request: Arc<Mutex<Option<usize>>> = Arc::default();
        let in_hook: Arc<Mutex<Option<(usize, String)>>> = Arc::default();
        let record_hook = Arc::clone(&in_hook);
        let hub = builder
            .on_connect(move |ctx| {
                let uri = ctx
                    .extensions()
                    .get::<axum::extract::OriginalUri>()
                    .expect("axum's OriginalUri is kept");
                *record_hook.lock().unwrap() = Some((path_address(uri), uri.0.to_string()));
            })
            .build();
        let record_request = Arc::clone(&in_request);
        // `Router::layer`: both layers run after the router inserted `OriginalUri`; the later
        // `layer` runs first.
        let app = Router::new()
            .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
            .layer(tower::util::MapRequestLayer::new(
                move |request: Request<Body>| {
                    let uri = request.extensions().get::<axum::extract::OriginalUri>();
                    *record_request.lock().unwrap() = uri.map(path_address);
                    request
                },
            ));
        let server = serve_router(app, hub).await;
        let url = format!("ws://{}{path}", server.addr);
        let _client = connect(&url).await;
        eventually("on_connect ran", || in_hook.lock().unwrap().is_some()).await;
        let request = in_request
            .lock()
            .unwrap()
            .expect("the router inserted OriginalUri");
        let hook = in_hook.lock().unwrap().clone().unwrap();
        (request, hook)
    }

    /// A connection lives for hours; axum's `OriginalUri` as the router made it would keep hyper's
    /// whole read buffer (8 KiB or more) alive with it. Kept extensions get their own copy.
    #[tokio::test]
    async fn kept_original_uri_is_a_copy_that_does_not_pin_the_request_buffer() {
        let (request, (hook, text)) = original_uri_as_seen(Hub::builder(), "/ws/pinned?x=1").await;
        assert_eq!(text, "/ws/pinned?x=1");
        assert_ne!(
            request, hook,
            "the connection kept the request's own OriginalUri (a slice of hyper's read buffer)"
        );

        // Also when listed explicitly.
        let listed = Hub::builder().keep_extension::<axum::extract::OriginalUri>();
        let (request, (hook, text)) = original_uri_as_seen(listed, "/ws/listed").await;
        assert_eq!(text, "/ws/listed");
        assert_ne!(request, hook);
    }
}

/// Counts `on_connect` and `on_disconnect` calls.
fn counting(builder: HubBuilder) -> (HubBuilder, Arc<Mutex<(u32, u32)>>) {
    let counts = Arc::new(Mutex::new((0, 0)));
    let (connects, disconnects) = (Arc::clone(&counts), Arc::clone(&counts));
    let builder = builder
        .on_connect(move |ctx| {
            connects.lock().unwrap().0 += 1;
            assert_ne!(ctx.room(), "bad", "application bug in on_connect");
        })
        .on_disconnect(move |_| disconnects.lock().unwrap().1 += 1);
    (builder, counts)
}

#[tokio::test]
async fn a_panicking_message_hook_closes_its_connection_with_1011_and_on_disconnect_still_runs() {
    let (builder, counts) = counting(Hub::builder().on_message(|_, msg| {
        assert_ne!(msg.as_text(), Some("boom"), "application bug in on_message");
        InboundAction::Forward(msg)
    }));
    let server = serve_hub(builder.build()).await;
    let mut bystander = server.connect("p").await;
    let mut client = server.connect("p").await;
    wait_members(&server.hub, "p", 2).await;

    // What the client sent before the panicking message still reaches the room.
    client.send(WsMessage::text("before")).await.unwrap();
    client.send(WsMessage::text("boom")).await.unwrap();
    assert_eq!(next_text(&mut bystander).await, "before");
    assert_eq!(close_code_to_end(&mut client).await, Some(1011));
    eventually("the connection ended and on_disconnect ran", || {
        *counts.lock().unwrap() == (2, 1) && server.hub.room_size("p") == 1
    })
    .await;
    assert_eq!(server.hub.stats().hook_panics, 1);
    // The room and its other member carry on.
    server
        .hub
        .publish("p", Message::text("still here"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut bystander).await, "still here");
}

#[tokio::test]
async fn a_panicking_connect_hook_closes_its_connection_with_1011_and_on_disconnect_still_runs() {
    let (builder, counts) = counting(Hub::builder());
    let server = serve_hub(builder.build()).await;
    let mut client = server.connect("bad").await;
    assert_eq!(close_code_to_end(&mut client).await, Some(1011));
    eventually("the connection ended and on_disconnect ran", || {
        *counts.lock().unwrap() == (1, 1) && server.hub.stats().connections == 0
    })
    .await;
    assert_eq!(server.hub.room_size("bad"), 0);
    assert_eq!(server.hub.stats().hook_panics, 1);
    let mut good = server.connect("good").await;
    wait_members(&server.hub, "good", 1).await;
    server
        .hub
        .publish("good", Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut good).await, "hi");
}

/// Panicking hooks of every kind (non-string payloads too) are caught and counted, and leave
/// no connection, room or missing `on_disconnect` behind.
#[tokio::test]
async fn a_panicking_disconnect_hook_leaves_nothing_behind() {
    let connects = Arc::new(AtomicUsize::new(0));
    let disconnects = Arc::new(AtomicUsize::new(0));
    let (c, d) = (Arc::clone(&connects), Arc::clone(&disconnects));
    let hub = Hub::builder()
        .on_connect(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .on_disconnect(move |_| {
            d.fetch_add(1, Ordering::SeqCst);
            std::panic::panic_any(42u32);
        })
        .on_message(|_, m| {
            if m.as_text() == Some("boom") {
                std::panic::panic_any(7u8);
            }
            InboundAction::Forward(m)
        })
        .build();
    let server = serve_hub(hub).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(server.connect("x").await);
    }
    wait_members(&server.hub, "x", 5).await;
    send_text(&mut clients[0], "boom").await;
    assert_eq!(close_code(&mut clients[0]).await, Some(1011));
    drop(clients);
    eventually("all gone", || {
        server.hub.connection_count() == 0 && server.hub.rooms().is_empty()
    })
    .await;
    assert_eq!(connects.load(Ordering::SeqCst), 5);
    assert_eq!(disconnects.load(Ordering::SeqCst), 5);
    let stats = server.hub.stats();
    assert_eq!(stats.hook_panics, 6, "{stats:?}");
    assert_eq!(stats.connections_opened, stats.connections_closed);
}

/// The runtime serving the hub goes away (the application returns from `main` without
/// `Hub::shutdown`, a test's runtime ends) with a connection open: the connection leaves its
/// room, and `on_disconnect` must run for it too ("however it ended").
#[test]
fn on_disconnect_runs_when_the_runtime_serving_the_connection_goes_away() {
    let (builder, connects, disconnects) = counting_hooks(Hub::builder());
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_rt.block_on(serve_hub(builder.build()));
    let url = server.ws_url("gone");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = client_rt.block_on(connect(&url));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while connects.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no on_connect");
        std::thread::sleep(Duration::from_millis(5));
    }
    let hub = server.hub.clone();
    drop(server);
    server_rt.shutdown_timeout(Duration::from_secs(5));
    assert!(hub.rooms().is_empty(), "the connection left its room");
    assert_eq!(hub.connection_count(), 0);
    assert_eq!(
        disconnects.load(Ordering::SeqCst),
        connects.load(Ordering::SeqCst),
        "on_disconnect once per on_connect"
    );
    drop(client);
}

/// Hooks reach the hub through their context: here `on_connect` announces each join in a
/// lobby, and `on_message` copies what clients send to an audit room, both with
/// `Hub::publish`, over real sockets.
#[tokio::test]
async fn hooks_publish_to_other_rooms_through_the_contexts_hub() {
    let hub = Hub::builder()
        .on_connect(|ctx| {
            if ctx.room() == "lobby" || ctx.room() == "audit" {
                return;
            }
            let hub = ctx.hub().clone();
            let news = format!("joined {}", ctx.room());
            tokio::spawn(async move { hub.publish("lobby", news).await.unwrap() });
        })
        .on_message(|ctx, message| {
            if ctx.room() != "audit"
                && let Some(text) = message.as_text()
            {
                let copy = format!("{} said {text}", ctx.room());
                // Never waits: local delivery is done when the future is first polled.
                let published =
                    futures_util::FutureExt::now_or_never(ctx.hub().publish("audit", copy));
                assert!(matches!(published, Some(Ok(1))), "{published:?}");
            }
            InboundAction::Forward(message)
        })
        .build();
    let server = serve_hub(hub).await;
    let mut lobby = server.connect("lobby").await;
    let mut audit = server.connect("audit").await;
    wait_members(&server.hub, "lobby", 1).await;
    wait_members(&server.hub, "audit", 1).await;

    let mut sender = server.connect("chat").await;
    assert_eq!(next_text(&mut lobby).await, "joined chat");
    let mut receiver = server.connect("chat").await;
    assert_eq!(next_text(&mut lobby).await, "joined chat");
    wait_members(&server.hub, "chat", 2).await;

    send_text(&mut sender, "hello").await;
    assert_eq!(next_text(&mut receiver).await, "hello");
    assert_eq!(next_text(&mut audit).await, "chat said hello");
    // The context's hub is the one serving the connection.
    assert_eq!(server.hub.stats().messages_published, 4);
}

/// A hook may publish to its own room, synchronously: `on_message` publishes a note to the
/// room it runs for (the sender included, as any publish), `on_disconnect` tells the room who
/// left. Neither blocks on a lock of the hub, and a published message goes to the members'
/// queues, never through `on_message` again (which runs once per client message here).
/// `shutdown` still completes: the contexts' hubs keep nothing waiting.
#[tokio::test]
async fn hooks_publish_to_their_own_room_without_recursing() {
    let hook_runs = Arc::new(AtomicUsize::new(0));
    let runs = Arc::clone(&hook_runs);
    let hub = Hub::builder()
        .shutdown_grace(Duration::from_secs(10))
        .on_message(move |ctx, message| {
            runs.fetch_add(1, Ordering::SeqCst);
            let note = format!("{} got {}", ctx.room(), message.as_text().unwrap_or("?"));
            let published =
                futures_util::FutureExt::now_or_never(ctx.hub().publish(ctx.room(), note));
            assert!(matches!(published, Some(Ok(2))), "{published:?}");
            InboundAction::Forward(message)
        })
        .on_disconnect(|ctx| {
            let note = format!("{} left", ctx.id());
            let published =
                futures_util::FutureExt::now_or_never(ctx.hub().publish(ctx.room(), note));
            // Refused once shutdown began, never left waiting.
            assert!(
                matches!(
                    published,
                    Some(Ok(_) | Err(tower_ws_hub::PublishError::ShuttingDown))
                ),
                "{published:?}"
            );
        })
        .build();
    let server = serve_hub(hub).await;
    let mut sender = server.connect("own").await;
    let mut receiver = server.connect("own").await;
    wait_members(&server.hub, "own", 2).await;

    send_text(&mut sender, "hi").await;
    // The note is published from inside the hook, before the message itself is fanned out.
    assert_eq!(next_text(&mut receiver).await, "own got hi");
    assert_eq!(next_text(&mut receiver).await, "hi");
    assert_eq!(next_text(&mut sender).await, "own got hi");
    assert_silent(&mut receiver, Duration::from_millis(100)).await;
    assert_eq!(hook_runs.load(Ordering::SeqCst), 1);

    close_client(sender).await;
    assert!(next_text(&mut receiver).await.ends_with(" left"));
    // Shutdown ends well within its grace period once the client answers: the hub in the
    // last connection's context keeps nothing waiting.
    let hub = server.hub.clone();
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });
    assert_eq!(close_code(&mut receiver).await, Some(1001));
    shutdown.await.unwrap();
    // Half the grace: a hub kept waiting would take all of it.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.hub.connection_count(), 0);
    assert_eq!(hook_runs.load(Ordering::SeqCst), 1);
    // Every assertion in the hooks held (a failing one would have been caught as a panic).
    assert_eq!(server.hub.stats().hook_panics, 0);
}
