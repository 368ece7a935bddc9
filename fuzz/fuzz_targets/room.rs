//! Arbitrary paths through route matching and room-name decoding, and arbitrary route
//! patterns through the pattern parser. Must never panic, and every room it accepts must obey
//! the room-name rules.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let max = 1 + usize::from(data.first().copied().unwrap_or(0));
    if let Some(Ok(room)) = tower_ws_hub::internals::room_from_path(text, max) {
        assert!(!room.is_empty() && room.len() <= max);
        assert!(!room.chars().any(char::is_control));
    }
    let _ = tower_ws_hub::internals::parse_pattern(text);
});
