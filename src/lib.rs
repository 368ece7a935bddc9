//! # tower-ws-hub
//!
//! A Tower [`Layer`](tower_layer::Layer) that turns any Tower-based HTTP stack (an axum
//! `Router`, tonic routes, a plain hyper service) into a WebSocket server with rooms.
//!
//! - [`HubLayer`] watches its routes (e.g. `/ws/{room}`), validates the handshake (RFC 6455, and
//!   RFC 8441 over HTTP/2), answers it, and hands the upgraded socket to the hub. Every other
//!   request reaches the inner service untouched.
//! - The [`Hub`] keeps rooms of connections. What a client sends goes to the other members of its
//!   room; the application publishes to a room from anywhere with [`Hub::publish`].
//! - Each connection has a bounded outbound queue; a client that stops reading never slows the
//!   others ([`SlowConsumerPolicy`]).
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tower_ws_hub::{Hub, HubLayer, Message};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::builder().build();
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let server = tokio::spawn(
//!     axum::serve(listener, app).with_graceful_shutdown(hub.shutdown_signal()).into_future(),
//! );
//! hub.publish("lobby", Message::text("hello from the application")).await?;
//! server.await??;
//! # Ok(()) }
//! ```
//!
//! ## Serving
//!
//! The HTTP server must support upgrades: `axum::serve` does, and so does hyper-util's
//! `serve_connection_with_upgrades`. tonic's own `Server` does not (it answers `101` and drops
//! the socket; the hub logs an error saying so): serve tonic routes through `axum::serve` with
//! `Routes::into_axum_router()`. WebSockets over HTTP/2 need the server to enable the extended
//! CONNECT protocol (axum: the `http2` feature; hyper: `http2().enable_connect_protocol()`).
//!
//! ## More
//!
//! The README, shipped with the crate, covers what these docs do item by item, in one place: every
//! setting with its default, the limits and the close and status codes they answer with, security
//! (Origin checks, authorization, what your middleware must do), scaling out through Redis (the
//! `redis` module, with the delivery guarantees, plainly), running behind a reverse proxy, and the
//! benchmarks.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

// Unit tests that reuse the integration tests' support code (`tests/support`) name the crate
// the way that code does.
#[cfg(all(test, feature = "redis"))]
extern crate self as tower_ws_hub;

mod authorize;
mod broker;
pub mod close_code;
mod config;
mod connection;
mod error;
mod handshake;
mod hub;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
mod layer;
mod log_throttle;
mod message;
mod origin;
mod rejection;
mod route;
mod sync;

pub use authorize::{Authorization, AuthorizationFuture, RoomAuthorizer};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use broker::redis;
pub use broker::{BrokerBackend, BrokerConnectError, BrokerStatus};
pub use config::{
    DEFAULT_AUTHORIZE_TIMEOUT, DEFAULT_CLOSE_TIMEOUT, DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_WRITE_INTERVAL, DEFAULT_OUTBOUND_MAX_BYTES,
    DEFAULT_OUTBOUND_MAX_MESSAGES, DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT,
    DEFAULT_READ_BUFFER_SIZE, DEFAULT_SHUTDOWN_GRACE, DEFAULT_UPGRADE_TIMEOUT,
    DEFAULT_WRITE_INTERVAL, SlowConsumerPolicy,
};
pub use error::{CloseError, PublishError, SendError};
pub use handshake::HandshakeError;
pub use hub::handle::MAX_CLOSE_REASON_LEN;
pub use hub::{
    ConnectionContext, ConnectionHandle, ConnectionId, Hub, HubBuilder, HubStats, InboundAction,
};
pub use layer::{HubBody, HubLayer, HubService, ResponseFuture};
pub use message::{Message, MessageKind};
pub use origin::OriginPolicy;
pub use rejection::Rejection;
pub use route::{
    DEFAULT_MAX_ROOM_NAME_LEN, InvalidRoutePattern, RoomExtractor, RoomMatch, RoomNameError,
    validate_room_name,
};

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
