//! Micro-benchmarks of the per-message and per-request hot paths.
//!
//! ```text
//! cargo bench --features internals --bench hot_paths
//! ```
//!
//! - `fan_out/1000`: encode one message and queue it for 1000 in-process receivers, then drain
//!   their queues as their writers would (no sockets: the hub's own cost per publish);
//! - `fan_out_batch/1000`: 64 messages read together from one client, queued for 1000 receivers
//!   as one batch (packed into one run of frames), then drained; throughput counts deliveries;
//! - `encode_frame`: a message's WebSocket frame, built once per publish;
//! - `route`: matching a path against `/ws/{room}` and decoding the room;
//! - `envelope`: the Redis envelope of a 64-byte message: `encode` (what every publish to
//!   Redis costs), `decode` (to a `Message`), and `to_frame` (what a subscriber does with each
//!   received envelope: the checks, then the WebSocket frame built straight from the bytes),
//!   unsigned and signed with HMAC-SHA256.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tower_ws_hub::Message;
use tower_ws_hub::internals::{FanOutFixture, room_from_path};

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for members in [100usize, 1000] {
        let mut fixture = FanOutFixture::new(members, 64);
        let message = Message::text("x".repeat(64));
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| {
                black_box(fixture.publish(&message));
                fixture.drain();
            });
        });
    }
    group.finish();
}

fn fan_out_batch(c: &mut Criterion) {
    const BATCH: usize = 64;
    let mut group = c.benchmark_group("fan_out_batch");
    let members = 1000usize;
    // Room for a whole batch in every queue.
    let mut fixture = FanOutFixture::new(members, BATCH * 2);
    let messages: Vec<Message> = (0..BATCH).map(|_| Message::text("x".repeat(64))).collect();
    group.throughput(Throughput::Elements((members * BATCH) as u64));
    group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
        b.iter(|| {
            black_box(fixture.publish_batch(&messages));
            fixture.drain();
        });
    });
    group.finish();
}

fn encode_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_frame");
    for size in [64usize, 4096, 65536] {
        let message = Message::binary(vec![7u8; size]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &message, |b, message| {
            b.iter(|| black_box(tower_ws_hub::internals::encode_frame(message)));
        });
    }
    group.finish();
}

fn route(c: &mut Criterion) {
    c.bench_function("route/plain", |b| {
        b.iter(|| black_box(room_from_path(black_box("/ws/lobby"), 256)));
    });
    c.bench_function("route/percent_encoded", |b| {
        b.iter(|| black_box(room_from_path(black_box("/ws/caf%C3%A9-%F0%9F%8E%89"), 256)));
    });
    c.bench_function("route/miss", |b| {
        b.iter(|| black_box(room_from_path(black_box("/api/v1/users/42"), 256)));
    });
}

fn envelope(c: &mut Criterion) {
    use tower_ws_hub::internals::envelope_to_frame;
    use tower_ws_hub::redis::{Envelope, EnvelopeKey, InstanceId};

    const CHANNEL: &str = "ws:room:lobby";
    let mut group = c.benchmark_group("envelope");
    let envelope = Envelope::new(InstanceId::random(), Message::binary(vec![7u8; 64]));
    let key = EnvelopeKey::new(b"a benchmark signing key of 32 b.");
    let plain = envelope.encode();
    let signed = envelope.encode_signed(CHANNEL, &key);
    // Measure the paths that succeed, not an early rejection.
    assert!(Envelope::decode(&plain).is_ok());
    assert_eq!(envelope_to_frame(&plain, None), Ok(66));
    assert_eq!(envelope_to_frame(&signed, Some((CHANNEL, &key))), Ok(66));
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode/64", |b| b.iter(|| black_box(envelope.encode())));
    group.bench_function("encode_signed/64", |b| {
        b.iter(|| black_box(envelope.encode_signed(black_box(CHANNEL), &key)))
    });
    group.bench_function("decode/64", |b| {
        b.iter(|| black_box(Envelope::decode(black_box(&plain)).is_ok()))
    });
    group.bench_function("to_frame/64", |b| {
        b.iter(|| black_box(envelope_to_frame(black_box(&plain), None)))
    });
    group.bench_function("to_frame_signed/64", |b| {
        b.iter(|| black_box(envelope_to_frame(black_box(&signed), Some((CHANNEL, &key)))))
    });
    group.finish();
}

criterion_group!(
    benches,
    fan_out,
    fan_out_batch,
    encode_frame,
    route,
    envelope
);
criterion_main!(benches);
