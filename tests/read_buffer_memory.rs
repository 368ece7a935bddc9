//! A connection that received one large message does not keep a read buffer of that size for
//! the rest of its life.
//!
//! The heap in use is measured with a counting global allocator around the system one. It is
//! this test binary's alone (its own file, its own process); the library stays
//! allocator-neutral.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use support::raw::{Upgrade, opcode};
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

const MIB: isize = 1 << 20;

#[tokio::test]
async fn a_large_message_does_not_pin_its_size_in_the_connection() {
    const CONNECTIONS: usize = 32;
    const SIZE: usize = 256 * 1024;
    let hub = Hub::builder()
        .max_message_size(1 << 20)
        .max_frame_size(1 << 20)
        .build();
    let server = support::serve_hub(hub).await;
    // Each client alone in its room: its message goes to nobody, so nothing but the
    // connection itself could hold on to it.
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        clients.push(
            Upgrade::new(&format!("/ws/alone-{i}"))
                .open(server.addr)
                .await,
        );
    }
    eventually("every client connected", || {
        server.hub.stats().connections == CONNECTIONS as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = live();

    let message = vec![7u8; SIZE];
    for client in &mut clients {
        client.send(opcode::BINARY, &message).await;
    }
    drop(message);
    // Read, not merely waiting in the kernel's socket buffers (which the heap does not see).
    eventually("every message read", || {
        server.hub.stats().messages_received == CONNECTIONS as u64
    })
    .await;

    // Kept for good, each connection would hold at least SIZE: 8 MiB in all. A fresh read
    // buffer is 2 KiB.
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let grown = live() - before;
        if grown < MIB {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{CONNECTIONS} connections still hold {:.1} MiB more than before their one \
             {} KiB message",
            grown as f64 / MIB as f64,
            SIZE / 1024
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And they still work.
    for client in &mut clients {
        client.send(opcode::PING, b"still there").await;
        let pong = tokio::time::timeout(PROMPTLY, client.read_frame())
            .await
            .expect("pong in time")
            .expect("connection open");
        assert_eq!(pong.opcode, opcode::PONG);
    }
}
