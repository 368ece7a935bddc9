//! Which requests are WebSocket requests for the hub, and which room they join.
//!
//! A [`HubLayer`](crate::HubLayer) recognises its requests with route patterns such as
//! `/ws/{room}` and, optionally, a custom [`RoomExtractor`]. Patterns match whole path segments
//! exactly (`/ws/{room}` matches `/ws/lobby` but neither `/ws/lobby/x` nor `/ws/lobby/`); the
//! `{room}` segment is percent-decoded and validated as a [room name](validate_room_name).

use std::borrow::Cow;
use std::sync::Arc;

use http::request::Parts;
use percent_encoding::percent_decode_str;

use crate::rejection::Rejection;

/// What browsers percent-encode in a path (the URL Standard's path percent-encode set: controls,
/// space, `"`, `#`, `<`, `>`, `?`, `` ` ``, `^`, `{`, `}`; and everything that is not ASCII).
/// Route patterns refuse `?`, `#`, `{`, `}` and controls before this applies.
const PATH_ENCODED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'^')
    .add(b'{')
    .add(b'}');

/// Default longest room name, in bytes (after percent-decoding).
pub const DEFAULT_MAX_ROOM_NAME_LEN: usize = 256;

/// A parsed route pattern such as `/ws/{room}` or `/tenants/{tenant}/chat/{room}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoutePattern {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matched as the client sent it, but for the hex digits of percent-escapes, which are
    /// kept upper-case here and compared in either case (RFC 3986 §6.2.2.1: `%c3%a9` and
    /// `%C3%A9` are one URL).
    Literal(String),
    /// The `{room}` segment: matches any one non-empty segment, like a wildcard.
    Room,
    /// Any other `{name}` segment: matches any one non-empty segment.
    Wildcard,
}

/// Why a route pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRoutePattern {
    pattern: String,
    reason: String,
}

impl std::fmt::Display for InvalidRoutePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid route pattern {:?}: {}",
            self.pattern, self.reason
        )
    }
}

impl std::error::Error for InvalidRoutePattern {}

impl RoutePattern {
    /// Parses a pattern: it starts with `/`, has exactly one `{room}` segment, and other segments
    /// are literals or `{name}` wildcards.
    pub(crate) fn parse(pattern: &str) -> Result<Self, InvalidRoutePattern> {
        let invalid = |reason: &str| InvalidRoutePattern {
            pattern: pattern.to_owned(),
            reason: format!("{reason} (expected something like \"/ws/{{room}}\")"),
        };
        let rest = pattern
            .strip_prefix('/')
            .ok_or_else(|| invalid("it must start with '/'"))?;
        let mut segments = Vec::new();
        let mut rooms = 0;
        for part in rest.split('/') {
            if part.is_empty() {
                return Err(invalid("empty path segment"));
            }
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some("room") => {
                    rooms += 1;
                    Segment::Room
                }
                Some(name) if name.starts_with('*') => {
                    return Err(invalid(
                        "catch-all parameters ({*name}) are not supported: a room is one \
                         segment, and each segment matches one",
                    ));
                }
                Some(name) if !name.is_empty() && !name.contains(['{', '}']) => Segment::Wildcard,
                Some(_) => return Err(invalid("a parameter needs a name, as in {room}")),
                None if part.starts_with(':') => {
                    // As axum 0.8 does: a literal segment that reads like a parameter is
                    // almost certainly one. (A literal that does start with ':' can still be
                    // served, by a `RoomExtractor`.)
                    let name = &part[1..];
                    return Err(invalid(&format!(
                        "{part} is axum 0.7's parameter syntax; write {{{name}}}"
                    )));
                }
                None if part.contains(['{', '}']) => {
                    return Err(invalid("a parameter must be a whole segment"));
                }
                None if part == "." || part == ".." => {
                    // Clients resolve dot segments away before sending: no request matches.
                    return Err(invalid(&format!(
                        "{part} is a dot segment, which clients resolve away before a request \
                         is sent: no request could match"
                    )));
                }
                None if part.contains(['?', '#']) => {
                    return Err(invalid(&format!(
                        "{part:?} contains '?' or '#', which end a URL's path (the query and \
                         the fragment follow them): no request path could match"
                    )));
                }
                None if part.contains('\\') || part.contains(|c: char| c.is_ascii_control()) => {
                    return Err(invalid(&format!(
                        "{part:?} contains a backslash or a control character, which clients \
                         turn into '/' or remove before sending: no request path could match"
                    )));
                }
                None => {
                    let sent = Cow::from(percent_encoding::utf8_percent_encode(part, PATH_ENCODED));
                    if sent != part {
                        return Err(invalid(&format!(
                            "{part:?} has characters that clients send percent-encoded, and \
                             literal segments are compared with the path as sent: write \
                             {sent:?}"
                        )));
                    }
                    Segment::Literal(upper_case_escapes(part))
                }
            };
            segments.push(segment);
        }
        match rooms {
            1 => Ok(Self {
                source: pattern.to_owned(),
                segments,
            }),
            0 => Err(invalid("it has no {room} segment")),
            _ => Err(invalid("it has more than one {room} segment")),
        }
    }

    /// The raw (still percent-encoded) room segment if `path` matches.
    pub(crate) fn matches<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let mut room = None;
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal_matches(literal, part) => {}
                Segment::Literal(_) => return None,
                // An empty segment is no room, as in axum's routes: `/{room}` leaves the
                // application's `/` alone, and `/ws/` goes where unmatched paths go.
                Segment::Room | Segment::Wildcard if part.is_empty() => return None,
                Segment::Room => room = Some(part),
                Segment::Wildcard => {}
            }
        }
        if parts.next().is_some() {
            return None;
        }
        room
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// `true` when every path `other` matches, this pattern matches too: as many segments, and
    /// at each one either the same literal in both or a parameter (`{room}` or any `{name}`)
    /// in this one. Where this one has a literal and `other` a parameter, `other` also
    /// matches paths this one does not.
    pub(crate) fn covers(&self, other: &Self) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Literal(_), _) => false,
                    _ => true,
                })
    }
}

/// `literal` with the hex digits of its percent-escapes upper-cased.
fn upper_case_escapes(literal: &str) -> String {
    let mut out = literal.as_bytes().to_vec();
    let mut i = 0;
    while i + 2 < out.len() {
        if out[i] == b'%' && out[i + 1].is_ascii_hexdigit() && out[i + 2].is_ascii_hexdigit() {
            out[i + 1].make_ascii_uppercase();
            out[i + 2].make_ascii_uppercase();
            i += 3;
        } else {
            i += 1;
        }
    }
    // Only ASCII letters changed case.
    String::from_utf8(out).expect("still UTF-8")
}

/// Whether path segment `part` is `literal`, the hex digits of the literal's percent-escapes
/// compared in either case (as [`upper_case_escapes`] normalised them); everything else,
/// including a `%` that starts no escape and what follows it, exactly.
fn literal_matches(literal: &str, part: &str) -> bool {
    let (literal, part) = (literal.as_bytes(), part.as_bytes());
    if literal.len() != part.len() {
        return false;
    }
    let mut i = 0;
    while i < literal.len() {
        let escape = literal[i] == b'%'
            && literal.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && literal.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if escape {
            if part[i] != b'%' || !literal[i + 1..i + 3].eq_ignore_ascii_case(&part[i + 1..i + 3]) {
                return false;
            }
            i += 3;
        } else {
            if literal[i] != part[i] {
                return false;
            }
            i += 1;
        }
    }
    true
}

/// What a [`RoomExtractor`] says about a request.
#[derive(Debug, Clone)]
pub enum RoomMatch {
    /// Not a hub request: it goes to the inner service untouched.
    Pass,
    /// A WebSocket request for this room (validated like a `{room}` segment, but not
    /// percent-decoded: that is the extractor's business).
    Room(String),
    /// A hub request that must be refused with this answer.
    Reject(Rejection),
}

/// Decides, from the request head, whether a request is for the hub and which room it joins.
///
/// Implemented for closures `Fn(&http::request::Parts) -> RoomMatch`. Consulted for requests that
/// no route pattern matched. A panic answers the request `500` (see
/// [`HubLayer::extractor`](crate::HubLayer::extractor)).
///
/// ```
/// use tower_ws_hub::{RoomMatch, Rejection};
///
/// // Rooms from a query string: `/chat?room=lobby`. Decoded as `{room}` segments are (with
/// // the percent-encoding crate), so that `?room=caf%C3%A9` and `/ws/caf%C3%A9` are one room.
/// let extractor = |parts: &http::request::Parts| {
///     if parts.uri.path() != "/chat" {
///         return RoomMatch::Pass;
///     }
///     let room = parts
///         .uri
///         .query()
///         .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("room=")))
///         .map(|raw| percent_encoding::percent_decode_str(raw).decode_utf8());
///     match room {
///         Some(Ok(room)) => RoomMatch::Room(room.into_owned()),
///         Some(Err(_)) => RoomMatch::Reject(Rejection::bad_request("room is not UTF-8")),
///         None => RoomMatch::Reject(Rejection::bad_request("missing ?room=")),
///     }
/// };
/// # let _ = tower_ws_hub::HubLayer::new(tower_ws_hub::Hub::builder().build()).extractor(extractor);
/// ```
pub trait RoomExtractor: Send + Sync + 'static {
    /// Looks at the request head and says whether it is a hub request.
    fn extract(&self, parts: &Parts) -> RoomMatch;
}

impl<F> RoomExtractor for F
where
    F: Fn(&Parts) -> RoomMatch + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> RoomMatch {
        self(parts)
    }
}

/// Why a room name was refused (always answered with `400 Bad Request`). New rules may add
/// variants, as for the crate's other error enums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomNameError {
    /// The name is empty.
    Empty,
    /// The name is longer than the configured limit (bytes, after percent-decoding).
    TooLong {
        /// The configured limit.
        max: usize,
    },
    /// The percent-decoded name is not valid UTF-8.
    NotUtf8,
    /// The name contains a control character.
    ControlCharacter,
    /// The name is `.` or `..`: a dot segment, which browsers and HTTP clients resolve away
    /// before a request is sent (`/ws/..` is `/`), so only a hand-made request can name it.
    /// (A `/` sent as `%2F` is kept: `../admin` is a valid room name. Room names are opaque
    /// strings; do not build file paths from them unchecked.)
    DotSegment,
    /// The name contains a character that is not shown, or that changes how the text around
    /// it is shown without being seen itself: Unicode's default-ignorable code points
    /// (bidirectional controls such as U+202E, zero-width spaces, U+2060–U+206F, the soft
    /// hyphen, Hangul fillers, a byte-order mark, ...) and the line and paragraph separators
    /// (U+2028, U+2029). Names with these can look like another room's name, or reorder the
    /// text they are shown in (logs, a room list). Left allowed, because emoji and several
    /// scripts need them: the zero-width joiner and non-joiner (U+200D, U+200C), variation
    /// selectors (U+FE00–U+FE0F, U+E0100–U+E01EF, U+180B–U+180D, U+180F) and the tag
    /// characters of flag sequences (U+E0020–U+E007F). Look-alike letters (Cyrillic `а` for
    /// Latin `a`) are not detected: a room list shown to people who pick from it should be
    /// checked by the application for what matters to it.
    InvisibleCharacter,
    /// The name starts or ends with white space, which makes `" lobby"` look like `"lobby"`.
    SurroundingWhitespace,
}

impl std::fmt::Display for RoomNameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("room name is empty"),
            Self::TooLong { max } => write!(f, "room name is longer than {max} bytes"),
            Self::NotUtf8 => f.write_str("room name is not valid UTF-8 after percent-decoding"),
            Self::ControlCharacter => f.write_str("room name contains a control character"),
            Self::DotSegment => f.write_str("room name is a dot segment (\".\" or \"..\")"),
            Self::InvisibleCharacter => f.write_str(
                "room name contains an invisible formatting character (a bidirectional \
                 control, a line separator or a zero-width space)",
            ),
            Self::SurroundingWhitespace => f.write_str("room name starts or ends with white space"),
        }
    }
}

impl std::error::Error for RoomNameError {}

impl From<RoomNameError> for Rejection {
    fn from(error: RoomNameError) -> Self {
        Rejection::bad_request(error.to_string())
    }
}

/// Checks a room name: non-empty, at most `max_len` bytes, no control characters, no invisible
/// formatting characters ([`RoomNameError::InvisibleCharacter`]), no white space at either
/// end, not `.` or `..`.
///
/// Names are compared byte for byte, with no Unicode normalisation: `café` written with a
/// precomposed `é` and with `e` plus a combining accent are two rooms. Normalise in a
/// [`RoomExtractor`] if your room names come from people typing them.
///
/// # Errors
///
/// The first rule the name breaks.
pub fn validate_room_name(name: &str, max_len: usize) -> Result<(), RoomNameError> {
    if name.is_empty() {
        return Err(RoomNameError::Empty);
    }
    if name.len() > max_len {
        return Err(RoomNameError::TooLong { max: max_len });
    }
    if name.chars().any(char::is_control) {
        return Err(RoomNameError::ControlCharacter);
    }
    if name.chars().any(is_invisible_formatting) {
        return Err(RoomNameError::InvisibleCharacter);
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(RoomNameError::SurroundingWhitespace);
    }
    if name == "." || name == ".." {
        return Err(RoomNameError::DotSegment);
    }
    Ok(())
}

/// Characters that are not shown, or change how the text around them is shown (see
/// [`RoomNameError::InvisibleCharacter`]): Unicode's `Default_Ignorable_Code_Point` list
/// (DerivedCoreProperties.txt) without the joiners, variation selectors and tag characters
/// that emoji and scripts need, plus the line and paragraph separators.
fn is_invisible_formatting(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E001F}'
            | '\u{E0080}'..='\u{E00FF}'
            | '\u{E01F0}'..='\u{E0FFF}'
    )
}

/// Percent-decodes a raw `{room}` path segment and validates the result.
pub(crate) fn decode_room_segment(raw: &str, max_len: usize) -> Result<String, RoomNameError> {
    // Reject before decoding when even the encoded form is hopeless: decoding shrinks by at most 3x.
    if raw.len() > max_len.saturating_mul(3) {
        return Err(RoomNameError::TooLong { max: max_len });
    }
    let decoded: Cow<'_, str> = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| RoomNameError::NotUtf8)?;
    validate_room_name(&decoded, max_len)?;
    Ok(decoded.into_owned())
}

/// The routes and extractor of one layer: decides what a request is.
#[derive(Clone)]
pub(crate) struct RoomRouter {
    patterns: Vec<RoutePattern>,
    extractor: Option<Arc<dyn RoomExtractor>>,
    max_room_name_len: usize,
}

impl std::fmt::Debug for RoomRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomRouter")
            .field(
                "patterns",
                &self
                    .patterns
                    .iter()
                    .map(RoutePattern::as_str)
                    .collect::<Vec<_>>(),
            )
            .field("extractor", &self.extractor.is_some())
            .field("max_room_name_len", &self.max_room_name_len)
            .finish()
    }
}

impl Default for RoomRouter {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            extractor: None,
            max_room_name_len: DEFAULT_MAX_ROOM_NAME_LEN,
        }
    }
}

impl RoomRouter {
    /// Adds a pattern after those already added (the first that matches a path decides).
    ///
    /// # Errors
    ///
    /// If a pattern added before matches every path this one matches: this one could never
    /// decide anything. (Both ways round, the two match exactly the same paths; with `{room}`
    /// in different segments, which room a path joins would then depend on the order of the
    /// calls.)
    pub(crate) fn add_pattern(&mut self, pattern: RoutePattern) -> Result<(), InvalidRoutePattern> {
        if let Some(added) = self.patterns.iter().find(|p| p.covers(&pattern)) {
            let reason = if added.source == pattern.source {
                "it was added already".to_owned()
            } else if pattern.covers(added) {
                format!(
                    "it matches exactly the same paths as {:?}, added before (parameter names \
                     do not tell paths apart); only one of them could ever be used",
                    added.source
                )
            } else {
                format!(
                    "every path it matches is matched first by {:?}, added before, so it would \
                     never be used; add the more specific pattern first",
                    added.source
                )
            };
            return Err(InvalidRoutePattern {
                pattern: pattern.source,
                reason,
            });
        }
        self.patterns.push(pattern);
        Ok(())
    }

    pub(crate) fn set_extractor(&mut self, extractor: Arc<dyn RoomExtractor>) {
        self.extractor = Some(extractor);
    }

    pub(crate) fn set_max_room_name_len(&mut self, max: usize) {
        self.max_room_name_len = max;
    }

    /// `true` when the extractor needs the whole request head, not just the path.
    pub(crate) fn has_extractor(&self) -> bool {
        self.extractor.is_some()
    }

    /// Matches a path against the route patterns only, in the order they were added: the
    /// first that matches decides (its room, or the rejection of its room segment).
    pub(crate) fn match_path(&self, path: &str) -> Option<Result<String, Rejection>> {
        self.patterns.iter().find_map(|pattern| {
            pattern.matches(path).map(|raw| {
                decode_room_segment(raw, self.max_room_name_len).map_err(Rejection::from)
            })
        })
    }

    /// Asks the custom extractor, then validates the room it names.
    pub(crate) fn extract(&self, parts: &Parts) -> RoomMatch {
        let Some(extractor) = &self.extractor else {
            return RoomMatch::Pass;
        };
        match extractor.extract(parts) {
            RoomMatch::Room(room) => match validate_room_name(&room, self.max_room_name_len) {
                Ok(()) => RoomMatch::Room(room),
                Err(error) => RoomMatch::Reject(error.into()),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> RoutePattern {
        RoutePattern::parse(p).unwrap()
    }

    #[test]
    fn matches_whole_segments_exactly() {
        let p = pattern("/ws/{room}");
        assert_eq!(p.matches("/ws/lobby"), Some("lobby"));
        assert_eq!(p.matches("/ws/lobby/"), None);
        assert_eq!(p.matches("/ws/lobby/x"), None);
        assert_eq!(p.matches("/ws"), None);
        assert_eq!(p.matches("/wsx/lobby"), None);
        assert_eq!(p.matches("ws/lobby"), None);
        // An empty segment is no room: the request is not the hub's.
        assert_eq!(p.matches("/ws/"), None);
        assert_eq!(pattern("/{room}").matches("/"), None);
    }

    /// A literal written the way a client sends it matches: percent-encoded where the client
    /// encodes, as is elsewhere (sub-delimiters, `:`, `@`, `~`).
    #[test]
    fn literals_written_as_clients_send_them_match() {
        let p = pattern("/caf%C3%A9/{room}");
        assert_eq!(p.matches("/caf%C3%A9/lobby"), Some("lobby"));
        let p = pattern("/v1;x=1/@team~a/{room}");
        assert_eq!(p.matches("/v1;x=1/@team~a/lobby"), Some("lobby"));
        // Sent as they are: `%` (an escape already), brackets, the pipe.
        let p = pattern("/a%7C[b]|c/{room}");
        assert_eq!(p.matches("/a%7C[b]|c/lobby"), Some("lobby"));
    }

    /// The hex digits of a percent-escape may come in either case, in the pattern and in the
    /// request (RFC 3986 §6.2.2.1); everything else in a literal is compared exactly.
    #[test]
    fn percent_escapes_in_literals_match_in_either_case() {
        for written in [
            "/caf%c3%a9/{room}",
            "/caf%C3%A9/{room}",
            "/caf%c3%A9/{room}",
        ] {
            let p = pattern(written);
            for sent in ["/caf%C3%A9/lobby", "/caf%c3%a9/lobby", "/caf%C3%a9/lobby"] {
                assert_eq!(p.matches(sent), Some("lobby"), "{written} {sent}");
            }
            assert_eq!(
                p.matches("/CAF%C3%A9/lobby"),
                None,
                "not the rest: {written}"
            );
            assert_eq!(
                p.matches("/caf%C3%A8/lobby"),
                None,
                "another escape: {written}"
            );
        }
        // Two spellings of one pattern are one pattern (the second is refused as shadowed).
        let mut router = RoomRouter::default();
        router.add_pattern(pattern("/caf%c3%a9/{room}")).unwrap();
        assert!(router.add_pattern(pattern("/caf%C3%A9/{room}")).is_err());
        // A `%` that starts no escape matches itself, and what follows it exactly.
        let p = pattern("/100%/{room}");
        assert_eq!(p.matches("/100%/lobby"), Some("lobby"));
        let p = pattern("/a%zz/{room}");
        assert_eq!(p.matches("/a%zz/lobby"), Some("lobby"));
        assert_eq!(p.matches("/a%ZZ/lobby"), None);
        let p = pattern("/a%4/{room}");
        assert_eq!(p.matches("/a%4/lobby"), Some("lobby"));
    }

    #[test]
    fn wildcards_match_any_non_empty_segment() {
        let p = pattern("/t/{tenant}/chat/{room}");
        assert_eq!(p.matches("/t/acme/chat/general"), Some("general"));
        assert_eq!(p.matches("/t//chat/general"), None);
        assert_eq!(p.matches("/t/acme/chat"), None);
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (bad, why) in [
            ("ws/{room}", "start with '/'"),
            ("/ws", "no {room}"),
            ("/ws/{room}/{room}", "more than one"),
            ("/ws//{room}", "empty path segment"),
            ("/ws/x{room}", "whole segment"),
            ("/ws/{}/{room}", "needs a name"),
            ("/ws/:room", "write {room}"),
            (
                "/t/:tenant/{room}",
                ":tenant is axum 0.7's parameter syntax; write {tenant}",
            ),
            ("/ws/{*room}", "catch-all"),
            ("/ws/{room}/{*rest}", "not supported"),
            (
                "/ws/../{room}",
                ".. is a dot segment, which clients resolve away before a request is sent: \
                 no request could match",
            ),
            ("/./{room}", ". is a dot segment"),
            ("/ws?x/{room}", "'?' or '#'"),
            ("/chat/{room}/#top", "'?' or '#'"),
            // Clients send these percent-encoded; the message gives the form to write.
            ("/café/{room}", "write \"caf%C3%A9\""),
            ("/chat room/{room}", "write \"chat%20room\""),
            ("/a^b/{room}", "write \"a%5Eb\""),
            ("/a\\b/{room}", "backslash"),
            ("/a\tb/{room}", "control character"),
        ] {
            let error = RoutePattern::parse(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    /// The reason `second` is refused after `first`, or `None` if both are accepted.
    fn refusal(first: &str, second: &str) -> Option<String> {
        let mut router = RoomRouter::default();
        router.add_pattern(pattern(first)).unwrap();
        router
            .add_pattern(pattern(second))
            .err()
            .map(|error| error.to_string())
    }

    #[test]
    fn a_pattern_matching_exactly_the_same_paths_as_an_earlier_one_is_refused_naming_both() {
        for (first, second) in [
            ("/ws/{room}", "/ws/{room}"),
            ("/t/{tenant}/{room}", "/t/{org}/{room}"),
            // Same paths, but the room would come from another segment.
            ("/t/{tenant}/{room}", "/t/{room}/{tenant}"),
            ("/{a}/x/{room}", "/{room}/x/{b}"),
        ] {
            let error =
                refusal(first, second).unwrap_or_else(|| panic!("{second} accepted after {first}"));
            assert!(error.contains(&format!("{second:?}")), "{error}");
            if first == second {
                assert!(error.contains("added already"), "{error}");
            } else {
                assert!(error.contains(&format!("{first:?}")), "{error}");
                assert!(error.contains("exactly the same paths"), "{error}");
            }
            // Not the hint for malformed patterns: this one is well formed.
            assert!(!error.contains("expected something like"), "{error}");
        }
    }

    #[test]
    fn a_pattern_an_earlier_broader_one_always_matches_first_is_refused_naming_both() {
        for (broader, narrower) in [
            ("/{x}/{room}", "/ws/{room}"),
            ("/t/{tenant}/{room}", "/t/acme/{room}"),
            // The room from another segment changes nothing: the broader one decides.
            ("/{room}/{x}", "/ws/{room}"),
            ("/{a}/{b}/{room}", "/a/b/{room}"),
        ] {
            let error = refusal(broader, narrower)
                .unwrap_or_else(|| panic!("{narrower} accepted after {broader}"));
            assert!(error.contains(&format!("{narrower:?}")), "{error}");
            assert!(error.contains(&format!("{broader:?}")), "{error}");
            assert!(
                error.contains("every path it matches is matched first by"),
                "{error}"
            );
            assert!(
                error.contains("add the more specific pattern first"),
                "{error}"
            );
            // The more specific one first is the order that works.
            assert_eq!(
                refusal(narrower, broader),
                None,
                "{narrower} then {broader}"
            );
        }
    }

    /// Every pattern of up to three segments over two literals and two parameters, against
    /// every path of up to three segments over three names: a pattern is refused after another
    /// exactly when the other matches every path it matches, and one that is accepted decides
    /// at least one path.
    #[test]
    fn a_pattern_is_refused_exactly_when_an_earlier_one_matches_all_its_paths() {
        fn sequences(alphabet: &[&str]) -> Vec<Vec<String>> {
            let mut all: Vec<Vec<String>> = Vec::new();
            let mut last: Vec<Vec<String>> = vec![Vec::new()];
            for _ in 0..3 {
                last = last
                    .iter()
                    .flat_map(|prefix| {
                        alphabet.iter().map(move |segment| {
                            let mut next = prefix.clone();
                            next.push((*segment).to_owned());
                            next
                        })
                    })
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        }
        let patterns: Vec<RoutePattern> = sequences(&["x", "y", "{p}", "{room}"])
            .into_iter()
            .filter_map(|s| RoutePattern::parse(&format!("/{}", s.join("/"))).ok())
            .collect();
        let paths: Vec<String> = sequences(&["x", "y", "z"])
            .into_iter()
            .map(|s| format!("/{}", s.join("/")))
            .collect();
        assert!(patterns.len() > 30, "{}", patterns.len());
        for first in &patterns {
            for second in &patterns {
                let shadowed = paths
                    .iter()
                    .filter(|path| second.matches(path).is_some())
                    .all(|path| first.matches(path).is_some());
                let mut router = RoomRouter::default();
                router.add_pattern(first.clone()).unwrap();
                let refused = router.add_pattern(second.clone()).is_err();
                assert_eq!(
                    refused,
                    shadowed,
                    "{} then {}",
                    first.as_str(),
                    second.as_str()
                );
            }
        }
    }

    #[test]
    fn overlapping_and_disjoint_patterns_are_accepted() {
        for (first, second) in [
            // Each has a literal where the other has a parameter: each matches paths the
            // other does not.
            ("/lobby/{room}", "/{room}/chat"),
            ("/a/{room}/{x}", "/{y}/{room}/b"),
            // Disjoint: other literals, or another number of segments.
            ("/ws/{room}", "/chat/{room}"),
            ("/ws/{room}", "/ws/{room}/{x}"),
            ("/{x}/{room}", "/{room}"),
        ] {
            assert_eq!(refusal(first, second), None, "{first} then {second}");
            assert_eq!(refusal(second, first), None, "{second} then {first}");
        }
    }

    /// Where two patterns overlap, the one added first decides, for its room and for its
    /// rejection of a bad room segment alike.
    #[test]
    fn the_first_pattern_added_wins_where_patterns_overlap() {
        let router = |patterns: &[&str]| {
            let mut router = RoomRouter::default();
            router.set_max_room_name_len(5);
            for p in patterns {
                router.add_pattern(pattern(p)).unwrap();
            }
            router
        };
        let room = |router: &RoomRouter, path: &str| match router.match_path(path) {
            Some(Ok(room)) => Some(room),
            Some(Err(rejection)) => Some(format!("rejected: {}", rejection.reason())),
            None => None,
        };
        let lobby_first = router(&["/lobby/{room}", "/{room}/chat"]);
        assert_eq!(room(&lobby_first, "/lobby/chat").as_deref(), Some("chat"));
        assert_eq!(room(&lobby_first, "/other/chat").as_deref(), Some("other"));
        let chat_first = router(&["/{room}/chat", "/lobby/{room}"]);
        assert_eq!(room(&chat_first, "/lobby/chat").as_deref(), Some("lobby"));
        assert_eq!(room(&chat_first, "/lobby/other").as_deref(), Some("other"));
        // The first match's room is too long (5 bytes at most): the other is not tried.
        let long_first = router(&["/{room}/chat", "/toolong/{room}"]);
        assert_eq!(
            room(&long_first, "/toolong/chat").as_deref(),
            Some("rejected: room name is longer than 5 bytes")
        );
    }

    #[test]
    fn room_segments_are_percent_decoded_and_validated() {
        assert_eq!(decode_room_segment("caf%C3%A9", 256).unwrap(), "café");
        assert_eq!(decode_room_segment("a%20b", 256).unwrap(), "a b");
        assert_eq!(decode_room_segment("%FF", 256), Err(RoomNameError::NotUtf8));
        assert_eq!(
            decode_room_segment("a%0Ab", 256),
            Err(RoomNameError::ControlCharacter)
        );
        assert_eq!(decode_room_segment("", 256), Err(RoomNameError::Empty));
        for spoof in [
            "%E2%80%AElobby",
            "%E2%80%8B",
            "a%E2%80%A8b",
            "%EF%BB%BFx",
            "%E2%81%A6x",
            "%E2%81%A0x",
            "lob%C2%ADby",
            "%E3%85%A4",
            "x%F3%A0%80%81",
        ] {
            assert_eq!(
                decode_room_segment(spoof, 256),
                Err(RoomNameError::InvisibleCharacter),
                "{spoof}"
            );
        }
        for spaced in ["%20lobby", "lobby%20", "%E3%80%80x"] {
            assert_eq!(
                decode_room_segment(spaced, 256),
                Err(RoomNameError::SurroundingWhitespace),
                "{spaced}"
            );
        }
        // Joiners stay: emoji sequences (here man, ZWJ, woman) and several scripts need them;
        // so do variation selectors (a red heart: U+2764 U+FE0F) and the tag characters of
        // flags (Scotland: a black flag, tags "gbsct", a cancel tag).
        for emoji in [
            "\u{1F468}\u{200D}\u{1F469}",
            "\u{2764}\u{FE0F}",
            "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
        ] {
            let encoded =
                percent_encoding::utf8_percent_encode(emoji, percent_encoding::NON_ALPHANUMERIC);
            assert_eq!(
                decode_room_segment(&encoded.to_string(), 256).unwrap(),
                emoji
            );
        }
        assert_eq!(
            decode_room_segment(&"x".repeat(257), 256),
            Err(RoomNameError::TooLong { max: 256 })
        );
        assert_eq!(
            decode_room_segment(&"x".repeat(256), 256).unwrap().len(),
            256
        );
        assert_eq!(
            decode_room_segment(&"%41".repeat(5), 4),
            Err(RoomNameError::TooLong { max: 4 })
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_never_panics(raw in ".*", max in 1usize..512) {
            let _ = decode_room_segment(&raw, max);
        }

        #[test]
        fn valid_names_survive_percent_encoding(name in "[^\\p{Cc}]{1,64}") {
            prop_assume!(name.len() <= DEFAULT_MAX_ROOM_NAME_LEN);
            // Dot segments are refused (`RoomNameError::DotSegment`), whatever their encoding,
            // as are invisible formatting characters and white space at either end.
            prop_assume!(name != "." && name != "..");
            prop_assume!(!name.chars().any(is_invisible_formatting) && name.trim() == name);
            let encoded = utf8_percent_encode(&name, NON_ALPHANUMERIC).to_string();
            prop_assert_eq!(decode_room_segment(&encoded, DEFAULT_MAX_ROOM_NAME_LEN), Ok(name));
        }

        #[test]
        fn decoded_names_always_obey_the_rules(raw in "(%[0-9A-Fa-f]{2}|[a-z%]){0,40}", max in 1usize..16) {
            if let Ok(name) = decode_room_segment(&raw, max) {
                prop_assert!(!name.is_empty() && name.len() <= max);
                prop_assert!(!name.chars().any(char::is_control));
                prop_assert!(!name.chars().any(is_invisible_formatting));
                prop_assert_eq!(name.trim(), name.as_str());
            }
        }

        #[test]
        fn patterns_match_only_paths_with_as_many_segments(path in "(/[a-z{}%]{0,4}){0,5}") {
            let pattern = RoutePattern::parse("/ws/{room}").unwrap();
            if let Some(room) = pattern.matches(&path) {
                prop_assert_eq!(path.clone(), format!("/ws/{room}"));
            }
        }
    }
}
