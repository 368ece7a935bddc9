//! A slow client that resumes reading: what it receives of a flood before a marker.
//!
//! Flood and marker messages start with their sequence number as 8 ASCII digits; markers are
//! numbered from [`MARKER`].

use std::time::Duration;

use tokio::sync::mpsc;

use super::PROMPTLY;
use super::raw::{RawWs, opcode};

/// Sequence numbers from here on are markers published after the flood.
pub const MARKER: u64 = 90_000_000;

/// The sequence number a flood or marker payload starts with.
pub fn seq_of(payload: &[u8]) -> u64 {
    std::str::from_utf8(&payload[..8]).unwrap().parse().unwrap()
}

pub fn assert_increasing(seqs: &[u64]) {
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "messages reordered or duplicated: {seqs:?}"
    );
}

/// Lets `slow` read again: returns the flood sequence numbers it receives before the first
/// marker, how many markers `publish_marker` published, and the client. Markers are published
/// every 50 ms until one arrives (a marker published while the queue is still full may itself
/// be dropped). The slow client must not be closed meanwhile.
pub async fn resume_reading(
    mut slow: RawWs,
    mut publish_marker: impl AsyncFnMut(u64),
) -> (Vec<u64>, u64, RawWs) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(frame) = slow.read_frame().await {
            match frame.opcode {
                opcode::TEXT => {
                    let seq = seq_of(&frame.payload);
                    if seq >= MARKER {
                        break;
                    }
                    seqs.push(seq);
                }
                opcode::CLOSE => panic!("the slow client was closed: {:?}", frame.close_code()),
                _ => {}
            }
        }
        tx.send(()).ok();
        (seqs, slow)
    });
    let mut marker = MARKER;
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        publish_marker(marker).await;
        marker += 1;
        if tokio::time::timeout(Duration::from_millis(50), rx.recv())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no marker reached the slow client"
        );
    }
    let (seqs, slow) = reader.await.unwrap();
    (seqs, marker - MARKER, slow)
}
