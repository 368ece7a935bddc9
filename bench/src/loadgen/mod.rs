//! The load generator: WebSocket clients that subscribe to rooms, publish into them, and measure
//! what arrives.
//!
//! - [`pubsub`]: subscribers and publishers; burst or fixed-rate; throughput, latency, loss,
//!   duplicates, reordering, and optionally the servers' memory before, during and after.
//! - [`idle`]: many idle connections; the servers' resident memory per connection.
//! - [`deadline`]: the rate-mode publishers' timer, precise to microseconds where tokio's
//!   rounds to milliseconds.
//!
//! Publishers and idle connections are tokio-tungstenite clients with small buffers, so that tens
//! of thousands of them fit in one process next to the server on a small machine. Subscribers use
//! [`receiver::Receiver`] (tungstenite's handshake and frame-header parser, then reads parsed in
//! place), so that the load generator's cost per received message stays well below a server's.

pub mod deadline;
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
    connect_with_headers(url, nodelay, &[]).await
}

/// What a browser sends in a WebSocket handshake besides the headers every client sends
/// (`Host`, `Upgrade`, `Connection`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version`) and
/// `Origin` (see [`browser_headers`]): Chrome's, with a session cookie of a typical size. About
/// 600 bytes of names and values.
const BROWSER_HEADERS: &[(&str, &str)] = &[
    ("Pragma", "no-cache"),
    ("Cache-Control", "no-cache"),
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
         Chrome/131.0.0.0 Safari/537.36",
    ),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-US,en;q=0.9,de;q=0.8"),
    (
        "Cookie",
        "session=eyJ1c2VyIjoiYWxpY2UiLCJleHAiOjE3OTk5OTk5OTl9.c2lnbmF0dXJlLW9mLWEtdHlwaWNhbC1s\
         ZW5ndGgtZm9yLWEtc2Vzc2lvbi1jb29raWU; theme=dark; _ga=GA1.1.1234567890.1700000000",
    ),
    (
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits",
    ),
];

/// A browser's handshake headers for `url` ([`BROWSER_HEADERS`], and the page's `Origin`: the
/// server's own, as for a page it served).
///
/// # Errors
///
/// When `url` is not a `ws://` URL.
pub fn browser_headers(url: &str) -> Result<Vec<(String, String)>, String> {
    let authority = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split(['/', '?']).next())
        .ok_or_else(|| format!("{url}: not a ws:// URL"))?;
    let mut headers = vec![("Origin".to_owned(), format!("http://{authority}"))];
    headers.extend(
        BROWSER_HEADERS
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    Ok(headers)
}

/// [`connect`], with `headers` added to the handshake request.
///
/// # Errors
///
/// The last connection or handshake error, or a header that is not valid.
pub async fn connect_with_headers(
    url: &str,
    nodelay: bool,
    headers: &[(String, String)],
) -> Result<Client, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    const ATTEMPTS: u32 = 5;
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        let mut request = url
            .into_client_request()
            .map_err(|e| format!("{url}: {e}"))?;
        for (name, value) in headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|e| e.to_string())?;
            let value = HeaderValue::try_from(value.as_str()).map_err(|e| e.to_string())?;
            request.headers_mut().append(name, value);
        }
        match tokio_tungstenite::connect_async_with_config(request, Some(client_config()), nodelay)
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
    fn browser_headers_name_the_servers_own_origin() {
        let headers = browser_headers("ws://127.0.0.1:3000/ws/a").unwrap();
        assert_eq!(
            headers[0],
            ("Origin".into(), "http://127.0.0.1:3000".into())
        );
        let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        assert!((500..900).contains(&bytes), "{bytes}");
        assert!(browser_headers("wss://h/").is_err());
    }

    #[test]
    fn room_urls_fill_the_template_or_append() {
        assert_eq!(room_url("ws://h:1/ws/{room}", "a"), "ws://h:1/ws/a");
        assert_eq!(room_url("ws://h:1/ws/", "a"), "ws://h:1/ws/a");
        assert_eq!(room_url("ws://h:1/ws", "a"), "ws://h:1/ws/a");
    }
}
