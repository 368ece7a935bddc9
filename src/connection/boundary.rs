//! [`FrameBoundary`]: where the client's frames end in the bytes read so far, so that the
//! connection knows when tungstenite's read buffer is empty and may be replaced by a small one.
//!
//! tungstenite grows its read buffer to hold the largest frame a client sends and never shrinks
//! it: one 64 KiB message would pin 64 KiB for the rest of the connection, eleven times an idle
//! connection's whole cost, and even a frame half the buffer's size can double it. The buffer
//! cannot be inspected or shrunk from outside, but the protocol state can be rebuilt (a fresh
//! `WebSocketContext`) at a moment when the old one holds nothing: every byte read has been
//! parsed into frames, and no fragmented message is half assembled. This tracker sees every
//! byte on its way to tungstenite and parses only the frame headers (with tungstenite's own
//! [`FrameHeader::parse`]) to tell such a moment.

use std::io::Cursor;

use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Follows frame boundaries in the client's byte stream. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct FrameBoundary {
    /// Bytes of a header not yet complete.
    header: [u8; MAX_HEADER],
    /// (A `u8`, at most [`MAX_HEADER`]: with it `fragments` fits in the words this struct
    /// had already, and every byte here is paid by every idle connection.)
    header_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A data frame without FIN was seen and its final continuation was not.
    fragmented: bool,
    /// Data frames without FIN (a fragmented message's first frame, or a continuation that is
    /// not its last) seen since [`take_fragments`](Self::take_fragments). tungstenite hands
    /// over only whole messages: these are the frames it reads without the connection
    /// hearing of them.
    fragments: u32,
    /// Bytes seen since [`reset`](Self::reset).
    read: u64,
    /// The largest frame payload seen since [`reset`](Self::reset).
    largest: u64,
    /// A header did not parse: the stream is broken and the connection is about to close;
    /// nothing is ever reported as a boundary again.
    broken: bool,
}

impl FrameBoundary {
    /// Follows `bytes`, the next bytes handed to tungstenite.
    pub(crate) fn observe(&mut self, mut bytes: &[u8]) {
        self.read = self.read.saturating_add(bytes.len() as u64);
        while !bytes.is_empty() && !self.broken {
            if self.payload_left > 0 {
                // Fits in usize: it is at most `bytes.len()`.
                let skip = self.payload_left.min(bytes.len() as u64) as usize;
                bytes = &bytes[skip..];
                self.payload_left -= skip as u64;
                continue;
            }
            let before = usize::from(self.header_len);
            let copy = (MAX_HEADER - before).min(bytes.len());
            self.header[before..before + copy].copy_from_slice(&bytes[..copy]);
            // At most `MAX_HEADER`.
            self.header_len = (before + copy) as u8;
            let mut cursor = Cursor::new(&self.header[..before + copy]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, length))) => {
                    // The header may be shorter than what was copied: the rest is payload.
                    let used = cursor.position() as usize - before;
                    bytes = &bytes[used..];
                    self.header_len = 0;
                    self.payload_left = length;
                    self.largest = self.largest.max(length);
                    match header.opcode {
                        OpCode::Data(Data::Continue) => {
                            if header.is_final {
                                self.fragmented = false;
                            }
                        }
                        OpCode::Data(_) => self.fragmented = !header.is_final,
                        OpCode::Control(_) => {}
                    }
                    if matches!(header.opcode, OpCode::Data(_)) && !header.is_final {
                        self.fragments = self.fragments.saturating_add(1);
                    }
                }
                Ok(None) => bytes = &bytes[copy..],
                Err(_) => self.broken = true,
            }
        }
    }

    /// Data frames without FIN seen since the last call (see `fragments`).
    pub(crate) fn take_fragments(&mut self) -> u32 {
        std::mem::take(&mut self.fragments)
    }

    /// Data frames without FIN seen since [`take_fragments`](Self::take_fragments) was last
    /// called.
    pub(crate) fn fragments(&self) -> u32 {
        self.fragments
    }

    /// Every byte seen so far belongs to a complete frame, and no fragmented message is
    /// under way: a parser that has consumed every complete frame holds nothing.
    pub(crate) fn at_message_boundary(&self) -> bool {
        !self.broken && self.header_len == 0 && self.payload_left == 0 && !self.fragmented
    }

    /// Whether a parser whose read buffer started at `capacity` bytes at the last
    /// [`reset`](Self::reset) may have grown it since. tungstenite's buffer holds what was read
    /// since it was made, at most, and asks for room for a whole frame payload (or a header)
    /// on top of what it holds: it can only have outgrown `capacity` if those two together
    /// exceed it. (Counting only frames larger than `capacity` would miss one of half its
    /// size arriving whole, which doubles the buffer.)
    pub(crate) fn may_have_grown(&self, capacity: usize) -> bool {
        self.read
            .saturating_add(self.largest.max(MAX_HEADER as u64))
            > capacity as u64
    }

    /// The parser was replaced: count afresh.
    pub(crate) fn reset(&mut self) {
        self.read = 0;
        self.largest = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::Control;

    /// One frame as a client sends it (masked).
    fn frame(opcode: OpCode, is_final: bool, len: usize) -> Vec<u8> {
        let payload = vec![b'x'; len];
        let mut frame = match opcode {
            OpCode::Control(Control::Ping) => Frame::ping(payload),
            OpCode::Control(Control::Pong) => Frame::pong(payload),
            _ => Frame::message(payload, opcode, is_final),
        };
        frame.header_mut().mask = Some([1, 2, 3, 4]);
        let mut out = Vec::new();
        frame.format(&mut out).unwrap();
        out
    }

    fn binary(len: usize) -> Vec<u8> {
        frame(OpCode::Data(Data::Binary), true, len)
    }

    /// Feeds `stream` in chunks of `step` bytes; returns whether each chunk ended on a
    /// message boundary.
    fn feed(stream: &[u8], step: usize) -> (FrameBoundary, Vec<bool>) {
        let mut boundary = FrameBoundary::default();
        let at = stream
            .chunks(step)
            .map(|chunk| {
                boundary.observe(chunk);
                boundary.at_message_boundary()
            })
            .collect();
        (boundary, at)
    }

    #[test]
    fn frames_of_every_length_format_end_where_they_end_in_any_chunking() {
        // 7-bit, 16-bit and 64-bit lengths, and an empty frame.
        for len in [0, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let one = binary(len);
            let mut two = one.clone();
            two.extend_from_slice(&one);
            for step in [1, 2, 3, 7, 13, 14, 15, 64, 4096, two.len()] {
                let (boundary, at) = feed(&two, step);
                assert!(boundary.at_message_boundary(), "len {len} step {step}");
                assert_eq!(boundary.largest, len as u64);
                assert_eq!(boundary.read, two.len() as u64);
                // Inside the stream, a chunk ends on a boundary only where a frame ends.
                for (i, &at) in at.iter().enumerate() {
                    let end = ((i + 1) * step).min(two.len());
                    let expected = end == one.len() || end == two.len();
                    assert_eq!(
                        at, expected,
                        "len {len} step {step} chunk {i} ends at {end}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_fragmented_message_is_no_boundary_until_its_final_fragment() {
        let mut stream = Vec::new();
        stream.extend(frame(OpCode::Data(Data::Text), false, 10));
        let after_first = stream.len();
        // A ping between fragments is allowed and does not end the message.
        stream.extend(frame(OpCode::Control(Control::Ping), true, 4));
        let after_ping = stream.len();
        stream.extend(frame(OpCode::Data(Data::Continue), false, 10));
        let after_middle = stream.len();
        stream.extend(frame(OpCode::Data(Data::Continue), true, 10));

        let mut boundary = FrameBoundary::default();
        for (range, expected) in [
            (0..after_first, false),
            (after_first..after_ping, false),
            (after_ping..after_middle, false),
            (after_middle..stream.len(), true),
        ] {
            boundary.observe(&stream[range.clone()]);
            assert_eq!(boundary.at_message_boundary(), expected, "{range:?}");
        }
        // The first frame and the middle one have no FIN; the ping and the last one do not
        // count.
        assert_eq!(boundary.take_fragments(), 2);
        assert_eq!(boundary.fragments(), 0);
        boundary.observe(&binary(5));
        assert_eq!(
            boundary.take_fragments(),
            0,
            "a whole message is no fragment"
        );
    }

    #[test]
    fn control_frames_alone_are_boundaries() {
        let mut stream = frame(OpCode::Control(Control::Ping), true, 0);
        stream.extend(frame(OpCode::Control(Control::Pong), true, 125));
        let (boundary, at) = feed(&stream, stream.len());
        assert_eq!(at, [true]);
        assert_eq!(boundary.largest, 125);
    }

    #[test]
    fn reset_forgets_what_was_read_but_not_the_position() {
        let big = binary(100_000);
        let mut boundary = FrameBoundary::default();
        boundary.observe(&big[..50]);
        boundary.reset();
        assert!(!boundary.may_have_grown(2048));
        assert!(!boundary.at_message_boundary());
        boundary.observe(&big[50..]);
        assert!(boundary.at_message_boundary());
    }

    #[test]
    fn growth_is_possible_once_what_was_read_and_the_largest_frame_exceed_the_capacity() {
        const CAPACITY: usize = 2048;
        // Small frames, well within the buffer: no growth possible.
        let mut boundary = FrameBoundary::default();
        boundary.observe(&binary(100));
        assert!(!boundary.may_have_grown(CAPACITY));
        // A frame larger than the buffer.
        let mut boundary = FrameBoundary::default();
        boundary.observe(&binary(3000));
        assert!(boundary.may_have_grown(CAPACITY));
        // A frame of less than the buffer's size arriving whole: tungstenite asks for room for
        // its whole payload on top of the payload it already holds, and doubles the buffer.
        let mut boundary = FrameBoundary::default();
        boundary.observe(&binary(2000));
        assert!(boundary.may_have_grown(CAPACITY));
        // Many small frames: the buffer's data end moves on until it needs to make room.
        let mut boundary = FrameBoundary::default();
        for _ in 0..30 {
            boundary.observe(&binary(100));
        }
        assert!(boundary.may_have_grown(CAPACITY));
    }

    #[test]
    fn a_header_that_does_not_parse_is_never_a_boundary_again() {
        // Opcode 3 is reserved: tungstenite's parser refuses it.
        let mut stream = vec![0x83, 0x80, 1, 2, 3, 4];
        stream.extend(binary(3));
        let (boundary, _) = feed(&stream, stream.len());
        assert!(!boundary.at_message_boundary());
    }
}
