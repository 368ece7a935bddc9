//! HTTP/2 extended CONNECT (RFC 8441) WebSockets from hyper's own HTTP/2 client, for the test
//! binaries that open them (`stacks.rs`, `examples.rs`; each includes this file with `#[path]`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::Role;

/// How long to wait for something that should happen promptly.
const PROMPTLY: Duration = Duration::from_secs(10);

/// An HTTP/2 connection (prior knowledge) whose server has announced
/// `SETTINGS_ENABLE_CONNECT_PROTOCOL`.
pub async fn h2_connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    // Wait for the server's SETTINGS: an extended CONNECT sent before they arrived is refused
    // by the client library. hyper processes frames in a task of its own and does not wake
    // this connection future when SETTINGS arrive, so check the flag every few milliseconds
    // while driving the connection.
    let mut connection = Box::pin(connection);
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while !connection.is_extended_connect_protocol_enabled() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never enabled the extended CONNECT protocol"
        );
        if let Ok(result) =
            tokio::time::timeout(Duration::from_millis(5), connection.as_mut()).await
        {
            panic!("HTTP/2 connection ended early: {result:?}");
        }
    }
    tokio::spawn(connection);
    sender
}

pub fn h2_websocket_request(addr: SocketAddr, path: &str, protocol: &str) -> Request<Empty<Bytes>> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from(protocol));
    request
}

pub type H2WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Opens a WebSocket over an HTTP/2 stream of `sender`'s connection.
pub async fn h2_websocket(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    room: &str,
) -> H2WebSocket {
    let response = tokio::time::timeout(
        PROMPTLY,
        sender.send_request(h2_websocket_request(
            addr,
            &format!("/ws/{room}"),
            "websocket",
        )),
    )
    .await
    .expect("CONNECT timed out")
    .expect("CONNECT failed");
    assert_eq!(response.status(), StatusCode::OK);
    let upgraded = hyper::upgrade::on(response)
        .await
        .expect("no upgraded stream");
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
}

/// The next message, within [`PROMPTLY`]; `what` names what was awaited if none comes.
async fn h2_next(ws: &mut H2WebSocket, what: &str) -> WsMessage {
    tokio::time::timeout(PROMPTLY, ws.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} in time"))
        .unwrap_or_else(|| panic!("stream ended before a {what}"))
        .expect("read error")
}

pub async fn h2_next_text(ws: &mut H2WebSocket) -> String {
    loop {
        match h2_next(ws, "message").await {
            WsMessage::Text(text) => return text.to_string(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame and returns its code (`None` for a close without one).
pub async fn h2_close_code(ws: &mut H2WebSocket) -> Option<u16> {
    loop {
        if let WsMessage::Close(frame) = h2_next(ws, "close frame").await {
            return frame.map(|frame| u16::from(frame.code));
        }
    }
}
