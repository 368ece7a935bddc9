//! Raw HTTP/1.1 and WebSocket frames over a plain `TcpStream`, for what a well-behaved client
//! library refuses to send (bad handshakes, unmasked frames, reserved bits, ...) and for clients
//! that misbehave on purpose (never read, never answer pings).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::PROMPTLY;

/// The example key of RFC 6455 §1.3 ...
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// ... and its `Sec-WebSocket-Accept`.
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// WebSocket opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    /// Asserts a hub rejection: this status, a short non-empty `text/plain` reason containing
    /// `reason_part`.
    #[track_caller]
    pub fn assert_rejection(&self, status: u16, reason_part: &str) {
        assert_eq!(self.status, status, "unexpected status; response: {self:?}");
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain"),
            "rejection body must be text/plain, got {content_type:?}"
        );
        let text = self.text();
        assert!(!text.trim().is_empty(), "rejection has an empty body");
        assert!(text.len() <= 200, "rejection reason is not short: {text:?}");
        assert!(
            text.to_lowercase().contains(&reason_part.to_lowercase()),
            "reason {text:?} does not mention {reason_part:?}"
        );
    }
}

/// An HTTP/1.1 WebSocket upgrade request, valid by default, that a test can break.
#[derive(Debug, Clone)]
pub struct Upgrade {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Upgrade {
    /// A valid upgrade request for `path` (RFC 6455 example key).
    pub fn new(path: &str) -> Self {
        Self {
            method: "GET".into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                ("Host".into(), "localhost".into()),
                ("Connection".into(), "Upgrade".into()),
                ("Upgrade".into(), "websocket".into()),
                ("Sec-WebSocket-Version".into(), "13".into()),
                ("Sec-WebSocket-Key".into(), RFC_KEY.into()),
            ],
        }
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }

    pub fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// Sets (replacing) a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self = self.without(name);
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a header, keeping any of the same name.
    pub fn also(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Removes a header.
    pub fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.path, self.version);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// Sends the request on a new connection and reads the response head (and body, if any).
    pub async fn send(&self, addr: SocketAddr) -> RawResponse {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut conn = RawConn::new(stream);
        conn.write(&self.to_bytes()).await;
        conn.read_response().await
    }

    /// Sends the request on `stream` (a kept-alive connection) and reads the response; returns
    /// it with the stream, for the next request on the same connection.
    pub async fn send_on(&self, stream: TcpStream) -> (RawResponse, TcpStream) {
        let mut conn = RawConn::new(stream);
        conn.write(&self.to_bytes()).await;
        let response = conn.read_response().await;
        assert!(
            conn.buf.is_empty(),
            "bytes after the response: {:?}",
            conn.buf
        );
        (response, conn.stream)
    }

    /// Sends the request and expects `101`; returns the WebSocket over the raw socket.
    pub async fn open(&self, addr: SocketAddr) -> RawWs {
        self.open_on(TcpStream::connect(addr).await.unwrap()).await
    }

    /// Like [`open`](Self::open), with `early` bytes (frames, say) in the same write as the
    /// request: a client may send before it has seen the `101`.
    pub async fn open_with_early(&self, addr: SocketAddr, early: &[u8]) -> RawWs {
        let mut conn = RawConn::new(TcpStream::connect(addr).await.unwrap());
        let mut bytes = self.to_bytes();
        bytes.extend_from_slice(early);
        conn.write(&bytes).await;
        let response = conn.read_response().await;
        assert_eq!(response.status, 101, "upgrade refused: {response:?}");
        RawWs { conn, response }
    }

    /// Like [`open`](Self::open), on a socket the caller made (e.g. with a tiny receive buffer).
    pub async fn open_on(&self, stream: TcpStream) -> RawWs {
        let mut conn = RawConn::new(stream);
        conn.write(&self.to_bytes()).await;
        let response = conn.read_response().await;
        assert_eq!(response.status, 101, "upgrade refused: {response:?}");
        RawWs { conn, response }
    }
}

/// A TCP connection to `addr` whose receive buffer is as small as the kernel allows, so that a
/// client that stops reading makes the server's writes block quickly.
pub async fn tcp_with_small_receive_buffer(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A TCP stream with a read buffer (bytes read past what was parsed so far).
#[derive(Debug)]
struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(PROMPTLY, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// Reads more bytes into the buffer; `false` at end of stream (or on a reset). At the end
    /// of the stream the client closes its own end, as a browser does once the server closed
    /// its end of the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(PROMPTLY, self.stream.read(&mut chunk))
            .await
            .expect("read timed out")
        {
            Ok(0) => {
                let _ = self.stream.shutdown().await;
                false
            }
            Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Ensures at least `n` buffered bytes; `false` if the stream ended first.
    async fn want(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if !self.fill().await {
                return false;
            }
        }
        true
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    async fn read_response(&mut self) -> RawResponse {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill().await, "connection closed before a response");
        };
        let head = String::from_utf8(self.take(head_end)).expect("UTF-8 response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 {
            return response;
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().unwrap();
            assert!(self.want(len).await, "connection closed inside the body");
            response.body = self.take(len);
        } else if response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "connection closed inside a chunk");
                };
                let line = String::from_utf8(self.take(line_end + 2)).unwrap();
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                    .expect("chunk size");
                assert!(
                    self.want(size + 2).await,
                    "connection closed inside a chunk"
                );
                let chunk = self.take(size + 2);
                response.body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        }
        response
    }
}

/// One WebSocket frame as read from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame (`None` for a close without a body).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, opcode::CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Encodes one frame. `mask` is the masking key (clients must mask; `None` sends it unmasked).
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode & 0x0F)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The masking key this module's clients use.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One write's worth of a ping flood: 100 masked pings of 125 bytes (the largest a control
/// frame may carry), more than the server reads in one poll.
pub fn ping_flood() -> Vec<u8> {
    (0..100)
        .flat_map(|_| encode_frame(true, 0, opcode::PING, Some(MASK), &[b'p'; 125]))
        .collect()
}

/// The first frame of a message that never ends: an empty text frame without FIN.
pub fn unfinished_message() -> Vec<u8> {
    encode_frame(false, 0, opcode::TEXT, Some(MASK), b"")
}

/// One write's worth of a flood of empty continuation frames without FIN (after
/// [`unfinished_message`]): `frames` frames of 6 bytes that never complete a message, nor
/// grow it.
pub fn empty_fragment_flood(frames: usize) -> Vec<u8> {
    (0..frames)
        .flat_map(|_| encode_frame(false, 0, opcode::CONTINUATION, Some(MASK), b""))
        .collect()
}

/// A WebSocket client over a raw socket: sends exactly the bytes it is told to.
#[derive(Debug)]
pub struct RawWs {
    conn: RawConn,
    /// The `101` response of the handshake.
    pub response: RawResponse,
}

impl RawWs {
    /// Writes raw bytes (one or more encoded frames, or garbage).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.conn.write(bytes).await;
    }

    /// Writes raw bytes, or fails quietly (`false`) if the connection is gone.
    pub async fn try_send_bytes(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(PROMPTLY, self.conn.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Sends one well-formed, masked, final frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_bytes(&encode_frame(true, 0, opcode, Some(MASK), payload))
            .await;
    }

    /// Sends a masked close frame with `code`.
    pub async fn send_close(&mut self, code: u16) {
        self.send(opcode::CLOSE, &code.to_be_bytes()).await;
    }

    /// Reads the next frame; `None` when the server closed the TCP connection.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        let conn = &mut self.conn;
        if !conn.want(2).await {
            return None;
        }
        let b0 = conn.buf[0];
        let b1 = conn.buf[1];
        let masked = b1 & 0x80 != 0;
        let (len, header_len) = match b1 & 0x7F {
            126 => {
                if !conn.want(4).await {
                    return None;
                }
                (
                    usize::from(u16::from_be_bytes([conn.buf[2], conn.buf[3]])),
                    4,
                )
            }
            127 => {
                if !conn.want(10).await {
                    return None;
                }
                let mut len = [0u8; 8];
                len.copy_from_slice(&conn.buf[2..10]);
                (u64::from_be_bytes(len) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        let mask_len = if masked { 4 } else { 0 };
        if !conn.want(header_len + mask_len + len).await {
            return None;
        }
        let header = conn.take(header_len);
        let key = conn.take(mask_len);
        let mut payload = conn.take(len);
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        Some(Frame {
            fin: header[0] & 0x80 != 0,
            rsv: (b0 >> 4) & 0b111,
            opcode: b0 & 0x0F,
            masked,
            payload,
        })
    }

    /// Reads frames until a close frame and returns it (data and control frames before it are
    /// skipped); `None` if the connection ended without one.
    pub async fn read_close(&mut self) -> Option<Frame> {
        while let Some(frame) = self.read_frame().await {
            if frame.opcode == opcode::CLOSE {
                return Some(frame);
            }
        }
        None
    }

    /// Reads until the server's close frame, answers it, and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        let frame = self.read_close().await?;
        let code = frame.close_code();
        // Complete the close handshake so that the server ends the connection at once (the
        // server may already have dropped the socket: a failed write is fine here).
        let answer = encode_frame(
            true,
            0,
            opcode::CLOSE,
            Some(MASK),
            &code.unwrap_or(1000).to_be_bytes(),
        );
        let _ = tokio::time::timeout(PROMPTLY, self.conn.stream.write_all(&answer)).await;
        // Then, as a browser does, close our end once the server has closed its own.
        self.wait_eof().await;
        code
    }

    /// Waits until the server closes the TCP connection, discarding whatever arrives.
    pub async fn wait_eof(&mut self) {
        while self.read_frame().await.is_some() {}
    }

    /// Lets go of this client's read buffer (it holds nothing unread), so that a test that
    /// measures the process's heap sees the server's memory, not the client's.
    pub fn release_read_buffer(&mut self) {
        assert!(
            self.conn.buf.is_empty(),
            "unread bytes in the client's buffer"
        );
        self.conn.buf = Vec::new();
    }
}
