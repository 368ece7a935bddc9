//! Limits that keep one client (or a crowd) from taking the server: connections per instance
//! and per room (`503` + `Retry-After`), the inbound rate limit (close 1008), the idle timeout
//! (close 1000), message and frame size (close 1009), and a graceful shutdown that a client
//! which never answers cannot stretch beyond `close_timeout`.
//!
//! Real tokio-tungstenite clients and raw sockets over loopback through `axum::serve`. Timeouts
//! are configured short (hundreds of milliseconds) where a test needs one to fire; the tests
//! assert what happened, never how fast.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::{SinkExt, StreamExt};
use support::bystanders::Bystanders;
use support::raw::{
    MASK, RawWs, Upgrade, empty_fragment_flood, encode_frame, opcode, ping_flood,
    tcp_with_small_receive_buffer, unfinished_message,
};
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tower_ws_hub::{Hub, Message, close_code};

// ----- helpers --------------------------------------------------------------------------------

/// Asserts a `503` rejection naming `reason_part`, with `Retry-After: 10` (seconds).
async fn assert_unavailable(server: &Server, room: &str, reason_part: &str) {
    let response = Upgrade::new(&format!("/ws/{room}")).send(server.addr).await;
    response.assert_rejection(503, reason_part);
    let retry_after = response
        .header("retry-after")
        .expect("a Retry-After header");
    let seconds: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {retry_after:?} is not delay-seconds"));
    assert_eq!(seconds, 10, "README's limits table");
}

/// Reads until the server's close frame, then on until the stream ends (the read that follows
/// makes tungstenite flush its answering close frame), and returns the server's frame (`None`
/// if the stream ended without one).
async fn close_frame(client: &mut Client) -> Option<CloseFrame> {
    let frame = loop {
        match tokio::time::timeout(PROMPTLY, client.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(WsMessage::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    };
    while let Ok(Some(Ok(_))) = tokio::time::timeout(PROMPTLY, client.next()).await {}
    frame
}

// ----- connections per instance ---------------------------------------------------------------

#[tokio::test]
async fn an_upgrade_over_max_connections_gets_503_with_retry_after() {
    let server = serve_hub(Hub::builder().max_connections(Some(2)).build()).await;
    // In different rooms: the limit is per instance.
    let _a = server.connect("one").await;
    let _b = server.connect("two").await;
    wait_members(&server.hub, "two", 1).await;
    wait_members(&server.hub, "one", 1).await;

    assert_unavailable(&server, "three", "connection limit").await;
    assert_unavailable(&server, "one", "connection limit").await;
    match tokio_tungstenite::connect_async(server.ws_url("three")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        other => panic!("expected a 503, got {:?}", other.map(|(_, r)| r)),
    }
    let stats = server.hub.stats();
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.handshakes_rejected, 3);
    assert_eq!(server.hub.room_size("three"), 0);
    assert_eq!(server.hub.room_size("one"), 1);
    // Plain HTTP is not limited by the hub.
    assert_eq!(http_get(&server.http_url("/healthz")).await.body, "ok");
}

#[tokio::test]
async fn a_connection_slot_freed_by_a_leaving_client_is_taken_by_the_next() {
    let server = serve_hub(Hub::builder().max_connections(Some(2)).build()).await;
    let a = server.connect("room").await;
    let b = server.connect("room").await;
    wait_members(&server.hub, "room", 2).await;
    assert_unavailable(&server, "room", "connection limit").await;

    // A clean close frees a slot ...
    close_client(a).await;
    let mut c = connect_when_admitted(&server, "room").await;
    assert_unavailable(&server, "room", "connection limit").await;
    // ... and so does a client that just vanishes.
    drop(b);
    let mut d = connect_when_admitted(&server, "room").await;
    assert_unavailable(&server, "room", "connection limit").await;

    wait_members(&server.hub, "room", 2).await;
    send_text(&mut c, "hello d").await;
    assert_eq!(next_text(&mut d).await, "hello d");
}

// ----- connections per room -------------------------------------------------------------------

#[tokio::test]
async fn a_full_room_gets_503_with_retry_after_while_other_rooms_work() {
    let server = serve_hub(Hub::builder().max_room_connections(Some(1)).build()).await;
    let solo = server.connect("solo").await;
    wait_members(&server.hub, "solo", 1).await;
    assert_unavailable(&server, "solo", "room is full").await;

    let mut other = server.connect("other").await;
    let _third = server.connect("third").await;
    wait_members(&server.hub, "other", 1).await;
    wait_members(&server.hub, "third", 1).await;
    // Application publishes still reach the full room.
    server
        .hub
        .publish("solo", Message::text("to the one member"))
        .await
        .unwrap();
    let mut solo = solo;
    assert_eq!(next_text(&mut solo).await, "to the one member");

    // When its member leaves, the room admits someone again.
    close_client(solo).await;
    let _next = connect_when_admitted(&server, "solo").await;
    wait_members(&server.hub, "solo", 1).await;
    assert_unavailable(&server, "solo", "room is full").await;
    assert_eq!(server.hub.stats().handshakes_rejected, 2);
    // The other rooms worked all along.
    server
        .hub
        .publish("other", Message::text("still served"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut other).await, "still served");
}

/// Sends `request` on a new connection and returns the response's status code with the
/// connection, kept open (an admitted WebSocket stays a member while it is).
async fn status_keeping_connection(
    addr: std::net::SocketAddr,
    request: &[u8],
) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(PROMPTLY, stream.read(&mut chunk))
            .await
            .expect("no response in time")
            .unwrap();
        assert!(n > 0, "closed before a response head");
        head.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    (text.split(' ').nth(1).unwrap().parse().unwrap(), stream)
}

/// `n` upgrade requests for `room`, all in flight at once; the statuses, connections kept.
async fn concurrent_upgrades(server: &Server, room: &str, n: usize) -> Vec<u16> {
    let request = Upgrade::new(&format!("/ws/{room}")).to_bytes();
    let results = futures_util::future::join_all(
        (0..n).map(|_| status_keeping_connection(server.addr, &request)),
    )
    .await;
    let statuses = results.iter().map(|(status, _)| *status).collect();
    // Let the admitted one join before the connections close.
    wait_members(&server.hub, room, 1).await;
    statuses
}

#[tokio::test]
async fn a_room_limit_holds_against_handshakes_arriving_together() {
    let server = serve_hub(Hub::builder().max_room_connections(Some(1)).build()).await;
    let statuses = concurrent_upgrades(&server, "solo", 20).await;
    let admitted = statuses.iter().filter(|&&s| s == 101).count();
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!((admitted, refused), (1, 19), "{statuses:?}");
    assert_eq!(server.hub.room_size("solo"), 1);
}

#[tokio::test]
async fn a_room_limit_of_zero_admits_nobody() {
    let server = serve_hub(Hub::builder().max_room_connections(Some(0)).build()).await;
    assert_unavailable(&server, "empty", "room is full").await;
    assert_eq!(server.hub.stats().connections_opened, 0);
}

#[tokio::test]
async fn a_room_limit_holds_while_an_authorizer_is_deciding() {
    let hub = Hub::builder().max_room_connections(Some(1)).build();
    // The place is taken before the authorizer runs: the others are refused without asking
    // it (were it taken after, each would be authorized and then refused, and one admitted
    // all the same).
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&calls);
    let slow = move |_: &axum::http::request::Parts, _: &str| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            true
        }
    };
    let app = axum::Router::new().layer(
        tower_ws_hub::HubLayer::new(hub.clone())
            .route("/ws/{room}")
            .authorize(slow),
    );
    let server = serve_router(app, hub).await;
    let statuses = concurrent_upgrades(&server, "solo", 5).await;
    let admitted = statuses.iter().filter(|&&s| s == 101).count();
    assert_eq!(admitted, 1, "{statuses:?}");
    assert_eq!(server.hub.room_size("solo"), 1);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A request refused because its room is full never holds an instance slot, not even for a
/// moment: while a crowd knocks on a full room, an instance one connection short of its limit
/// still admits a request for another room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_full_room_do_not_take_the_place_of_another_rooms() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let hub = Hub::builder()
        .max_connections(Some(2))
        .max_room_connections(Some(1))
        .build();
    let server = serve_hub(hub).await;
    let mut occupant = server.connect("full").await;
    wait_members(&server.hub, "full", 1).await;
    // Reading, so that the occupant answers pings and stays.
    let occupant = tokio::spawn(async move { while let Some(Ok(_)) = occupant.next().await {} });
    let stop = Arc::new(AtomicBool::new(false));
    let crowd: Vec<_> = (0..8)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let addr = server.addr;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // The room is full (or, while the other room's connection is open, the
                    // instance is).
                    let response = Upgrade::new("/ws/full").send(addr).await;
                    assert_eq!(response.status, 503, "{response:?}");
                }
            })
        })
        .collect();
    let mut refused = Vec::new();
    for attempt in 0..200 {
        // The connection ends when the raw socket is dropped, right after the answer is read.
        let response = Upgrade::new("/ws/free").send(server.addr).await;
        if response.status != 101 {
            refused.push((attempt, response.status));
        }
        eventually("the free room empty again", || {
            server.hub.room_size("free") == 0 && server.hub.stats().connections == 1
        })
        .await;
        // Its place comes back when its task ends, just after it left the room.
        #[cfg(feature = "internals")]
        eventually("its place given back", || {
            tower_ws_hub::internals::reserved_places(&server.hub) == 1
        })
        .await;
        #[cfg(not(feature = "internals"))]
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for knocker in crowd {
        knocker.await.unwrap();
    }
    // Before the occupant's task is aborted: on the other worker its end could otherwise
    // reach the server (and empty the room) before this check.
    assert_eq!(server.hub.room_size("full"), 1);
    occupant.abort();
    assert!(
        refused.is_empty(),
        "requests for a room with space refused while 1 of 2 connections was in use: \
         {refused:?}"
    );
}

// ----- inbound rate limit ---------------------------------------------------------------------

/// Nothing follows our close frame (RFC 6455 §5.5.1), not even the pong for a ping read just
/// before the close began: a client over the rate limit whose burst of 64 frames (one poll's
/// read budget) ends with a ping gets the pong before the 1008, or not at all.
#[tokio::test]
async fn nothing_follows_the_close_frame_when_the_read_before_it_was_a_ping() {
    let server = serve_hub(Hub::builder().inbound_rate_limit(0.001, 5).build()).await;
    let mut raw = Upgrade::new("/ws/rate").open(server.addr).await;
    wait_members(&server.hub, "rate", 1).await;
    let mut burst = Vec::new();
    for i in 0..63 {
        burst.extend(encode_frame(
            true,
            0,
            opcode::TEXT,
            Some(MASK),
            format!("m{i}").as_bytes(),
        ));
    }
    burst.extend(encode_frame(true, 0, opcode::PING, Some(MASK), b"last"));
    raw.send_bytes(&burst).await;
    let close = raw.read_close().await.expect("a close frame");
    assert_eq!(close.close_code(), Some(close_code::POLICY_VIOLATION));
    raw.send_bytes(&encode_frame(
        true,
        0,
        opcode::CLOSE,
        Some(MASK),
        &close_code::POLICY_VIOLATION.to_be_bytes(),
    ))
    .await;
    let mut after = Vec::new();
    while let Some(frame) = raw.read_frame().await {
        after.push((frame.opcode, frame.payload));
    }
    assert!(after.is_empty(), "frames after the close frame: {after:?}");
}

#[tokio::test]
async fn a_client_over_the_inbound_rate_limit_is_closed_with_1008_while_a_slow_sender_is_not() {
    let server = serve_hub(Hub::builder().inbound_rate_limit(10.0, 5).build()).await;
    let mut flood_listener = server.connect("flood").await;
    let mut flooder = server.connect("flood").await;
    let mut slow = server.connect("calm").await;
    let mut slow_listener = server.connect("calm").await;
    wait_members(&server.hub, "flood", 2).await;
    wait_members(&server.hub, "calm", 2).await;

    // The slow sender stays under 10 messages a second, during the flood.
    let slow_sender = tokio::spawn(async move {
        for i in 0..12 {
            send_text(&mut slow, &format!("slow {i}")).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        slow
    });
    // The flooder writes 50 messages at once.
    for i in 0..50 {
        flooder
            .feed(WsMessage::text(format!("flood {i}")))
            .await
            .unwrap();
    }
    flooder.flush().await.unwrap();
    let frame = close_frame(&mut flooder).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), close_code::POLICY_VIOLATION);
    assert_eq!(frame.reason.as_str(), "rate limit exceeded");

    let mut slow = slow_sender.await.unwrap();
    for i in 0..12 {
        assert_eq!(next_text(&mut slow_listener).await, format!("slow {i}"));
    }
    send_text(&mut slow, "still here").await;
    assert_eq!(next_text(&mut slow_listener).await, "still here");

    // The flood's listener got the burst's worth (in order) and then nothing more.
    let mut received = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(300), flood_listener.next()).await
    {
        if let WsMessage::Text(text) = message {
            received.push(text.to_string());
        }
    }
    assert!(
        (5..50).contains(&received.len()),
        "{} flood messages got through",
        received.len()
    );
    let expected: Vec<String> = (0..received.len()).map(|i| format!("flood {i}")).collect();
    assert_eq!(received, expected);

    eventually("the flooder is gone", || {
        server.hub.stats().connections == 3
    })
    .await;
    let stats = server.hub.stats();
    assert_eq!(stats.rate_limit_closes, 1);
    assert_eq!(server.hub.room_size("flood"), 1);
    assert_eq!(server.hub.room_size("calm"), 2);
}

/// On a hub limited to 10 messages a second (burst 5), one of two clients in `room` sends 50
/// control frames (`frame(i)`) at once: it is closed with 1008 "rate limit exceeded" and
/// counted, the other stays. Returns the server and the other client.
async fn control_flood_is_rate_limited(room: &str, frame: fn(u8) -> WsMessage) -> (Server, Client) {
    let server = serve_hub(Hub::builder().inbound_rate_limit(10.0, 5).build()).await;
    let mut flooder = server.connect(room).await;
    let calm = server.connect(room).await;
    wait_members(&server.hub, room, 2).await;
    for i in 0..50u8 {
        flooder.feed(frame(i)).await.unwrap();
    }
    flooder.flush().await.unwrap();
    let close = close_frame(&mut flooder).await.expect("a close frame");
    assert_eq!(u16::from(close.code), close_code::POLICY_VIOLATION);
    assert_eq!(close.reason.as_str(), "rate limit exceeded");
    eventually("the flooder is gone", || {
        server.hub.stats().connections == 1
    })
    .await;
    assert_eq!(server.hub.stats().rate_limit_closes, 1);
    (server, calm)
}

#[tokio::test]
async fn pings_count_against_the_inbound_rate_limit() {
    // A ping flood costs the server a read and a pong each: the limit covers it like data.
    let (server, mut calm) =
        control_flood_is_rate_limited("pings", |i| WsMessage::Ping(vec![i].into())).await;
    // Within the limit, pings are answered and nobody is closed.
    for i in 0..3u8 {
        calm.send(WsMessage::Ping(vec![i].into())).await.unwrap();
        let pong = tokio::time::timeout(PROMPTLY, calm.next())
            .await
            .expect("a pong in time")
            .expect("stream open")
            .expect("no error");
        assert_eq!(pong, WsMessage::Pong(vec![i].into()));
    }
    assert_eq!(server.hub.stats().rate_limit_closes, 1);
}

#[tokio::test]
async fn unsolicited_pongs_count_against_the_inbound_rate_limit() {
    // RFC 6455 lets a client send pongs nobody asked for (a heartbeat); a flood of them costs
    // the server a read each, like pings, and takes a token each.
    let (server, mut calm) =
        control_flood_is_rate_limited("pongs", |i| WsMessage::Pong(vec![i].into())).await;
    // A few pongs within the burst close nobody: `calm` still talks.
    for i in 0..3u8 {
        calm.send(WsMessage::Pong(vec![i].into())).await.unwrap();
    }
    calm.send(WsMessage::text("still here")).await.unwrap();
    // Once the message after the pongs is read, the pongs were too.
    eventually("calm's message was read", || {
        server.hub.stats().messages_received >= 1
    })
    .await;
    assert_eq!(server.hub.stats().rate_limit_closes, 1);
    assert_eq!(server.hub.room_size("pongs"), 1);
}

/// Each frame of a fragmented message takes a token: a message that never ends, sent as an
/// endless stream of empty fragments, would otherwise never spend one (nor reach the size
/// limit), whatever the rate.
#[tokio::test]
async fn fragments_count_against_the_inbound_rate_limit() {
    let server = serve_hub(Hub::builder().inbound_rate_limit(10.0, 5).build()).await;
    let mut listener = server.connect("fragments").await;
    let mut polite = Upgrade::new("/ws/fragments").open(server.addr).await;
    let mut flooder = Upgrade::new("/ws/fragments").open(server.addr).await;
    wait_members(&server.hub, "fragments", 3).await;

    // A message in five frames fits the burst of five tokens and is delivered.
    let mut message = encode_frame(false, 0, opcode::TEXT, Some(MASK), b"in ");
    for part in [&b"five "[..], b"frag", b"ment"] {
        message.extend(encode_frame(
            false,
            0,
            opcode::CONTINUATION,
            Some(MASK),
            part,
        ));
    }
    message.extend(encode_frame(
        true,
        0,
        opcode::CONTINUATION,
        Some(MASK),
        b"s",
    ));
    polite.send_bytes(&message).await;
    assert_eq!(next_text(&mut listener).await, "in five fragments");

    flooder.send_bytes(&unfinished_message()).await;
    flooder.send_bytes(&empty_fragment_flood(1000)).await;
    let close = loop {
        let frame = tokio::time::timeout(PROMPTLY, flooder.read_frame())
            .await
            .expect("the flooder is closed in time")
            .expect("a close frame before the end of the stream");
        if frame.opcode == opcode::CLOSE {
            break frame;
        }
    };
    assert_eq!(close.close_code(), Some(close_code::POLICY_VIOLATION));
    assert_eq!(&close.payload[2..], b"rate limit exceeded");
    assert_eq!(server.hub.stats().rate_limit_closes, 1);
}

#[tokio::test]
async fn the_rate_limit_is_per_connection() {
    // Five clients each spend their whole burst at once: nobody is over its own limit.
    let server = serve_hub(Hub::builder().inbound_rate_limit(1.0, 5).build()).await;
    let mut listener = server.connect("many").await;
    let mut senders = Vec::new();
    for _ in 0..5 {
        senders.push(server.connect("many").await);
    }
    wait_members(&server.hub, "many", 6).await;
    for (n, sender) in senders.iter_mut().enumerate() {
        for i in 0..5 {
            sender
                .feed(WsMessage::text(format!("{n}.{i}")))
                .await
                .unwrap();
        }
        sender.flush().await.unwrap();
    }
    for _ in 0..25 {
        next_text(&mut listener).await;
    }
    assert_eq!(server.hub.stats().rate_limit_closes, 0);
    assert_eq!(server.hub.room_size("many"), 6);
}

// ----- idle timeout ---------------------------------------------------------------------------

#[tokio::test]
async fn the_idle_timeout_closes_a_silent_client_with_1000_while_an_active_one_stays() {
    let hub = Hub::builder()
        .idle_timeout(Some(Duration::from_millis(300)))
        .build();
    let server = serve_hub(hub).await;
    let mut silent = server.connect("quiet").await;
    let mut active = server.connect("busy").await;
    wait_members(&server.hub, "quiet", 1).await;
    wait_members(&server.hub, "busy", 1).await;

    let keep_talking = async {
        // Four idle timeouts' worth of time, never silent for long.
        // It ends on a send, so that it is freshly active for the checks below.
        for i in 0..12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            send_text(&mut active, &format!("tick {i}")).await;
        }
    };
    let (frame, ()) = tokio::join!(close_frame(&mut silent), keep_talking);
    let frame = frame.expect("a close frame");
    assert_eq!(u16::from(frame.code), close_code::NORMAL);
    assert_eq!(frame.reason.as_str(), "idle timeout");

    // The active client is still there; the silent one is gone.
    assert_eq!(server.hub.room_size("busy"), 1);
    eventually("the silent client left", || {
        server.hub.room_size("quiet") == 0
    })
    .await;
    let stats = server.hub.stats();
    assert_eq!(stats.idle_timeouts, 1);
    assert_eq!(stats.connections, 1);

    // Once it stops talking, the same rule applies to it.
    assert_eq!(
        close_code_to_end(&mut active).await,
        Some(close_code::NORMAL)
    );
    eventually("no connections", || server.hub.stats().connections == 0).await;
    assert_eq!(server.hub.stats().idle_timeouts, 2);
}

#[tokio::test]
async fn pings_do_not_keep_a_client_past_the_idle_timeout() {
    let hub = Hub::builder()
        .idle_timeout(Some(Duration::from_millis(300)))
        .build();
    let server = serve_hub(hub).await;
    let mut pinger = server.connect("pings").await;
    wait_members(&server.hub, "pings", 1).await;

    let code = tokio::time::timeout(PROMPTLY, async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if pinger.send(WsMessage::Ping(bytes::Bytes::new())).await.is_err() {
                        return None;
                    }
                }
                message = pinger.next() => match message {
                    Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                },
            }
        }
    })
    .await
    .expect("pings kept the client open");
    assert_eq!(code, Some(close_code::NORMAL));
    assert_eq!(server.hub.stats().idle_timeouts, 1);
}

// ----- message and frame size (more cases in tests/connection.rs) -----------------------------

#[tokio::test]
async fn a_message_over_max_message_size_is_closed_with_1009() {
    let server = serve_hub(Hub::builder().max_message_size(1024).build()).await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut big = server.connect("bad").await;
    wait_members(&server.hub, "bad", 1).await;
    big.send(WsMessage::binary(vec![0u8; 1025])).await.unwrap();
    assert_eq!(
        close_code(&mut big).await,
        Some(close_code::MESSAGE_TOO_BIG)
    );
    bystanders.assert_unharmed(&server).await;
    assert_eq!(server.hub.stats().protocol_closes, 1);
}

#[tokio::test]
async fn a_frame_over_max_frame_size_is_closed_with_1009() {
    let server = serve_hub(Hub::builder().max_frame_size(1024).build()).await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut raw = Upgrade::new("/ws/bad").open(server.addr).await;
    wait_members(&server.hub, "bad", 1).await;
    raw.send_bytes(&encode_frame(
        true,
        0,
        opcode::BINARY,
        Some(MASK),
        &[0u8; 1025],
    ))
    .await;
    assert_eq!(raw.close_code().await, Some(close_code::MESSAGE_TOO_BIG));
    bystanders.assert_unharmed(&server).await;
    assert_eq!(server.hub.stats().protocol_closes, 1);
}

// ----- graceful shutdown ----------------------------------------------------------------------

#[tokio::test]
async fn shutdown_waits_only_close_timeout_not_the_grace_for_a_client_that_never_answers() {
    // A control with a close timeout longer than the grace, started first, is still shutting
    // down when this one is done: the close timeout configured is the one that ended the wait
    // (ignored, both would wait the default 5 s, the control finishing first).
    let (control, _control_mute) = mute_beside_polite(Duration::from_secs(600)).await;
    let control_hub = control.hub.clone();
    let control_shutdown = tokio::spawn(async move { control_hub.shutdown().await });
    let (server, mute) = mute_beside_polite(Duration::from_millis(300)).await;
    let mut polite = server.connect("mixed").await;
    wait_members(&server.hub, "mixed", 2).await;

    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });
    assert_eq!(
        close_code_to_end(&mut polite).await,
        Some(close_code::GOING_AWAY)
    );
    // Far below the 60 s grace: only the mute client's close_timeout is waited for.
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown waited for the grace period")
        .unwrap();
    assert!(
        !control_shutdown.is_finished(),
        "the control's shutdown ended as soon: the close timeout set was not the one used"
    );
    control_shutdown.abort();
    let stats = server.hub.stats();
    assert_eq!(stats.connections, 0);
    assert_eq!(stats.connections_opened, stats.connections_closed);
    assert!(server.hub.rooms().is_empty());
    drop(mute);
}

/// A server with a 60 s shutdown grace and `close_timeout`, and in room `mixed` a raw client
/// that stops reading and never answers a close frame.
async fn mute_beside_polite(close_timeout: Duration) -> (Server, RawWs) {
    let hub = Hub::builder()
        .shutdown_grace(Duration::from_secs(60))
        .close_timeout(close_timeout)
        .build();
    let server = serve_hub(hub).await;
    let mute = Upgrade::new("/ws/mixed").open(server.addr).await;
    wait_members(&server.hub, "mixed", 1).await;
    (server, mute)
}

#[tokio::test]
async fn shutdown_drops_a_client_that_cannot_drain_once_the_grace_is_over() {
    // The client stops reading with a full socket: its queued messages can never be written,
    // so its 1001 can never go out. The grace period bounds the wait.
    let hub = Hub::builder()
        .shutdown_grace(Duration::from_secs(1))
        .close_timeout(Duration::from_millis(300))
        .outbound_queue(100_000, 64 * 1024 * 1024)
        .build();
    let server = serve_hub(hub).await;
    let mut polite = server.connect("polite").await;
    let stuck_socket = tcp_with_small_receive_buffer(server.addr).await;
    let stuck = Upgrade::new("/ws/stuck").open_on(stuck_socket).await;
    wait_members(&server.hub, "stuck", 1).await;
    wait_members(&server.hub, "polite", 1).await;
    let chunk = Message::binary(vec![0u8; 64 * 1024]);
    for _ in 0..256 {
        server.hub.publish("stuck", chunk.clone()).await.unwrap();
    }

    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });
    assert_eq!(
        close_code_to_end(&mut polite).await,
        Some(close_code::GOING_AWAY)
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown outlived its grace period")
        .unwrap();
    let stats = server.hub.stats();
    assert_eq!(stats.connections, 0);
    assert_eq!(stats.connections_opened, stats.connections_closed);
    drop(stuck);
}

// ----- upgrade timeout ------------------------------------------------------------------------

/// A server with room for one connection and `upgrade_timeout`, behind a middleware that hangs
/// after the layer answered `/ws/stalled` (the `101` never goes out), with such a request made:
/// the hub has accepted the handshake (slot reserved, task waiting for the socket). Returns the
/// server and the stalled request's socket.
async fn one_slot_held_by_a_stalled_upgrade(
    upgrade_timeout: Duration,
) -> (Server, tokio::net::TcpStream) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::extract::Request;
    use axum::middleware::{self, Next};

    let hub = Hub::builder()
        .max_connections(Some(1))
        .upgrade_timeout(upgrade_timeout)
        .build();
    let answered = Arc::new(AtomicBool::new(false));
    let hang_after_answer = {
        let answered = Arc::clone(&answered);
        move |request: Request, next: Next| {
            let answered = Arc::clone(&answered);
            async move {
                let stall = request.uri().path() == "/ws/stalled";
                let response = next.run(request).await;
                if stall {
                    answered.store(true, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                response
            }
        }
    };
    let app = axum::Router::new()
        .layer(tower_ws_hub::HubLayer::new(hub.clone()).route("/ws/{room}"))
        .layer(middleware::from_fn(hang_after_answer));
    let server = serve_router(app, hub).await;

    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &Upgrade::new("/ws/stalled").to_bytes())
        .await
        .unwrap();
    eventually("the hub answered the stalled request", || {
        answered.load(Ordering::SeqCst)
    })
    .await;
    (server, stalled)
}

#[tokio::test]
async fn an_upgrade_never_handed_over_after_the_hub_answered_frees_its_slot_at_the_upgrade_timeout()
{
    // The hub has accepted the handshake, but the stack in front never lets the 101 out: here
    // a middleware that hangs after the layer answered. (With axum::serve alone the socket is
    // handed over as soon as the 101 is written, or the upgrade fails at once if the client
    // is gone.) A control with a 600 s upgrade timeout, set up first, still holds its slot
    // when this one has freed its own: the timeout configured is the one that freed it (with
    // the setting ignored, both would wait the default 10 s, the control first).
    let (control, _control_stalled) =
        one_slot_held_by_a_stalled_upgrade(Duration::from_secs(600)).await;
    let (server, stalled) = one_slot_held_by_a_stalled_upgrade(Duration::from_secs(1)).await;
    // Until the upgrade timeout, the accepted but never upgraded request holds the slot.
    assert_unavailable(&server, "room", "connection limit").await;

    let mut client = connect_when_admitted(&server, "room").await;
    wait_members(&server.hub, "room", 1).await;
    assert_unavailable(&control, "room", "connection limit").await;
    let stats = server.hub.stats();
    // The abandoned upgrade never became a connection; it counts as a failed handshake (on
    // top of the 503s: the one asserted above and any while waiting to be admitted).
    assert_eq!(stats.connections_opened, 1, "{stats:?}");
    assert!(stats.handshakes_rejected >= 2, "{stats:?}");
    assert_eq!(server.hub.room_size("stalled"), 0);
    send_text(&mut client, "in").await;
    drop(stalled);
}

// ----- control frames -------------------------------------------------------------------------

#[tokio::test]
async fn pongs_for_a_client_that_floods_pings_and_never_reads_are_bounded() {
    // Every data frame a connection is sent counts against its bounded outbound queue; the
    // pongs tungstenite writes in answer to pings go onto the same wire. A client that sends
    // pings as fast as it can and never reads must not make the server hold an answer to each:
    // that is memory without bound, and the inbound rate limit does not count pings.
    const PINGS: usize = 500_000;
    const PAYLOAD: usize = 125;
    let server = serve_hub(Hub::builder().build()).await;
    let mut listener = server.connect("flood").await;
    let socket = tcp_with_small_receive_buffer(server.addr).await;
    let mut flooder = Upgrade::new("/ws/flood").open_on(socket).await;
    wait_members(&server.hub, "flood", 2).await;
    let rss_before = rss_bytes();

    let batch: Vec<u8> = (0..1000)
        .flat_map(|_| encode_frame(true, 0, opcode::PING, Some(MASK), &[b'p'; PAYLOAD]))
        .collect();
    for _ in 0..PINGS / 1000 {
        flooder.send_bytes(&batch).await;
    }
    // Frames are read in order: once this arrives, every ping before it has been answered (or
    // not). A server that closes the flooder instead is fine too.
    flooder.send(opcode::TEXT, b"done").await;
    tokio::select! {
        text = next_text(&mut listener) => assert_eq!(text, "done"),
        () = eventually("the flooder was closed", || server.hub.room_size("flood") == 1) => {}
    }
    let rss_during = rss_bytes();

    // Now read everything the server kept for the flooder.
    let mut pong_bytes = 0usize;
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_secs(1), flooder.read_frame()).await
    {
        if frame.opcode == opcode::PONG {
            pong_bytes += frame.payload.len() + 2;
        }
    }
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "ping flood: {PINGS} pings, {:.1} MiB of pongs sent back; RSS {:.1} -> {:.1} MiB",
        mib(pong_bytes),
        mib(rss_before as usize),
        mib(rss_during as usize)
    );
    // Socket buffers on loopback hold a few MiB; everything past that was held by the server.
    assert!(
        pong_bytes < 32 * 1024 * 1024,
        "the server buffered {:.1} MiB of pongs for a client that did not read",
        mib(pong_bytes)
    );
}

/// Resident set size of this process.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Opens a client on `room` that never reads (so never answers the server's pings), sends
/// `first`, then `batch` again and again until the task is dropped.
async fn flood_without_reading(
    server: &Server,
    room: &str,
    first: Vec<u8>,
    batch: Vec<u8>,
) -> tokio::task::JoinHandle<()> {
    let socket = tcp_with_small_receive_buffer(server.addr).await;
    let mut flooder = Upgrade::new(&format!("/ws/{room}")).open_on(socket).await;
    wait_members(&server.hub, room, 1).await;
    flooder.send_bytes(&first).await;
    tokio::spawn(async move { while flooder.try_send_bytes(&batch).await {} })
}

/// A client sending `first` and then `batch` for ever, faster than it is read, never answering
/// pings nor sending a whole data message: the pong timeout closes it on one server, the idle
/// timeout on another. Bytes left unread at every deadline are the client's doing, and do not
/// put off the verdict.
async fn assert_a_flood_does_not_escape_the_pong_or_idle_timeout(first: Vec<u8>, batch: Vec<u8>) {
    let pong = serve_hub(
        Hub::builder()
            .ping_interval(Some(Duration::from_millis(200)))
            .pong_timeout(Duration::from_millis(300))
            .close_timeout(Duration::from_millis(300))
            .build(),
    )
    .await;
    let idle = serve_hub(
        Hub::builder()
            .ping_interval(None)
            .idle_timeout(Some(Duration::from_millis(300)))
            .close_timeout(Duration::from_millis(300))
            .build(),
    )
    .await;
    let pong_flood = flood_without_reading(&pong, "flood", first.clone(), batch.clone()).await;
    let idle_flood = flood_without_reading(&idle, "flood", first, batch).await;
    wait_members(&pong.hub, "flood", 0).await;
    wait_members(&idle.hub, "flood", 0).await;
    assert!(pong.hub.stats().pong_timeouts >= 1);
    assert!(idle.hub.stats().idle_timeouts >= 1);
    pong_flood.abort();
    idle_flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_pings_does_not_escape_the_pong_or_idle_timeout() {
    assert_a_flood_does_not_escape_the_pong_or_idle_timeout(Vec::new(), ping_flood()).await;
}

/// As with pings, with a message that never ends: its empty fragments. (tungstenite reads
/// fragments until their message is whole, so a turn of reading them ends on the connection's
/// own fragment allowance, not on the socket running dry; a wake after it must not count as
/// the socket's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_empty_fragments_does_not_escape_the_pong_or_idle_timeout() {
    // Large writes, so that the socket always holds more than the server reads in a turn.
    assert_a_flood_does_not_escape_the_pong_or_idle_timeout(
        unfinished_message(),
        empty_fragment_flood(100_000),
    )
    .await;
}
