//! The load generator: WebSocket clients that subscribe to rooms, publish into them, and measure
//! what arrives.
//!
//! - [`pubsub`]: subscribers and publishers; burst or fixed-rate; throughput, latency, loss,
//!   duplicates, reordering, and optionally the servers' memory before, during and after.
//! - [`idle`]: many idle connections; the servers' resident memory per connection.
//!
//! Publishers and idle connections are tokio-tungstenite clients with small buffers, so that tens
//! of thousands of them fit in one process next to the server on a small machine. Subscribers use
//! [`receiver::Receiver`] (tungstenite's handshake and frame-header parser, then reads parsed in
//! place), so that the load generator's cost per received message stays well below a server's.

pub mod idle;
pub mod pubsub;
pub mod receiver;

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One load-generator WebSocket client.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Client socket settings: 4 KiB buffers (tungstenite's defaults are 128 KiB each, which would
/// make the load generator, not the server, the memory hog in the idle scenario).
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// The WebSocket URL of `room`: `{room}` in the template is replaced, or the room is appended as
/// the last path segment.
pub fn room_url(template: &str, room: &str) -> String {
    if template.contains("{room}") {
        template.replace("{room}", room)
    } else if template.ends_with('/') {
        format!("{template}{room}")
    } else {
        format!("{template}/{room}")
    }
}

/// Name of room number `index`.
pub fn room_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}")
}

/// Connects a client, retrying a few times (a listen backlog can overflow for a moment while
/// thousands of clients connect).
///
/// # Errors
///
/// The last connection or handshake error.
pub async fn connect(url: &str, nodelay: bool) -> Result<Client, String> {
    const ATTEMPTS: u32 = 5;
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        match tokio_tungstenite::connect_async_with_config(url, Some(client_config()), nodelay)
            .await
        {
            Ok((client, _response)) => return Ok(client),
            Err(error) => last = format!("{url}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_urls_fill_the_template_or_append() {
        assert_eq!(room_url("ws://h:1/ws/{room}", "a"), "ws://h:1/ws/a");
        assert_eq!(room_url("ws://h:1/ws/", "a"), "ws://h:1/ws/a");
        assert_eq!(room_url("ws://h:1/ws", "a"), "ws://h:1/ws/a");
    }
}
