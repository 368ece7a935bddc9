//! [`OriginPolicy`]: which web pages may open WebSockets to this server.
//!
//! Browsers attach cookies and HTTP auth to WebSocket handshakes from *any* page, and WebSockets
//! are not subject to CORS. Without an Origin check, a malicious page visited by a logged-in
//! user can open a socket to your server as that user (cross-site WebSocket hijacking). Browsers
//! always send `Origin` on WebSocket handshakes and scripts cannot forge it, so checking it
//! closes the hole. Non-browser clients usually send no `Origin`; they are not exposed to this
//! attack (they hold their own credentials), so a missing `Origin` is allowed by the same-origin
//! policy.

use std::net::Ipv6Addr;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, header};

use crate::rejection::Rejection;

type OriginPredicate = dyn Fn(Option<&HeaderValue>, &Parts) -> bool + Send + Sync;

/// Which `Origin` values may open a WebSocket. Refused requests get `403 Forbidden`.
///
/// The default is [`OriginPolicy::SameOrigin`]: a page may connect only to the host and port it
/// was served from, and clients that send no `Origin` (non-browser clients) are allowed.
///
/// ```
/// use tower_ws_hub::OriginPolicy;
///
/// let policy = OriginPolicy::allow_list(["https://chat.example.com", "https://example.com"]);
/// # drop(policy);
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum OriginPolicy {
    /// `Origin`'s host and port must equal the request's: its target's authority where it has
    /// one (HTTP/2's `:authority`, an HTTP/1.1 request line in absolute form), its `Host`
    /// otherwise; requests without `Origin` are allowed. The default.
    ///
    /// Behind a reverse proxy that rewrites `Host`, use an allow-list instead (or have the
    /// proxy keep the original `Host`).
    #[default]
    SameOrigin,
    /// Only these origins (`scheme://host[:port]`); requests without `Origin` are allowed.
    /// Scheme and host compare case-insensitively, and a port equal to the scheme's default
    /// (80 for `http`/`ws`, 443 for `https`/`wss`) is the same as none. Build it with
    /// [`allow_list`](Self::allow_list), which checks and normalises each entry (an entry of a
    /// list built directly is not checked: one that is not a valid origin never matches).
    AllowList(Arc<[HeaderValue]>),
    /// A custom decision from the `Origin` header (if any) and the request head.
    Predicate(Arc<OriginPredicate>),
    /// No check at all. Only for servers that authenticate with something a browser does not
    /// attach automatically (e.g. a token in the first message), or for development.
    Any,
}

impl std::fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SameOrigin => f.write_str("SameOrigin"),
            Self::AllowList(list) => f.debug_tuple("AllowList").field(list).finish(),
            Self::Predicate(_) => f.write_str("Predicate(..)"),
            Self::Any => f.write_str("Any"),
        }
    }
}

impl OriginPolicy {
    /// Only these origins, e.g. `["https://example.com", "http://localhost:8080"]`: what a
    /// browser sends as `Origin`, `scheme://host[:port]` (a trailing `/` is ignored).
    /// `https://example.com:443` and `https://example.com` are the same origin, as are
    /// `https://Example.COM` and `https://example.com`; IPv6 hosts compare by address
    /// (`[0:0::1]` is `[::1]`). Each entry is stored lower-case, IPv6 in its short form, and
    /// without its scheme's default port.
    ///
    /// # Panics
    ///
    /// If an entry is not `scheme://host[:port]` as browsers send it: a path, query or
    /// fragment, a user name, a wildcard, a missing scheme or host, a host with anything but
    /// ASCII letters, digits, `-`, `.` and `_` (write an internationalised domain in its
    /// `xn--` form), an IPv6 address without brackets or with a zone id, a port that is not
    /// 1–5 digits or is above 65535, or the opaque origin `null`, which any sandboxed page can
    /// send and so must never be allowed.
    pub fn allow_list<I, O>(origins: I) -> Self
    where
        I: IntoIterator<Item = O>,
        O: AsRef<str>,
    {
        let list = origins
            .into_iter()
            .map(|origin| {
                let given = origin.as_ref();
                let normalised = Origin::parse(given.strip_suffix('/').unwrap_or(given))
                    .map(|origin| origin.to_string())
                    .unwrap_or_else(|| {
                        panic!(
                            "invalid origin in allow list: {given:?} (expected \
                             scheme://host[:port], as browsers send it, e.g. \
                             \"https://app.example.com\")"
                        )
                    });
                HeaderValue::from_str(&normalised)
                    .unwrap_or_else(|_| panic!("invalid origin in allow list: {given:?}"))
            })
            .collect::<Vec<_>>();
        Self::AllowList(list.into())
    }

    /// A custom decision: `predicate(origin, request_head)` returns `true` to allow.
    ///
    /// A predicate that panics gets its request answered `500 Internal Server Error`, counted
    /// in [`HubStats::callback_panics`](crate::HubStats::callback_panics) and logged.
    pub fn predicate(
        predicate: impl Fn(Option<&HeaderValue>, &Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::Predicate(Arc::new(predicate))
    }

    /// Checks a request head.
    pub(crate) fn check(&self, parts: &Parts) -> Result<(), Rejection> {
        let origin = parts.headers.get(header::ORIGIN);
        let allowed = match self {
            Self::Any => true,
            Self::Predicate(predicate) => predicate(origin, parts),
            Self::SameOrigin => origin.is_none_or(|origin| is_same_origin(origin, parts)),
            Self::AllowList(list) => origin.is_none_or(|origin| {
                let Some(origin) = origin.to_str().ok().and_then(Origin::parse) else {
                    return false;
                };
                list.iter().any(|allowed| {
                    allowed
                        .to_str()
                        .ok()
                        .and_then(Origin::parse)
                        .is_some_and(|allowed| allowed == origin)
                })
            }),
        };
        if allowed {
            Ok(())
        } else {
            Err(Rejection::forbidden("origin not allowed"))
        }
    }
}

/// An origin taken apart: `scheme://host[:port]`, compared as browsers do.
#[derive(Debug, Clone, Copy)]
struct Origin<'a> {
    scheme: &'a str,
    host: Host<'a>,
    /// The explicit port, or the scheme's default (`None` for a scheme without one).
    port: Option<u16>,
}

/// A host as an origin or a `Host` header names it.
#[derive(Debug, Clone, Copy)]
enum Host<'a> {
    /// A DNS name or an IPv4 address: ASCII letters, digits, `-`, `.`, `_` (a name with
    /// other characters, e.g. an internationalised one, must be written as browsers send it:
    /// its `xn--` form).
    Name(&'a str),
    /// A bracketed IPv6 literal (no zone id: browsers refuse those).
    V6(Ipv6Addr),
}

impl PartialEq for Host<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Name(a), Self::Name(b)) => a.eq_ignore_ascii_case(b),
            (Self::V6(a), Self::V6(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Host<'_> {
    /// Lower-case; IPv6 in its short form, as browsers send it (RFC 5952).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => f.write_str(&name.to_ascii_lowercase()),
            Self::V6(address) => write!(f, "[{address}]"),
        }
    }
}

impl<'a> Origin<'a> {
    fn parse(origin: &'a str) -> Option<Self> {
        let (scheme, authority) = origin.split_once("://")?;
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return None;
        }
        let (host, port) = split_host_port(authority)?;
        Some(Self {
            scheme,
            host,
            port: port.or_else(|| default_port(scheme)),
        })
    }
}

impl PartialEq for Origin<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.scheme.eq_ignore_ascii_case(other.scheme)
            && self.host == other.host
            && self.port == other.port
    }
}

impl std::fmt::Display for Origin<'_> {
    /// Lower-case, without the scheme's default port: how browsers serialise an origin.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.scheme.to_ascii_lowercase();
        write!(f, "{scheme}://{}", self.host)?;
        match self.port {
            Some(port) if Some(port) != default_port(&scheme) => write!(f, ":{port}"),
            _ => Ok(()),
        }
    }
}

/// The port a scheme implies when an origin names none.
fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        Some(443)
    } else {
        None
    }
}

/// `scheme://host[:port]` of `origin` names the same host and port as the request's authority.
fn is_same_origin(origin: &HeaderValue, parts: &Parts) -> bool {
    // Fails on the opaque origin "null" too (sandboxed iframes, file: pages).
    let Some(origin) = origin.to_str().ok().and_then(Origin::parse) else {
        return false;
    };
    let Some(default_port) = default_port(origin.scheme) else {
        return false;
    };
    let Some((host, port)) = request_authority(parts).and_then(split_host_port) else {
        return false;
    };
    // The server cannot tell whether the client spoke TLS (a proxy may have terminated it), so
    // a `Host` without a port matches an origin on its scheme's default port, whichever it is.
    origin.port == Some(port.unwrap_or(default_port)) && origin.host == host
}

/// The authority a request was sent to, as `SameOrigin` compares it: its target's authority
/// where it has one (HTTP/2's `:authority`, an HTTP/1.1 request in absolute form, whose `Host`
/// a server must ignore: RFC 9112 §3.2.2), its `Host` otherwise.
pub(crate) fn request_authority(parts: &Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok()),
    }
}

/// Splits `host[:port]` (a `Host` header, or an origin's authority), checking both: a host
/// as [`Host`] describes it, a port of 1 to 5 digits.
fn split_host_port(authority: &str) -> Option<(Host<'_>, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (Host::V6(address.parse().ok()?), port)
    } else {
        let (name, port) = match authority.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        };
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        (valid.then_some(Host::Name(name))?, port)
    };
    let port = match port {
        Some(port) if (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()) => {
            Some(port.parse().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(host: Option<&str>, origin: Option<&str>) -> Parts {
        let mut builder = http::Request::get("/ws/r");
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn same_origin_compares_host_and_port_with_default_ports() {
        let policy = OriginPolicy::SameOrigin;
        let ok = |host, origin| policy.check(&parts(Some(host), Some(origin))).is_ok();
        // TLS may end at a proxy: a port-less Host matches either default port.
        assert!(ok("example.com", "https://example.com"));
        assert!(ok("example.com:443", "https://example.com"));
        assert!(!ok("example.com:443", "http://example.com"));
        assert!(ok("example.com", "http://example.com"));
        assert!(ok("Example.COM:8080", "http://example.com:8080"));
        assert!(ok("127.0.0.1:3000", "http://127.0.0.1:3000"));
        assert!(ok("[::1]:3000", "http://[::1]:3000"));
        assert!(!ok("example.com", "https://evil.example"));
        assert!(!ok("example.com:3000", "http://example.com:3001"));
        assert!(!ok("example.com", "null"));
        assert!(!ok("example.com", "http://example.com@evil"));
        // No Origin: not a browser, allowed.
        assert!(policy.check(&parts(Some("example.com"), None)).is_ok());
    }

    /// The request target's authority (HTTP/2's `:authority`, or an HTTP/1.1 request line in
    /// absolute form) is the request's origin, whatever `Host` says (RFC 9112 §3.2.2).
    #[test]
    fn same_origin_takes_the_targets_authority_over_host() {
        let policy = OriginPolicy::SameOrigin;
        let absolute = |host: &str, origin: &str| {
            let request = http::Request::get("http://app.example.com/ws/r")
                .header(header::HOST, host)
                .header(header::ORIGIN, origin)
                .body(())
                .unwrap();
            policy.check(&request.into_parts().0).is_ok()
        };
        assert!(absolute("evil.example", "http://app.example.com"));
        assert!(!absolute("evil.example", "http://evil.example"));
        assert!(absolute("app.example.com", "http://app.example.com"));
    }

    #[test]
    fn allow_list_is_exact_and_case_insensitive() {
        let policy = OriginPolicy::allow_list(["https://app.example.com/"]);
        assert!(
            policy
                .check(&parts(None, Some("https://APP.example.com")))
                .is_ok()
        );
        assert!(
            policy
                .check(&parts(None, Some("https://app.example.com.evil")))
                .is_err()
        );
        assert!(
            policy
                .check(&parts(None, Some("http://app.example.com")))
                .is_err()
        );
        assert!(policy.check(&parts(None, None)).is_ok());
    }

    #[test]
    fn allow_list_treats_a_default_port_as_none() {
        let ok =
            |policy: &OriginPolicy, origin: &str| policy.check(&parts(None, Some(origin))).is_ok();
        let policy = OriginPolicy::allow_list(["https://app.example.com:443", "http://localhost"]);
        // What browsers send: no port when it is the scheme's default.
        assert!(ok(&policy, "https://app.example.com"));
        assert!(ok(&policy, "https://app.example.com:443"));
        assert!(ok(&policy, "http://localhost:80"));
        assert!(!ok(&policy, "https://app.example.com:8443"));
        assert!(!ok(&policy, "http://app.example.com:443"));
        assert!(!ok(&policy, "http://localhost:8080"));
        assert!(!ok(&policy, "null"));
        let policy = OriginPolicy::allow_list(["http://[::1]:3000", "https://example.com:8443"]);
        assert!(ok(&policy, "http://[::1]:3000"));
        assert!(!ok(&policy, "http://[::1]"));
        assert!(ok(&policy, "https://EXAMPLE.com:8443"));
        assert!(!ok(&policy, "https://example.com"));
    }

    #[test]
    fn malformed_origins_and_hosts_are_refused_by_every_policy() {
        let policy = OriginPolicy::allow_list(["http://[::1]", "https://example.com"]);
        for origin in [
            "http://[::1].evil.example",
            "http://[::1]@evil.example",
            "https://example.com:+443",
            "https://example.com.:443:443",
        ] {
            assert!(
                policy.check(&parts(None, Some(origin))).is_err(),
                "allow list accepted {origin:?}"
            );
        }
        let same = |host, origin| {
            OriginPolicy::SameOrigin
                .check(&parts(Some(host), Some(origin)))
                .is_ok()
        };
        assert!(!same("[::1]", "http://[::1].evil.example"));
        assert!(!same("[::1]evil.example", "http://[::1]"));
        assert!(same("[::1]:3000", "http://[0:0::1]:3000"));
    }

    #[test]
    fn ipv6_entries_match_the_short_form_browsers_send() {
        let policy = OriginPolicy::allow_list(["http://[0:0:0:0:0:0:0:1]:3000"]);
        assert!(
            policy
                .check(&parts(None, Some("http://[::1]:3000")))
                .is_ok()
        );
        let OriginPolicy::AllowList(list) = policy else {
            unreachable!()
        };
        assert_eq!(list[0], "http://[::1]:3000");
    }

    #[test]
    fn allow_list_entries_are_stored_normalised() {
        let OriginPolicy::AllowList(list) = OriginPolicy::allow_list([
            "HTTPS://App.Example.com:443/",
            "http://[::1]:80",
            "wss://example.com:8443",
        ]) else {
            unreachable!()
        };
        let list: Vec<_> = list.iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            list,
            [
                "https://app.example.com",
                "http://[::1]",
                "wss://example.com:8443"
            ]
        );
    }

    #[test]
    fn allow_list_refuses_what_is_not_an_origin() {
        for bad in [
            "example.com",
            "https://example.com/app",
            "https://user@example.com",
            "https://example.com:http",
            "https://",
            "null",
            "://example.com",
            "https://example.com//",
            "https://example.com:",
            "https://example.com:+443",
            "https://example.com:70000",
            "http://[::1]3000",
            "http://[::1]evil.example",
            "http://::1",
            "http://[fe80::1%25eth0]",
            "http://a]:b:8080",
            "https://*.example.com",
            "https://example.com?x=1",
            "https://example.com#top",
            "https://example.com\t",
            // Browsers send the `xn--` form; this one could never match.
            "https://bücher.example",
        ] {
            let result = std::panic::catch_unwind(|| OriginPolicy::allow_list([bad]));
            assert!(result.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn rejections_are_403() {
        let rejection = OriginPolicy::SameOrigin
            .check(&parts(Some("a.com"), Some("https://b.com")))
            .unwrap_err();
        assert_eq!(rejection.status(), http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn predicate_sees_the_origin() {
        let policy = OriginPolicy::predicate(|origin, _| {
            origin.is_some_and(|o| o.as_bytes().ends_with(b".example.com"))
        });
        assert!(
            policy
                .check(&parts(None, Some("https://a.example.com")))
                .is_ok()
        );
        assert!(policy.check(&parts(None, None)).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn parts(host: &str, origin: &str) -> Option<Parts> {
        Some(
            http::Request::get("/ws/r")
                .header(header::HOST, HeaderValue::from_str(host).ok()?)
                .header(header::ORIGIN, HeaderValue::from_str(origin).ok()?)
                .body(())
                .ok()?
                .into_parts()
                .0,
        )
    }

    proptest! {
        #[test]
        fn arbitrary_hosts_and_origins_never_panic(host in "\\PC{0,30}", origin in "\\PC{0,40}") {
            if let Some(parts) = parts(&host, &origin) {
                let _ = OriginPolicy::SameOrigin.check(&parts);
            }
        }

        #[test]
        fn a_page_may_always_connect_to_its_own_host(host in "[a-z][a-z0-9.-]{0,20}", port in 1u16.., https: bool) {
            let scheme = if https { "https" } else { "http" };
            let parts = parts(&format!("{host}:{port}"), &format!("{scheme}://{host}:{port}")).unwrap();
            prop_assert!(OriginPolicy::SameOrigin.check(&parts).is_ok());
        }

        #[test]
        fn another_host_is_always_refused(host in "[a-z]{1,10}", other in "[a-z]{1,10}", port in 1u16..) {
            prop_assume!(host != other);
            let parts = parts(&format!("{host}.test:{port}"), &format!("http://{other}.test:{port}")).unwrap();
            prop_assert!(OriginPolicy::SameOrigin.check(&parts).is_err());
        }
    }
}
