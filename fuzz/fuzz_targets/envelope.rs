//! Arbitrary bytes as a Redis room-channel payload: decoding must never panic, anything it
//! accepts must re-encode to the same bytes, and nothing forged without the key may pass
//! verification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_ws_hub::redis::{Envelope, EnvelopeKey};

const CHANNEL: &str = "tower-ws-hub:fuzz";

fuzz_target!(|data: &[u8]| {
    let key = EnvelopeKey::new([0x5a; 32]);
    if let Ok(envelope) = Envelope::decode(data) {
        let signed = data.get(2).is_some_and(|kind| kind & 0x80 != 0);
        if !signed {
            assert_eq!(&envelope.encode()[..], data);
        }
    }
    if let Ok(envelope) = Envelope::decode_verified(data, CHANNEL, &key) {
        // Only possible if the input is exactly what the key produces for this channel.
        assert_eq!(&envelope.encode_signed(CHANNEL, &key)[..], data);
    }
});
