//! Entry points for the fuzz targets in `fuzz/`. Not public API: enabled by the `fuzzing`
//! feature only, and may change at any time.

use http::Request;

use crate::handshake::{Handshake, Subprotocols};
use crate::origin::OriginPolicy;
use crate::rejection::Rejection;
use crate::route::{RoomNameError, RoutePattern, decode_room_segment};

/// Runs every handshake check the layer runs before an upgrade: RFC 6455/8441 validation, the
/// same-origin policy and subprotocol selection (with `chat` and `superchat` supported).
pub fn check_handshake(request: Request<()>) -> Result<(), Rejection> {
    let handshake = Handshake::validate(&request)?;
    let (parts, ()) = request.into_parts();
    OriginPolicy::SameOrigin.check(&parts)?;
    let protocols = Subprotocols {
        supported: vec![
            http::HeaderValue::from_static("chat"),
            http::HeaderValue::from_static("superchat"),
        ],
        required: false,
    };
    let protocol = protocols.select(&parts.headers)?;
    let response = handshake.response(protocol.as_ref());
    assert!(response.status().is_success() || response.status() == 101);
    Ok(())
}

/// Matches `path` against `/ws/{room}` and `/t/{tenant}/chat/{room}` and decodes the room.
pub fn room_from_path(path: &str, max_len: usize) -> Option<Result<String, RoomNameError>> {
    let patterns = [
        RoutePattern::parse("/ws/{room}").expect("valid pattern"),
        RoutePattern::parse("/t/{tenant}/chat/{room}").expect("valid pattern"),
    ];
    patterns
        .iter()
        .find_map(|pattern| pattern.matches(path))
        .map(|raw| decode_room_segment(raw, max_len))
}

/// Parses an arbitrary route pattern (must never panic).
pub fn parse_pattern(pattern: &str) -> bool {
    RoutePattern::parse(pattern).is_ok()
}
