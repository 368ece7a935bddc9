//! [`Receiver`]: the subscribers' client, built to cost the load generator as little as possible
//! per received message, so that the load generator is not what a run measures.
//!
//! The handshake is tungstenite's. After it, the receiver reads the socket itself: one `read` of
//! up to [`READ_SIZE`] bytes, then every complete frame in it, parsed in place (no copy, no
//! allocation per message): the 2-byte header of a small final text or binary frame (nearly
//! every delivery) read directly, every other header with tungstenite's
//! [`FrameHeader::parse`]; and one clock reading per
//! `read`. Every message in a read arrived by the moment the read returned, so that timestamp is
//! the message's receive time (it is what a per-message clock reading taken after parsing would
//! approximate, minus the parsing).
//!
//! It answers pings (a server may check its clients), reassembles fragmented messages, and ends
//! on a close frame or end of stream. It never sends data.

use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use super::client_config;

/// Bytes asked for per `read`.
const READ_SIZE: usize = 16 * 1024;

/// A TCP stream that keeps a copy of what it reads, so that bytes the handshake read past the
/// HTTP response (the first frames, when the server is quick) are not lost.
struct Recording {
    stream: TcpStream,
    read: Vec<u8>,
}

impl AsyncRead for Recording {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.read.extend_from_slice(&buf.filled()[before..]);
        }
        result
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// `host:port` of a `ws://` URL.
fn authority(url: &str) -> Result<&str, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: the load generator's subscribers speak ws:// only"))?;
    Ok(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// A receiving WebSocket client. See the [module docs](self).
pub struct Receiver {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The fragments so far of a fragmented message.
    fragments: Vec<u8>,
    in_fragmented: bool,
    /// Pong frames to write once the current read is parsed.
    pongs: Vec<u8>,
}

impl Receiver {
    /// Connects and completes the handshake, retrying a few times (a listen backlog can
    /// overflow for a moment while thousands of clients connect).
    ///
    /// # Errors
    ///
    /// The last connection or handshake error.
    pub async fn connect(url: &str) -> Result<Self, String> {
        const ATTEMPTS: u32 = 5;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            match Self::try_connect(url).await {
                Ok(receiver) => return Ok(receiver),
                Err(error) => last = format!("{url}: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
        }
        Err(last)
    }

    async fn try_connect(url: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(authority(url)?)
            .await
            .map_err(|error| error.to_string())?;
        let recording = Recording {
            stream,
            read: Vec::new(),
        };
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, recording, Some(client_config()))
                .await
                .map_err(|error| error.to_string())?;
        let Recording { stream, read } = ws.into_inner();
        // What the handshake read beyond the response head is the start of the frame stream.
        let head_end = read
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .map_or(read.len(), |at| at + 4);
        let mut buf = vec![0; READ_SIZE.max(read.len() - head_end)];
        let end = read.len() - head_end;
        buf[..end].copy_from_slice(&read[head_end..]);
        Ok(Self {
            stream,
            buf,
            start: 0,
            end,
            fragments: Vec::new(),
            in_fragmented: false,
            pongs: Vec::new(),
        })
    }

    /// Hands every complete data message already buffered to `on_message`; if there is none,
    /// waits for the socket first, then hands over what that read completed. `on_message` gets
    /// each payload and the time the bytes were read (from `clock`, read once per `read`).
    ///
    /// Returns `Ok(false)` once the server closed the connection (close frame or end of
    /// stream).
    ///
    /// # Errors
    ///
    /// A socket error, or a frame that breaks the protocol (a masked frame from the server, an
    /// unknown opcode, a continuation with nothing to continue).
    pub async fn read_batch(
        &mut self,
        clock: impl Fn() -> u64,
        mut on_message: impl FnMut(&[u8], u64),
    ) -> io::Result<bool> {
        let mut now = clock();
        loop {
            let (open, delivered) = self.parse(now, &mut on_message)?;
            self.compact();
            if !self.pongs.is_empty() {
                self.stream.write_all(&self.pongs).await?;
                self.pongs.clear();
            }
            if !open {
                return Ok(false);
            }
            if delivered > 0 {
                return Ok(true);
            }
            self.reserve();
            let read = self.stream.read(&mut self.buf[self.end..]).await?;
            if read == 0 {
                return Ok(false);
            }
            self.end += read;
            now = clock();
        }
    }

    /// Moves unparsed bytes to the front; back to the usual size once a large message is gone.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() > READ_SIZE && self.end < READ_SIZE && self.needed() <= READ_SIZE {
            self.buf.truncate(READ_SIZE);
            self.buf.shrink_to_fit();
        }
    }

    /// Makes room for the next read: the whole next frame, when its header says it is large.
    fn reserve(&mut self) {
        let needed = self.needed().max(self.end + READ_SIZE / 4);
        if needed > self.buf.len() {
            self.buf.resize(needed.max(self.end + READ_SIZE), 0);
        }
    }

    /// Bytes the next frame needs in all (its header plus payload), when its header is buffered.
    fn needed(&self) -> usize {
        let mut cursor = Cursor::new(&self.buf[self.start..self.end]);
        match FrameHeader::parse(&mut cursor) {
            Ok(Some((_, len))) => cursor.position() as usize + len as usize,
            _ => 0,
        }
    }

    /// Parses every complete frame buffered. Returns whether the connection is still open and
    /// how many data messages went to `on_message`.
    fn parse(
        &mut self,
        now: u64,
        on_message: &mut impl FnMut(&[u8], u64),
    ) -> io::Result<(bool, usize)> {
        let mut delivered = 0;
        loop {
            // The frame nearly every delivery is: final, unmasked, text or binary, at most 125
            // bytes, so a 2-byte header. Those two bytes mean exactly that to any parser, and
            // reading them here costs a fraction of the general parse (the largest share of
            // the load generator's own CPU in a burst); anything else goes to tungstenite's.
            if let [0x81 | 0x82, len @ 0..=125, ..] = self.buf[self.start..self.end] {
                let at = self.start + 2;
                let frame_end = at + usize::from(len);
                if frame_end > self.end {
                    return Ok((true, delivered));
                }
                self.start = frame_end;
                on_message(&self.buf[at..frame_end], now);
                delivered += 1;
                continue;
            }
            let mut cursor = Cursor::new(&self.buf[self.start..self.end]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok((true, delivered)),
                Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
            };
            let at = self.start + cursor.position() as usize;
            let Some(frame_end) = usize::try_from(len)
                .ok()
                .and_then(|len| at.checked_add(len))
            else {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
            };
            if frame_end > self.end {
                return Ok((true, delivered));
            }
            if header.mask.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "masked frame from the server",
                ));
            }
            self.start = frame_end;
            let payload = at..frame_end;
            match header.opcode {
                OpCode::Data(Data::Text | Data::Binary) if header.is_final => {
                    on_message(&self.buf[payload], now);
                    delivered += 1;
                }
                OpCode::Data(Data::Text | Data::Binary) => {
                    self.fragments.clear();
                    self.fragments.extend_from_slice(&self.buf[payload]);
                    self.in_fragmented = true;
                }
                OpCode::Data(Data::Continue) if self.in_fragmented => {
                    self.fragments.extend_from_slice(&self.buf[payload]);
                    if header.is_final {
                        self.in_fragmented = false;
                        on_message(&self.fragments, now);
                        delivered += 1;
                    }
                }
                OpCode::Control(Control::Ping) => {
                    let mut pong = Frame::pong(self.buf[payload].to_vec());
                    pong.header_mut().mask = Some(now.to_le_bytes()[..4].try_into().unwrap());
                    pong.format(&mut self.pongs)
                        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                }
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => return Ok((false, delivered)),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected frame {:?}", header.opcode),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_is_host_and_port() {
        assert_eq!(
            authority("ws://127.0.0.1:3000/ws/a").unwrap(),
            "127.0.0.1:3000"
        );
        assert_eq!(authority("ws://h:1?x").unwrap(), "h:1");
        assert!(authority("wss://h:1/").is_err());
    }

    /// A server that writes `bytes` right after its 101, then closes.
    async fn serve_frames(frames: Vec<u8>) -> String {
        serve_chunks(vec![frames]).await
    }

    /// A server that writes each of `chunks` right after its 101, 2 ms apart (so that each is
    /// usually a read of its own), then closes.
    async fn serve_chunks(chunks: Vec<Vec<u8>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            // Straight to the socket, in one write with the handshake's tail when possible.
            for (i, chunk) in chunks.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ws.get_mut().write_all(chunk).await.unwrap();
                ws.get_mut().flush().await.unwrap();
            }
            // Wait for the pong (or anything), so that the client's reads are not reset.
            let mut sink = [0u8; 64];
            let _ = ws.get_mut().read(&mut sink).await;
        });
        format!("ws://{addr}/ws/test")
    }

    /// Connects to `url` and reads until the server closes: every message's payload, in order.
    async fn read_to_the_end(url: &str) -> (Vec<Vec<u8>>, Receiver) {
        let mut receiver = Receiver::connect(url).await.unwrap();
        let mut got: Vec<Vec<u8>> = Vec::new();
        while receiver
            .read_batch(|| 1, |payload, _| got.push(payload.to_vec()))
            .await
            .unwrap()
        {}
        (got, receiver)
    }

    fn frame(frame: Frame) -> Vec<u8> {
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn reads_whole_fragmented_and_large_messages_and_answers_pings() {
        let mut bytes = Vec::new();
        bytes.extend(frame(Frame::message(
            b"one".to_vec(),
            OpCode::Data(Data::Binary),
            true,
        )));
        bytes.extend(frame(Frame::ping(b"p".to_vec())));
        bytes.extend(frame(Frame::message(
            b"tw".to_vec(),
            OpCode::Data(Data::Text),
            false,
        )));
        bytes.extend(frame(Frame::message(
            b"o".to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )));
        let large = vec![7u8; 100_000];
        bytes.extend(frame(Frame::message(
            large.clone(),
            OpCode::Data(Data::Binary),
            true,
        )));
        bytes.extend(frame(Frame::close(None)));
        let url = serve_frames(bytes).await;
        let (got, receiver) = read_to_the_end(&url).await;
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), large]);
        assert!(receiver.buf.len() <= READ_SIZE, "the buffer shrinks back");
    }

    /// A small frame that ends exactly where the bytes read end (the last frame of nearly
    /// every read) is delivered with that read, not held back for the next one: here nothing
    /// follows it and the socket stays open. An empty one too.
    #[tokio::test]
    async fn a_small_frame_at_the_end_of_a_read_is_delivered_at_once() {
        // The server keeps the socket open after writing (it waits for the client).
        let url = serve_frames(vec![0x81, 0x02, b'h', b'i', 0x82, 0x00]).await;
        let mut receiver = Receiver::connect(&url).await.unwrap();
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 2 {
            let read = receiver.read_batch(|| 1, |payload, _| got.push(payload.to_vec()));
            let open = tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .expect("both frames delivered without more bytes coming")
                .unwrap();
            assert!(open);
        }
        assert_eq!(got, [b"hi".to_vec(), Vec::new()]);
    }

    /// Small frames (the 2-byte-header fast path) cut anywhere between reads, next to one the
    /// general parser reads (126 bytes: a 4-byte header).
    #[tokio::test]
    async fn small_frames_split_across_reads_arrive_whole_and_in_order() {
        let (mut bytes, mut expected) = (Vec::new(), Vec::new());
        let mut message = |payload: Vec<u8>, opcode| {
            bytes.extend(frame(Frame::message(
                payload.clone(),
                OpCode::Data(opcode),
                true,
            )));
            expected.push(payload);
        };
        for n in 0..20u8 {
            let opcode = if n % 2 == 0 { Data::Text } else { Data::Binary };
            message(vec![n; usize::from(n) * 6 + 1], opcode); // 1 to 115 bytes
        }
        message(vec![9; 125], Data::Binary); // the largest 2-byte header
        message(vec![8; 126], Data::Binary); // a 4-byte header
        bytes.extend(frame(Frame::close(None)));
        // Cut into pieces of 1, 2, 3, ... 13 bytes: headers and payloads split every which way.
        let mut chunks = Vec::new();
        let (mut at, mut size) = (0, 1);
        while at < bytes.len() {
            let end = (at + size).min(bytes.len());
            chunks.push(bytes[at..end].to_vec());
            at = end;
            size = size % 13 + 1;
        }
        let url = serve_chunks(chunks).await;
        let (got, _) = read_to_the_end(&url).await;
        assert_eq!(got, expected);
    }
}
