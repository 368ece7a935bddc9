//! [`Rejection`]: the answer to a WebSocket request that will not be upgraded.
//!
//! Every refusal the layer gives (a malformed handshake, a bad room name, a server that is
//! shutting down, a custom extractor saying no) becomes one status code and a short plain-text
//! reason, so that a client developer staring at a failed handshake learns what to fix.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

/// A refused WebSocket request: a status, a plain-text reason and optional extra headers.
///
/// ```
/// use http::StatusCode;
/// use tower_ws_hub::Rejection;
///
/// let rejection = Rejection::new(StatusCode::FORBIDDEN, "members only");
/// assert_eq!(rejection.status(), StatusCode::FORBIDDEN);
/// assert_eq!(rejection.reason(), "members only");
/// ```
#[derive(Debug, Clone)]
pub struct Rejection {
    status: StatusCode,
    reason: Cow<'static, str>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Rejection {
    /// A rejection with this status and reason (sent as a `text/plain` body).
    ///
    /// The status should be a client or server error (4xx, 5xx; a redirect, 3xx, with a
    /// `Location` header also works for clients that follow it). An informational or success
    /// status (1xx, 2xx) would tell the client that its WebSocket was accepted (over HTTP/2,
    /// a `2xx` answer to the extended CONNECT opens the tunnel) while nothing serves it, so it
    /// is replaced with `500 Internal Server Error`, the reason kept.
    pub fn new(status: StatusCode, reason: impl Into<Cow<'static, str>>) -> Self {
        let status = if status.is_informational() || status.is_success() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            status
        };
        Self {
            status,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// `400 Bad Request` with this reason.
    pub fn bad_request(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }

    /// `403 Forbidden` with this reason.
    pub fn forbidden(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, reason)
    }

    /// Adds a response header (e.g. `Retry-After`).
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The plain-text reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The value of an extra header, if set.
    pub fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The HTTP response: status, extra headers, the reason as the body (`Content-Type:
    /// text/plain; charset=utf-8` unless an extra header sets another).
    pub fn into_response(self) -> Response<Bytes> {
        let body = match self.reason {
            Cow::Borrowed(reason) => Bytes::from_static(reason.as_bytes()),
            Cow::Owned(reason) => Bytes::from(reason),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        // The body is the reason, in plain text, unless the caller said otherwise.
        headers
            .entry(header::CONTENT_TYPE)
            .or_insert(HeaderValue::from_static("text/plain; charset=utf-8"));
        response
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_never_answers_with_a_success_status() {
        for accepted in [
            StatusCode::OK,
            StatusCode::SWITCHING_PROTOCOLS,
            StatusCode::NO_CONTENT,
        ] {
            let rejection = Rejection::new(accepted, "not really");
            assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(rejection.reason(), "not really");
        }
        for kept in [
            StatusCode::FOUND,
            StatusCode::UNAUTHORIZED,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert_eq!(Rejection::new(kept, "no").status(), kept);
        }
    }

    #[test]
    fn the_reason_is_plain_text_unless_a_header_says_otherwise() {
        let plain = Rejection::bad_request("no").into_response();
        assert_eq!(
            plain.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let json = Rejection::forbidden(r#"{"error":"no"}"#)
            .with_header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .into_response();
        let types: Vec<_> = json
            .headers()
            .get_all(header::CONTENT_TYPE)
            .iter()
            .collect();
        assert_eq!(types, ["application/json"]);
        assert_eq!(&json.body()[..], br#"{"error":"no"}"#);
    }
}
