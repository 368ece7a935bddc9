//! The layer's front door: which requests it claims (route patterns, custom extractors), which
//! it passes to the inner router untouched, and how it answers each broken handshake rule
//! (RFC 6455) and each bad room name — over real loopback sockets, with raw HTTP/1.1 where a
//! normal client would refuse to send the request.

mod support;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use support::raw::{RFC_ACCEPT, RawWs, Upgrade};
use support::*;
use tower_ws_hub::{Hub, HubLayer, Message, Rejection, RoomMatch};

/// A router whose fallback says it was reached, so a test can tell pass-through from a hub
/// answer.
fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "index" }))
        .route(
            "/teapot",
            get(|| async {
                (
                    StatusCode::IM_A_TEAPOT,
                    [("x-inner", "yes"), ("cache-control", "no-store")],
                    "short and stout",
                )
            }),
        )
        .route("/echo", post(|body: String| async move { body }))
        .fallback(|uri: axum::http::Uri| async move {
            (
                StatusCode::NOT_FOUND,
                format!("router fallback: {}", uri.path()),
            )
        })
}

async fn serve_default() -> Server {
    let hub = Hub::builder().build();
    let app = router().layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
    serve_router(app, hub).await
}

// ----- pass-through ------------------------------------------------------------------------

#[tokio::test]
async fn non_websocket_routes_reach_the_inner_router_untouched() {
    let server = serve_default().await;

    let reply = http_get(&server.http_url("/teapot")).await;
    assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(reply.headers["x-inner"], "yes");
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(reply.body, "short and stout");

    let reply = http_send(
        axum::http::Request::post(server.http_url("/echo"))
            .body(http_body_util::Full::from("posted body"))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "posted body");

    let reply = http_get(&server.http_url("/nowhere")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body, "router fallback: /nowhere");

    let stats = server.hub.stats();
    assert_eq!(stats.connections_opened, 0);
    assert_eq!(stats.handshakes_rejected, 0);
}

#[tokio::test]
async fn paths_that_do_not_match_the_route_exactly_pass_through_even_with_upgrade_headers() {
    let server = serve_default().await;
    for path in [
        "/ws/lobby/extra",
        "/ws/lobby/",
        "/ws",
        "/wsx/lobby",
        "/ws/lobby/extra/more",
    ] {
        let response = Upgrade::new(path).send(server.addr).await;
        assert_eq!(response.status, 404, "{path}: {response:?}");
        assert_eq!(response.text(), format!("router fallback: {path}"));
    }
    let stats = server.hub.stats();
    assert_eq!(stats.connections_opened, 0);
    assert_eq!(stats.handshakes_rejected, 0);
}

#[tokio::test]
async fn a_plain_get_on_a_websocket_route_is_refused_not_passed_through() {
    // The route belongs to the hub: a browser opening it as a page learns why it failed.
    let server = serve_default().await;
    let reply = http_get(&server.http_url("/ws/lobby")).await;
    assert_eq!(reply.status, StatusCode::UPGRADE_REQUIRED);
    assert!(!reply.body.contains("router fallback"));
}

#[tokio::test]
async fn several_route_patterns_each_name_their_room() {
    let hub = Hub::builder().build();
    let app = router().layer(
        HubLayer::new(hub.clone())
            .route("/ws/{room}")
            .route("/tenants/{tenant}/chat/{room}"),
    );
    let server = serve_router(app, hub).await;

    let mut a = server.connect("general").await;
    let mut b = connect(&format!("ws://{}/tenants/acme/chat/general", server.addr)).await;
    let _c = connect(&format!("ws://{}/tenants/acme/chat/random", server.addr)).await;
    wait_members(&server.hub, "general", 2).await;
    wait_members(&server.hub, "random", 1).await;

    send_text(&mut a, "through both patterns").await;
    assert_eq!(next_text(&mut b).await, "through both patterns");

    // The tenant wildcard needs a non-empty segment; such paths belong to the router.
    let response = Upgrade::new("/tenants//chat/general")
        .send(server.addr)
        .await;
    assert_eq!(response.status, 404);
}

/// Two overlapping patterns (a literal in one where the other has a parameter) both match
/// `/lobby/chat`: the one added first decides which segment names the room.
#[tokio::test]
async fn where_route_patterns_overlap_the_one_added_first_names_the_room() {
    for (patterns, room) in [
        (["/lobby/{room}", "/{room}/chat"], "chat"),
        (["/{room}/chat", "/lobby/{room}"], "lobby"),
    ] {
        let hub = Hub::builder().build();
        let layer = HubLayer::new(hub.clone())
            .route(patterns[0])
            .route(patterns[1]);
        let server = serve_router(router().layer(layer), hub).await;
        let _client = connect(&format!("ws://{}/lobby/chat", server.addr)).await;
        wait_members(&server.hub, room, 1).await;
        assert_eq!(server.hub.rooms(), [room], "{patterns:?}");
    }
}

/// A pattern that matches exactly the same paths as one added before is refused, naming both
/// (`try_route`), or panics (`route`).
#[test]
fn a_route_matching_the_same_paths_as_an_earlier_one_is_refused() {
    let hub = || Hub::builder().build();
    let error = HubLayer::new(hub())
        .route("/t/{tenant}/{room}")
        .try_route("/t/{room}/{tenant}")
        .expect_err("accepted");
    let message = error.to_string();
    assert!(
        message.contains("\"/t/{room}/{tenant}\"") && message.contains("\"/t/{tenant}/{room}\""),
        "{message}"
    );
    let panicked =
        std::panic::catch_unwind(|| HubLayer::new(hub()).route("/ws/{room}").route("/ws/{room}"));
    assert!(panicked.is_err(), "the same pattern twice was accepted");
}

/// A pattern that a broader one added before always matches first is refused, naming the
/// broader one; added the other way round, both serve their own paths.
#[tokio::test]
async fn a_route_a_broader_earlier_one_shadows_is_refused_and_the_other_order_serves_both() {
    let error = HubLayer::new(Hub::builder().build())
        .route("/{x}/{room}")
        .try_route("/ws/{room}")
        .expect_err("a pattern that could never be used was accepted");
    let message = error.to_string();
    assert!(
        message.contains("\"/ws/{room}\"")
            && message.contains("\"/{x}/{room}\"")
            && message.contains("add the more specific pattern first"),
        "{message}"
    );

    let hub = Hub::builder().build();
    let layer = HubLayer::new(hub.clone())
        .route("/ws/{room}")
        .route("/{x}/{room}");
    let server = serve_router(router().layer(layer), hub).await;
    let _specific = connect(&format!("ws://{}/ws/lobby", server.addr)).await;
    let _broader = connect(&format!("ws://{}/other/chat", server.addr)).await;
    wait_members(&server.hub, "lobby", 1).await;
    wait_members(&server.hub, "chat", 1).await;
    let mut rooms = server.hub.rooms();
    rooms.sort();
    assert_eq!(rooms, ["chat", "lobby"]);
}

fn query_room_extractor(parts: &axum::http::request::Parts) -> RoomMatch {
    if parts.uri.path() != "/chat" {
        return RoomMatch::Pass;
    }
    let room = parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("room=")));
    match room {
        Some(room) => RoomMatch::Room(room.to_owned()),
        None => RoomMatch::Reject(Rejection::forbidden("name a room with ?room=")),
    }
}

#[tokio::test]
async fn a_custom_extractor_claims_requests_and_names_their_room() {
    let hub = Hub::builder().build();
    let app = router().layer(HubLayer::new(hub.clone()).extractor(query_room_extractor));
    let server = serve_router(app, hub).await;

    let mut a = connect(&format!("ws://{}/chat?room=kitchen", server.addr)).await;
    let mut b = connect(&format!("ws://{}/chat?x=1&room=kitchen", server.addr)).await;
    wait_members(&server.hub, "kitchen", 2).await;
    send_text(&mut a, "from the extractor's room").await;
    assert_eq!(next_text(&mut b).await, "from the extractor's room");

    // What the extractor passes reaches the router.
    let reply = http_get(&server.http_url("/teapot")).await;
    assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
}

#[tokio::test]
async fn a_custom_extractor_can_reject_with_its_own_status_and_reason() {
    let hub = Hub::builder().build();
    let app = router().layer(HubLayer::new(hub.clone()).extractor(query_room_extractor));
    let server = serve_router(app, hub).await;

    let response = Upgrade::new("/chat").send(server.addr).await;
    response.assert_rejection(403, "name a room with ?room=");
    assert_eq!(server.hub.stats().handshakes_rejected, 1);
    assert_eq!(server.hub.stats().connections_opened, 0);
}

#[tokio::test]
async fn room_names_from_a_custom_extractor_are_validated_like_route_rooms() {
    let hub = Hub::builder().build();
    let extractor = |parts: &axum::http::request::Parts| match parts.headers.get("x-room") {
        Some(room) => RoomMatch::Room(room.to_str().unwrap_or_default().to_owned()),
        None => RoomMatch::Pass,
    };
    let app = router().layer(HubLayer::new(hub.clone()).extractor(extractor));
    let server = serve_router(app, hub).await;

    // A tab is a legal header byte but a control character in a room name.
    let response = Upgrade::new("/anything")
        .header("x-room", "a\tb")
        .send(server.addr)
        .await;
    response.assert_rejection(400, "control character");
    let response = Upgrade::new("/anything")
        .header("x-room", &"r".repeat(257))
        .send(server.addr)
        .await;
    response.assert_rejection(400, "longer than 256");

    Upgrade::new("/anything")
        .header("x-room", "fine")
        .open(server.addr)
        .await;
    wait_members(&server.hub, "fine", 1).await;
}

// ----- handshake rejections -----------------------------------------------------------------

#[tokio::test]
async fn a_non_get_upgrade_is_refused_with_405_and_allow_get() {
    let server = serve_default().await;
    for method in ["POST", "PUT", "DELETE"] {
        let response = Upgrade::new("/ws/lobby")
            .method(method)
            .header("Content-Length", "0")
            .send(server.addr)
            .await;
        response.assert_rejection(405, "GET");
        assert_eq!(response.header("allow"), Some("GET"), "{method}");
    }
    assert_eq!(server.hub.stats().connections_opened, 0);
}

#[tokio::test]
async fn a_missing_connection_upgrade_header_is_refused_with_426() {
    let server = serve_default().await;
    let response = Upgrade::new("/ws/lobby")
        .without("Connection")
        .send(server.addr)
        .await;
    response.assert_rejection(426, "Connection");
    let response = Upgrade::new("/ws/lobby")
        .header("Connection", "keep-alive")
        .send(server.addr)
        .await;
    response.assert_rejection(426, "Connection");
}

#[tokio::test]
async fn a_missing_upgrade_websocket_header_is_refused_with_426() {
    let server = serve_default().await;
    let response = Upgrade::new("/ws/lobby")
        .without("Upgrade")
        .send(server.addr)
        .await;
    response.assert_rejection(426, "Upgrade");
    assert_eq!(response.header("upgrade"), Some("websocket"));
    let response = Upgrade::new("/ws/lobby")
        .header("Upgrade", "h2c")
        .send(server.addr)
        .await;
    response.assert_rejection(426, "Upgrade");
}

#[tokio::test]
async fn a_version_other_than_13_is_refused_with_426_naming_version_13() {
    let server = serve_default().await;
    for version in [Some("8"), Some("14"), Some("thirteen"), None] {
        let request = match version {
            Some(v) => Upgrade::new("/ws/lobby").header("Sec-WebSocket-Version", v),
            None => Upgrade::new("/ws/lobby").without("Sec-WebSocket-Version"),
        };
        let response = request.send(server.addr).await;
        response.assert_rejection(426, "13");
        assert_eq!(
            response.header("sec-websocket-version"),
            Some("13"),
            "{version:?}"
        );
        // RFC 9110 §15.5.22: every 426 names the protocol to upgrade to.
        assert_eq!(response.header("upgrade"), Some("websocket"), "{version:?}");
    }
}

#[tokio::test]
async fn a_key_or_version_sent_twice_is_refused() {
    // RFC 6455 §11.3.1, §11.3.5: neither may appear more than once in a request.
    let server = serve_default().await;
    let response = Upgrade::new("/ws/lobby")
        .also("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")
        .send(server.addr)
        .await;
    response.assert_rejection(400, "Sec-WebSocket-Key");
    let response = Upgrade::new("/ws/lobby")
        .also("Sec-WebSocket-Version", "13")
        .send(server.addr)
        .await;
    response.assert_rejection(426, "13");
    assert_eq!(server.hub.stats().connections_opened, 0);
    assert_eq!(server.hub.stats().handshakes_rejected, 2);
}

#[tokio::test]
async fn a_missing_key_is_refused_with_400() {
    let server = serve_default().await;
    let response = Upgrade::new("/ws/lobby")
        .without("Sec-WebSocket-Key")
        .send(server.addr)
        .await;
    response.assert_rejection(400, "Sec-WebSocket-Key");
}

#[tokio::test]
async fn a_key_that_is_not_base64_of_16_bytes_is_refused_with_400() {
    let server = serve_default().await;
    for key in [
        "not base64 at all!!!!!!!",     // 24 characters, not base64
        "AAAAAAAAAAAAAAAAAAAA",         // base64 of 15 bytes
        "AAAAAAAAAAAAAAAAAAAAAAAAAA==", // base64 of 19 bytes
        "dGhlIHNhbXBsZSBub25jZQ",       // the right bytes without padding
        "",
    ] {
        let response = Upgrade::new("/ws/lobby")
            .header("Sec-WebSocket-Key", key)
            .send(server.addr)
            .await;
        response.assert_rejection(400, "Sec-WebSocket-Key");
    }
    assert_eq!(server.hub.stats().connections_opened, 0);
}

#[tokio::test]
async fn an_http_1_0_upgrade_is_refused_with_426() {
    let server = serve_default().await;
    let response = Upgrade::new("/ws/lobby")
        .version("HTTP/1.0")
        .send(server.addr)
        .await;
    response.assert_rejection(426, "HTTP/1.1");
}

#[tokio::test]
async fn a_missing_host_header_is_refused_with_400() {
    let server = serve_default().await;
    let response = Upgrade::new("/ws/lobby")
        .without("Host")
        .send(server.addr)
        .await;
    response.assert_rejection(400, "Host");
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one `Host`, also when its request line
/// names the authority (absolute form).
#[tokio::test]
async fn a_repeated_or_absent_host_is_refused_with_400_also_in_absolute_form() {
    let server = serve_default().await;
    let response = Upgrade::new("/ws/lobby")
        .also("Host", "evil.example")
        .send(server.addr)
        .await;
    response.assert_rejection(400, "Host must appear exactly once");
    let response = Upgrade::new("http://localhost/ws/lobby")
        .without("Host")
        .send(server.addr)
        .await;
    response.assert_rejection(400, "missing Host");
    // With its `Host`, the same absolute-form request is served.
    let response = Upgrade::new("http://localhost/ws/lobby")
        .send(server.addr)
        .await;
    assert_eq!(response.status, 101, "{}", response.text());
    assert_eq!(server.hub.stats().handshakes_malformed, 2);
}

#[tokio::test]
async fn rejected_handshakes_are_counted_and_never_join_a_room() {
    let server = serve_default().await;
    Upgrade::new("/ws/lobby")
        .method("POST")
        .header("Content-Length", "0")
        .send(server.addr)
        .await;
    Upgrade::new("/ws/lobby")
        .without("Sec-WebSocket-Key")
        .send(server.addr)
        .await;
    Upgrade::new("/ws/%FF").send(server.addr).await;
    let stats = server.hub.stats();
    assert_eq!(stats.handshakes_rejected, 3);
    assert_eq!(stats.connections_opened, 0);
    assert!(server.hub.rooms().is_empty());
}

#[tokio::test]
async fn connection_keep_alive_upgrade_is_accepted_with_the_rfc_accept_key() {
    let server = serve_default().await;
    let mut listener = server.connect("lobby").await;

    let mut raw = Upgrade::new("/ws/lobby")
        .header("Connection", "keep-alive, Upgrade")
        .header("Upgrade", "WebSocket")
        .open(server.addr)
        .await;
    let response = &raw.response;
    assert_eq!(response.status, 101);
    assert_eq!(response.header("sec-websocket-accept"), Some(RFC_ACCEPT));
    assert!(
        response
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    );
    assert!(
        response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("upgrade"))
    );

    // And the socket it opened is a working member of the room.
    wait_members(&server.hub, "lobby", 2).await;
    raw.send(support::raw::opcode::TEXT, b"via keep-alive, Upgrade")
        .await;
    assert_eq!(next_text(&mut listener).await, "via keep-alive, Upgrade");
}

// ----- room names ---------------------------------------------------------------------------

#[tokio::test]
async fn a_room_name_that_is_not_utf8_after_decoding_is_refused_with_400() {
    let server = serve_default().await;
    let response = Upgrade::new("/ws/%FF").send(server.addr).await;
    response.assert_rejection(400, "UTF-8");
    let response = Upgrade::new("/ws/caf%C3").send(server.addr).await;
    response.assert_rejection(400, "UTF-8");
}

#[tokio::test]
async fn a_room_name_with_a_control_character_is_refused_with_400() {
    let server = serve_default().await;
    for path in ["/ws/a%0Ab", "/ws/%00", "/ws/tab%09", "/ws/del%7F"] {
        let response = Upgrade::new(path).send(server.addr).await;
        response.assert_rejection(400, "control character");
    }
}

/// Names that would look like another room's (a leading space, a right-to-left override, a
/// zero-width space) are refused before the upgrade; a space inside a name is fine.
#[tokio::test]
async fn a_room_name_that_could_pass_for_another_is_refused_with_400() {
    let server = serve_default().await;
    for path in [
        "/ws/%E2%80%AElobby",
        "/ws/lob%E2%80%8Bby",
        "/ws/a%E2%80%A8b",
    ] {
        let response = Upgrade::new(path).send(server.addr).await;
        response.assert_rejection(400, "invisible formatting character");
    }
    for path in ["/ws/%20lobby", "/ws/lobby%09%20"] {
        let response = Upgrade::new(path).send(server.addr).await;
        response.assert_rejection(400, "room name");
    }
    let response = Upgrade::new("/ws/lobby%20").send(server.addr).await;
    response.assert_rejection(400, "starts or ends with white space");
    let _inside = server.connect("two%20words").await;
    wait_members(&server.hub, "two words", 1).await;
    assert_eq!(server.hub.stats().connections, 1);
}

#[tokio::test]
async fn a_room_name_longer_than_256_bytes_is_refused_with_400() {
    let server = serve_default().await;
    let response = Upgrade::new(&format!("/ws/{}", "x".repeat(257)))
        .send(server.addr)
        .await;
    response.assert_rejection(400, "longer than 256");
    // The limit counts decoded bytes: 129 two-byte characters are 258 bytes.
    let response = Upgrade::new(&format!("/ws/{}", "%C3%A9".repeat(129)))
        .send(server.addr)
        .await;
    response.assert_rejection(400, "longer than 256");

    let exactly_256 = "x".repeat(256);
    let _client = server.connect(&exactly_256).await;
    wait_members(&server.hub, &exactly_256, 1).await;
}

#[tokio::test]
async fn an_empty_room_segment_is_no_room_and_the_request_passes_through() {
    let server = serve_default().await;
    let response = Upgrade::new("/ws/").send(server.addr).await;
    assert_eq!(response.status, 404, "{response:?}");
    assert_eq!(server.hub.stats().handshakes_rejected, 0);
}

/// With rooms at the top level (`/{room}`), the application's own `/` still reaches it (as in
/// axum, `/{room}` does not match `/`).
#[tokio::test]
async fn a_top_level_room_pattern_leaves_the_index_page_alone() {
    let hub = Hub::builder().build();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "index" }))
        .layer(HubLayer::new(hub.clone()).route("/{room}"));
    let server = serve_router(app, hub).await;
    let reply = http_get(&server.http_url("/")).await;
    assert_eq!(
        reply.status,
        axum::http::StatusCode::OK,
        "body: {}",
        reply.body
    );
    assert_eq!(reply.body, "index");
    let mut client = connect(&format!("ws://{}/lobby", server.addr)).await;
    wait_members(&server.hub, "lobby", 1).await;
    server
        .hub
        .publish("lobby", tower_ws_hub::Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut client).await, "hi");
}

#[tokio::test]
async fn room_names_are_percent_decoded() {
    let server = serve_default().await;
    let mut client = server.connect("caf%C3%A9").await;
    let _spaced = server.connect("a%20b").await;
    wait_members(&server.hub, "café", 1).await;
    wait_members(&server.hub, "a b", 1).await;
    assert_eq!(server.hub.room_size("caf%C3%A9"), 0);

    let delivered = server
        .hub
        .publish("café", Message::text("un café"))
        .await
        .unwrap();
    assert_eq!(delivered, 1);
    assert_eq!(next_text(&mut client).await, "un café");
}

/// Segments are split before decoding: an encoded slash is part of the room's name (as axum's
/// `Path` decodes it), while a real one makes the path too long for the pattern. The query
/// string is never part of the room.
#[tokio::test]
async fn an_encoded_slash_stays_in_the_room_name_and_a_real_one_does_not_match() {
    let server = serve_default().await;
    let mut client = server.connect("a%2Fb").await;
    let _queried = server.connect("a%2fb?x=1").await;
    wait_members(&server.hub, "a/b", 2).await;
    assert_eq!(server.hub.room_size("a%2Fb"), 0);
    let delivered = server
        .hub
        .publish("a/b", Message::text("slashed"))
        .await
        .unwrap();
    assert_eq!(delivered, 2);
    assert_eq!(next_text(&mut client).await, "slashed");

    let response = Upgrade::new("/ws/a/b").send(server.addr).await;
    assert_eq!(response.status, 404, "{response:?}");
    assert_eq!(response.text(), "router fallback: /ws/a/b");
}

#[tokio::test]
async fn the_room_name_limit_is_configurable() {
    let hub = Hub::builder().max_room_name_len(8).build();
    let app = router().layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
    let server = serve_router(app, hub).await;
    let response = Upgrade::new("/ws/ninechars").send(server.addr).await;
    response.assert_rejection(400, "longer than 8");
    let _ok = server.connect("eight888").await;
    wait_members(&server.hub, "eight888", 1).await;
}

/// A layer is configured by value; a clone configured further gets its own copy of the
/// configuration (no panic), and the original keeps what it had.
#[tokio::test]
async fn a_cloned_layer_can_be_configured_on_its_own() {
    let hub = Hub::builder().build();
    let base = HubLayer::new(hub.clone()).route("/ws/{room}");
    let kept = base.clone();
    let extended = base.try_route("/chat/{room}").expect("a valid pattern");
    let both = serve_router(router().layer(extended), hub.clone()).await;
    let only_ws = serve_router(router().layer(kept), hub).await;
    let _a = both.connect("lobby").await;
    let _b = connect(&format!("ws://{}/chat/lobby", both.addr)).await;
    let _c = only_ws.connect("lobby").await;
    let response = Upgrade::new("/chat/lobby").send(only_ws.addr).await;
    assert_eq!(response.status, 404, "{response:?}");
}

/// `Connection` may list other tokens with `Upgrade` (`close, Upgrade`): still an upgrade.
#[tokio::test]
async fn connection_header_listing_close_with_upgrade_still_upgrades() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut listener = server.connect("r").await;
    let ws = Upgrade::new("/ws/r")
        .header("Connection", "close, Upgrade")
        .open(server.addr)
        .await;
    assert_eq!(ws.response.header("sec-websocket-accept"), Some(RFC_ACCEPT));
    assert_talks(&server, ws, &mut listener).await;
}

/// `ws`, upgraded in room `r` beside `listener`, is a working WebSocket: what it sends reaches
/// the room, and nothing was taken for a broken frame.
async fn assert_talks(server: &Server, mut ws: RawWs, listener: &mut Client) {
    wait_members(&server.hub, "r", 2).await;
    ws.send(0x1, b"hi").await;
    assert_eq!(next_text(listener).await, "hi");
    assert_eq!(server.hub.stats().protocol_closes, 0);
}

/// An upgrade request with a (pointless) body is answered like any other: `101`, and the
/// client joins its room; the body is not taken for WebSocket frames.
#[tokio::test]
async fn an_upgrade_request_with_a_body_still_upgrades() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut listener = server.connect("r").await;
    let request = Upgrade::new("/ws/r").header("Content-Length", "5");
    // `hello` read as a frame would be one with reserved bits set (`h` is 0x68): a 1002.
    let ws = request.open_with_early(server.addr, b"hello").await;
    assert_eq!(ws.response.header("sec-websocket-accept"), Some(RFC_ACCEPT));
    assert_talks(&server, ws, &mut listener).await;
}

/// A refused upgrade leaves the HTTP/1.1 connection usable: the next request on it (here a
/// valid upgrade) is served.
#[tokio::test]
async fn a_refused_upgrade_keeps_the_connection_for_the_next_request() {
    let server = serve_hub(Hub::builder().build()).await;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (refused, stream) = Upgrade::new("/ws/r")
        .header("Origin", "http://evil.example")
        .send_on(stream)
        .await;
    refused.assert_rejection(403, "origin");
    let mut listener = server.connect("r").await;
    let ws = Upgrade::new("/ws/r").open_on(stream).await;
    assert_eq!(ws.response.header("sec-websocket-accept"), Some(RFC_ACCEPT));
    assert_talks(&server, ws, &mut listener).await;
}

/// `.` and `..` are dot segments: a browser or an HTTP client resolves `/ws/..` to `/` before
/// sending, so only a hand-made request names them, encoded or not. They are refused like any
/// other bad room name (`400`), and `Hub::publish` refuses them too.
#[tokio::test]
async fn dot_segments_are_not_room_names() {
    let server = serve_default().await;
    for path in ["/ws/.", "/ws/..", "/ws/%2E%2E", "/ws/%2e"] {
        let response = Upgrade::new(path).send(server.addr).await;
        response.assert_rejection(400, "dot segment");
    }
    assert_eq!(server.hub.stats().connections_opened, 0);
    // Dots inside a name are fine.
    let mut client = server.connect("...").await;
    let mut other = server.connect("a..b").await;
    wait_members(&server.hub, "...", 1).await;
    wait_members(&server.hub, "a..b", 1).await;
    let error = server.hub.publish("..", "x").await.unwrap_err();
    assert!(error.to_string().contains("dot segment"), "{error}");
    server.hub.publish("...", "three dots").await.unwrap();
    assert_eq!(next_text(&mut client).await, "three dots");
    server.hub.publish("a..b", "between").await.unwrap();
    assert_eq!(next_text(&mut other).await, "between");
}
