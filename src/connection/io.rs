//! [`Socket`]: what a connection reads and writes; [`PollIo`]: the socket as tungstenite's
//! blocking-style `Read + Write`, inside a `poll`.
//!
//! Reads poll the socket with the task's context and turn `Pending` into `WouldBlock`, which
//! tungstenite passes back up untouched (its state survives, the next poll resumes). Writes never
//! reach the socket: whatever tungstenite writes (pong answers, close frames) is captured, so
//! that the connection's [`Wire`](super::wire::Wire) can put it in order with the data frames.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) struct PollIo<'a, 'b, S> {
    pub(crate) io: &'a mut S,
    pub(crate) cx: &'a mut Context<'b>,
    /// What tungstenite wrote: control frames for the wire.
    pub(crate) written: &'a mut BytesMut,
}

impl<S: AsyncRead + Unpin> Read for PollIo<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(error)) => Err(error),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S> Write for PollIo<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket of one connection: the TCP stream itself when the server handed over a plain TCP
/// socket, hyper's `Upgraded` otherwise (TLS, an HTTP/2 stream, another transport). One type
/// for both, so that a connection task's future is sized for one driver, not for two.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(Prefixed<TcpStream>),
    Upgraded(TokioIo<Upgraded>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Socket::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Socket::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Socket::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(io) => io.is_write_vectored(),
            Socket::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(io) => Pin::new(io).poll_flush(cx),
            Socket::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Socket::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// A socket taken over from the HTTP server, with the bytes the server had already read past
/// the request head (a client may send its first frames without waiting for the `101`): reads
/// return those first. Writes go straight to the socket.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    early: Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(early: Bytes, io: S) -> Self {
        let mut prefixed = Self { early, io };
        prefixed.release_if_read();
        prefixed
    }

    /// The early bytes are a slice of the server's connection read buffer (8 KiB or more):
    /// even an empty slice would keep all of it alive as long as the WebSocket.
    fn release_if_read(&mut self) {
        if self.early.is_empty() {
            self.early = Bytes::new();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.early.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.early.len().min(buf.remaining());
        buf.put_slice(&self.early[..n]);
        self.early.advance(n);
        self.release_if_read();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn early_bytes_come_first_then_the_socket_in_small_reads_too() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = Prefixed::new(Bytes::from_static(b"early"), server);
        let mut client = client;
        client.write_all(b" then socket").await.unwrap();
        drop(client);
        let mut first = [0u8; 3];
        io.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"ear");
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"ly then socket");
    }

    /// What hyper hands over: the bytes after the request head, as a slice of its read buffer
    /// (`head` stands for the request head, which the caller dropped long ago).
    fn read_buffer(after_head: &[u8]) -> (Bytes, Bytes) {
        let mut buffer = BytesMut::with_capacity(8192);
        buffer.extend_from_slice(b"GET /ws/room HTTP/1.1\r\n\r\n");
        let head = buffer.split_to(buffer.len()).freeze();
        buffer.extend_from_slice(after_head);
        (head, buffer.freeze())
    }

    #[tokio::test]
    async fn no_early_bytes_keep_the_servers_read_buffer_alive() {
        let (head, early) = read_buffer(b"");
        let (_client, server) = tokio::io::duplex(64);
        let io = Prefixed::new(early, server);
        assert!(
            head.is_unique(),
            "an empty slice still holds the read buffer"
        );
        drop(io);
    }

    #[tokio::test]
    async fn early_bytes_let_go_of_the_servers_read_buffer_once_read() {
        let (head, early) = read_buffer(b"frame");
        let (_client, server) = tokio::io::duplex(64);
        let mut io = Prefixed::new(early, server);
        assert!(!head.is_unique());
        let mut got = [0u8; 5];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"frame");
        assert!(
            head.is_unique(),
            "read early bytes still hold the read buffer"
        );
    }

    #[tokio::test]
    async fn writes_go_to_the_socket() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = Prefixed::new(Bytes::from_static(b"unread"), server);
        io.write_all(b"out").await.unwrap();
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"out");
    }
}
