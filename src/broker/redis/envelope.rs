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
//!
//! **Signed envelopes.** With a shared [`EnvelopeKey`], the kind byte has its high bit set
//! (`0x81` text, `0x82` binary) and a 32-byte tag sits between the origin and the payload:
//!
//! | offset | size | field   | value                                                        |
//! | ------ | ---- | ------- | ------------------------------------------------------------ |
//! | 0..19  | 19   | header  | as above, kind `0x81` or `0x82`                              |
//! | 19     | 32   | tag     | HMAC-SHA256(key, u32be(len(channel)) ‖ channel ‖ header ‖ payload) |
//! | 51     | rest | payload | the message                                                  |
//!
//! The channel name is part of what is signed, so a signed message cannot be replayed into
//! another room (it can be replayed into the same room: there is no nonce).

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::connection::frames::RunBuilder;
use crate::message::{Message, MessageKind};

/// First byte of every envelope. `0xF7` never occurs in UTF-8, so no text payload (JSON, a
/// plain string) can be mistaken for an envelope.
pub const ENVELOPE_MAGIC: u8 = 0xF7;
/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes before the payload: magic, version, kind, 16-byte origin.
pub const ENVELOPE_HEADER_LEN: usize = 3 + 16;

/// Length of the tag of a signed envelope (HMAC-SHA256).
pub const ENVELOPE_TAG_LEN: usize = 32;

const KIND_TEXT: u8 = 0x01;
const KIND_BINARY: u8 = 0x02;
/// High bit of the kind byte: a tag follows the origin.
const KIND_SIGNED: u8 = 0x80;

/// A shared secret that signs and verifies envelopes, so that only processes holding it can
/// speak in rooms through Redis ([`RedisConfig::signing_key`](super::RedisConfig::signing_key)).
///
/// ```
/// use tower_ws_hub::Message;
/// use tower_ws_hub::redis::{Envelope, EnvelopeKey, InstanceId};
///
/// let key = EnvelopeKey::new(b"a shared secret of 32 bytes or more!");
/// let bytes = Envelope::new(InstanceId::EXTERNAL, Message::text("hi"))
///     .encode_signed("tower-ws-hub:lobby", &key);
/// assert!(Envelope::decode_verified(&bytes, "tower-ws-hub:lobby", &key).is_ok());
/// // Bound to its channel: not accepted in another room.
/// assert!(Envelope::decode_verified(&bytes, "tower-ws-hub:other", &key).is_err());
/// ```
#[derive(Clone)]
pub struct EnvelopeKey {
    mac: Hmac<Sha256>,
}

impl EnvelopeKey {
    /// Shortest key accepted, in bytes. Use 32 random bytes.
    pub const MIN_LEN: usize = 16;

    /// A key from shared secret bytes.
    ///
    /// # Panics
    ///
    /// If `key` is shorter than [`MIN_LEN`](Self::MIN_LEN) bytes.
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        let key = key.as_ref();
        assert!(
            key.len() >= Self::MIN_LEN,
            "an envelope key needs at least {} bytes (use 32 random bytes)",
            Self::MIN_LEN
        );
        Self {
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length"),
        }
    }

    /// The MAC state after absorbing everything a tag covers.
    fn absorb(&self, channel: &[&[u8]], header: &[u8], payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        let channel_len: usize = channel.iter().map(|part| part.len()).sum();
        mac.update(&u32::try_from(channel_len).unwrap_or(u32::MAX).to_be_bytes());
        for part in channel {
            mac.update(part);
        }
        mac.update(header);
        mac.update(payload);
        mac
    }

    fn tag(&self, channel: &[&[u8]], header: &[u8], payload: &[u8]) -> [u8; ENVELOPE_TAG_LEN] {
        let mut tag = [0u8; ENVELOPE_TAG_LEN];
        tag.copy_from_slice(
            &self
                .absorb(channel, header, payload)
                .finalize()
                .into_bytes(),
        );
        tag
    }

    /// Constant-time comparison of `tag` with the expected one.
    fn verify(&self, channel: &[&[u8]], header: &[u8], payload: &[u8], tag: &[u8]) -> bool {
        self.absorb(channel, header, payload)
            .verify_slice(tag)
            .is_ok()
    }
}

impl fmt::Debug for EnvelopeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvelopeKey(..)")
    }
}

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
    /// Shorter than the 19-byte header, or, for a signed kind (`0x81`, `0x82`), than the
    /// 51 bytes of the header and its tag.
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
    /// An unsigned envelope where a signed one is required (a signing key is configured).
    Unsigned,
    /// A signed envelope whose tag does not match: another key, another channel, or tampered.
    BadSignature,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Only a signed kind gets past the header check and is still too short.
            Self::TooShort { len } if *len >= ENVELOPE_HEADER_LEN => write!(
                f,
                "signed envelope cut short: {len} bytes, shorter than the {}-byte header and \
                 tag of a signed envelope (kind 0x81/0x82)",
                ENVELOPE_HEADER_LEN + ENVELOPE_TAG_LEN
            ),
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
            Self::Unsigned => f.write_str(
                "unsigned envelope refused: this instance requires envelopes signed with its key",
            ),
            Self::BadSignature => f.write_str(
                "envelope signature does not match (another key, another channel, or tampered): \
                 every instance and emitter must sign with the same EnvelopeKey",
            ),
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
        write_envelope(&mut out, self.origin, &self.message, None);
        Bytes::from(out)
    }

    /// The envelope's bytes, signed with `key` for `channel` (`{prefix}:{room}`).
    pub fn encode_signed(&self, channel: &str, key: &EnvelopeKey) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len() + ENVELOPE_TAG_LEN);
        write_envelope(
            &mut out,
            self.origin,
            &self.message,
            Some((key, &[channel.as_bytes()])),
        );
        Bytes::from(out)
    }

    /// Reads an envelope, signed or not, without checking a signature (it has no key; use
    /// [`decode_verified`](Self::decode_verified) for that). The payload is copied once; text
    /// is checked to be UTF-8.
    ///
    /// # Errors
    ///
    /// The first rule `bytes` breaks: too short, wrong magic, unknown version or kind, or a text
    /// payload that is not UTF-8.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Parsed::parse(bytes)?.into_envelope()
    }

    /// Reads an envelope that must be signed with `key` for `channel`.
    ///
    /// # Errors
    ///
    /// As [`decode`](Self::decode), plus [`EnvelopeError::Unsigned`] and
    /// [`EnvelopeError::BadSignature`].
    pub fn decode_verified(
        bytes: &[u8],
        channel: &str,
        key: &EnvelopeKey,
    ) -> Result<Self, EnvelopeError> {
        Parsed::parse(bytes)?
            .verified(Some((channel, key)))?
            .into_envelope()
    }
}

/// What a subscriber delivers: the WebSocket frame for the envelope's message, appended to
/// `runs` straight from the received bytes (one copy), after the same checks as
/// [`Envelope::decode`] (and the signature when `key` is given, as
/// [`Envelope::decode_verified`]). Nothing is appended when a check fails.
pub(crate) fn decode_frame_into(
    bytes: &[u8],
    key: Option<(&str, &EnvelopeKey)>,
    runs: &mut RunBuilder,
) -> Result<(), EnvelopeError> {
    let parsed = Parsed::parse(bytes)?.verified(key)?;
    parsed.check_utf8()?;
    runs.push_encoded(parsed.kind, parsed.payload);
    Ok(())
}

/// The structural checks and the signature of [`Envelope::decode_verified`], without decoding
/// the message: for an instance's own envelopes, which it skips once it knows they are its own.
pub(crate) fn check_signed(
    bytes: &[u8],
    channel: &str,
    key: &EnvelopeKey,
) -> Result<(), EnvelopeError> {
    Parsed::parse(bytes)?.verified(Some((channel, key)))?;
    Ok(())
}

/// The checks of [`Envelope::decode`], without copying the message: for an instance's own
/// envelopes when it has no key (with one, [`check_signed`]), so that garbage carrying its id
/// (no secret: it is in the probe channels' names) is counted like any other.
pub(crate) fn check_unsigned(bytes: &[u8]) -> Result<(), EnvelopeError> {
    Parsed::parse(bytes)?.check_utf8()
}

/// An envelope's parts, borrowed from the bytes, after the structural checks.
struct Parsed<'a> {
    header: &'a [u8],
    kind: MessageKind,
    origin: InstanceId,
    tag: Option<&'a [u8]>,
    payload: &'a [u8],
}

impl<'a> Parsed<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() < ENVELOPE_HEADER_LEN {
            return Err(EnvelopeError::TooShort { len: bytes.len() });
        }
        if bytes[0] != ENVELOPE_MAGIC {
            return Err(EnvelopeError::BadMagic(bytes[0]));
        }
        if bytes[1] != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(bytes[1]));
        }
        let kind = match bytes[2] & !KIND_SIGNED {
            KIND_TEXT => MessageKind::Text,
            KIND_BINARY => MessageKind::Binary,
            _ => return Err(EnvelopeError::UnknownKind(bytes[2])),
        };
        let (header, rest) = bytes.split_at(ENVELOPE_HEADER_LEN);
        let (tag, payload) = if bytes[2] & KIND_SIGNED != 0 {
            if rest.len() < ENVELOPE_TAG_LEN {
                return Err(EnvelopeError::TooShort { len: bytes.len() });
            }
            let (tag, payload) = rest.split_at(ENVELOPE_TAG_LEN);
            (Some(tag), payload)
        } else {
            (None, rest)
        };
        let mut origin = [0u8; 16];
        origin.copy_from_slice(&header[3..]);
        Ok(Self {
            header,
            kind,
            origin: InstanceId(origin),
            tag,
            payload,
        })
    }

    /// With `key` (channel, key): the envelope must be signed, and correctly.
    fn verified(self, key: Option<(&str, &EnvelopeKey)>) -> Result<Self, EnvelopeError> {
        if let Some((channel, key)) = key {
            let tag = self.tag.ok_or(EnvelopeError::Unsigned)?;
            if !key.verify(&[channel.as_bytes()], self.header, self.payload, tag) {
                return Err(EnvelopeError::BadSignature);
            }
        }
        Ok(self)
    }

    fn check_utf8(&self) -> Result<(), EnvelopeError> {
        if self.kind == MessageKind::Text && std::str::from_utf8(self.payload).is_err() {
            return Err(EnvelopeError::InvalidUtf8);
        }
        Ok(())
    }

    fn into_envelope(self) -> Result<Envelope, EnvelopeError> {
        // Check UTF-8 before copying, so garbage costs no allocation.
        self.check_utf8()?;
        let message = Message::from_kind(self.kind, Bytes::copy_from_slice(self.payload))
            .map_err(|_| EnvelopeError::InvalidUtf8)?;
        Ok(Envelope {
            origin: self.origin,
            message,
        })
    }
}

/// The origin of what looks like an envelope, without checking or copying the rest: lets an
/// instance recognise its own messages (every one of which Redis sends back) without decoding
/// them (with a signing key it still checks their signature, see [`check_signed`]).
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

/// Writes an envelope into `out` (a `Vec`, or a Redis command argument directly), signed for
/// the channel made of `channel` parts when a key is given.
pub(crate) fn write_envelope(
    out: &mut impl std::io::Write,
    origin: InstanceId,
    message: &Message,
    signing: Option<(&EnvelopeKey, &[&[u8]])>,
) {
    let mut kind = match message.kind() {
        MessageKind::Text => KIND_TEXT,
        MessageKind::Binary => KIND_BINARY,
    };
    if signing.is_some() {
        kind |= KIND_SIGNED;
    }
    let mut header = [0u8; ENVELOPE_HEADER_LEN];
    header[..3].copy_from_slice(&[ENVELOPE_MAGIC, ENVELOPE_VERSION, kind]);
    header[3..].copy_from_slice(origin.as_bytes());
    // Writing to a Vec or to redis' argument buffer cannot fail.
    let _ = out.write_all(&header);
    if let Some((key, channel)) = signing {
        let _ = out.write_all(&key.tag(channel, &header, message.payload()));
    }
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
            EnvelopeError::Unsigned,
            EnvelopeError::BadSignature,
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

    const CHANNEL: &str = "tower-ws-hub:lobby";

    fn key() -> EnvelopeKey {
        EnvelopeKey::new([7u8; 32])
    }

    #[test]
    fn signed_envelopes_verify_only_with_the_key_and_channel() {
        let envelope = Envelope::new(ORIGIN, Message::text("signed"));
        let bytes = envelope.encode_signed(CHANNEL, &key());
        assert_eq!(bytes[2], KIND_TEXT | KIND_SIGNED);
        assert_eq!(bytes.len(), ENVELOPE_HEADER_LEN + ENVELOPE_TAG_LEN + 6);
        assert_eq!(
            Envelope::decode_verified(&bytes, CHANNEL, &key()),
            Ok(envelope.clone())
        );
        assert_eq!(
            Envelope::decode_verified(&bytes, "tower-ws-hub:other", &key()),
            Err(EnvelopeError::BadSignature)
        );
        assert_eq!(
            Envelope::decode_verified(&bytes, CHANNEL, &EnvelopeKey::new([8u8; 32])),
            Err(EnvelopeError::BadSignature)
        );
        // Without a key the signed envelope still reads (nothing is verified).
        assert_eq!(Envelope::decode(&bytes), Ok(envelope));
    }

    /// The signed layout README and the module docs give to emitters in other languages, byte
    /// for byte: the tag was computed outside Rust (Python's `hmac`) as
    /// `HMAC-SHA256(key, u32be(len(channel)) ‖ channel ‖ header ‖ payload)`. Changing what is
    /// signed, or where the tag sits, breaks every emitter written from the docs.
    #[test]
    fn signed_layout_matches_the_spec_byte_for_byte() {
        const TAG: &str = "5707822afbe666ac7043d36b22c1f939b4c66200ae5eb6cddca6c5f776c3b577";
        let bytes = Envelope::new(ORIGIN, Message::text("héllo")).encode_signed(CHANNEL, &key());
        let mut expected = header(KIND_TEXT | KIND_SIGNED);
        expected.extend(
            (0..TAG.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&TAG[i..i + 2], 16).expect("hex")),
        );
        expected.extend_from_slice("héllo".as_bytes());
        assert_eq!(&bytes[..], &expected[..]);
        assert_eq!(
            Envelope::decode_verified(&expected, CHANNEL, &key()),
            Ok(Envelope::new(ORIGIN, Message::text("héllo")))
        );
    }

    #[test]
    fn any_tampering_breaks_the_signature() {
        let bytes =
            Envelope::new(ORIGIN, Message::binary(vec![1, 2, 3])).encode_signed(CHANNEL, &key());
        for index in 0..bytes.len() {
            let mut tampered = bytes.to_vec();
            tampered[index] ^= 0x01;
            assert!(
                Envelope::decode_verified(&tampered, CHANNEL, &key()).is_err(),
                "flipping byte {index} went unnoticed"
            );
        }
    }

    fn decode_frame(
        bytes: &[u8],
        key: Option<(&str, &EnvelopeKey)>,
    ) -> Result<Bytes, EnvelopeError> {
        let mut runs = RunBuilder::default();
        decode_frame_into(bytes, key, &mut runs)?;
        let mut frames = runs.finish();
        assert_eq!(frames.len(), 1);
        Ok(frames.pop().unwrap().bytes().clone())
    }

    #[test]
    fn a_received_envelope_becomes_the_frame_a_local_publish_would_send() {
        for message in [Message::text("héllo"), Message::binary(vec![0u8, 0xff])] {
            let bytes = Envelope::new(ORIGIN, message.clone()).encode();
            assert_eq!(decode_frame(&bytes, None), Ok(message.encode_frame()));
            let signed = Envelope::new(ORIGIN, message.clone()).encode_signed(CHANNEL, &key());
            assert_eq!(
                decode_frame(&signed, Some((CHANNEL, &key()))),
                Ok(message.encode_frame())
            );
            assert_eq!(
                decode_frame(&bytes, Some((CHANNEL, &key()))),
                Err(EnvelopeError::Unsigned)
            );
        }
        let mut bad_text = header(KIND_TEXT);
        bad_text.push(0xff);
        assert_eq!(
            decode_frame(&bad_text, None),
            Err(EnvelopeError::InvalidUtf8)
        );
    }

    #[test]
    fn unsigned_envelopes_are_refused_where_a_key_is_required() {
        let bytes = Envelope::new(ORIGIN, Message::text("plain")).encode();
        assert_eq!(
            Envelope::decode_verified(&bytes, CHANNEL, &key()),
            Err(EnvelopeError::Unsigned)
        );
    }

    #[test]
    fn a_signed_envelope_cut_inside_its_tag_is_too_short() {
        let bytes = Envelope::new(ORIGIN, Message::text("x")).encode_signed(CHANNEL, &key());
        let cut = &bytes[..ENVELOPE_HEADER_LEN + 10];
        assert_eq!(
            Envelope::decode(cut),
            Err(EnvelopeError::TooShort { len: cut.len() })
        );
    }

    /// The log line for a signed envelope cut inside its tag (an emitter that forgot the tag)
    /// says what is missing, not that it is shorter than a header it is longer than.
    #[test]
    fn a_signed_envelope_cut_inside_its_tag_says_so() {
        let bytes = Envelope::new(ORIGIN, Message::text("x")).encode_signed(CHANNEL, &key());
        let error = Envelope::decode(&bytes[..ENVELOPE_HEADER_LEN + 6]).unwrap_err();
        let shown = error.to_string();
        assert!(
            shown.contains("25 bytes")
                && shown.contains("51-byte")
                && !shown.contains("shorter than the 19-byte header"),
            "{shown}"
        );
        // Shorter than the header, it says that, as before.
        let shown = Envelope::decode(&bytes[..7]).unwrap_err().to_string();
        assert!(
            shown.contains("7 bytes, shorter than the 19-byte header"),
            "{shown}"
        );
    }

    #[test]
    #[should_panic(expected = "at least 16 bytes")]
    fn short_keys_are_refused() {
        let _ = EnvelopeKey::new(b"short");
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

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            ".{0,64}".prop_map(Message::text),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Message::binary),
        ]
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Envelope::decode(&bytes);
            let _ = Envelope::decode_verified(&bytes, "p:r", &EnvelopeKey::new([1u8; 16]));
        }

        #[test]
        fn every_envelope_round_trips(origin in any::<[u8; 16]>(), message in message()) {
            let envelope = Envelope::new(InstanceId::from_bytes(origin), message);
            prop_assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
        }

        #[test]
        fn signed_envelopes_round_trip_for_their_channel_only(
            origin in any::<[u8; 16]>(),
            message in message(),
            room in "[a-z]{1,12}",
            other in "[a-z]{1,12}",
        ) {
            let key = EnvelopeKey::new([3u8; 32]);
            let channel = format!("p:{room}");
            let envelope = Envelope::new(InstanceId::from_bytes(origin), message);
            let bytes = envelope.encode_signed(&channel, &key);
            prop_assert_eq!(Envelope::decode_verified(&bytes, &channel, &key), Ok(envelope));
            if other != room {
                prop_assert_eq!(
                    Envelope::decode_verified(&bytes, &format!("p:{other}"), &key),
                    Err(EnvelopeError::BadSignature)
                );
            }
        }
    }
}
