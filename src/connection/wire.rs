//! [`Wire`]: everything waiting to be written to one socket, in order, written with `writev`.
//!
//! Data frames arrive already encoded (header and payload, once per publish, shared by every
//! receiver); control frames come from tungstenite (pongs, close). Both go into one ordered
//! queue so that a control frame can never land in the middle of a data frame, and a drain
//! writes as many frames as fit in one vectored write: one syscall for many frames under load,
//! no per-receiver copy, and no write buffer that keeps the size of the largest message.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;

/// Most frames handed to one `writev`.
const MAX_SLICES: usize = 64;

#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    /// A data frame from the outbound queue (counted against its bounds until written).
    data: bool,
}

/// Bytes of data frames fully written by a [`Wire::poll_write`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
}

/// The ordered queue of frames waiting for the socket. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Wire {
    chunks: VecDeque<Chunk>,
    /// How much of the front chunk is already written.
    front_written: usize,
}

impl Wire {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// `true` if a data frame is waiting (a frame already half-written counts).
    pub(crate) fn has_data(&self) -> bool {
        self.chunks.iter().any(|chunk| chunk.data)
    }

    pub(crate) fn push_data(&mut self, frame: Bytes) {
        self.chunks.push_back(Chunk {
            bytes: frame,
            data: true,
        });
    }

    pub(crate) fn push_control(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.chunks.push_back(Chunk {
                bytes: frame,
                data: false,
            });
        }
    }

    /// Drops every data frame not yet started (a half-written one must be finished, or the
    /// stream would be corrupt). Returns what was dropped, to release from the queue bounds.
    pub(crate) fn discard_unstarted_data(&mut self) -> Written {
        let mut discarded = Written::default();
        let started = usize::from(self.front_written > 0);
        let mut index = 0;
        self.chunks.retain(|chunk| {
            let keep = index < started || !chunk.data;
            index += 1;
            if !keep {
                discarded.frames += 1;
                discarded.bytes += chunk.bytes.len();
            }
            keep
        });
        discarded
    }

    /// All data frames, written or not, for accounting when the connection ends.
    pub(crate) fn pending_data(&self) -> Written {
        self.chunks
            .iter()
            .filter(|chunk| chunk.data)
            .fold(Written::default(), |acc, chunk| Written {
                frames: acc.frames + 1,
                bytes: acc.bytes + chunk.bytes.len(),
            })
    }

    /// Writes as much as the socket takes. `Ready(Ok)` when the wire is empty, `Pending` when
    /// the socket is full (the task is woken when it drains). `written` accumulates the data
    /// frames completed.
    pub(crate) fn poll_write<W>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        written: &mut Written,
    ) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin,
    {
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_SLICES).enumerate() {
                let bytes = if i == 0 {
                    &chunk.bytes[self.front_written..]
                } else {
                    &chunk.bytes[..]
                };
                slices[count] = IoSlice::new(bytes);
                count += 1;
            }
            let n = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            };
            self.advance(n, written);
        }
        if self.chunks.capacity() > 4 * MAX_SLICES {
            // Do not keep a burst's worth of capacity on an idle connection.
            self.chunks = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize, written: &mut Written) {
        while n > 0 {
            let front = self.chunks.front().expect("wrote more than was queued");
            let left = front.bytes.len() - self.front_written;
            if n < left {
                self.front_written += n;
                return;
            }
            n -= left;
            self.front_written = 0;
            let done = self.chunks.pop_front().expect("front exists");
            if done.data {
                written.frames += 1;
                written.bytes += done.bytes.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `limit` bytes per write.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn partial_writes_keep_frames_whole_and_in_order() {
        let mut wire = Wire::default();
        wire.push_data(Bytes::from_static(b"aaaa"));
        wire.push_control(Bytes::from_static(b"P"));
        wire.push_data(Bytes::from_static(b"bb"));
        let mut io = Trickle {
            out: Vec::new(),
            limit: 3,
        };
        let mut written = Written::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(wire.poll_write(&mut io, &mut cx, &mut written).is_ready());
        assert_eq!(io.out, b"aaaaPbb");
        assert_eq!(
            written,
            Written {
                frames: 2,
                bytes: 6
            }
        );
        assert!(wire.is_empty());
    }

    #[test]
    fn discarding_keeps_a_half_written_frame_and_control_frames() {
        let mut wire = Wire::default();
        wire.push_data(Bytes::from_static(b"aaaa"));
        wire.push_data(Bytes::from_static(b"bb"));
        wire.push_control(Bytes::from_static(b"C"));
        wire.front_written = 1;
        let discarded = wire.discard_unstarted_data();
        assert_eq!(
            discarded,
            Written {
                frames: 1,
                bytes: 2
            }
        );
        assert_eq!(wire.chunks.len(), 2);
        assert!(!wire.chunks[1].data);
    }
}
