//! [`PollIo`]: the socket as tungstenite's blocking-style `Read + Write`, inside a `poll`;
//! [`Prefixed`]: a socket with bytes already read from it.
//!
//! Reads poll the socket with the task's context and turn `Pending` into `WouldBlock`, which
//! tungstenite passes back up untouched (its state survives, the next poll resumes). Writes never
//! reach the socket: whatever tungstenite writes (pong answers, close frames) is captured, so
//! that the connection's [`Wire`](super::wire::Wire) can put it in order with the data frames.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
        Self { early, io }
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
