//! [`Socket`]: what a connection reads and writes (with the [`Early`] bytes); [`PollIo`]: the socket as tungstenite's
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

use super::boundary::FrameBoundary;

pub(crate) struct PollIo<'a, 'b, S> {
    pub(crate) io: &'a mut S,
    pub(crate) cx: &'a mut Context<'b>,
    /// What tungstenite wrote: control frames for the wire.
    pub(crate) written: &'a mut BytesMut,
    /// Sees every byte read, on its way to tungstenite.
    pub(crate) boundary: &'a mut FrameBoundary,
    /// Once `boundary` has seen this many fragments (data frames without FIN), reads give
    /// `WouldBlock` without touching the socket. tungstenite reads until a message is whole:
    /// without this, one turn of reading a message sent as an endless stream of fragments
    /// would go on until tokio's budget for the task ran out (see
    /// `Driver::poll_read_frames`).
    pub(crate) fragment_allowance: u32,
}

impl<S: AsyncRead + Unpin> Read for PollIo<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.boundary.fragments() >= self.fragment_allowance {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                self.boundary.observe(buf.filled());
                Ok(buf.filled().len())
            }
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
    /// The stream, and the bytes the server had already read from it past the request head.
    Tcp(Early, TcpStream),
    Upgraded(TokioIo<Upgraded>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(early, io) => {
                if early.read_into(buf) {
                    return Poll::Ready(Ok(()));
                }
                Pin::new(io).poll_read(cx, buf)
            }
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
            Socket::Tcp(_, io) => Pin::new(io).poll_write(cx, buf),
            Socket::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(_, io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Socket::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(_, io) => io.is_write_vectored(),
            Socket::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(_, io) => Pin::new(io).poll_flush(cx),
            Socket::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(_, io) => Pin::new(io).poll_shutdown(cx),
            Socket::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// The bytes the HTTP server had already read past the request head when it handed the socket
/// over (a client may send its first frames without waiting for the `101`): read before
/// anything else from the socket.
#[derive(Debug)]
pub(crate) struct Early(Bytes);

impl Early {
    pub(crate) fn new(bytes: Bytes) -> Self {
        let mut early = Self(bytes);
        early.release_if_read();
        early
    }

    /// Copies what fits into `buf`; `false` when nothing was left to copy.
    fn read_into(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0.advance(n);
        self.release_if_read();
        true
    }

    /// The early bytes are a slice of the server's connection read buffer (8 KiB or more):
    /// even an empty slice would keep all of it alive as long as the WebSocket.
    fn release_if_read(&mut self) {
        if self.0.is_empty() {
            self.0 = Bytes::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `early` in steps of at most `step` bytes.
    fn read_all(early: &mut Early, step: usize) -> Vec<Vec<u8>> {
        let mut reads = Vec::new();
        loop {
            let mut storage = vec![0u8; step];
            let mut buf = ReadBuf::new(&mut storage);
            if !early.read_into(&mut buf) {
                return reads;
            }
            reads.push(buf.filled().to_vec());
        }
    }

    #[test]
    fn early_bytes_come_first_in_small_reads_too() {
        let mut early = Early::new(Bytes::from_static(b"early"));
        assert_eq!(read_all(&mut early, 3), [b"ear".to_vec(), b"ly".to_vec()]);
        assert!(read_all(&mut early, 3).is_empty());
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

    #[test]
    fn no_early_bytes_keep_the_servers_read_buffer_alive() {
        let (head, bytes) = read_buffer(b"");
        let early = Early::new(bytes);
        assert!(
            head.is_unique(),
            "an empty slice still holds the read buffer"
        );
        drop(early);
    }

    #[test]
    fn early_bytes_let_go_of_the_servers_read_buffer_once_read() {
        let (head, bytes) = read_buffer(b"frame");
        let mut early = Early::new(bytes);
        assert!(!head.is_unique());
        assert_eq!(read_all(&mut early, 8), [b"frame".to_vec()]);
        assert!(
            head.is_unique(),
            "read early bytes still hold the read buffer"
        );
    }
}
