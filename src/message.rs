//! [`Message`]: what travels through the hub.
//!
//! A message is either text (guaranteed UTF-8) or binary. Its payload is a reference-counted
//! [`Bytes`] buffer: cloning a message, or delivering it to a thousand receivers, never copies the
//! payload.

use std::fmt;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

/// A WebSocket data message: text or binary.
///
/// Text stays text and binary stays binary all the way from the sender to every receiver.
///
/// ```
/// use tower_ws_hub::Message;
///
/// let hello = Message::text("hello");
/// assert_eq!(hello.as_text(), Some("hello"));
///
/// let blob = Message::binary(vec![1, 2, 3]);
/// assert!(blob.is_binary());
/// assert_eq!(&blob.payload()[..], &[1, 2, 3]);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    payload: Payload,
}

#[derive(Clone, PartialEq, Eq)]
enum Payload {
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// Whether a [`Message`] is text or binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A UTF-8 text message (WebSocket opcode 0x1).
    Text,
    /// A binary message (WebSocket opcode 0x2).
    Binary,
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            payload: Payload::Text(Utf8Bytes::from(text.into())),
        }
    }

    /// A text message from a `&'static str`, without allocating.
    pub const fn text_static(text: &'static str) -> Self {
        Self {
            payload: Payload::Text(Utf8Bytes::from_static(text)),
        }
    }

    /// A text message from bytes that must be valid UTF-8.
    ///
    /// # Errors
    ///
    /// Returns the UTF-8 error if `bytes` is not valid UTF-8.
    pub fn text_from_bytes(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        Ok(Self {
            payload: Payload::Text(Utf8Bytes::try_from(bytes)?),
        })
    }

    /// A binary message.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Self {
            payload: Payload::Binary(bytes.into()),
        }
    }

    /// A message of the given kind.
    ///
    /// # Errors
    ///
    /// Returns the UTF-8 error if `kind` is [`MessageKind::Text`] and `bytes` is not valid UTF-8.
    pub fn from_kind(kind: MessageKind, bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        match kind {
            MessageKind::Text => Self::text_from_bytes(bytes),
            MessageKind::Binary => Ok(Self::binary(bytes)),
        }
    }

    /// Text or binary.
    pub fn kind(&self) -> MessageKind {
        match self.payload {
            Payload::Text(_) => MessageKind::Text,
            Payload::Binary(_) => MessageKind::Binary,
        }
    }

    /// `true` for a text message.
    pub fn is_text(&self) -> bool {
        matches!(self.payload, Payload::Text(_))
    }

    /// `true` for a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self.payload, Payload::Binary(_))
    }

    /// The text of a text message, `None` for a binary one.
    pub fn as_text(&self) -> Option<&str> {
        match &self.payload {
            Payload::Text(text) => Some(text.as_str()),
            Payload::Binary(_) => None,
        }
    }

    /// The payload bytes (the UTF-8 bytes for text). Cloning the returned [`Bytes`] is cheap.
    pub fn payload(&self) -> &Bytes {
        match &self.payload {
            Payload::Text(text) => text.as_ref(),
            Payload::Binary(bytes) => bytes,
        }
    }

    /// The payload, consuming the message.
    pub fn into_payload(self) -> Bytes {
        match self.payload {
            Payload::Text(text) => Bytes::from(text),
            Payload::Binary(bytes) => bytes,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.payload().len()
    }

    /// `true` if the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tungstenite message (for tests comparing encodings).
    #[cfg(test)]
    pub(crate) fn into_ws(self) -> tungstenite::Message {
        match self.payload {
            Payload::Text(text) => tungstenite::Message::Text(text),
            Payload::Binary(bytes) => tungstenite::Message::Binary(bytes),
        }
    }

    /// The complete WebSocket frame for this message as the server sends it (unmasked, final),
    /// header and payload in one buffer: encoded once per publish, then shared by every
    /// receiver's socket.
    pub(crate) fn encode_frame(&self) -> Bytes {
        encode_frame(self.kind(), self.payload())
    }

    /// A hub message from a tungstenite data message; `None` for control frames.
    pub(crate) fn from_ws(message: tungstenite::Message) -> Option<Self> {
        match message {
            tungstenite::Message::Text(text) => Some(Self {
                payload: Payload::Text(text),
            }),
            tungstenite::Message::Binary(bytes) => Some(Self::binary(bytes)),
            _ => None,
        }
    }
}

/// The frame for a `kind` message with this payload, built straight from a borrowed payload
/// (e.g. an envelope received from Redis) with a single copy.
pub(crate) fn encode_frame(kind: MessageKind, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    encode_frame_into(kind, payload, &mut frame);
    Bytes::from(frame)
}

/// Appends the frame for a `kind` message with this payload to `out`.
pub(crate) fn encode_frame_into(kind: MessageKind, payload: &[u8], out: &mut Vec<u8>) {
    let opcode = match kind {
        MessageKind::Text => OpCode::Data(OpData::Text),
        MessageKind::Binary => OpCode::Data(OpData::Binary),
    };
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    let length = payload.len() as u64;
    out.reserve(header.len(length) + payload.len());
    header
        .format(length, out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PREVIEW: usize = 64;
        let mut s = f.debug_struct("Message");
        s.field("kind", &self.kind()).field("len", &self.len());
        match &self.payload {
            Payload::Text(text) => {
                let mut end = text.len().min(PREVIEW);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                s.field("text", &&text[..end]);
            }
            Payload::Binary(bytes) => {
                s.field("bytes", &&bytes[..bytes.len().min(PREVIEW)]);
            }
        }
        s.finish()
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Self::text(text)
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Self::text(text)
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Self::binary(bytes)
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Self::binary(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_bytes_rejects_invalid_utf8() {
        assert!(Message::text_from_bytes(Bytes::from_static(b"\xff\xfe")).is_err());
        let ok = Message::text_from_bytes(Bytes::from_static("héllo".as_bytes())).unwrap();
        assert_eq!(ok.as_text(), Some("héllo"));
    }

    #[test]
    fn kinds_survive_the_round_trip_through_tungstenite() {
        let text = Message::text("a");
        let binary = Message::binary(vec![0u8, 1]);
        assert_eq!(Message::from_ws(text.clone().into_ws()), Some(text));
        assert_eq!(Message::from_ws(binary.clone().into_ws()), Some(binary));
        assert_eq!(
            Message::from_ws(tungstenite::Message::Ping(Bytes::new())),
            None
        );
    }

    #[test]
    fn frames_are_encoded_as_tungstenite_would() {
        for message in [
            Message::text("hi"),
            Message::binary(vec![7u8; 300]),
            Message::binary(vec![1u8; 70_000]),
        ] {
            let mut expected = Vec::new();
            let frame = match message.clone().into_ws() {
                tungstenite::Message::Text(t) => tungstenite::protocol::frame::Frame::message(
                    t,
                    OpCode::Data(OpData::Text),
                    true,
                ),
                tungstenite::Message::Binary(b) => tungstenite::protocol::frame::Frame::message(
                    b,
                    OpCode::Data(OpData::Binary),
                    true,
                ),
                _ => unreachable!(),
            };
            frame.format(&mut expected).unwrap();
            assert_eq!(&message.encode_frame()[..], &expected[..]);
        }
    }

    #[test]
    fn payload_is_shared_not_copied() {
        let original = Bytes::from(vec![7u8; 1024]);
        let message = Message::binary(original.clone());
        let copy = message.clone();
        assert_eq!(copy.payload().as_ptr(), original.as_ptr());
    }

    #[test]
    fn debug_truncates_on_a_char_boundary() {
        let long = "é".repeat(100);
        let rendered = format!("{:?}", Message::text(long));
        assert!(rendered.contains("len: 200"));
    }

    /// Frames at the length-encoding edges are byte for byte what tungstenite writes.
    #[test]
    fn edge_sizes_match_tungstenite() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 65_537] {
            for message in [
                Message::binary(vec![7u8; len]),
                Message::text("a".repeat(len)),
            ] {
                let mut expected = Vec::new();
                let opcode = if message.is_text() {
                    OpData::Text
                } else {
                    OpData::Binary
                };
                tungstenite::protocol::frame::Frame::message(
                    message.payload().clone(),
                    OpCode::Data(opcode),
                    true,
                )
                .format(&mut expected)
                .unwrap();
                assert_eq!(&message.encode_frame()[..], &expected[..], "len {len}");
                let mut out = vec![1u8, 2];
                encode_frame_into(message.kind(), message.payload(), &mut out);
                assert_eq!(&out[2..], &expected[..], "len {len}");
            }
        }
    }
}
