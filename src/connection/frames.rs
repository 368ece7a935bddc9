//! [`Frames`]: a run of consecutive encoded data frames in one shared buffer, and
//! [`RunBuilder`], which packs a batch of messages into as few runs as sensible.
//!
//! A fan-out hands the same buffers to every receiver. When a batch of small messages goes out
//! together (a client's burst, or a burst from Redis), packing them into one buffer means one
//! reference-count increment, one queue entry and one `writev` slice per receiver for the whole
//! run, instead of one per message. Large frames are never copied into a run: each keeps its own
//! buffer, as a single message always does.

use std::io::Cursor;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::message::{Message, MessageKind, encode_frame_into};

/// A run is closed before it would grow past this many bytes.
const RUN_BYTES: usize = 16 * 1024;
/// Frames larger than this get a buffer of their own instead of a copy into a run.
const SMALL_FRAME: usize = 2 * 1024;

/// One or more complete encoded data frames, back to back in one buffer. See the
/// [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frames {
    bytes: Bytes,
    /// Number of frames (messages) in `bytes`; at least one.
    count: u32,
    /// Frames were split off the front ([`split_first`](Self::split_first)): `bytes` is the
    /// tail of a buffer it keeps alive whole.
    trimmed: bool,
}

impl Frames {
    /// One encoded frame.
    pub(crate) fn one(frame: Bytes) -> Self {
        Self {
            bytes: frame,
            count: 1,
            trimmed: false,
        }
    }

    /// The encoded frames.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Number of frames (messages).
    pub(crate) fn count(&self) -> usize {
        self.count as usize
    }

    /// Removes and returns the first frame (which shares this run's buffer).
    pub(crate) fn split_first(&mut self) -> Bytes {
        if self.count == 1 {
            self.count = 0;
            return std::mem::take(&mut self.bytes);
        }
        let len = first_frame_len(&self.bytes);
        self.count -= 1;
        self.trimmed = true;
        self.bytes.split_to(len)
    }

    /// When frames were split off the front, moves the rest into a buffer of its own, so that
    /// it no longer keeps the whole run's buffer alive while only its own bytes are counted.
    pub(crate) fn unshare_if_trimmed(&mut self) {
        if std::mem::take(&mut self.trimmed) {
            self.bytes = Bytes::copy_from_slice(&self.bytes);
        }
    }

    /// The frames one by one (sharing this run's buffer).
    pub(crate) fn into_each(mut self) -> impl Iterator<Item = Bytes> {
        std::iter::from_fn(move || (self.count > 0).then(|| self.split_first()))
    }
}

/// In a run's bytes, the end of the frame that contains byte `offset`, and how many frames end
/// at or before it.
pub(crate) fn end_of_frame_at(bytes: &[u8], offset: usize) -> (usize, usize) {
    let (mut end, mut frames) = (0, 0);
    while end <= offset && end < bytes.len() {
        end += first_frame_len(&bytes[end..]);
        frames += 1;
    }
    (end, frames)
}

/// Length (header and payload) of the first frame in `bytes`, which holds complete frames
/// encoded by this crate.
fn first_frame_len(bytes: &[u8]) -> usize {
    let mut cursor = Cursor::new(bytes);
    match FrameHeader::parse(&mut cursor) {
        Ok(Some((_, payload))) => cursor.position() as usize + payload as usize,
        // Runs only ever hold frames this crate encoded.
        _ => unreachable!("a run holds complete frames"),
    }
}

/// Packs frames, in order, into runs. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct RunBuilder {
    runs: Vec<Frames>,
    current: Vec<u8>,
    count: u32,
}

impl RunBuilder {
    /// Adds the frame of `message`.
    pub(crate) fn push_message(&mut self, message: &Message) {
        self.push_encoded(message.kind(), message.payload());
    }

    /// Adds the frame of a `kind` message with this payload.
    pub(crate) fn push_encoded(&mut self, kind: MessageKind, payload: &[u8]) {
        if payload.len() > SMALL_FRAME {
            self.close_run();
            let mut frame = Vec::new();
            encode_frame_into(kind, payload, &mut frame);
            self.runs.push(Frames::one(Bytes::from(frame)));
            return;
        }
        if self.current.len() + payload.len() + 4 > RUN_BYTES {
            self.close_run();
        }
        encode_frame_into(kind, payload, &mut self.current);
        self.count += 1;
    }

    fn close_run(&mut self) {
        if self.count > 0 {
            let mut bytes = std::mem::take(&mut self.current);
            if bytes.capacity() - bytes.len() > bytes.len() / 8 {
                // Receivers share this buffer until they have written it: do not make them pin
                // the growth slack too.
                bytes.shrink_to_fit();
            }
            self.runs.push(Frames {
                bytes: Bytes::from(bytes),
                count: self.count,
                trimmed: false,
            });
            self.count = 0;
        }
    }

    /// The runs, in order.
    pub(crate) fn finish(mut self) -> Vec<Frames> {
        self.close_run();
        self.runs
    }

    /// `true` when nothing was added since it was built.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0 && self.runs.is_empty()
    }

    /// The frames of `messages`, in order, packed into runs.
    pub(crate) fn pack<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Vec<Frames> {
        let mut builder = Self::default();
        for message in messages {
            builder.push_message(message);
        }
        builder.finish()
    }
}

/// One run holding the frames of these short text messages (for tests).
#[cfg(test)]
pub(crate) fn one_run(texts: &[&str]) -> Frames {
    let mut runs = RunBuilder::pack(&texts.iter().map(|t| Message::text(*t)).collect::<Vec<_>>());
    assert_eq!(runs.len(), 1);
    runs.pop().expect("one run")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(runs: Vec<Frames>) -> Vec<Bytes> {
        runs.into_iter().flat_map(Frames::into_each).collect()
    }

    #[test]
    fn small_messages_share_a_run_and_split_back_into_their_frames() {
        let messages: Vec<Message> = (0..100).map(|i| Message::text(i.to_string())).collect();
        let runs = RunBuilder::pack(&messages);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].count(), 100);
        let expected: Vec<Bytes> = messages.iter().map(Message::encode_frame).collect();
        assert_eq!(
            runs[0].len(),
            expected.iter().map(Bytes::len).sum::<usize>()
        );
        assert_eq!(frames_of(runs), expected);
    }

    #[test]
    fn large_frames_keep_their_own_buffer_and_the_order_holds() {
        let messages = vec![
            Message::text("a"),
            Message::binary(vec![1u8; 70_000]),
            Message::text("b"),
            Message::text("c"),
            Message::binary(vec![2u8; SMALL_FRAME + 1]),
        ];
        let runs = RunBuilder::pack(&messages);
        let counts: Vec<usize> = runs.iter().map(Frames::count).collect();
        assert_eq!(counts, [1, 1, 2, 1]);
        let expected: Vec<Bytes> = messages.iter().map(Message::encode_frame).collect();
        assert_eq!(frames_of(runs), expected);
    }

    #[test]
    fn the_frame_containing_an_offset_is_found() {
        let runs = RunBuilder::pack(&[
            Message::text("ab"),
            Message::text("cde"),
            Message::text("f"),
        ]);
        // Frames of 4, 5 and 3 bytes.
        let bytes = runs[0].bytes();
        assert_eq!(end_of_frame_at(bytes, 0), (4, 1));
        assert_eq!(end_of_frame_at(bytes, 3), (4, 1));
        assert_eq!(end_of_frame_at(bytes, 4), (9, 2));
        assert_eq!(end_of_frame_at(bytes, 11), (12, 3));
    }

    #[test]
    fn runs_close_before_they_outgrow_their_size() {
        let messages: Vec<Message> = (0..100)
            .map(|_| Message::binary(vec![0u8; SMALL_FRAME]))
            .collect();
        let runs = RunBuilder::pack(&messages);
        assert!(runs.iter().all(|run| run.len() <= RUN_BYTES));
        assert_eq!(runs.iter().map(Frames::count).sum::<usize>(), 100);
        let expected: Vec<Bytes> = messages.iter().map(Message::encode_frame).collect();
        assert_eq!(frames_of(runs), expected);
    }
}
