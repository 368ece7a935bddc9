//! The benchmark payload: a fixed 24-byte header, then padding up to the requested size.
//!
//! ```text
//! offset  size  field
//!      0     1  magic 0xB7
//!      1     1  kind: 0 data, 1 readiness probe
//!      2     2  reserved (0)
//!      4     4  stream id (one publisher connection to one room), little endian
//!      8     8  sequence number within the stream, little endian
//!     16     8  send time, nanoseconds since the load generator's epoch, little endian
//! ```
//!
//! Receivers read these 24 bytes and nothing else, so payload size costs the load generator
//! only the socket read, never a parse.

use bytes::{BufMut, Bytes, BytesMut};

/// Size of the header every payload starts with; the smallest payload the load generator sends.
pub const HEADER_LEN: usize = 24;
const MAGIC: u8 = 0xB7;

/// What a payload is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A measured message.
    Data,
    /// A readiness probe, sent before the measurement starts and never counted.
    Probe,
}

/// The decoded header of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Data or probe.
    pub kind: Kind,
    /// The publisher connection that sent it.
    pub stream: u32,
    /// Sequence number within the stream, from 0.
    pub seq: u64,
    /// Send time in nanoseconds since [`crate::clock::epoch`].
    pub sent_ns: u64,
}

impl Header {
    /// Encodes the header followed by zero padding up to `size` bytes (at least
    /// [`HEADER_LEN`]).
    pub fn encode(&self, size: usize) -> Bytes {
        let size = size.max(HEADER_LEN);
        let mut buf = BytesMut::with_capacity(size);
        buf.put_u8(MAGIC);
        buf.put_u8(match self.kind {
            Kind::Data => 0,
            Kind::Probe => 1,
        });
        buf.put_u16_le(0);
        buf.put_u32_le(self.stream);
        buf.put_u64_le(self.seq);
        buf.put_u64_le(self.sent_ns);
        buf.resize(size, 0);
        buf.freeze()
    }

    /// Decodes the header of a payload; `None` if it is not one of ours.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        let header = payload.get(..HEADER_LEN)?;
        if header[0] != MAGIC {
            return None;
        }
        let kind = match header[1] {
            0 => Kind::Data,
            1 => Kind::Probe,
            _ => return None,
        };
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        Some(Self {
            kind,
            stream: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_survives_the_round_trip_and_pads_to_size() {
        let header = Header {
            kind: Kind::Data,
            stream: 7,
            seq: 123_456_789_012,
            sent_ns: 42,
        };
        let bytes = header.encode(64);
        assert_eq!(bytes.len(), 64);
        assert_eq!(Header::decode(&bytes), Some(header));
    }

    #[test]
    fn a_payload_is_never_shorter_than_the_header() {
        let header = Header {
            kind: Kind::Probe,
            stream: 0,
            seq: 0,
            sent_ns: 0,
        };
        assert_eq!(header.encode(1).len(), HEADER_LEN);
    }

    #[test]
    fn foreign_payloads_are_rejected() {
        assert_eq!(Header::decode(b"hello"), None);
        assert_eq!(Header::decode(&[0u8; 64]), None);
    }
}
