//! Rooms: who receives what. Isolation between rooms, the sender's own messages, message kinds,
//! per-sender order, large rooms, publishing from the application, and that rooms and
//! connections are cleaned up when clients leave.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower_ws_hub::{Hub, Message, PublishError};

#[tokio::test]
async fn a_message_in_one_room_never_reaches_another_room() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut a1 = server.connect("a").await;
    let mut a2 = server.connect("a").await;
    let mut b1 = server.connect("b").await;
    let mut b2 = server.connect("b").await;
    wait_members(&server.hub, "a", 2).await;
    wait_members(&server.hub, "b", 2).await;

    send_text(&mut a1, "for room a").await;
    assert_eq!(next_text(&mut a2).await, "for room a");
    server
        .hub
        .publish("a", Message::text("app to a"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut a2).await, "app to a");

    // Room b hears only its own traffic: the first thing b2 gets is b1's message.
    send_text(&mut b1, "for room b").await;
    assert_eq!(next_text(&mut b2).await, "for room b");
    assert_silent(&mut b1, Duration::from_millis(200)).await;
    assert_silent(&mut b2, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn room_names_are_case_sensitive_and_exact() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut lower = server.connect("lobby").await;
    let mut upper = server.connect("Lobby").await;
    wait_members(&server.hub, "lobby", 1).await;
    wait_members(&server.hub, "Lobby", 1).await;
    server
        .hub
        .publish("Lobby", Message::text("upper"))
        .await
        .unwrap();
    server
        .hub
        .publish("lobby", Message::text("lower"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut upper).await, "upper");
    assert_eq!(next_text(&mut lower).await, "lower");
}

#[tokio::test]
async fn the_sender_does_not_receive_its_own_message_by_default() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = server.connect("lobby").await;
    let mut other = server.connect("lobby").await;
    wait_members(&server.hub, "lobby", 2).await;

    send_text(&mut sender, "mine").await;
    assert_eq!(next_text(&mut other).await, "mine");
    // Then something the sender must get, to prove its first message would have come first.
    server
        .hub
        .publish("lobby", Message::text("app"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut sender).await, "app");
}

#[tokio::test]
async fn echo_to_sender_delivers_the_message_back_to_the_sender_too() {
    let server = serve_hub(Hub::builder().echo_to_sender(true).build()).await;
    let mut sender = server.connect("lobby").await;
    let mut other = server.connect("lobby").await;
    wait_members(&server.hub, "lobby", 2).await;

    send_text(&mut sender, "echoed").await;
    assert_eq!(next_text(&mut other).await, "echoed");
    assert_eq!(next_text(&mut sender).await, "echoed");
}

#[tokio::test]
async fn echo_to_sender_alone_in_a_room_gets_its_own_message() {
    let server = serve_hub(Hub::builder().echo_to_sender(true).build()).await;
    let mut alone = server.connect("solo").await;
    wait_members(&server.hub, "solo", 1).await;
    send_text(&mut alone, "hello me").await;
    assert_eq!(next_text(&mut alone).await, "hello me");
}

#[tokio::test]
async fn binary_stays_binary_and_text_stays_text() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = server.connect("kinds").await;
    let mut receiver = server.connect("kinds").await;
    wait_members(&server.hub, "kinds", 2).await;

    let bytes = vec![0u8, 159, 146, 150, 255];
    sender.send(WsMessage::binary(bytes.clone())).await.unwrap();
    sender.send(WsMessage::text("ünïcödé")).await.unwrap();
    // Text-looking bytes sent as binary stay binary.
    sender
        .send(WsMessage::binary(b"looks like text".to_vec()))
        .await
        .unwrap();
    sender.send(WsMessage::text("")).await.unwrap();
    sender.send(WsMessage::binary(Vec::new())).await.unwrap();

    assert_eq!(next_data(&mut receiver).await, WsMessage::binary(bytes));
    assert_eq!(next_data(&mut receiver).await, WsMessage::text("ünïcödé"));
    assert_eq!(
        next_data(&mut receiver).await,
        WsMessage::binary(b"looks like text".to_vec())
    );
    assert_eq!(next_data(&mut receiver).await, WsMessage::text(""));
    assert_eq!(
        next_data(&mut receiver).await,
        WsMessage::binary(Vec::new())
    );

    // Published messages keep their kind as well.
    server
        .hub
        .publish("kinds", Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    server
        .hub
        .publish("kinds", Message::text("t"))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut receiver).await,
        WsMessage::binary(vec![1, 2, 3])
    );
    assert_eq!(next_data(&mut receiver).await, WsMessage::text("t"));
}

#[tokio::test]
async fn ten_thousand_messages_from_one_sender_arrive_in_order() {
    const COUNT: usize = 10_000;
    // The sender writes as fast as its socket allows while the receiver's writer drains at its
    // own pace. With the default bound (1024 messages per connection) a burst like this may
    // overflow the receiver's queue and, under the default policy, disconnect it as a slow
    // consumer — that rule is tested in slow_consumer.rs. Here the queue holds the whole burst
    // so that this test is about order alone.
    let hub = Hub::builder()
        .outbound_queue(COUNT * 2, 64 * 1024 * 1024)
        .build();
    let server = serve_hub(hub).await;
    let mut sender = server.connect("ordered").await;
    let mut receiver = server.connect("ordered").await;
    wait_members(&server.hub, "ordered", 2).await;

    let writer = tokio::spawn(async move {
        for i in 0..COUNT {
            sender.feed(WsMessage::text(i.to_string())).await.unwrap();
        }
        sender.flush().await.unwrap();
        sender
    });
    for expected in 0..COUNT {
        let got = next_text(&mut receiver).await;
        assert_eq!(got, expected.to_string(), "message {expected} out of order");
    }
    let _sender = writer.await.unwrap();
    let stats = server.hub.stats();
    assert_eq!(stats.dropped_messages, 0);
    assert_eq!(stats.slow_consumer_disconnects, 0);
}

#[tokio::test]
async fn five_hundred_members_all_receive_a_published_message() {
    const MEMBERS: usize = 500;
    let server = serve_hub(Hub::builder().build()).await;
    let url = server.ws_url("big");
    let mut clients = Vec::with_capacity(MEMBERS);
    // Connect in batches of 50 to keep the machine's accept queue and CPU reasonable.
    for _ in 0..MEMBERS / 50 {
        let batch = futures_util::future::join_all((0..50).map(|_| connect_small(&url))).await;
        clients.extend(batch);
    }
    wait_members(&server.hub, "big", MEMBERS).await;

    let delivered = server
        .hub
        .publish("big", Message::text("to everyone"))
        .await
        .unwrap();
    assert_eq!(delivered, MEMBERS);
    let received = futures_util::future::join_all(clients.iter_mut().map(next_text)).await;
    assert!(received.iter().all(|text| text == "to everyone"));

    // A member's message reaches the 499 others.
    send_text(&mut clients[0], "from member 0").await;
    let received = futures_util::future::join_all(clients[1..].iter_mut().map(next_text)).await;
    assert_eq!(received.len(), MEMBERS - 1);
    assert!(received.iter().all(|text| text == "from member 0"));
    assert_silent(&mut clients[0], Duration::from_millis(100)).await;
    assert_eq!(server.hub.stats().dropped_messages, 0);
}

#[tokio::test]
async fn publish_from_the_application_reaches_every_member_and_counts_them() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.connect("news").await);
    }
    let mut elsewhere = server.connect("sports").await;
    wait_members(&server.hub, "news", 3).await;

    let delivered = server
        .hub
        .publish("news", Message::text("extra! extra!"))
        .await
        .unwrap();
    assert_eq!(delivered, 3);
    for client in &mut clients {
        assert_eq!(next_text(client).await, "extra! extra!");
    }
    assert_silent(&mut elsewhere, Duration::from_millis(100)).await;

    // A room nobody joined: nothing to deliver, not an error.
    assert_eq!(
        server
            .hub
            .publish("empty", Message::text("nobody"))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn publish_with_backpressure_without_a_broker_delivers_at_once() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut a = server.connect("news").await;
    let mut b = server.connect("news").await;
    wait_members(&server.hub, "news", 2).await;

    for i in 0..100 {
        let delivered = server
            .hub
            .publish_with_backpressure("news", Message::text(i.to_string()))
            .await
            .unwrap();
        assert_eq!(delivered, 2);
    }
    for client in [&mut a, &mut b] {
        for i in 0..100 {
            assert_eq!(next_text(client).await, i.to_string());
        }
    }
    assert_eq!(
        server
            .hub
            .publish_with_backpressure("empty", Message::text("nobody"))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn publish_refuses_invalid_room_names() {
    let hub = Hub::builder().build();
    for bad in ["", "a\nb", &"x".repeat(257)] {
        let error = hub.publish(bad, Message::text("x")).await.unwrap_err();
        assert!(
            matches!(error, PublishError::InvalidRoom(_)),
            "{bad:?}: {error:?}"
        );
        let error = hub
            .publish_with_backpressure(bad, Message::text("x"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, PublishError::InvalidRoom(_)),
            "{bad:?}: {error:?}"
        );
    }
}

#[tokio::test]
async fn publish_after_shutdown_started_is_refused_either_way() {
    let hub = Hub::builder().build();
    hub.shutdown().await;
    assert_eq!(
        hub.publish("r", Message::text("x")).await.unwrap_err(),
        PublishError::ShuttingDown
    );
    assert_eq!(
        hub.publish_with_backpressure("r", Message::text("x"))
            .await
            .unwrap_err(),
        PublishError::ShuttingDown
    );
}

#[tokio::test]
async fn a_room_disappears_when_its_last_member_leaves() {
    let server = serve_hub(Hub::builder().build()).await;
    let a = server.connect("one").await;
    let b = server.connect("one").await;
    let c = server.connect("two").await;
    wait_members(&server.hub, "one", 2).await;
    wait_members(&server.hub, "two", 1).await;
    let mut rooms = server.hub.rooms();
    rooms.sort();
    assert_eq!(rooms, ["one", "two"]);
    assert_eq!(server.hub.stats().connections, 3);

    close_client(a).await;
    wait_members(&server.hub, "one", 1).await;
    assert!(server.hub.rooms().contains(&"one".to_owned()));

    // One leaves with a close handshake, the other just drops its TCP connection.
    close_client(b).await;
    drop(c);
    eventually("every room gone", || server.hub.rooms().is_empty()).await;
    eventually("no connections", || server.hub.stats().connections == 0).await;
    let stats = server.hub.stats();
    assert_eq!(stats.rooms, 0);
    assert_eq!(stats.connections_opened, 3);
    assert_eq!(stats.connections_closed, 3);
}

#[tokio::test]
async fn a_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    const WORKERS: usize = 10;
    const CYCLES_PER_WORKER: usize = 100;
    let server = serve_hub(Hub::builder().build()).await;
    let url_base = format!("ws://{}/ws", server.addr);

    let workers = (0..WORKERS).map(|worker| {
        let url_base = url_base.clone();
        tokio::spawn(async move {
            for cycle in 0..CYCLES_PER_WORKER {
                // A handful of rooms shared by the workers, so rooms are created and removed
                // while others join them.
                let url = format!("{url_base}/room-{}", (worker + cycle) % 7);
                let client = connect_small(&url).await;
                if cycle % 2 == 0 {
                    close_client(client).await;
                } else {
                    drop(client);
                }
            }
        })
    });
    for worker in futures_util::future::join_all(workers).await {
        worker.unwrap();
    }

    let hub = &server.hub;
    eventually("no connections", || hub.stats().connections == 0).await;
    eventually("no rooms", || hub.rooms().is_empty()).await;
    let stats = hub.stats();
    assert_eq!(
        stats.connections_opened,
        (WORKERS * CYCLES_PER_WORKER) as u64
    );
    assert_eq!(stats.connections_closed, stats.connections_opened);
    assert_eq!(stats.rooms, 0);

    // The hub still works after the churn.
    let mut a = server.connect("room-0").await;
    let mut b = server.connect("room-0").await;
    wait_members(hub, "room-0", 2).await;
    send_text(&mut a, "still here").await;
    assert_eq!(next_text(&mut b).await, "still here");
}

#[tokio::test]
async fn stats_count_received_published_and_delivered_messages() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut a = server.connect("stats").await;
    let mut b = server.connect("stats").await;
    let mut c = server.connect("stats").await;
    wait_members(&server.hub, "stats", 3).await;

    send_text(&mut a, "one").await;
    assert_eq!(next_text(&mut b).await, "one");
    assert_eq!(next_text(&mut c).await, "one");
    server
        .hub
        .publish("stats", Message::text("two"))
        .await
        .unwrap();
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(next_text(client).await, "two");
    }
    let stats = server.hub.stats();
    assert_eq!(stats.messages_received, 1);
    assert_eq!(stats.messages_published, 2);
    // 2 receivers for the client's message (sender excluded) + 3 for the application's.
    assert_eq!(stats.deliveries, 5);
}

#[tokio::test]
async fn messages_read_together_are_counted_and_delivered_one_by_one() {
    // A client that writes many frames at once has them read (and fanned out) as a batch:
    // every receiver still gets each message once, in order, and the counters count messages,
    // not batches.
    const COUNT: usize = 300;
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = server.connect("batch").await;
    let mut b = server.connect("batch").await;
    let mut c = server.connect("batch").await;
    wait_members(&server.hub, "batch", 3).await;

    for i in 0..COUNT {
        sender.feed(WsMessage::text(i.to_string())).await.unwrap();
    }
    sender.flush().await.unwrap();
    for receiver in [&mut b, &mut c] {
        for expected in 0..COUNT {
            assert_eq!(next_text(receiver).await, expected.to_string());
        }
    }
    assert_silent(&mut sender, Duration::from_millis(100)).await;
    let stats = server.hub.stats();
    assert_eq!(stats.messages_received, COUNT as u64);
    assert_eq!(stats.messages_published, COUNT as u64);
    assert_eq!(stats.deliveries, 2 * COUNT as u64);
    assert_eq!(stats.dropped_messages, 0);
}

#[tokio::test]
async fn large_messages_arrive_intact_at_every_member() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut sender = server.connect("large").await;
    let mut receivers = Vec::new();
    for _ in 0..3 {
        receivers.push(server.connect("large").await);
    }
    wait_members(&server.hub, "large", 4).await;

    // A client message at the default inbound limit (64 KiB), and a 1 MiB one from the app:
    // both span many socket writes on the way out.
    let from_client: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    sender
        .send(WsMessage::binary(from_client.clone()))
        .await
        .unwrap();
    let from_app: String = (0..1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for receiver in &mut receivers {
        assert_eq!(next_binary(receiver).await, from_client);
    }
    server
        .hub
        .publish("large", Message::text(from_app.clone()))
        .await
        .unwrap();
    for receiver in &mut receivers {
        assert!(
            next_text(receiver).await == from_app,
            "1 MiB text corrupted"
        );
    }
    assert!(next_text(&mut sender).await == from_app);
}
