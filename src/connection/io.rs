//! [`PollIo`]: the socket as tungstenite's blocking-style `Read + Write`, inside a `poll`.
//!
//! Reads poll the socket with the task's context and turn `Pending` into `WouldBlock`, which
//! tungstenite passes back up untouched (its state survives, the next poll resumes). Writes never
//! reach the socket: whatever tungstenite writes (pong answers, close frames) is captured, so
//! that the connection's [`Wire`](super::wire::Wire) can put it in order with the data frames.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

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
