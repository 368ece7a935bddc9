//! [`Envelope`]: the bytes published on a room channel.
//!
//! Version 1, all offsets in bytes:
//!
//! | offset | size | field   | value                                                        |
//! | ------ | ---- | ------- | ------------------------------------------------------------ |
//! | 0      | 1    | magic   | `0xF7` (never valid in UTF-8: plain text is never taken for an envelope) |
//! | 1      | 1    | version | `0x01`                                                       |
//! | 2      | 1    | kind    | `0x01` text (payload must be UTF-8), `0x02` binary           |
//! | 3      | 16   | origin  | instance id of the publisher; all zeros for an external emitter |
//! | 19     | rest | payload | the message, to the end of the Redis message (may be empty)  |
//!
//! The room is not in the envelope: it is the channel's name (`{prefix}:{room}`).

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::message::{Message, MessageKind};

/// First byte of every envelope. `0xF7` never occurs in UTF-8, so no text payload (JSON, a
/// plain string) can be mistaken for an envelope.
pub const ENVELOPE_MAGIC: u8 = 0xF7;
/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes before the payload: magic, version, kind, 16-byte origin.
pub const ENVELOPE_HEADER_LEN: usize = 3 + 16;

const KIND_TEXT: u8 = 0x01;
const KIND_BINARY: u8 = 0x02;

/// The 16-byte id of a hub instance, carried in every envelope it publishes so that it can
/// recognise (and skip) its own messages when Redis sends them back.
///
/// Each hub draws a random one when it is built. [`InstanceId::EXTERNAL`] (all zeros) is
/// reserved for emitters that are not hubs; no hub ever uses it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId([u8; 16]);

impl InstanceId {
    /// The origin of messages published by something that is not a hub (all zeros).
    pub const EXTERNAL: Self = Self([0; 16]);

    /// A fresh random id (never [`EXTERNAL`](Self::EXTERNAL)).
    pub fn random() -> Self {
        loop {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
            bytes[8..].copy_from_slice(&random_u64().to_le_bytes());
            if bytes != [0; 16] {
                return Self(bytes);
            }
        }
    }

    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The id's bytes, as they appear in an envelope.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

/// 64 random bits without a dependency: `RandomState` is seeded from the OS once per thread and
/// perturbed per call; hashing a counter and the clock with it is plenty for ids and jitter.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Why bytes on a room channel are not an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than the 19-byte header.
    TooShort {
        /// Length of what was received.
        len: usize,
    },
    /// The first byte is not [`ENVELOPE_MAGIC`].
    BadMagic(u8),
    /// A version this crate does not read (only [`ENVELOPE_VERSION`] is).
    UnsupportedVersion(u8),
    /// A kind byte other than `0x01` (text) or `0x02` (binary).
    UnknownKind(u8),
    /// A text envelope whose payload is not valid UTF-8.
    InvalidUtf8,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "not an envelope: {len} bytes, shorter than the {ENVELOPE_HEADER_LEN}-byte header"
            ),
            Self::BadMagic(byte) => write!(
                f,
                "not an envelope: first byte {byte:#04x}, expected {ENVELOPE_MAGIC:#04x}"
            ),
            Self::UnsupportedVersion(version) => write!(
                f,
                "envelope version {version} is not supported (this instance reads version {ENVELOPE_VERSION})"
            ),
            Self::UnknownKind(kind) => write!(
                f,
                "envelope kind {kind:#04x} is unknown (0x01 text, 0x02 binary)"
            ),
            Self::InvalidUtf8 => f.write_str("text envelope with a payload that is not UTF-8"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

/// A message with its origin, as carried between instances on a room channel.
///
/// See the [module docs](crate::redis#the-envelope) for the byte layout. The codec is strict on
/// input: anything that is not exactly a version-1 envelope is an [`EnvelopeError`].
///
/// ```
/// use tower_ws_hub::Message;
/// use tower_ws_hub::redis::{Envelope, InstanceId};
///
/// let bytes = Envelope::new(InstanceId::EXTERNAL, Message::text("hi")).encode();
/// assert_eq!(&bytes[..3], &[0xF7, 0x01, 0x01]);
/// assert_eq!(&bytes[19..], b"hi");
///
/// let back = Envelope::decode(&bytes).unwrap();
/// assert_eq!(back.message().as_text(), Some("hi"));
/// assert_eq!(back.origin(), InstanceId::EXTERNAL);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    origin: InstanceId,
    message: Message,
}

impl Envelope {
    /// An envelope for `message` published by `origin`.
    pub fn new(origin: InstanceId, message: Message) -> Self {
        Self { origin, message }
    }

    /// Who published it.
    pub fn origin(&self) -> InstanceId {
        self.origin
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, consuming the envelope.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// Length of the encoded envelope in bytes.
    pub fn encoded_len(&self) -> usize {
        ENVELOPE_HEADER_LEN + self.message.len()
    }

    /// The envelope's bytes.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        write_envelope(&mut out, self.origin, &self.message);
        Bytes::from(out)
    }

    /// Reads an envelope. The payload is copied once; text is checked to be UTF-8.
    ///
    /// # Errors
    ///
    /// The first rule `bytes` breaks: too short, wrong magic, unknown version or kind, or a text
    /// payload that is not UTF-8.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() < ENVELOPE_HEADER_LEN {
            return Err(EnvelopeError::TooShort { len: bytes.len() });
        }
        if bytes[0] != ENVELOPE_MAGIC {
            return Err(EnvelopeError::BadMagic(bytes[0]));
        }
        if bytes[1] != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(bytes[1]));
        }
        let kind = match bytes[2] {
            KIND_TEXT => MessageKind::Text,
            KIND_BINARY => MessageKind::Binary,
            other => return Err(EnvelopeError::UnknownKind(other)),
        };
        let mut origin = [0u8; 16];
        origin.copy_from_slice(&bytes[3..ENVELOPE_HEADER_LEN]);
        let payload = &bytes[ENVELOPE_HEADER_LEN..];
        // Check UTF-8 before copying, so garbage costs no allocation.
        if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
            return Err(EnvelopeError::InvalidUtf8);
        }
        let message = Message::from_kind(kind, Bytes::copy_from_slice(payload))
            .map_err(|_| EnvelopeError::InvalidUtf8)?;
        Ok(Self {
            origin: InstanceId(origin),
            message,
        })
    }
}

/// The origin of what looks like an envelope, without checking or copying the rest: lets an
/// instance skip its own messages (every one of which Redis sends back) at no cost.
pub(crate) fn peek_origin(bytes: &[u8]) -> Option<InstanceId> {
    if bytes.len() < ENVELOPE_HEADER_LEN
        || bytes[0] != ENVELOPE_MAGIC
        || bytes[1] != ENVELOPE_VERSION
    {
        return None;
    }
    let mut origin = [0u8; 16];
    origin.copy_from_slice(&bytes[3..ENVELOPE_HEADER_LEN]);
    Some(InstanceId(origin))
}

/// Writes an envelope into `out` (a `Vec`, or a Redis command argument directly).
pub(crate) fn write_envelope(out: &mut impl std::io::Write, origin: InstanceId, message: &Message) {
    let kind = match message.kind() {
        MessageKind::Text => KIND_TEXT,
        MessageKind::Binary => KIND_BINARY,
    };
    // Writing to a Vec or to redis' argument buffer cannot fail.
    let _ = out.write_all(&[ENVELOPE_MAGIC, ENVELOPE_VERSION, kind]);
    let _ = out.write_all(origin.as_bytes());
    let _ = out.write_all(message.payload());
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: InstanceId =
        InstanceId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);

    fn header(kind: u8) -> Vec<u8> {
        let mut bytes = vec![ENVELOPE_MAGIC, ENVELOPE_VERSION, kind];
        bytes.extend_from_slice(ORIGIN.as_bytes());
        bytes
    }

    #[test]
    fn text_round_trips() {
        let envelope = Envelope::new(ORIGIN, Message::text("héllo"));
        let bytes = envelope.encode();
        assert_eq!(bytes.len(), envelope.encoded_len());
        assert_eq!(Envelope::decode(&bytes), Ok(envelope));
    }

    #[test]
    fn binary_round_trips_including_non_utf8_bytes() {
        let envelope = Envelope::new(ORIGIN, Message::binary(vec![0xff, 0x00, 0xfe]));
        let decoded = Envelope::decode(&envelope.encode()).unwrap();
        assert!(decoded.message().is_binary());
        assert_eq!(decoded, envelope);
    }

    #[test]
    fn empty_payloads_round_trip() {
        for message in [Message::text(""), Message::binary(Vec::new())] {
            let envelope = Envelope::new(InstanceId::EXTERNAL, message);
            let bytes = envelope.encode();
            assert_eq!(bytes.len(), ENVELOPE_HEADER_LEN);
            assert_eq!(Envelope::decode(&bytes), Ok(envelope));
        }
    }

    #[test]
    fn layout_matches_the_spec_byte_for_byte() {
        let bytes = Envelope::new(ORIGIN, Message::binary(vec![0xAA])).encode();
        let mut expected = header(0x02);
        expected.push(0xAA);
        assert_eq!(&bytes[..], &expected[..]);
    }

    #[test]
    fn anything_shorter_than_the_header_is_too_short() {
        let full = header(KIND_TEXT);
        for len in 0..ENVELOPE_HEADER_LEN {
            assert_eq!(
                Envelope::decode(&full[..len]),
                Err(EnvelopeError::TooShort { len })
            );
        }
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let mut bytes = header(KIND_TEXT);
        bytes[0] = b'{';
        assert_eq!(Envelope::decode(&bytes), Err(EnvelopeError::BadMagic(b'{')));
    }

    #[test]
    fn plain_text_is_never_an_envelope() {
        let json = br#"{"type":"chat","text":"this is long enough to pass the length check"}"#;
        assert_eq!(Envelope::decode(json), Err(EnvelopeError::BadMagic(b'{')));
    }

    #[test]
    fn unknown_versions_are_rejected() {
        for version in [0u8, 2, 0xff] {
            let mut bytes = header(KIND_TEXT);
            bytes[1] = version;
            assert_eq!(
                Envelope::decode(&bytes),
                Err(EnvelopeError::UnsupportedVersion(version))
            );
        }
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        for kind in [0u8, 3, 0x08, 0x09, 0xff] {
            assert_eq!(
                Envelope::decode(&header(kind)),
                Err(EnvelopeError::UnknownKind(kind))
            );
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_rejected() {
        let mut bytes = header(KIND_TEXT);
        bytes.extend_from_slice(b"ok \xff\xfe");
        assert_eq!(Envelope::decode(&bytes), Err(EnvelopeError::InvalidUtf8));
        // A truncated multi-byte character too.
        let mut bytes = header(KIND_TEXT);
        bytes.extend_from_slice(&"é".as_bytes()[..1]);
        assert_eq!(Envelope::decode(&bytes), Err(EnvelopeError::InvalidUtf8));
    }

    #[test]
    fn every_error_explains_itself() {
        let errors = [
            EnvelopeError::TooShort { len: 3 },
            EnvelopeError::BadMagic(0x7b),
            EnvelopeError::UnsupportedVersion(9),
            EnvelopeError::UnknownKind(7),
            EnvelopeError::InvalidUtf8,
        ];
        for error in errors {
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn the_origin_can_be_read_without_decoding() {
        let bytes = Envelope::new(ORIGIN, Message::text("x")).encode();
        assert_eq!(peek_origin(&bytes), Some(ORIGIN));
        assert_eq!(peek_origin(&bytes[..ENVELOPE_HEADER_LEN - 1]), None);
        assert_eq!(peek_origin(b"{\"not\":\"an envelope at all\"}"), None);
    }

    #[test]
    fn random_ids_differ_and_are_never_external() {
        let a = InstanceId::random();
        let b = InstanceId::random();
        assert_ne!(a, b);
        assert_ne!(a, InstanceId::EXTERNAL);
        assert_eq!(a.to_string().len(), 32);
    }
}
