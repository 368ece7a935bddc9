//! What a connection keeps once a moment of heavy use is over: a large message received, a
//! burst of messages, a backlog written out. Each must leave the connection at its idle size
//! (no read buffer the size of the largest message, no queue the length of the longest
//! backlog).
//!
//! The heap in use is measured with a counting global allocator around the system one. It is
//! this test binary's alone (its own file, its own process); the library stays
//! allocator-neutral.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use support::raw::{MASK, Upgrade, encode_frame, opcode};
use support::{PROMPTLY, eventually};
use tower_ws_hub::Hub;

/// Bytes allocated and not yet freed, process-wide.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the counter
// is bookkeeping only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The heap is process-wide: one measurement at a time (each test has its own runtime;
/// tokio's mutex works across them).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connections, each alone in its room (what it sends goes to nobody, so nothing but the
/// connection itself could hold on to it).
const CONNECTIONS: usize = 32;

/// What is left to each of [`CONNECTIONS`] connections, in bytes, once each has sent `bytes`
/// (`messages` data messages) and the server has read them all.
async fn held_per_connection(tag: &str, bytes: &[u8], messages: usize) -> isize {
    let hub = Hub::builder()
        .max_message_size(1 << 20)
        .max_frame_size(1 << 20)
        .build();
    let server = support::serve_hub(hub).await;
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        clients.push(
            Upgrade::new(&format!("/ws/{tag}-{i}"))
                .open(server.addr)
                .await,
        );
    }
    eventually("every client connected", || {
        server.hub.stats().connections == CONNECTIONS as u64
    })
    .await;
    // Whatever a connection allocates on its first read, before the measurement.
    for client in &mut clients {
        client.send(opcode::PING, b"warm").await;
        assert_eq!(
            client.read_frame().await.expect("pong").opcode,
            opcode::PONG
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();

    for client in &mut clients {
        client.send_bytes(bytes).await;
    }
    // Read, not merely waiting in the kernel's socket buffers (which the heap does not see).
    let expected = (CONNECTIONS * messages) as u64;
    eventually("every message read", || {
        server.hub.stats().messages_received == expected
    })
    .await;
    // The release happens once each connection finds its socket empty: give it a moment,
    // then take the lowest reading (no figure here depends on how long that takes).
    let mut lowest = live() - before;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lowest = lowest.min(live() - before);
    }
    // And the connections still work.
    for client in &mut clients {
        client.send(opcode::PING, b"still there").await;
        let pong = tokio::time::timeout(PROMPTLY, client.read_frame())
            .await
            .expect("pong in time")
            .expect("connection open");
        assert_eq!(pong.opcode, opcode::PONG);
    }
    lowest / CONNECTIONS as isize
}

/// Far below any buffer the tests below would catch (the smallest, a burst's vector of
/// messages, is 2.5 KiB), and above the few small allocations a connection may keep.
const SMALL: isize = 512;

#[tokio::test]
async fn a_large_message_does_not_pin_its_size_in_the_connection() {
    let _serial = SERIAL.lock().await;
    // Kept for good, the buffer would be 256 KiB per connection.
    let frame = encode_frame(true, 0, opcode::BINARY, Some(MASK), &[7u8; 256 * 1024]);
    let held = held_per_connection("large", &frame, 1).await;
    assert!(
        held < SMALL,
        "each connection keeps {held} bytes after one 256 KiB message"
    );
}

#[tokio::test]
async fn a_message_of_less_than_the_read_buffer_size_does_not_double_it() {
    let _serial = SERIAL.lock().await;
    // 2000 bytes arriving whole: tungstenite asks for room for the payload on top of the
    // payload it holds, and the 2 KiB buffer becomes 4 KiB.
    let frame = encode_frame(true, 0, opcode::BINARY, Some(MASK), &[2u8; 2000]);
    let held = held_per_connection("under", &frame, 1).await;
    assert!(
        held < SMALL,
        "each connection keeps {held} bytes after one 2000-byte message"
    );
}

#[tokio::test]
async fn a_burst_of_messages_leaves_nothing_behind() {
    let _serial = SERIAL.lock().await;
    // 64 messages read in one go: the vector that carries them to the fan-out would keep
    // room for all of them.
    let burst: Vec<u8> = (0..64u8)
        .flat_map(|i| encode_frame(true, 0, opcode::BINARY, Some(MASK), &[i; 20]))
        .collect();
    let held = held_per_connection("burst", &burst, 64).await;
    assert!(
        held < SMALL,
        "each connection keeps {held} bytes after a burst of 64 messages"
    );
}

#[tokio::test]
async fn a_backlog_written_out_leaves_nothing_behind() {
    // The outbound side's counterpart: clients stop reading while the application publishes
    // far more than their sockets hold, so hundreds of messages wait in the hub's queues;
    // once the clients read it all, nothing of the backlog may stay with the connections.
    const MESSAGES: usize = 400;
    let _serial = SERIAL.lock().await;
    let server = support::serve_hub(Hub::builder().build()).await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(Upgrade::new("/ws/backlog").open(server.addr).await);
    }
    support::wait_members(&server.hub, "backlog", CONNECTIONS).await;
    for client in &mut clients {
        client.send(opcode::PING, b"warm").await;
        assert_eq!(
            client.read_frame().await.expect("pong").opcode,
            opcode::PONG
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();

    let payload = vec![b'x'; 1024];
    for i in 0..MESSAGES {
        let mut message = payload.clone();
        message[..8].copy_from_slice(&(i as u64).to_be_bytes());
        server
            .hub
            .publish("backlog", message)
            .await
            .expect("published");
    }
    let queued = live() - before;
    for client in &mut clients {
        for i in 0..MESSAGES {
            let frame = tokio::time::timeout(PROMPTLY, client.read_frame())
                .await
                .expect("frame in time")
                .expect("connection open");
            assert_eq!(frame.payload[..8], (i as u64).to_be_bytes());
        }
        client.release_read_buffer();
    }
    let mut lowest = live() - before;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lowest = lowest.min(live() - before);
    }
    let held = lowest / CONNECTIONS as isize;
    eprintln!(
        "backlog: {:.0} KiB in use right after publishing, {held} bytes per connection after reading",
        queued as f64 / 1024.0
    );
    assert!(
        held < SMALL,
        "each connection keeps {held} bytes after a backlog of {MESSAGES} messages was written"
    );
}

#[tokio::test]
async fn a_flood_of_pings_answered_leaves_nothing_behind() {
    // Pongs wait on the connection's wire until written (a newer pong replaces one still
    // waiting: RFC 6455 lets a server answer only the latest ping). A client that sends
    // hundreds of pings at once must leave nothing behind once answered.
    const PINGS: u16 = 300;
    let _serial = SERIAL.lock().await;
    let ping = |i: u16| {
        let mut payload = vec![0u8; 100];
        payload[..2].copy_from_slice(&i.to_be_bytes());
        encode_frame(true, 0, opcode::PING, Some(MASK), &payload)
    };
    let flood: Vec<u8> = (0..PINGS).flat_map(ping).collect();
    let server = support::serve_hub(Hub::builder().build()).await;
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        clients.push(
            Upgrade::new(&format!("/ws/pings-{i}"))
                .open(server.addr)
                .await,
        );
    }
    eventually("every client connected", || {
        server.hub.stats().connections == CONNECTIONS as u64
    })
    .await;
    for client in &mut clients {
        client.send(opcode::PING, b"warm").await;
        assert_eq!(
            client.read_frame().await.expect("pong").opcode,
            opcode::PONG
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();
    for client in &mut clients {
        client.send_bytes(&flood).await;
    }
    for client in &mut clients {
        // Pongs answer pings in order, and the last ping is answered.
        let mut last = None;
        while last != Some(PINGS - 1) {
            let pong = tokio::time::timeout(PROMPTLY, client.read_frame())
                .await
                .expect("pong in time")
                .expect("connection open");
            assert_eq!(pong.opcode, opcode::PONG);
            let answered = u16::from_be_bytes([pong.payload[0], pong.payload[1]]);
            assert!(
                last.is_none_or(|last| answered > last),
                "{answered} after {last:?}"
            );
            last = Some(answered);
        }
        client.release_read_buffer();
    }
    let mut lowest = live() - before;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lowest = lowest.min(live() - before);
    }
    let held = lowest / CONNECTIONS as isize;
    assert!(
        held < SMALL,
        "each connection keeps {held} bytes after answering {PINGS} pings"
    );
}

#[tokio::test]
async fn a_full_queue_that_dropped_its_oldest_leaves_nothing_behind_once_read() {
    // Clients that stop reading under `DropOldest` keep a full queue (the newest messages)
    // while the application publishes on; once they read again, the queue drains to nothing.
    const MESSAGES: u64 = 3000;
    let _serial = SERIAL.lock().await;
    let hub = Hub::builder()
        .slow_consumer_policy(tower_ws_hub::SlowConsumerPolicy::DropOldest)
        .outbound_queue(256, 1 << 20)
        .build();
    let server = support::serve_hub(hub).await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(Upgrade::new("/ws/dropping").open(server.addr).await);
    }
    support::wait_members(&server.hub, "dropping", CONNECTIONS).await;
    for client in &mut clients {
        client.send(opcode::PING, b"warm").await;
        assert_eq!(
            client.read_frame().await.expect("pong").opcode,
            opcode::PONG
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();

    let payload = vec![b'y'; 1024];
    for i in 0..MESSAGES {
        let mut message = payload.clone();
        message[..8].copy_from_slice(&i.to_be_bytes());
        server
            .hub
            .publish("dropping", message)
            .await
            .expect("published");
    }
    assert!(
        server.hub.stats().dropped_messages > 0,
        "the queues never filled"
    );
    for client in &mut clients {
        // Whatever was kept arrives in order, ending with the last message published.
        let mut last = None;
        while last != Some(MESSAGES - 1) {
            let frame = tokio::time::timeout(PROMPTLY, client.read_frame())
                .await
                .expect("frame in time")
                .expect("connection open");
            let seq = u64::from_be_bytes(frame.payload[..8].try_into().unwrap());
            assert!(last.is_none_or(|last| seq > last), "{seq} after {last:?}");
            last = Some(seq);
        }
        client.release_read_buffer();
    }
    let mut lowest = live() - before;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lowest = lowest.min(live() - before);
    }
    let held = lowest / CONNECTIONS as isize;
    assert!(
        held < SMALL,
        "each connection keeps {held} bytes after a full queue under DropOldest"
    );
}
