//! After a large frame, a connection lets go of the read buffer that frame grew (it starts a
//! fresh protocol state once the old one holds nothing): these tests check that nothing the
//! client sends is lost, reordered or misread across that point, whatever the frame
//! boundaries and pauses. `connection_memory.rs` checks the memory itself.

mod support;

use std::time::Duration;

use support::raw::{MASK, RawWs, Upgrade, encode_frame, opcode};
use support::{Client, PROMPTLY, next_data, wait_members};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower_ws_hub::Hub;

/// Long enough for the server to read what was sent and find the socket empty.
const PAUSE: Duration = Duration::from_millis(50);

/// A hub that takes messages up to 1 MiB.
fn roomy_hub() -> Hub {
    Hub::builder()
        .max_message_size(1 << 20)
        .max_frame_size(1 << 20)
        .build()
}

/// A raw sender and a listener in one room of a [`roomy_hub`].
async fn sender_and_listener() -> (support::Server, RawWs, Client) {
    sender_and_listener_on(roomy_hub()).await
}

async fn sender_and_listener_on(hub: Hub) -> (support::Server, RawWs, Client) {
    let server = support::serve_hub(hub).await;
    let sender = Upgrade::new("/ws/big").open(server.addr).await;
    let listener = server.connect("big").await;
    wait_members(&server.hub, "big", 2).await;
    (server, sender, listener)
}

/// One masked frame, as a client sends it.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, 0, opcode, Some(MASK), payload)
}

/// Payload `len` bytes long, different for each `seed`, so that a mix-up shows.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

async fn expect_binary(listener: &mut Client, expected: &[u8], what: &str) {
    match next_data(listener).await {
        WsMessage::Binary(got) => {
            assert_eq!(got.len(), expected.len(), "{what}: length");
            assert!(got[..] == expected[..], "{what}: payload differs");
        }
        other => panic!("{what}: expected binary, got {other:?}"),
    }
}

#[tokio::test]
async fn messages_after_a_large_one_arrive_intact() {
    let (_server, mut sender, mut listener) = sender_and_listener().await;
    let big = payload(1, 300 * 1024);
    sender.send(opcode::BINARY, &big).await;
    tokio::time::sleep(PAUSE).await;
    for seed in 2..10 {
        sender.send(opcode::BINARY, &payload(seed, 100)).await;
    }
    expect_binary(&mut listener, &big, "the large message").await;
    for seed in 2..10 {
        expect_binary(&mut listener, &payload(seed, 100), "a small one after it").await;
    }
}

#[tokio::test]
async fn a_large_frame_sent_in_pieces_with_pauses_is_read_whole() {
    let (_server, mut sender, mut listener) = sender_and_listener().await;
    // The server reads part of the frame, finds the socket empty, and must keep what it has.
    let big = payload(3, 200 * 1024);
    let mut bytes = frame(true, opcode::BINARY, &big);
    bytes.extend(frame(true, opcode::BINARY, &payload(4, 10)));
    for piece in bytes.chunks(37 * 1024) {
        sender.send_bytes(piece).await;
        tokio::time::sleep(PAUSE).await;
    }
    expect_binary(&mut listener, &big, "the frame sent in pieces").await;
    expect_binary(&mut listener, &payload(4, 10), "the frame after it").await;
}

#[tokio::test]
async fn a_fragmented_message_survives_pauses_between_large_fragments() {
    let (_server, mut sender, mut listener) = sender_and_listener().await;
    // Each fragment is larger than the read buffer and arrives alone: the server finds the
    // socket empty at a frame boundary, but mid-message, where starting afresh would lose the
    // first fragments (and make the continuation a protocol error).
    let parts = [
        payload(5, 40 * 1024),
        payload(6, 50 * 1024),
        payload(7, 30 * 1024),
    ];
    let frames = [
        frame(false, opcode::BINARY, &parts[0]),
        frame(false, opcode::CONTINUATION, &parts[1]),
        frame(true, opcode::CONTINUATION, &parts[2]),
    ];
    for frame in &frames {
        sender.send_bytes(frame).await;
        tokio::time::sleep(PAUSE).await;
    }
    // And a large message right after, to be read by the fresh state.
    let after = payload(8, 70 * 1024);
    sender.send(opcode::BINARY, &after).await;

    expect_binary(&mut listener, &parts.concat(), "the fragmented message").await;
    expect_binary(&mut listener, &after, "the message after it").await;
}

#[tokio::test]
async fn a_ping_between_large_messages_is_answered_once() {
    let (_server, mut sender, mut listener) = sender_and_listener().await;
    let first = payload(9, 100 * 1024);
    sender.send(opcode::BINARY, &first).await;
    sender.send(opcode::PING, b"are you there").await;
    tokio::time::sleep(PAUSE).await;
    let second = payload(10, 100 * 1024);
    sender.send(opcode::BINARY, &second).await;

    let frame = tokio::time::timeout(PROMPTLY, sender.read_frame())
        .await
        .expect("pong in time")
        .expect("connection open");
    assert_eq!(frame.opcode, opcode::PONG);
    assert_eq!(frame.payload, b"are you there");
    expect_binary(&mut listener, &first, "before the ping").await;
    expect_binary(&mut listener, &second, "after the ping").await;
    // Exactly one pong, and the connection still works both ways.
    sender.send(opcode::PING, b"again").await;
    let frame = tokio::time::timeout(PROMPTLY, sender.read_frame())
        .await
        .expect("second pong in time")
        .expect("connection open");
    assert_eq!(
        (frame.opcode, frame.payload.as_slice()),
        (opcode::PONG, &b"again"[..])
    );
}

#[tokio::test]
async fn limits_still_hold_after_the_buffer_is_replaced() {
    let (_server, mut sender, _listener) = sender_and_listener().await;
    sender.send(opcode::BINARY, &payload(11, 500 * 1024)).await;
    tokio::time::sleep(PAUSE).await;
    // The fresh state has the same settings: a frame over 1 MiB still closes with 1009 (the
    // header alone tells; the payload never needs to be sent).
    let mut header = vec![0x80 | opcode::BINARY, 0x80 | 127];
    header.extend_from_slice(&((1u64 << 20) + 1).to_be_bytes());
    header.extend_from_slice(&MASK);
    sender.send_bytes(&header).await;
    let frame = tokio::time::timeout(PROMPTLY, sender.read_frame())
        .await
        .expect("close in time")
        .expect("a close frame");
    assert_eq!(frame.close_code(), Some(1009));
}

#[tokio::test]
async fn a_large_frame_sent_with_the_handshake_is_read_whole() {
    // The frames come in the same write as the upgrade request: the server reads them from
    // the bytes it had already read past the request head, then from the socket.
    let server = support::serve_hub(roomy_hub()).await;
    let mut listener = server.connect("early").await;
    wait_members(&server.hub, "early", 1).await;
    let big = payload(13, 40 * 1024);
    let mut early = frame(true, opcode::BINARY, &big);
    early.extend(frame(true, opcode::BINARY, b"tail"));
    let mut sender = Upgrade::new("/ws/early")
        .open_with_early(server.addr, &early)
        .await;
    expect_binary(&mut listener, &big, "the large early frame").await;
    expect_binary(&mut listener, b"tail", "the frame after it").await;
    tokio::time::sleep(PAUSE).await;
    sender.send(opcode::BINARY, b"after").await;
    expect_binary(&mut listener, b"after", "a frame after a pause").await;
}

#[tokio::test]
async fn headers_split_byte_by_byte_and_non_minimal_lengths_are_followed() {
    let (_server, mut sender, mut listener) = sender_and_listener().await;
    let big = payload(14, 10 * 1024);
    let bytes = frame(true, opcode::BINARY, &big);
    for byte in &bytes[..8] {
        sender.send_bytes(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sender.send_bytes(&bytes[8..]).await;
    tokio::time::sleep(PAUSE).await;
    // A 5-byte payload with a 64-bit length field (RFC 6455 asks for the shortest form;
    // tungstenite accepts this one, so the tracker must too): a 14-byte header.
    let mut odd = vec![0x80 | opcode::BINARY, 0x80 | 127];
    odd.extend_from_slice(&5u64.to_be_bytes());
    odd.extend_from_slice(&MASK);
    odd.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    for byte in &odd {
        sender.send_bytes(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    expect_binary(&mut listener, &big, "the frame with a split header").await;
    expect_binary(&mut listener, b"hello", "the non-minimal frame").await;
}

#[tokio::test]
async fn a_character_split_across_large_fragments_with_a_ping_between_is_one_valid_text() {
    let (_server, mut sender, mut listener) = sender_and_listener().await;
    // "é" is 0xC3 0xA9: its bytes end one fragment and start the next.
    let mut first = vec![b'a'; 5000];
    first.push(0xC3);
    let mut second = vec![0xA9];
    second.extend(vec![b'b'; 5000]);
    sender.send_bytes(&frame(false, opcode::TEXT, &first)).await;
    tokio::time::sleep(PAUSE).await;
    sender.send(opcode::PING, b"p").await;
    tokio::time::sleep(PAUSE).await;
    sender
        .send_bytes(&frame(true, opcode::CONTINUATION, &second))
        .await;
    let pong = sender.read_frame().await.expect("a pong");
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (opcode::PONG, &b"p"[..])
    );
    match next_data(&mut listener).await {
        WsMessage::Text(text) => {
            assert_eq!(text.len(), 10_002);
            assert_eq!(text.matches('é').count(), 1);
        }
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn the_message_size_limit_counts_every_fragment_after_a_fresh_start() {
    let hub = Hub::builder()
        .max_message_size(16 * 1024)
        .max_frame_size(16 * 1024)
        .build();
    let (_server, mut sender, mut listener) = sender_and_listener_on(hub).await;
    let big = payload(15, 12 * 1024);
    sender.send(opcode::BINARY, &big).await;
    tokio::time::sleep(PAUSE).await;
    expect_binary(&mut listener, &big, "a message under the limit").await;
    // Two fragments of 10 KiB: each under the frame limit, together over the message limit.
    sender
        .send_bytes(&frame(false, opcode::BINARY, &payload(16, 10 * 1024)))
        .await;
    tokio::time::sleep(PAUSE).await;
    sender
        .send_bytes(&frame(true, opcode::CONTINUATION, &payload(17, 10 * 1024)))
        .await;
    assert_eq!(sender.close_code().await, Some(1009));
}

#[tokio::test]
async fn the_client_can_close_after_a_fresh_start() {
    let (_server, mut sender, mut listener) = sender_and_listener().await;
    let big = payload(18, 30 * 1024);
    sender.send(opcode::BINARY, &big).await;
    expect_binary(&mut listener, &big, "the large message").await;
    tokio::time::sleep(PAUSE).await;
    sender.send_close(1000).await;
    let close = sender.read_close().await.expect("the close answered");
    assert_eq!(close.close_code(), Some(1000));
    tokio::time::timeout(PROMPTLY, sender.wait_eof())
        .await
        .expect("the server ends the connection");
}
