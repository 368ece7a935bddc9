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

use super::frames::{Frames, end_of_frame_at};

/// Most frames handed to one `writev`.
const MAX_SLICES: usize = 64;
/// Capacity an empty wire may keep; more is freed once everything is written.
const KEEP_CAPACITY: usize = 16;

#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    /// Data frames (messages) from the outbound queue in `bytes`, counted against its bounds
    /// until written; 0 for a control frame.
    frames: usize,
}

impl Chunk {
    fn is_data(&self) -> bool {
        self.frames > 0
    }
}

/// A control frame's length, for `Wire::control_bytes` (saturating; control frames are tiny).
fn len32(frame: &Bytes) -> u32 {
    u32::try_from(frame.len()).unwrap_or(u32::MAX)
}

/// `true` if `frame` is exactly one unmasked, final pong frame.
fn is_pong(frame: &[u8]) -> bool {
    const FIN_PONG: u8 = 0x80 | 0xA;
    matches!(frame, [FIN_PONG, len, ..] if *len <= 125 && frame.len() == 2 + usize::from(*len))
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
    /// Bytes of control frames waiting (not counted against any queue bound, so watched here).
    /// A `u32`, so that it shares a word with `unflushed`: the wire is part of every idle
    /// connection, and control frames are small (at most 129 bytes) and few (see
    /// `push_control`).
    control_bytes: u32,
    /// Something was written since the socket was last flushed. A TCP socket sends at once,
    /// but a TLS stream (or any transport that buffers) may keep what it accepted until
    /// flushed, and nothing else would ever send it.
    unflushed: bool,
}

impl Wire {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// `true` if a data frame is waiting (a frame already half-written counts).
    pub(crate) fn has_data(&self) -> bool {
        self.chunks.iter().any(Chunk::is_data)
    }

    /// Queues data frames from the outbound queue (one run: one slice of a `writev`).
    pub(crate) fn push_data(&mut self, frames: Frames) {
        self.chunks.push_back(Chunk {
            frames: frames.count(),
            bytes: frames.bytes().clone(),
        });
    }

    /// Queues a control frame from tungstenite. A pong replaces a pong still waiting unwritten:
    /// RFC 6455 §5.5.3 lets an endpoint answer only the most recent ping, and a client that
    /// floods pings without reading must not make the server hold a pong for each.
    pub(crate) fn push_control(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        if is_pong(&frame) {
            let started = usize::from(self.front_written > 0);
            if let Some(waiting) = self
                .chunks
                .iter_mut()
                .skip(started)
                .rev()
                .find(|chunk| !chunk.is_data() && is_pong(&chunk.bytes))
            {
                self.control_bytes = self
                    .control_bytes
                    .saturating_sub(len32(&waiting.bytes))
                    .saturating_add(len32(&frame));
                waiting.bytes = frame;
                return;
            }
        }
        self.control_bytes = self.control_bytes.saturating_add(len32(&frame));
        self.chunks.push_back(Chunk {
            bytes: frame,
            frames: 0,
        });
    }

    /// Bytes of control frames waiting to be written.
    pub(crate) fn control_bytes(&self) -> usize {
        usize::try_from(self.control_bytes).unwrap_or(usize::MAX)
    }

    /// For the front chunk when it is a half-written run: the end of the last frame it has
    /// started, and how many frames it has started (the last one possibly only in part).
    fn front_started(&self) -> Option<(usize, usize)> {
        let front = self.chunks.front()?;
        (self.front_written > 0 && front.is_data())
            .then(|| end_of_frame_at(&front.bytes, self.front_written - 1))
    }

    /// Drops every data frame not yet started (a half-written one must be finished, or the
    /// stream would be corrupt). Returns what was dropped, and what of a half-written run
    /// turned out to be completely written once its unstarted frames were cut off (the socket
    /// stopped exactly at a frame boundary): both are to be released from the queue bounds.
    pub(crate) fn discard_unstarted_data(&mut self) -> (Written, Written) {
        let mut discarded = Written::default();
        let mut completed = Written::default();
        let mut started = usize::from(self.front_written > 0);
        if let Some((end, frames)) = self.front_started()
            && let Some(front) = self.chunks.front_mut()
            && front.frames > 1
        {
            // Keep the half-written run only up to the end of the last frame it has started.
            discarded.frames += front.frames - frames;
            discarded.bytes += front.bytes.len() - end;
            front.bytes.truncate(end);
            front.frames = frames;
        }
        if started == 1
            && let Some(front) = self.chunks.front()
            && front.is_data()
            && self.front_written == front.bytes.len()
        {
            // Nothing of it left to write: it is done (an empty write would fail).
            let done = self.chunks.pop_front().expect("front exists");
            completed.frames += done.frames;
            completed.bytes += done.bytes.len();
            self.front_written = 0;
            started = 0;
        }
        let mut index = 0;
        self.chunks.retain(|chunk| {
            let keep = index < started || !chunk.is_data();
            index += 1;
            if !keep {
                discarded.frames += chunk.frames;
                discarded.bytes += chunk.bytes.len();
            }
            keep
        });
        (discarded, completed)
    }

    /// All data frames, written or not, for accounting when the connection ends.
    pub(crate) fn pending_data(&self) -> Written {
        self.chunks
            .iter()
            .filter(|chunk| chunk.is_data())
            .fold(Written::default(), |acc, chunk| Written {
                frames: acc.frames + chunk.frames,
                bytes: acc.bytes + chunk.bytes.len(),
            })
    }

    /// Data frames not completely written: those of a half-written run that are already out
    /// do not count, the half-written frame does. For the count of messages a connection never
    /// delivered when it ends.
    pub(crate) fn unwritten_data_frames(&self) -> usize {
        let front = self.front_started();
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, chunk)| chunk.is_data())
            .map(|(index, chunk)| match front {
                // Of the frames started, all are out but a last one written only in part.
                Some((end, started)) if index == 0 => {
                    chunk.frames - started + usize::from(end != self.front_written)
                }
                _ => chunk.frames,
            })
            .sum()
    }

    /// Writes as much as the socket takes, then flushes it. `Ready(Ok)` when the wire is empty
    /// and flushed, `Pending` when the socket is full (the task is woken when it drains).
    /// `written` accumulates the data frames completed.
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
            // One buffer (the usual case at low rates): a plain write, which skips the kernel's
            // vectored-I/O path.
            let result = if count == 1 {
                Pin::new(&mut *io).poll_write(cx, &slices[0])
            } else {
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])
            };
            let n = match result {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            };
            self.unflushed = true;
            self.advance(n, written);
        }
        if self.unflushed {
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.chunks.capacity() > KEEP_CAPACITY {
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
            if done.is_data() {
                written.frames += done.frames;
                written.bytes += done.bytes.len();
            } else {
                self.control_bytes = self.control_bytes.saturating_sub(len32(&done.bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `limit` bytes per write, and `left` bytes in all (then it
    /// is full: `Pending`).
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
        left: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.left == 0 {
                return Poll::Pending;
            }
            let n = buf.len().min(self.limit).min(self.left);
            self.left -= n;
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

    /// Writes the whole wire to a socket that takes at most `limit` bytes per write.
    fn write_all(wire: &mut Wire, limit: usize) -> (Vec<u8>, Written) {
        let mut io = Trickle {
            out: Vec::new(),
            limit,
            left: usize::MAX,
        };
        let mut written = Written::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(wire.poll_write(&mut io, &mut cx, &mut written).is_ready());
        (io.out, written)
    }

    #[test]
    fn partial_writes_keep_frames_whole_and_in_order() {
        let mut wire = Wire::default();
        wire.push_data(Frames::one(Bytes::from_static(b"aaaa")));
        wire.push_control(Bytes::from_static(b"P"));
        wire.push_data(Frames::one(Bytes::from_static(b"bb")));
        let (out, written) = write_all(&mut wire, 3);
        assert_eq!(out, b"aaaaPbb");
        assert_eq!(
            written,
            Written {
                frames: 2,
                bytes: 6
            }
        );
        assert!(wire.is_empty());
    }

    fn pong(payload: &[u8]) -> Bytes {
        let mut frame = vec![0x8A, payload.len() as u8];
        frame.extend_from_slice(payload);
        Bytes::from(frame)
    }

    #[test]
    fn only_the_latest_unwritten_pong_is_kept() {
        let mut wire = Wire::default();
        wire.push_data(Frames::one(Bytes::from_static(b"data")));
        for i in 0..1000u16 {
            wire.push_control(pong(&i.to_be_bytes()));
        }
        assert_eq!(wire.chunks.len(), 2);
        assert_eq!(&wire.chunks[1].bytes[..], &pong(&999u16.to_be_bytes())[..]);
        assert_eq!(wire.control_bytes(), 4);
        // A close frame is never merged away.
        wire.push_control(Bytes::from_static(&[0x88, 0x00]));
        wire.push_control(pong(b"late"));
        assert_eq!(wire.chunks.len(), 3);
        assert_eq!(&wire.chunks[1].bytes[..], &pong(b"late")[..]);
    }

    #[test]
    fn a_half_written_pong_is_finished_not_replaced() {
        let mut wire = Wire::default();
        wire.push_control(pong(b"first"));
        wire.front_written = 1;
        wire.push_control(pong(b"second"));
        assert_eq!(wire.chunks.len(), 2);
        assert_eq!(wire.control_bytes(), 7 + 8);
    }

    #[test]
    fn discarding_keeps_a_half_written_frame_and_control_frames() {
        let mut wire = Wire::default();
        wire.push_data(Frames::one(Bytes::from_static(b"aaaa")));
        wire.push_data(Frames::one(Bytes::from_static(b"bb")));
        wire.push_control(Bytes::from_static(b"C"));
        wire.front_written = 1;
        let (discarded, completed) = wire.discard_unstarted_data();
        assert_eq!(completed, Written::default());
        assert_eq!(
            discarded,
            Written {
                frames: 1,
                bytes: 2
            }
        );
        assert_eq!(wire.chunks.len(), 2);
        assert!(!wire.chunks[1].is_data());
    }

    use crate::connection::frames::one_run as run_of;

    #[test]
    fn discarding_at_a_frame_boundary_inside_a_run_keeps_nothing_unstarted() {
        let mut wire = Wire::default();
        // Frames of 4, 5 and 3 bytes; the socket took exactly the first.
        wire.push_data(run_of(&["ab", "cde", "f"]));
        wire.push_control(Bytes::from_static(b"C"));
        wire.front_written = 4;
        assert_eq!(wire.unwritten_data_frames(), 2);
        let (discarded, completed) = wire.discard_unstarted_data();
        assert_eq!(
            discarded,
            Written {
                frames: 2,
                bytes: 8
            }
        );
        // What is left of the run is written: done, not left for an empty write.
        assert_eq!(
            completed,
            Written {
                frames: 1,
                bytes: 4
            }
        );
        assert_eq!(wire.unwritten_data_frames(), 0);
        assert_eq!(wire.chunks.len(), 1);
        assert!(!wire.chunks[0].is_data());
        let (out, written) = write_all(&mut wire, 100);
        assert_eq!(out, b"C");
        assert_eq!(written, Written::default());
    }

    /// Whatever the socket takes and wherever the unstarted data is discarded, every data
    /// frame is exactly once written whole, discarded, or left unwritten.
    #[test]
    fn every_frame_is_written_discarded_or_unwritten_exactly_once() {
        /// Complete text frames in `out` (every frame here is short).
        fn complete_data_frames(out: &[u8]) -> usize {
            let (mut at, mut n) = (0, 0);
            while at + 2 <= out.len() {
                let len = 2 + usize::from(out[at + 1] & 0x7f);
                if at + len > out.len() {
                    break;
                }
                n += usize::from(out[at] & 0x0f == 1);
                at += len;
            }
            n
        }
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let total_bytes = 4 + 5 + 3 + 2 + 4 + 6 + 3;
        for first in 0..=total_bytes {
            for second in 0..=total_bytes {
                for discard in [false, true] {
                    let mut wire = Wire::default();
                    wire.push_data(run_of(&["ab", "cde", "f"]));
                    wire.push_control(Bytes::from_static(&[0x89, 0x00]));
                    wire.push_data(run_of(&["zz", "wwww"]));
                    wire.push_data(Frames::one(Bytes::from_static(&[0x81, 0x01, b'q'])));
                    let mut io = Trickle {
                        out: Vec::new(),
                        limit: 3,
                        left: first,
                    };
                    let mut written = Written::default();
                    let _ = wire.poll_write(&mut io, &mut cx, &mut written);
                    let mut discarded = 0;
                    if discard {
                        let (dropped, completed) = wire.discard_unstarted_data();
                        discarded = dropped.frames;
                        written.frames += completed.frames;
                    }
                    io.left = second;
                    let result = wire.poll_write(&mut io, &mut cx, &mut written);
                    assert!(!matches!(result, Poll::Ready(Err(_))), "{result:?}");
                    let out = complete_data_frames(&io.out);
                    let unwritten = wire.unwritten_data_frames();
                    let case = format!("first {first}, second {second}, discard {discard}");
                    assert_eq!(out + discarded + unwritten, 6, "{case}");
                    // A run counts as written once all of it is (see above).
                    assert!(written.frames <= out, "{case}: counted as written");
                    if unwritten == 0 {
                        assert_eq!(written.frames + discarded, 6, "{case}: counted");
                    }
                }
            }
        }
    }

    #[test]
    fn unwritten_frames_leave_out_what_a_half_written_run_already_wrote() {
        let mut wire = Wire::default();
        // Frames of 4, 5 and 3 bytes, then a control frame and a frame of 4.
        wire.push_data(run_of(&["ab", "cde", "f"]));
        wire.push_control(Bytes::from_static(b"C"));
        wire.push_data(Frames::one(Bytes::from_static(b"zzzz")));
        assert_eq!(wire.unwritten_data_frames(), 4);
        // The first frame out, the second started: two of the run are not written.
        wire.front_written = 6;
        assert_eq!(wire.unwritten_data_frames(), 3);
        // Exactly at the end of the second: only the third is left of the run.
        wire.front_written = 9;
        assert_eq!(wire.unwritten_data_frames(), 2);
    }

    #[test]
    fn a_run_counts_as_its_frames_when_written_and_while_pending() {
        let mut wire = Wire::default();
        // Frames of 4, 5 and 3 bytes.
        wire.push_data(run_of(&["ab", "cde", "f"]));
        wire.push_data(Frames::one(Bytes::from_static(b"zz")));
        assert_eq!(
            wire.pending_data(),
            Written {
                frames: 4,
                bytes: 14
            }
        );
        let (out, written) = write_all(&mut wire, 5);
        assert_eq!(
            written,
            Written {
                frames: 4,
                bytes: 14
            }
        );
        assert_eq!(out.len(), 14);
        assert_eq!(wire.pending_data(), Written::default());
    }

    #[test]
    fn discarding_cuts_a_half_written_run_after_its_half_written_frame() {
        let mut wire = Wire::default();
        wire.push_data(run_of(&["ab", "cde", "f"]));
        wire.push_data(Frames::one(Bytes::from_static(b"zz")));
        wire.push_control(Bytes::from_static(b"C"));
        // Inside the second frame of the run (bytes 4..9).
        wire.front_written = 6;
        let (discarded, completed) = wire.discard_unstarted_data();
        assert_eq!(completed, Written::default());
        // The run's third frame (3 bytes) and the next data frame (2 bytes) go.
        assert_eq!(
            discarded,
            Written {
                frames: 2,
                bytes: 5
            }
        );
        assert_eq!(wire.chunks[0].frames, 2);
        assert_eq!(wire.chunks[0].bytes.len(), 9);
        assert_eq!(
            wire.pending_data(),
            Written {
                frames: 2,
                bytes: 9
            }
        );
        assert!(!wire.chunks[1].is_data());
    }
}
