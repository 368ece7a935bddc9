//! `HubBuilder::write_interval`: data for a connection written less than the interval ago
//! waits for the rest of it and goes out with whatever else arrives meanwhile. A message after
//! a quiet spell goes out at once; control frames, a close and the rest of a backlog are never
//! held back; held-back messages count against the outbound queue.
//!
//! The intervals here are seconds long so that "held back" and "not held back" are told apart
//! by margins no loaded machine closes: each check waits well inside the interval.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower_ws_hub::{Hub, HubBuilder, Message, close_code};

const ROOM: &str = "paced";
/// Long enough that a check made right after a write finishes well inside it.
const INTERVAL: Duration = Duration::from_secs(3);
/// How long a held-back message must stay away (a third of [`INTERVAL`]).
const HELD: Duration = Duration::from_secs(1);

async fn setup(hub: Hub) -> (Server, Client) {
    let server = serve_hub(hub).await;
    let client = server.connect(ROOM).await;
    wait_members(&server.hub, ROOM, 1).await;
    (server, client)
}

/// Less than half an [`INTERVAL`] went by since `start`: `what` was not held back.
#[track_caller]
fn assert_not_held(start: Instant, what: &str) {
    let waited = start.elapsed();
    assert!(waited < INTERVAL / 2, "{what} waited {waited:?}");
}

async fn publish(hub: &Hub, text: &str) {
    assert_eq!(hub.publish(ROOM, Message::text(text)).await.unwrap(), 1);
}

/// Publishes `text` and checks that the client gets it without the write interval holding it
/// back (`what` names it in the failure).
async fn published_at_once(server: &Server, client: &mut Client, text: &str, what: &str) {
    let start = Instant::now();
    publish(&server.hub, text).await;
    assert_eq!(next_text(client).await, text);
    assert_not_held(start, what);
}

#[tokio::test]
async fn a_message_right_after_a_write_waits_for_the_interval_and_order_holds() {
    let (server, mut client) = setup(Hub::builder().write_interval(INTERVAL).build()).await;
    // Nothing written yet: the first message goes out at once.
    let start = Instant::now();
    publish(&server.hub, "first").await;
    assert_eq!(next_text(&mut client).await, "first");
    assert!(
        start.elapsed() < INTERVAL,
        "the first message was held back"
    );

    for text in ["second", "third", "fourth"] {
        publish(&server.hub, text).await;
    }
    assert_silent(&mut client, HELD).await;
    for text in ["second", "third", "fourth"] {
        assert_eq!(next_text(&mut client).await, text);
    }
    assert_eq!(server.hub.stats().deliveries, 4);
}

#[tokio::test]
async fn a_zero_interval_writes_every_message_at_once() {
    let (server, mut client) = setup(Hub::builder().write_interval(Duration::ZERO).build()).await;
    for text in ["first", "second", "third"] {
        // With the interval of the other tests this one would wait 3 s.
        published_at_once(&server, &mut client, text, text).await;
    }
}

#[tokio::test]
async fn a_message_after_a_quiet_spell_is_not_held_back() {
    let (server, mut client) = setup(Hub::builder().write_interval(INTERVAL).build()).await;
    publish(&server.hub, "first").await;
    assert_eq!(next_text(&mut client).await, "first");
    tokio::time::sleep(INTERVAL + HELD / 2).await;
    // The interval since the last write is over: the message goes out at once (a hub that
    // delayed every message by the interval would take 3 s).
    published_at_once(
        &server,
        &mut client,
        "second",
        "the message after a quiet spell",
    )
    .await;
}

#[tokio::test]
async fn pongs_and_the_shutdown_close_are_not_held_back() {
    let (server, mut client) = setup(
        Hub::builder()
            .write_interval(Duration::from_secs(60))
            .shutdown_grace(Duration::from_secs(30))
            .build(),
    )
    .await;
    publish(&server.hub, "first").await;
    assert_eq!(next_text(&mut client).await, "first");
    publish(&server.hub, "held").await;

    // A ping is answered while "held" still waits.
    client
        .send(WsMessage::Ping(b"are you there".as_slice().into()))
        .await
        .unwrap();
    let frame = tokio::time::timeout(PROMPTLY, client.next())
        .await
        .expect("no pong in time")
        .expect("stream ended")
        .expect("read error");
    assert_eq!(frame, WsMessage::Pong(b"are you there".as_slice().into()));

    // Shutting down writes what is queued, then the close frame, without waiting out the
    // 60 s interval.
    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });
    assert_eq!(next_text(&mut client).await, "held");
    assert_eq!(close_code(&mut client).await, Some(close_code::GOING_AWAY));
    drop(client);
    tokio::time::timeout(PROMPTLY, shutdown)
        .await
        .expect("shutdown did not finish in time")
        .unwrap();
}

#[tokio::test]
async fn held_back_messages_count_against_the_outbound_queue() {
    let (server, mut client) = setup(
        Hub::builder()
            .write_interval(Duration::from_secs(60))
            .outbound_queue(4, 1024 * 1024)
            .build(),
    )
    .await;
    publish(&server.hub, "first").await;
    assert_eq!(next_text(&mut client).await, "first");
    // Four fit in the queue while they wait; the fifth overflows it (the default policy
    // disconnects), and the close is not held back.
    for n in 0..4 {
        publish(&server.hub, &format!("held {n}")).await;
    }
    assert_eq!(
        server
            .hub
            .publish(ROOM, Message::text("overflow"))
            .await
            .unwrap(),
        0,
        "the overflowing message is not queued"
    );
    assert_eq!(
        close_code(&mut client).await,
        Some(close_code::SLOW_CONSUMER)
    );
    let stats = server.hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 1);
    assert_eq!(
        stats.dropped_messages, 5,
        "four queued and the overflowing one"
    );
}

#[tokio::test]
async fn a_backlog_goes_out_without_waiting_between_its_parts() {
    // The writer takes at most half the queue (4 messages) at a time; the rest of a backlog
    // must follow as soon as the socket takes it, not an interval later.
    let (server, mut client) = setup(
        Hub::builder()
            .write_interval(INTERVAL)
            .outbound_queue(8, 1024 * 1024)
            .build(),
    )
    .await;
    publish(&server.hub, "first").await;
    assert_eq!(next_text(&mut client).await, "first");
    for n in 0..8 {
        publish(&server.hub, &format!("backlog {n}")).await;
    }
    assert_eq!(next_text(&mut client).await, "backlog 0");
    let after_first = Instant::now();
    for n in 1..8 {
        assert_eq!(next_text(&mut client).await, format!("backlog {n}"));
    }
    assert_not_held(after_first, "the second half of the backlog");
}

#[tokio::test]
async fn a_client_waiting_for_answers_is_not_held_back() {
    // Request and answer in lockstep: each echo comes right after the previous write, so held
    // back it would wait out the 60 s interval. The client's message lifts the hold.
    let (server, mut client) = setup(
        Hub::builder()
            .write_interval(Duration::from_secs(60))
            .echo_to_sender(true)
            .build(),
    )
    .await;
    for n in 0..5 {
        let text = format!("request {n}");
        send_text(&mut client, &text).await;
        assert_eq!(next_text(&mut client).await, text);
    }
    assert_eq!(server.hub.stats().deliveries, 5);
}

#[tokio::test]
async fn a_message_from_the_client_releases_what_was_held_back() {
    let (server, mut client) = setup(
        Hub::builder()
            .write_interval(Duration::from_secs(60))
            .build(),
    )
    .await;
    publish(&server.hub, "first").await;
    assert_eq!(next_text(&mut client).await, "first");
    publish(&server.hub, "held").await;
    assert_silent(&mut client, HELD).await;
    // Nothing comes back for this message (the sender is excluded); it only shows the client
    // is there and waiting.
    send_text(&mut client, "anything new?").await;
    assert_eq!(next_text(&mut client).await, "held");
}

/// "first", then "second" right after it: "second" is held back and taken when the interval
/// ends. Data came during the hold, so the stream counts as steady: the connection's next take
/// waits for its timer, and what is pushed meanwhile wakes nobody.
async fn into_a_steady_stream(server: &Server, client: &mut Client) {
    publish(&server.hub, "first").await;
    assert_eq!(next_text(client).await, "first");
    publish(&server.hub, "second").await;
    assert_eq!(next_text(client).await, "second");
}

#[tokio::test]
async fn a_steady_stream_goes_out_at_the_timer_and_a_message_after_it_stops_is_not_held() {
    // No heartbeat: nothing but the queue and the write interval's timer wakes the connection.
    let (server, mut client) = setup(
        Hub::builder()
            .write_interval(INTERVAL)
            .ping_interval(None)
            .build(),
    )
    .await;
    into_a_steady_stream(&server, &mut client).await;
    publish(&server.hub, "third").await;
    assert_silent(&mut client, HELD).await;
    assert_eq!(next_text(&mut client).await, "third");
    // The stream stops: the timer's next take finds nothing, and from then on a push wakes the
    // connection again (a connection that kept waiting for its timer would never send this).
    tokio::time::sleep(INTERVAL + HELD / 2).await;
    published_at_once(
        &server,
        &mut client,
        "fourth",
        "the message after the stream stopped",
    )
    .await;
    assert_eq!(server.hub.stats().deliveries, 4);
}

#[tokio::test]
async fn a_message_from_the_client_lifts_the_hold_of_a_steady_stream() {
    let (server, mut client) = setup(Hub::builder().write_interval(INTERVAL).build()).await;
    into_a_steady_stream(&server, &mut client).await;
    publish(&server.hub, "held").await;
    assert_silent(&mut client, HELD / 2).await;
    let start = Instant::now();
    send_text(&mut client, "anything new?").await;
    assert_eq!(next_text(&mut client).await, "held");
    assert_not_held(start, "what was held when the client spoke");
    // The client may be waiting for an answer: what the room sends it now is not held back
    // either, although its stream was steady.
    published_at_once(&server, &mut client, "answer", "the answer").await;
}

/// The interval of the two tests below, and the most it may grow to.
const BASE: Duration = Duration::from_secs(2);
const GROWN: Duration = Duration::from_secs(4);

/// Less than one and a half [`BASE`]s went by since `start`: `what` waited for `BASE` at most,
/// not for the grown interval.
#[track_caller]
fn assert_waited_base_at_most(start: Instant, what: &str) {
    let waited = start.elapsed();
    assert!(waited < BASE + BASE / 2, "{what} waited {waited:?}");
}

/// "1", then "2" and "3" together right after it: the take of "2" and "3" ends a hold with
/// more than one message per `write_interval`, which grows the interval (where the limits
/// allow).
async fn two_messages_in_one_interval(server: &Server, client: &mut Client) {
    publish(&server.hub, "1").await;
    assert_eq!(next_text(client).await, "1");
    publish(&server.hub, "2").await;
    publish(&server.hub, "3").await;
    assert_eq!(next_text(client).await, "2");
    assert_eq!(next_text(client).await, "3");
}

/// A hub whose write interval grows from `base` to `max`, without a heartbeat (nothing but the
/// queue and the write interval's timer wakes a connection).
fn growing(base: Duration, max: Duration) -> HubBuilder {
    Hub::builder()
        .write_interval(base)
        .max_write_interval(max)
        .ping_interval(None)
}

#[tokio::test]
async fn a_stream_faster_than_the_interval_is_written_less_often_up_to_the_maximum() {
    let (server, mut client) = setup(growing(BASE, GROWN).build()).await;
    two_messages_in_one_interval(&server, &mut client).await;
    // The interval has grown to `GROWN`: what comes now waits past `BASE`.
    publish(&server.hub, "4").await;
    assert_silent(&mut client, BASE + BASE / 2).await;
    assert_eq!(next_text(&mut client).await, "4");
    // That write carried one message in `GROWN`: slower than one per `BASE`, so the interval
    // is back to `BASE`.
    let start = Instant::now();
    publish(&server.hub, "5").await;
    assert_eq!(next_text(&mut client).await, "5");
    assert_waited_base_at_most(start, "the message after the stream slowed down");
}

#[tokio::test]
async fn at_a_maximum_between_two_multiples_the_rate_is_judged_over_the_real_wait() {
    // 4 s growing to 6 s: grown, a take waits 6 s, not two whole intervals (8 s).
    let (server, mut client) =
        setup(growing(Duration::from_secs(4), Duration::from_secs(6)).build()).await;
    two_messages_in_one_interval(&server, &mut client).await;
    // Two messages in the 6 s wait: one per 3 s, faster than one per 4 s, so it stays at 6 s.
    publish(&server.hub, "4").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish(&server.hub, "5").await;
    assert_eq!(next_text(&mut client).await, "4");
    assert_eq!(next_text(&mut client).await, "5");
    let start = Instant::now();
    publish(&server.hub, "6").await;
    assert_eq!(next_text(&mut client).await, "6");
    let waited = start.elapsed();
    assert!(
        waited > Duration::from_secs(5),
        "the interval fell back to 4 s (waited {waited:?})"
    );
}

/// A maximum not above the interval keeps the interval fixed: the stream that grows it above
/// leaves it at `BASE` here.
#[tokio::test]
async fn a_maximum_not_above_the_interval_keeps_it_fixed() {
    for max in [BASE, BASE / 2] {
        let (server, mut client) = setup(growing(BASE, max).build()).await;
        two_messages_in_one_interval(&server, &mut client).await;
        let start = Instant::now();
        publish(&server.hub, "4").await;
        assert_eq!(next_text(&mut client).await, "4");
        assert_waited_base_at_most(start, "the message after a steady stream");
    }
}

#[tokio::test]
async fn the_interval_does_not_grow_past_what_the_outbound_queue_can_hold() {
    // Room for 4 messages: a take of 2 is half of it, and a longer wait could overflow it.
    let (server, mut client) =
        setup(growing(BASE, GROWN).outbound_queue(4, 1024 * 1024).build()).await;
    two_messages_in_one_interval(&server, &mut client).await;
    let start = Instant::now();
    publish(&server.hub, "4").await;
    assert_eq!(next_text(&mut client).await, "4");
    assert_waited_base_at_most(start, "the message after a take of half the queue");
}

#[tokio::test]
async fn one_message_per_interval_does_not_grow_it() {
    let (server, mut client) = setup(growing(BASE, GROWN).build()).await;
    publish(&server.hub, "1").await;
    assert_eq!(next_text(&mut client).await, "1");
    // Held back, and alone when its write comes: one message per interval.
    publish(&server.hub, "2").await;
    assert_eq!(next_text(&mut client).await, "2");
    let start = Instant::now();
    publish(&server.hub, "3").await;
    assert_eq!(next_text(&mut client).await, "3");
    assert_waited_base_at_most(start, "the third message of one per interval");
    assert_eq!(server.hub.stats().deliveries, 3);
}

/// The next text message within [`HELD`] × 5, or a panic saying it was held back.
async fn answer_within(client: &mut Client, what: &str) -> String {
    match tokio::time::timeout(HELD * 5, next_text(client)).await {
        Ok(text) => text,
        Err(_) => panic!("{what}: held back"),
    }
}

/// Two members of [`ROOM`] on a hub with a 60 s interval: one asks, the other answers.
async fn asker_and_answerer(echo: bool) -> (Server, Client, Client) {
    let server = serve_hub(
        Hub::builder()
            .write_interval(Duration::from_secs(60))
            .echo_to_sender(echo)
            .build(),
    )
    .await;
    let asker = server.connect(ROOM).await;
    let answerer = server.connect(ROOM).await;
    wait_members(&server.hub, ROOM, 2).await;
    (server, asker, answerer)
}

#[tokio::test]
async fn the_rooms_response_to_a_client_is_not_held_back_after_its_own_echo() {
    // The question lifts the hold; the asker's own echo is written at once, and the answer
    // from the room, which is what it waits for, must not wait for an interval after that.
    let (_server, mut asker, mut answerer) = asker_and_answerer(true).await;
    send_text(&mut asker, "question").await;
    assert_eq!(
        answer_within(&mut asker, "the asker's echo").await,
        "question"
    );
    assert_eq!(
        answer_within(&mut answerer, "the question").await,
        "question"
    );
    send_text(&mut answerer, "answer").await;
    assert_eq!(
        answer_within(&mut answerer, "the answerer's echo").await,
        "answer"
    );
    assert_eq!(answer_within(&mut asker, "the answer").await, "answer");
}

#[tokio::test]
async fn other_traffic_after_a_question_does_not_hold_back_the_answer() {
    let (server, mut asker, mut answerer) = asker_and_answerer(false).await;
    send_text(&mut asker, "question").await;
    assert_eq!(
        answer_within(&mut answerer, "the question").await,
        "question"
    );
    assert_eq!(
        server
            .hub
            .publish(ROOM, Message::text("news"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(answer_within(&mut asker, "the news").await, "news");
    send_text(&mut answerer, "answer").await;
    assert_eq!(answer_within(&mut asker, "the answer").await, "answer");
}

#[tokio::test]
async fn durations_too_long_to_add_to_an_instant_mean_never() {
    // `Duration::MAX` everywhere: no overflow panic in the connection's task, messages flow,
    // and the client can still close.
    let (server, mut client) = setup(
        Hub::builder()
            .write_interval(Duration::MAX)
            .ping_interval(Some(Duration::MAX))
            .pong_timeout(Duration::MAX)
            .idle_timeout(Some(Duration::MAX))
            .close_timeout(Duration::MAX)
            .shutdown_grace(Duration::MAX)
            .build(),
    )
    .await;
    publish(&server.hub, "first").await;
    assert_eq!(next_text(&mut client).await, "first");
    send_text(&mut client, "hello").await;
    publish(&server.hub, "second").await;
    assert_eq!(next_text(&mut client).await, "second");
    client.close(None).await.unwrap();
    eventually("the connection to end", || {
        server.hub.stats().connections == 0
    })
    .await;
}
