//! `ConnectionHandle`: the application sends one connection messages of its own and closes it,
//! from outside the hooks, over real sockets.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::raw::{MASK, Upgrade, encode_frame, opcode};
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower_ws_hub::{
    CloseError, ConnectionHandle, DEFAULT_WRITE_INTERVAL, Hub, HubBuilder, InboundAction,
    MAX_CLOSE_REASON_LEN, Message, SendError, SlowConsumerPolicy, close_code,
};

const ROOM: &str = "desk";

/// Masked text frames, one per text, back to back: sent in one write, the server reads them
/// in one go.
fn masked_texts(texts: &[&str]) -> Vec<u8> {
    texts
        .iter()
        .flat_map(|text| encode_frame(true, 0, opcode::TEXT, Some(MASK), text.as_bytes()))
        .collect()
}

/// Handles of the connections opened so far, in the order they opened.
type Handles = Arc<Mutex<Vec<ConnectionHandle>>>;

/// `builder` with an `on_connect` that keeps every connection's handle.
fn keeping_handles(builder: HubBuilder) -> (Hub, Handles) {
    let handles = Handles::default();
    let kept = Arc::clone(&handles);
    let hub = builder
        .on_connect(move |ctx| kept.lock().unwrap().push(ctx.handle()))
        .build();
    (hub, handles)
}

fn handle(handles: &Handles, n: usize) -> ConnectionHandle {
    handles.lock().unwrap()[n].clone()
}

/// A hub from `builder` served at `/ws/{room}`, one client in [`ROOM`], and its handle.
async fn one_client(builder: HubBuilder) -> (Server, Client, ConnectionHandle) {
    let (hub, handles) = keeping_handles(builder);
    let server = serve_hub(hub).await;
    let client = server.connect(ROOM).await;
    wait_members(&server.hub, ROOM, 1).await;
    let target = handle(&handles, 0);
    (server, client, target)
}

/// Reads up to the close frame; returns its code and reason.
async fn close_frame(client: &mut Client) -> (u16, String) {
    loop {
        match tokio::time::timeout(PROMPTLY, client.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(WsMessage::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(WsMessage::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_handle_reaches_its_connection_only_in_order_with_the_rooms_messages() {
    let (hub, handles) = keeping_handles(Hub::builder());
    let server = serve_hub(hub).await;
    let mut first = server.connect(ROOM).await;
    wait_members(&server.hub, ROOM, 1).await;
    let mut second = server.connect(ROOM).await;
    wait_members(&server.hub, ROOM, 2).await;
    let target = handle(&handles, 0);
    assert_eq!(target.room(), ROOM);
    assert!(target.is_open());
    let before = server.hub.stats().deliveries;

    server.hub.publish(ROOM, "room 1").await.unwrap();
    target.send("private 2").unwrap();
    target.send(Message::binary(vec![0, 1, 2])).unwrap();
    server.hub.publish(ROOM, "room 3").await.unwrap();

    assert_eq!(next_text(&mut first).await, "room 1");
    assert_eq!(next_text(&mut first).await, "private 2");
    assert_eq!(next_binary(&mut first).await, [0, 1, 2]);
    assert_eq!(next_text(&mut first).await, "room 3");
    assert_eq!(next_text(&mut second).await, "room 1");
    assert_eq!(next_text(&mut second).await, "room 3");
    assert_silent(&mut second, Duration::from_millis(200)).await;
    // Two publishes to two members, and two sends to one.
    assert_eq!(server.hub.stats().deliveries - before, 6);

    // Its Debug names the connection, not every room of the hub.
    let debug = format!("{target:?}");
    assert!(
        debug.contains("ConnectionHandle") && debug.contains(ROOM),
        "{debug}"
    );
    assert!(!debug.contains("registry"), "{debug}");
}

#[tokio::test]
async fn a_message_sent_from_on_connect_is_the_first_the_client_reads() {
    let hub = Hub::builder()
        .on_connect(|ctx| {
            ctx.handle()
                .send(format!("welcome to {}", ctx.room()))
                .unwrap();
        })
        .build();
    let server = serve_hub(hub).await;
    let mut client = server.connect(ROOM).await;
    assert_eq!(next_text(&mut client).await, "welcome to desk");
}

#[tokio::test]
async fn close_writes_what_is_queued_then_the_code_and_reason_and_the_handle_goes_stale() {
    let disconnected = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&disconnected);
    let (hub, handles) =
        keeping_handles(Hub::builder().on_disconnect(move |_| *counted.lock().unwrap() += 1));
    let server = serve_hub(hub).await;
    let mut banned = server.connect(ROOM).await;
    let mut other = server.connect(ROOM).await;
    wait_members(&server.hub, ROOM, 2).await;
    let target = handle(&handles, 0);

    target.send("you are banned").unwrap();
    target.close(4001, "banned").unwrap();
    // Nothing after the close is queued, and a second close keeps the first.
    assert_eq!(target.send("too late"), Err(SendError::Closed));
    assert_eq!(target.close(4002, "again"), Err(CloseError::Closed));
    assert!(!target.is_open());

    assert_eq!(next_text(&mut banned).await, "you are banned");
    assert_eq!(close_frame(&mut banned).await, (4001, "banned".to_owned()));
    drop(banned);
    wait_members(&server.hub, ROOM, 1).await;
    eventually("on_disconnect to run", || {
        *disconnected.lock().unwrap() == 1
    })
    .await;

    // Once the connection has ended, the handle says so and does nothing.
    assert_eq!(target.send("gone"), Err(SendError::Closed));
    assert_eq!(target.close(1000, ""), Err(CloseError::Closed));
    assert!(!target.is_open());
    // The rest of the room is untouched.
    server.hub.publish(ROOM, "still here").await.unwrap();
    assert_eq!(next_text(&mut other).await, "still here");
    assert!(handle(&handles, 1).is_open());
}

#[tokio::test]
async fn close_codes_no_endpoint_may_send_and_overlong_reasons_change_nothing() {
    let (_server, mut client, target) = one_client(Hub::builder()).await;

    for code in [0, 999, 1004, 1005, 1006, 1014, 1015, 2999, 5000, u16::MAX] {
        assert_eq!(
            target.close(code, "no"),
            Err(CloseError::InvalidCode(code)),
            "{code}"
        );
    }
    let overlong = "x".repeat(MAX_CLOSE_REASON_LEN + 1);
    assert_eq!(
        target.close(4000, &overlong),
        Err(CloseError::ReasonTooLong { len: 124 })
    );
    let message = CloseError::InvalidCode(1005).to_string();
    assert!(message.contains("3000-4999"), "{message}");
    assert_eq!(
        CloseError::ReasonTooLong { len: 124 }.to_string(),
        "not closed: the reason is 124 bytes; a close frame carries at most 123 bytes of reason"
    );
    assert!(target.is_open());
    target.send("still open").unwrap();
    assert_eq!(next_text(&mut client).await, "still open");

    // The longest reason a close frame carries goes out whole.
    let longest = "é".repeat(MAX_CLOSE_REASON_LEN / 2) + "x";
    assert_eq!(longest.len(), MAX_CLOSE_REASON_LEN);
    target.close(close_code::NORMAL, &longest).unwrap();
    assert_eq!(close_frame(&mut client).await, (1000, longest));
}

#[tokio::test]
async fn during_a_shutdown_a_handle_neither_sends_nor_closes() {
    let (server, mut client, target) = one_client(Hub::builder()).await;

    let shutdown = tokio::spawn({
        let hub = server.hub.clone();
        async move { hub.shutdown().await }
    });
    eventually("the shutdown to start", || server.hub.is_shutting_down()).await;
    assert_eq!(target.send("late"), Err(SendError::Closed));
    assert_eq!(target.close(4000, "mine"), Err(CloseError::Closed));
    assert_eq!(close_code(&mut client).await, Some(close_code::GOING_AWAY));
    tokio::time::timeout(PROMPTLY, shutdown)
        .await
        .expect("shutdown in time")
        .unwrap();
}

/// The test runtime has one thread: while the test does not yield, the connection's task cannot
/// take anything from its queue, so sends fill it exactly.
#[tokio::test]
async fn sends_past_the_queue_bound_follow_the_slow_consumer_policy() {
    // Drop the newest: the send that does not fit is refused, the rest arrive.
    let (server, mut client, target) = one_client(
        Hub::builder()
            .outbound_queue(2, 64 * 1024)
            .slow_consumer_policy(SlowConsumerPolicy::DropNewest),
    )
    .await;
    target.send("1").unwrap();
    target.send("2").unwrap();
    assert_eq!(target.send("3"), Err(SendError::QueueFull));
    assert_eq!(next_text(&mut client).await, "1");
    assert_eq!(next_text(&mut client).await, "2");
    assert_silent(&mut client, Duration::from_millis(200)).await;
    assert_eq!(server.hub.stats().dropped_messages, 1);

    // Disconnect (the default): the send that overflows closes the connection with 1013.
    let (server, mut client, target) =
        one_client(Hub::builder().outbound_queue(2, 64 * 1024)).await;
    target.send("1").unwrap();
    target.send("2").unwrap();
    assert_eq!(target.send("3"), Err(SendError::SlowConsumer));
    assert_eq!(
        close_code(&mut client).await,
        Some(close_code::SLOW_CONSUMER)
    );
    assert_eq!(server.hub.stats().slow_consumer_disconnects, 1);

    // Larger than the whole byte bound: refused, and the connection stays.
    let (server, mut client, target) = one_client(Hub::builder().outbound_queue(8, 100)).await;
    assert_eq!(target.send("x".repeat(200)), Err(SendError::TooLarge));
    target.send("small").unwrap();
    assert_eq!(next_text(&mut client).await, "small");
    assert_eq!(server.hub.stats().dropped_messages, 1);
}

/// The application keeps handles after their connections end (here in the very map its
/// `on_connect` fills, as one that forgets to empty it in `on_disconnect` would): they must
/// not keep the hub alive, with its hooks, rooms and broker tasks.
#[tokio::test]
async fn a_handle_kept_after_its_connection_ended_does_not_keep_the_hub_alive() {
    // Dropped with the hub's hooks.
    let alive = Arc::new(());
    let hub_dropped = Arc::downgrade(&alive);
    let (hub, handles) = keeping_handles(Hub::builder().on_disconnect(move |_| {
        let _ = &alive;
    }));
    let server = serve_hub(hub).await;
    let mut client = server.connect(ROOM).await;
    wait_members(&server.hub, ROOM, 1).await;
    client.close(None).await.unwrap();
    eventually("the connection to end", || {
        server.hub.stats().connections == 0
    })
    .await;
    let target = handle(&handles, 0);
    server.hub.shutdown().await;
    let Server { hub, task, .. } = server;
    task.await.unwrap();
    drop(hub);
    eventually("the hub to be dropped", || hub_dropped.strong_count() == 0).await;
    // The handle outlives it, and says so.
    assert!(!target.is_open());
    assert_eq!(target.send("anyone?"), Err(SendError::Closed));
    assert_eq!(target.close(1000, ""), Err(CloseError::Closed));
    assert!(format!("{target:?}").contains("open: false"));
}

/// A message hook that closes its own connection (a moderation hook banning the sender of what
/// it just read): what the client sent after that message is neither run through the hook nor
/// delivered to the room, even when it was read at once with the message that closed it.
#[tokio::test]
async fn what_a_client_sent_after_its_message_hook_closed_it_does_not_reach_the_room() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let hub = Hub::builder()
        .on_message(move |ctx, message| {
            let text = message.as_text().unwrap_or_default().to_owned();
            log.lock().unwrap().push(text.clone());
            if text == "spam" {
                ctx.handle().close(4001, "banned").unwrap();
                return InboundAction::Drop;
            }
            InboundAction::Forward(message)
        })
        .build();
    let server = serve_hub(hub).await;
    let mut listener = server.connect(ROOM).await;
    let mut spammer = Upgrade::new(&format!("/ws/{ROOM}")).open(server.addr).await;
    wait_members(&server.hub, ROOM, 2).await;
    // One write: the server reads the three frames in one go.
    let bytes = masked_texts(&["hello", "spam", "more spam"]);
    spammer.send_bytes(&bytes).await;
    assert_eq!(spammer.close_code().await, Some(4001));
    assert_eq!(next_text(&mut listener).await, "hello");
    assert_silent(&mut listener, Duration::from_millis(200)).await;
    assert_eq!(*seen.lock().unwrap(), ["hello", "spam"]);
    assert_eq!(server.hub.stats().messages_published, 1);
}

/// A message hook whose reply overflows its own client's queue makes that client a slow
/// consumer there and then: what the client sent after that message is neither run through the
/// hook nor delivered, as when the hook closes the connection itself.
#[tokio::test]
async fn what_a_client_sent_after_its_hooks_reply_overflowed_its_queue_does_not_reach_the_room() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let hub = Hub::builder()
        .outbound_queue(1, 1 << 20)
        .slow_consumer_policy(SlowConsumerPolicy::Disconnect)
        .on_message(move |_, message| {
            let text = message.as_text().unwrap_or_default().to_owned();
            log.lock().unwrap().push(text.clone());
            if text.starts_with('?') {
                return InboundAction::Reply(Message::text("ack"));
            }
            InboundAction::Forward(message)
        })
        .build();
    let server = serve_hub(hub).await;
    let mut listener = server.connect(ROOM).await;
    let mut asker = Upgrade::new(&format!("/ws/{ROOM}")).open(server.addr).await;
    wait_members(&server.hub, ROOM, 2).await;
    // One write: the server reads the three frames in one go, and nothing takes the first
    // reply off the queue before the second one overflows it.
    let bytes = masked_texts(&["?a", "?b", "later"]);
    asker.send_bytes(&bytes).await;
    assert_eq!(asker.close_code().await, Some(close_code::SLOW_CONSUMER));
    assert_silent(&mut listener, Duration::from_millis(200)).await;
    assert_eq!(*seen.lock().unwrap(), ["?a", "?b"]);
    assert_eq!(server.hub.stats().messages_published, 0);
}

/// A message hook that sends its client a last word and then closes it: the word goes out
/// before the close frame, as from any other caller of the handle, whether or not a write
/// interval happens to hold the connection's queue at that moment.
#[tokio::test]
async fn a_message_sent_by_the_message_hook_just_before_it_closes_goes_out_first() {
    for write_interval in [Duration::ZERO, DEFAULT_WRITE_INTERVAL] {
        let hub = Hub::builder()
            .write_interval(write_interval)
            .on_message(|ctx, _| {
                ctx.handle().send("bye").unwrap();
                ctx.handle().close(4001, "banned").unwrap();
                InboundAction::Drop
            })
            .build();
        let server = serve_hub(hub).await;
        let mut client = server.connect(ROOM).await;
        wait_members(&server.hub, ROOM, 1).await;
        client.send(WsMessage::text("hi")).await.unwrap();
        assert_eq!(next_text(&mut client).await, "bye", "{write_interval:?}");
        assert_eq!(close_frame(&mut client).await, (4001, "banned".to_owned()));
        assert_eq!(
            server.hub.stats().discarded_on_close,
            0,
            "{write_interval:?}"
        );
    }
}

/// Under `DropOldest`, a send that even an emptied queue could not take (the connection's
/// writer holds the rest of the byte bound, on its way to a client that does not read) is
/// refused as `QueueFull`, as under `DropNewest`, and counted as dropped.
#[tokio::test]
async fn under_drop_oldest_a_send_no_emptied_queue_could_take_is_queue_full() {
    const KIB: usize = 1024;
    let (hub, handles) = keeping_handles(
        Hub::builder()
            .outbound_queue(8, 100 * KIB)
            .slow_consumer_policy(SlowConsumerPolicy::DropOldest)
            .write_interval(Duration::ZERO),
    );
    let server = serve_hub(hub).await;
    let _stalled = Upgrade::new(&format!("/ws/{ROOM}"))
        .open_on(support::raw::tcp_with_small_receive_buffer(server.addr).await)
        .await;
    wait_members(&server.hub, ROOM, 1).await;
    let target = handle(&handles, 0);
    // Fill the client's socket until the writer holds a frame it cannot finish.
    let result = loop {
        target.send("x".repeat(40 * KIB)).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        match target.send("y".repeat(70 * KIB)) {
            Ok(()) => {}
            other => break other,
        }
        assert!(
            server.hub.stats().deliveries < 1000,
            "the writer never held bytes"
        );
    };
    assert_eq!(result, Err(SendError::QueueFull));
    let stats = server.hub.stats();
    assert!(stats.dropped_messages > 0, "{stats:?}");
    assert_eq!(stats.slow_consumer_disconnects, 0, "{stats:?}");
}
