//! The WebSocket opening handshake: RFC 6455 over HTTP/1.1 and RFC 8441 over HTTP/2.
//!
//! Over HTTP/1.1 a client asks for a WebSocket with a `GET` carrying `Connection: Upgrade`,
//! `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` (base64 of 16
//! random bytes); the server answers `101 Switching Protocols` with
//! `Sec-WebSocket-Accept` = base64(SHA-1(key + GUID)). `Connection` and `Upgrade` are token
//! lists compared case-insensitively, so `Connection: keep-alive, Upgrade` is as good as
//! `Connection: upgrade`.
//!
//! Over HTTP/2 (RFC 8441) there is no `Upgrade` header: the client sends an extended `CONNECT`
//! with the pseudo-header `:protocol: websocket` and `Sec-WebSocket-Version: 13`, no key, and the
//! server answers `200 OK`; the stream then carries WebSocket frames. The server must announce
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL` (hyper: `http2().enable_connect_protocol()`; axum does it
//! with its `http2` feature).
//!
//! Each broken rule is one [`HandshakeError`] variant with one status and one reason.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::rejection::Rejection;

/// The only WebSocket protocol version there is (RFC 6455 §4.1).
const WEBSOCKET_VERSION: &str = "13";

/// A handshake rule the request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// HTTP/1.1 upgrades must use `GET` (→ 405, `Allow: GET`).
    MethodNotGet,
    /// HTTP/2 WebSockets must use extended `CONNECT` (→ 405, `Allow: CONNECT`).
    MethodNotConnect,
    /// An HTTP/2 `CONNECT` whose `:protocol` is missing or not `websocket` (→ 400).
    ConnectProtocolNotWebSocket,
    /// HTTP/1.0 (or older) cannot upgrade (→ 426).
    HttpVersionTooOld,
    /// `Connection` does not contain the `upgrade` token (→ 426).
    MissingConnectionUpgrade,
    /// `Upgrade` does not contain the `websocket` token (→ 426).
    MissingUpgradeWebSocket,
    /// `Sec-WebSocket-Version` is missing or not `13` (→ 426, `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing (→ 400).
    MissingKey,
    /// `Sec-WebSocket-Key` is not the base64 encoding of 16 bytes (→ 400).
    InvalidKey,
    /// `Sec-WebSocket-Key` appears more than once (RFC 6455 §11.3.1; → 400).
    DuplicateKey,
    /// HTTP/1.1 requires a `Host` header (→ 400).
    MissingHost,
    /// More than one `Host` header (RFC 9112 §3.2; → 400).
    DuplicateHost,
}

impl HandshakeError {
    /// The HTTP status this rule answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MethodNotGet | Self::MethodNotConnect => StatusCode::METHOD_NOT_ALLOWED,
            Self::HttpVersionTooOld
            | Self::MissingConnectionUpgrade
            | Self::MissingUpgradeWebSocket
            | Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Self::ConnectProtocolNotWebSocket
            | Self::MissingKey
            | Self::InvalidKey
            | Self::DuplicateKey
            | Self::MissingHost
            | Self::DuplicateHost => StatusCode::BAD_REQUEST,
        }
    }

    /// The short reason sent as the response body.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MethodNotGet => "WebSocket upgrade requests must use GET",
            Self::MethodNotConnect => "WebSocket over HTTP/2 must use extended CONNECT",
            Self::ConnectProtocolNotWebSocket => "extended CONNECT needs :protocol websocket",
            Self::HttpVersionTooOld => "WebSocket needs HTTP/1.1 or newer",
            Self::MissingConnectionUpgrade => "missing `Connection: upgrade` header",
            Self::MissingUpgradeWebSocket => "missing `Upgrade: websocket` header",
            Self::UnsupportedVersion => "unsupported Sec-WebSocket-Version, this server speaks 13",
            Self::MissingKey => "missing Sec-WebSocket-Key header",
            Self::InvalidKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            Self::DuplicateKey => "Sec-WebSocket-Key must appear exactly once",
            Self::MissingHost => "missing Host header",
            Self::DuplicateHost => "Host must appear exactly once",
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HandshakeError {}

impl From<HandshakeError> for Rejection {
    fn from(error: HandshakeError) -> Self {
        let rejection = Rejection::new(error.status(), error.reason());
        match error {
            HandshakeError::MethodNotGet => {
                rejection.with_header(header::ALLOW, HeaderValue::from_static("GET"))
            }
            HandshakeError::MethodNotConnect => {
                rejection.with_header(header::ALLOW, HeaderValue::from_static("CONNECT"))
            }
            HandshakeError::UnsupportedVersion => rejection.with_header(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(WEBSOCKET_VERSION),
            ),
            HandshakeError::MissingConnectionUpgrade
            | HandshakeError::MissingUpgradeWebSocket
            | HandshakeError::HttpVersionTooOld => rejection
                .with_header(header::UPGRADE, HeaderValue::from_static("websocket"))
                .with_header(header::CONNECTION, HeaderValue::from_static("Upgrade")),
            _ => rejection,
        }
    }
}

impl HandshakeError {
    /// The answer to a request over `version` that broke this rule: the `From` conversion,
    /// plus, over HTTP/1.x, `Upgrade: websocket` (and `Connection: Upgrade`) on the `426` for
    /// an unsupported version, which RFC 9110 §15.5.22 requires of every `426`. (HTTP/2 has
    /// no `Upgrade` header: it is connection-specific there.)
    pub(crate) fn rejection(self, version: Version) -> Rejection {
        let upgrade_required = self == Self::UnsupportedVersion && version < Version::HTTP_2;
        let rejection = Rejection::from(self);
        if upgrade_required {
            rejection
                .with_header(header::UPGRADE, HeaderValue::from_static("websocket"))
                .with_header(header::CONNECTION, HeaderValue::from_static("Upgrade"))
        } else {
            rejection
        }
    }
}

/// A request that passed every handshake rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// RFC 6455 upgrade; answer `101` with this `Sec-WebSocket-Accept`.
    Http1 { accept: HeaderValue },
    /// RFC 8441 extended CONNECT; answer `200`.
    Http2,
}

/// Subprotocol negotiation (RFC 6455 §4.2.2): the server picks one of the protocols the client
/// offered in `Sec-WebSocket-Protocol`, or none.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subprotocols {
    /// What this server speaks, in no particular order (the client's order decides).
    pub(crate) supported: Vec<HeaderValue>,
    /// Refuse clients that offer none of them (400).
    pub(crate) required: bool,
}

impl Subprotocols {
    /// The first protocol in the client's list (its order of preference) that the server
    /// speaks. `Ok(None)` when none matches and none is required.
    pub(crate) fn select(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, Rejection> {
        let chosen = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .find_map(|offered| {
                self.supported
                    .iter()
                    .find(|supported| supported.as_bytes() == offered)
                    .cloned()
            });
        if chosen.is_none() && self.required {
            let speaks: Vec<&str> = self
                .supported
                .iter()
                .filter_map(|p| p.to_str().ok())
                .collect();
            return Err(Rejection::bad_request(format!(
                "a Sec-WebSocket-Protocol is required; this server speaks: {}",
                speaks.join(", ")
            )));
        }
        Ok(chosen)
    }
}

impl Handshake {
    /// Validates a request that a route or extractor claimed for the hub.
    pub(crate) fn validate<B>(request: &Request<B>) -> Result<Self, HandshakeError> {
        let headers = request.headers();
        match request.version() {
            Version::HTTP_2 | Version::HTTP_3 => {
                if request.method() != Method::CONNECT {
                    return Err(HandshakeError::MethodNotConnect);
                }
                let protocol = request.extensions().get::<hyper::ext::Protocol>();
                if !protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket")) {
                    return Err(HandshakeError::ConnectProtocolNotWebSocket);
                }
                check_version(headers)?;
                Ok(Self::Http2)
            }
            Version::HTTP_09 | Version::HTTP_10 => Err(HandshakeError::HttpVersionTooOld),
            _ => {
                if request.method() != Method::GET {
                    return Err(HandshakeError::MethodNotGet);
                }
                if !header_has_token(headers, &header::CONNECTION, "upgrade") {
                    return Err(HandshakeError::MissingConnectionUpgrade);
                }
                if !header_has_token(headers, &header::UPGRADE, "websocket") {
                    return Err(HandshakeError::MissingUpgradeWebSocket);
                }
                check_version(headers)?;
                let key = sole_value(headers, &header::SEC_WEBSOCKET_KEY)
                    .map_err(|Repeated| HandshakeError::DuplicateKey)?
                    .ok_or(HandshakeError::MissingKey)?;
                if !is_valid_key(key.as_bytes()) {
                    return Err(HandshakeError::InvalidKey);
                }
                // RFC 9112 §3.2: exactly one, even with the authority in the request line.
                sole_value(headers, &header::HOST)
                    .map_err(|Repeated| HandshakeError::DuplicateHost)?
                    .ok_or(HandshakeError::MissingHost)?;
                let accept = derive_accept_key(key.as_bytes());
                Ok(Self::Http1 {
                    accept: HeaderValue::try_from(accept)
                        .expect("base64 is always a valid header value"),
                })
            }
        }
    }

    /// The success response: `101` with the upgrade headers, or `200` for HTTP/2, naming the
    /// chosen subprotocol if any.
    pub(crate) fn response(&self, protocol: Option<&HeaderValue>) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        if let Some(protocol) = protocol {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
        }
        match self {
            Self::Http1 { accept } => {
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept.clone());
            }
            Self::Http2 => *response.status_mut() = StatusCode::OK,
        }
        response
    }
}

/// Exactly one `Sec-WebSocket-Version`, and it is `13` (RFC 6455 §4.2.1, §11.3.5).
fn check_version(headers: &HeaderMap) -> Result<(), HandshakeError> {
    match sole_value(headers, &header::SEC_WEBSOCKET_VERSION) {
        Ok(Some(version)) if version.as_bytes().trim_ascii() == WEBSOCKET_VERSION.as_bytes() => {
            Ok(())
        }
        _ => Err(HandshakeError::UnsupportedVersion),
    }
}

/// A header that appears more than once where RFC 6455 allows it once.
struct Repeated;

/// The value of `name`, which must not be repeated (`Ok(None)` when absent).
fn sole_value<'a>(
    headers: &'a HeaderMap,
    name: &header::HeaderName,
) -> Result<Option<&'a HeaderValue>, Repeated> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (value, None) => Ok(value),
        (_, Some(_)) => Err(Repeated),
    }
}

/// `true` if any of the (possibly repeated) `name` headers lists `token`, compared
/// case-insensitively, as RFC 9110 token lists are.
fn header_has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// RFC 6455 §4.2.1: the key, base64-decoded, must be 16 bytes long.
fn is_valid_key(key: &[u8]) -> bool {
    // 16 bytes encode to exactly 24 base64 characters; checking the length first bounds the work.
    key.len() == 24 && STANDARD.decode(key).is_ok_and(|bytes| bytes.len() == 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_request() -> http::request::Builder {
        Request::get("/ws/lobby")
            .header(header::HOST, "example.com")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn accepts_the_rfc_example_and_derives_its_accept_key() {
        let request = upgrade_request().body(()).unwrap();
        let handshake = Handshake::validate(&request).unwrap();
        // The example from RFC 6455 §1.3.
        assert_eq!(
            handshake,
            Handshake::Http1 {
                accept: HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            }
        );
        assert_eq!(
            handshake.response(None).status(),
            StatusCode::SWITCHING_PROTOCOLS
        );
    }

    #[test]
    fn token_lists_are_case_insensitive_and_may_repeat() {
        let request = upgrade_request()
            .header(header::CONNECTION, "keep-alive, UPGRADE")
            .header(header::UPGRADE, "h2c,  WebSocket ")
            .body(())
            .unwrap();
        // The first Connection header ("Upgrade") would already do; test the list alone too.
        assert!(Handshake::validate(&request).is_ok());
        let mut request = upgrade_request().body(()).unwrap();
        request.headers_mut().insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(Handshake::validate(&request).is_ok());
        request.headers_mut().insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, upgrades"),
        );
        assert_eq!(
            Handshake::validate(&request),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
    }

    #[test]
    fn each_rule_has_its_own_status() {
        type Case = (fn(&mut Request<()>), HandshakeError, u16);
        let cases: [Case; 10] = [
            (
                |r| *r.method_mut() = Method::POST,
                HandshakeError::MethodNotGet,
                405,
            ),
            (
                |r| {
                    r.headers_mut().remove(header::CONNECTION);
                },
                HandshakeError::MissingConnectionUpgrade,
                426,
            ),
            (
                |r| {
                    r.headers_mut().remove(header::UPGRADE);
                },
                HandshakeError::MissingUpgradeWebSocket,
                426,
            ),
            (
                |r| {
                    r.headers_mut()
                        .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
                },
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                |r| {
                    r.headers_mut().remove(header::SEC_WEBSOCKET_KEY);
                },
                HandshakeError::MissingKey,
                400,
            ),
            (
                |r| {
                    // Valid base64, but of 15 bytes.
                    r.headers_mut().insert(
                        header::SEC_WEBSOCKET_KEY,
                        HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAA"),
                    );
                },
                HandshakeError::InvalidKey,
                400,
            ),
            (
                |r| {
                    r.headers_mut().insert(
                        header::SEC_WEBSOCKET_KEY,
                        HeaderValue::from_static("!!!!!!!!!!!!!!!!!!!!!!=="),
                    );
                },
                HandshakeError::InvalidKey,
                400,
            ),
            (
                |r| {
                    r.headers_mut().append(
                        header::SEC_WEBSOCKET_KEY,
                        HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="),
                    );
                },
                HandshakeError::DuplicateKey,
                400,
            ),
            (
                |r| {
                    r.headers_mut().append(
                        header::SEC_WEBSOCKET_VERSION,
                        HeaderValue::from_static("13"),
                    );
                },
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                |r| *r.version_mut() = Version::HTTP_10,
                HandshakeError::HttpVersionTooOld,
                426,
            ),
        ];
        for (mutate, expected, status) in cases {
            let mut request = upgrade_request().body(()).unwrap();
            mutate(&mut request);
            let error = Handshake::validate(&request).unwrap_err();
            assert_eq!(error, expected);
            assert_eq!(error.status().as_u16(), status);
        }
    }

    #[test]
    fn rejections_carry_the_headers_the_rfcs_ask_for() {
        let version: Rejection = HandshakeError::UnsupportedVersion.into();
        assert_eq!(
            version.header(&header::SEC_WEBSOCKET_VERSION).unwrap(),
            "13"
        );
        let method: Rejection = HandshakeError::MethodNotGet.into();
        assert_eq!(method.header(&header::ALLOW).unwrap(), "GET");
        let upgrade: Rejection = HandshakeError::MissingUpgradeWebSocket.into();
        assert_eq!(upgrade.header(&header::UPGRADE).unwrap(), "websocket");
        // Every 426 over HTTP/1.x names the protocol; HTTP/2 has no `Upgrade` header.
        let over_http1 = HandshakeError::UnsupportedVersion.rejection(Version::HTTP_11);
        assert_eq!(over_http1.header(&header::UPGRADE).unwrap(), "websocket");
        assert_eq!(over_http1.header(&header::CONNECTION).unwrap(), "Upgrade");
        let over_http2 = HandshakeError::UnsupportedVersion.rejection(Version::HTTP_2);
        assert!(over_http2.header(&header::UPGRADE).is_none());
        assert!(over_http2.header(&header::CONNECTION).is_none());
        assert_eq!(
            over_http2.header(&header::SEC_WEBSOCKET_VERSION).unwrap(),
            "13"
        );
    }

    #[test]
    fn the_clients_first_supported_protocol_wins() {
        let protocols = Subprotocols {
            supported: vec![
                HeaderValue::from_static("chat.v1"),
                HeaderValue::from_static("chat.v2"),
            ],
            required: false,
        };
        let mut headers = HeaderMap::new();
        assert_eq!(protocols.select(&headers).unwrap(), None);
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mqtt, chat.v2"),
        );
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat.v1"),
        );
        assert_eq!(protocols.select(&headers).unwrap().unwrap(), "chat.v2");
        let required = Subprotocols {
            required: true,
            ..protocols
        };
        let mut other = HeaderMap::new();
        other.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("CHAT.V1"),
        );
        let rejection = required.select(&other).unwrap_err();
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
        assert!(rejection.reason().contains("chat.v1, chat.v2"));
    }

    #[test]
    fn http2_needs_extended_connect_with_the_websocket_protocol() {
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri("https://example.com/ws/lobby")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .body(())
            .unwrap();
        assert_eq!(
            Handshake::validate(&request),
            Err(HandshakeError::ConnectProtocolNotWebSocket)
        );
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(Handshake::validate(&request), Ok(Handshake::Http2));
        *request.method_mut() = Method::GET;
        assert_eq!(
            Handshake::validate(&request),
            Err(HandshakeError::MethodNotConnect)
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn request(
        connection: &[u8],
        upgrade: &[u8],
        version: &[u8],
        key: &[u8],
    ) -> Option<Request<()>> {
        Request::get("/ws/r")
            .header(header::HOST, "h")
            .header(
                header::CONNECTION,
                HeaderValue::from_bytes(connection).ok()?,
            )
            .header(header::UPGRADE, HeaderValue::from_bytes(upgrade).ok()?)
            .header(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_bytes(version).ok()?,
            )
            .header(
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_bytes(key).ok()?,
            )
            .body(())
            .ok()
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic(
            connection in proptest::collection::vec(any::<u8>(), 0..40),
            upgrade in proptest::collection::vec(any::<u8>(), 0..40),
            version in proptest::collection::vec(any::<u8>(), 0..4),
            key in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            if let Some(request) = request(&connection, &upgrade, &version, &key) {
                let _ = Handshake::validate(&request);
            }
        }

        #[test]
        fn any_16_byte_key_is_accepted_with_the_rfc_accept(bytes in any::<[u8; 16]>()) {
            let key = STANDARD.encode(bytes);
            let request = request(b"keep-alive, Upgrade", b"websocket", b"13", key.as_bytes()).unwrap();
            let expected = derive_accept_key(key.as_bytes());
            prop_assert_eq!(
                Handshake::validate(&request),
                Ok(Handshake::Http1 { accept: HeaderValue::from_str(&expected).unwrap() })
            );
        }

        #[test]
        fn keys_are_accepted_exactly_when_they_decode_to_16_bytes(key in "[A-Za-z0-9+/=]{20,28}") {
            let request = request(b"upgrade", b"websocket", b"13", key.as_bytes()).unwrap();
            let decodes_to_16 = STANDARD.decode(&key).is_ok_and(|b| b.len() == 16);
            prop_assert_eq!(Handshake::validate(&request).is_ok(), decodes_to_16);
        }
    }
}
