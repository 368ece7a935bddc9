//! [`HubLayer`] and [`HubService`]: the Tower middleware that intercepts WebSocket requests.
//!
//! For each request the service asks the route patterns (then the custom extractor, if any)
//! whether it is a hub request. If not, the request goes to the inner service untouched and its
//! response comes back untouched (no boxing: [`ResponseFuture`] and [`HubBody`] are enums). If it
//! is, the handshake is validated and answered here, and the upgraded socket is handed to the
//! hub; the inner service never sees it.

mod body;
mod future;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use hyper::upgrade::OnUpgrade;
use tower_layer::Layer;
use tower_service::Service;

use crate::authorize::{Authorization, AuthorizationFuture, RoomAuthorizer};
use crate::config::DEFAULT_AUTHORIZE_TIMEOUT;
use crate::handshake::{Handshake, Subprotocols};
use crate::hub::{Hub, PendingConnection, shutting_down};
use crate::origin::OriginPolicy;
use crate::rejection::Rejection;
use crate::route::{RoomExtractor, RoomMatch, RoomRouter, RoutePattern};

pub use body::HubBody;
pub use future::ResponseFuture;

type RemoteAddrFn = dyn Fn(&Parts) -> Option<SocketAddr> + Send + Sync;

/// A Tower [`Layer`] that serves WebSocket rooms on the configured routes.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_ws_hub::{Hub, HubLayer};
///
/// let hub = Hub::builder().build();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     // `/ws/lobby` joins room "lobby"; every other request reaches the router untouched.
///     .layer(HubLayer::new(hub.clone()).route("/ws/{room}"));
/// # drop(app);
/// ```
///
/// Put authentication middleware *outside* this layer (a later `.layer(..)` call in axum) so
/// that it runs first; what it inserts into the request extensions reaches
/// [`ConnectionContext::extensions`](crate::ConnectionContext::extensions).
#[derive(Clone)]
#[must_use]
pub struct HubLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    hub: Hub,
    router: RoomRouter,
    remote_addr: Option<Arc<RemoteAddrFn>>,
    origin: OriginPolicy,
    protocols: Subprotocols,
    authorizer: Option<Arc<dyn RoomAuthorizer>>,
    authorize_timeout: Option<Duration>,
}

impl std::fmt::Debug for HubLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubLayer")
            .field("router", &self.shared.router)
            .field("remote_addr", &self.shared.remote_addr.is_some())
            .field("origin", &self.shared.origin)
            .field("protocols", &self.shared.protocols)
            .field("authorizer", &self.shared.authorizer.is_some())
            .field("authorize_timeout", &self.shared.authorize_timeout)
            .finish_non_exhaustive()
    }
}

impl HubLayer {
    /// A layer for `hub` with no routes yet: add them with [`route`](Self::route) or
    /// [`extractor`](Self::extractor).
    pub fn new(hub: Hub) -> Self {
        let mut router = RoomRouter::default();
        router.set_max_room_name_len(hub.inner().config.max_room_name_len);
        Self {
            shared: Arc::new(Shared {
                hub,
                router,
                remote_addr: None,
                origin: OriginPolicy::default(),
                protocols: Subprotocols::default(),
                authorizer: None,
                authorize_timeout: Some(DEFAULT_AUTHORIZE_TIMEOUT),
            }),
        }
    }

    /// The configuration, for a builder method. A layer that was cloned gets its own copy
    /// first: configuring it leaves the clones as they were.
    fn shared_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.shared)
    }

    /// Serves WebSockets on paths matching `pattern`, such as `/ws/{room}`.
    ///
    /// Segments match exactly (no prefix matching); `{room}` is percent-decoded and names the
    /// room; other `{name}` segments match any one segment. May be called several times.
    /// Literal segments are compared with the path as the client sent it, so write them
    /// percent-encoded where clients encode (`/caf%C3%A9/{room}`; the hex digits of escapes
    /// match in either case).
    ///
    /// Only `{room}` names the room: other parameters are not part of it, and rooms are one
    /// namespace across patterns. With `/t/{tenant}/{room}`, `/t/acme/lobby` and
    /// `/t/globex/lobby` join the same room `lobby` (as does `/ws/lobby` if `/ws/{room}` is
    /// routed too). To keep tenants apart, name rooms with a [`RoomExtractor`] that builds
    /// the name from both segments (`acme/lobby`), or refuse the other tenants' members in an
    /// [`authorizer`](Self::authorize).
    ///
    /// The layer decides by path alone, before the inner service routes anything: a pattern claims
    /// every path it matches, including paths the inner service has routes for, and answers a plain
    /// (non-WebSocket) request there: `426` for an HTTP/1.1 `GET`, `405` for another method (and
    /// for HTTP/2, anything but extended `CONNECT`). Keep WebSocket routes under a prefix of their
    /// own (`/ws/{room}`): a top-level `/{room}` would also take `/health` and `/favicon.ico` (only
    /// `/` itself, an empty segment, is left alone).
    ///
    /// Patterns are tried in the order they were added, and the first that matches a path
    /// decides: its `{room}` segment names the room (or, if it is not a valid room name, the
    /// request gets `400` without trying the others). Two patterns overlap when, with as many
    /// segments, each has a literal where the other has a parameter (and no segment has
    /// different literals in each): then the one added **first** wins for the paths both
    /// match. With `/lobby/{room}` added before `/{room}/chat`, `/lobby/chat` joins room
    /// `chat`; added the other way round, room `lobby`. A pattern that one added before
    /// matches wherever it matches (`/ws/{room}` after `/{x}/{room}`) could never decide
    /// anything, and is refused (below): add the more specific pattern first.
    ///
    /// # Panics
    ///
    /// If the pattern does not start with `/`, has no `{room}` segment or more than one, or has
    /// a malformed segment: an empty one (`//`, or a trailing `/`: routes match whole segments,
    /// so `/ws/{room}` is the pattern for `/ws/lobby`), a parameter that is not a whole
    /// segment, a catch-all (`{*rest}`), axum 0.7's `:name` syntax (a literal segment that
    /// starts with `:` can be served with an [`extractor`](Self::extractor)), or a `.` or `..`
    /// segment (clients resolve those away: no request could match). Also if a pattern added
    /// before matches every path this one matches, so that this one would never be used: the
    /// same pattern again, one that differs only in parameter names or in which parameter is
    /// `{room}` (`/t/{tenant}/{room}` and `/t/{room}/{tenant}`), or a broader one
    /// (`/{x}/{room}` before `/ws/{room}`); the message names both. Use
    /// [`try_route`](Self::try_route) to get the error instead.
    pub fn route(self, pattern: &str) -> Self {
        match self.try_route(pattern) {
            Ok(layer) => layer,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`route`](Self::route), returning the pattern error instead of panicking: for
    /// patterns that come from configuration.
    ///
    /// # Errors
    ///
    /// The reason the pattern is invalid, or that a pattern added before matches every path
    /// it matches (naming it).
    pub fn try_route(mut self, pattern: &str) -> Result<Self, crate::route::InvalidRoutePattern> {
        let pattern = RoutePattern::parse(pattern)?;
        self.shared_mut().router.add_pattern(pattern)?;
        Ok(self)
    }

    /// Claims requests with a custom [`RoomExtractor`] (a closure over the request head),
    /// consulted for requests that no route pattern matched.
    ///
    /// If it panics, the request is answered `500` (it reaches neither the hub nor the inner
    /// service), counted in [`HubStats::callback_panics`](crate::HubStats::callback_panics)
    /// and logged; the server and the client's HTTP connection go on.
    pub fn extractor(mut self, extractor: impl RoomExtractor) -> Self {
        self.shared_mut().router.set_extractor(Arc::new(extractor));
        self
    }

    /// Which pages may open WebSockets (cross-site WebSocket hijacking protection). Refused
    /// requests get `403`. Default: [`OriginPolicy::SameOrigin`] (requests without `Origin`,
    /// i.e. non-browser clients, are allowed). A [predicate](OriginPolicy::predicate) that
    /// panics gets its request answered `500`, as a panicking [`extractor`](Self::extractor)
    /// does.
    pub fn origin(mut self, policy: OriginPolicy) -> Self {
        self.shared_mut().origin = policy;
        self
    }

    /// The subprotocols this server speaks. The server picks the first one in the client's
    /// `Sec-WebSocket-Protocol` list that it speaks, answers it in the handshake and exposes it
    /// as [`ConnectionContext::protocol`](crate::ConnectionContext::protocol). Default: none.
    ///
    /// # Panics
    ///
    /// If a name is empty or is not an HTTP token (RFC 6455 §4.1: letters, digits and
    /// ``!#$%&'*+-.^_`|~``; no spaces, commas or other separators), which no browser could
    /// offer: `new WebSocket(url, ["chat v1"])` throws.
    pub fn protocols<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        self.shared_mut().protocols.supported = protocols
            .into_iter()
            .map(|p| {
                let p = p.as_ref();
                assert!(
                    is_token(p),
                    "invalid subprotocol {p:?}: a subprotocol name is an HTTP token (letters, \
                     digits and !#$%&'*+-.^_`|~), with no spaces or separators"
                );
                HeaderValue::from_str(p).expect("a token is a valid header value")
            })
            .collect();
        self
    }

    /// Whether clients must offer one of the [`protocols`](Self::protocols): without one the
    /// upgrade gets `400` with the list of supported protocols. Default: `false`.
    ///
    /// Applying the layer ([`Layer::layer`]) panics if this is `true` and no protocols are
    /// set: every upgrade would be refused. (axum's `Router::layer` applies it once, when the
    /// router is built; a stack that applies layers per connection, as tonic's `Server::layer`
    /// does, panics in each connection's task instead.)
    pub fn require_protocol(mut self, required: bool) -> Self {
        self.shared_mut().protocols.required = required;
        self
    }

    /// Decides, before the upgrade, whether a request may join its room (see
    /// [`RoomAuthorizer`]). Runs after the handshake, origin and limit checks, so it only sees
    /// well-formed requests, each holding its connection place while it decides, for at most
    /// [`authorize_timeout`](Self::authorize_timeout) (10 s by default; then `503`). Default:
    /// everyone who passed the middleware in front may join.
    ///
    /// If the authorizer panics, when called or in its future, the request is answered `500`
    /// and gives back its place, counted in
    /// [`HubStats::callback_panics`](crate::HubStats::callback_panics) and logged; the server
    /// and the client's HTTP connection go on.
    pub fn authorize(mut self, authorizer: impl RoomAuthorizer) -> Self {
        self.shared_mut().authorizer = Some(Arc::new(authorizer));
        self
    }

    /// How long the [authorizer](Self::authorize) has to decide. Past it, its future is
    /// dropped and the request is answered `503 Service Unavailable` with `Retry-After`, gives
    /// back its connection place, and is counted in
    /// [`HubStats::authorize_timeouts`](crate::HubStats::authorize_timeouts) and logged (at
    /// most once a second). `None`: no bound. Default: 10 s
    /// ([`DEFAULT_AUTHORIZE_TIMEOUT`](crate::DEFAULT_AUTHORIZE_TIMEOUT), which says why).
    ///
    /// An authorizer that never decides would otherwise hold its place against the
    /// [connection limits](crate::HubBuilder::max_connections) and keep its HTTP connection
    /// open, and with it a graceful shutdown of the HTTP server (axum's
    /// `with_graceful_shutdown` waits for every connection) that [`Hub::shutdown`] did not
    /// start: requests still being authorized when the hub shuts down are answered `503` at
    /// once, whatever this bound.
    ///
    /// # Panics
    ///
    /// If the timeout is zero (every authorizer not ready at its first poll would be refused):
    /// use `None` for no bound.
    pub fn authorize_timeout(mut self, timeout: Option<Duration>) -> Self {
        assert!(
            timeout != Some(Duration::ZERO),
            "authorize_timeout must be positive (use None for no bound)"
        );
        self.shared_mut().authorize_timeout = timeout;
        self
    }

    /// How to find the client's address in the request head, for
    /// [`ConnectionContext::remote_addr`](crate::ConnectionContext::remote_addr).
    ///
    /// By default a [`SocketAddr`] request extension is used when present, and, with the `axum`
    /// cargo feature (on by default), axum's `ConnectInfo<SocketAddr>`: an axum app served
    /// through `into_make_service_with_connect_info::<SocketAddr>()` needs nothing more. Give
    /// your own to read another type, or a proxy's header (only from a proxy you trust: a
    /// client can send any header). It runs before the limit checks; if it panics, the request
    /// is answered `500`, as a panicking [`extractor`](Self::extractor) does.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// # let hub = tower_ws_hub::Hub::builder().build();
    /// let layer = tower_ws_hub::HubLayer::new(hub)
    ///     .route("/ws/{room}")
    ///     .remote_addr(|parts| {
    ///         // Behind a proxy that sets `X-Real-IP` (and strips what clients send).
    ///         let ip = parts.headers.get("x-real-ip")?.to_str().ok()?.parse().ok()?;
    ///         Some(SocketAddr::new(ip, 0))
    ///     });
    /// # drop(layer);
    /// ```
    pub fn remote_addr(
        mut self,
        find: impl Fn(&Parts) -> Option<SocketAddr> + Send + Sync + 'static,
    ) -> Self {
        self.shared_mut().remote_addr = Some(Arc::new(find));
        self
    }
}

/// Where [`HubLayer::remote_addr`] looks by default: a [`SocketAddr`] extension, or, with the
/// `axum` feature, axum's `ConnectInfo<SocketAddr>`.
fn default_remote_addr(parts: &Parts) -> Option<SocketAddr> {
    if let Some(addr) = parts.extensions.get::<SocketAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    None
}

/// Whether `s` is an HTTP token (RFC 9110 §5.6.2), what RFC 6455 requires of a subprotocol name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl<S> Layer<S> for HubLayer {
    type Service = HubService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        assert!(
            !self.shared.protocols.required || !self.shared.protocols.supported.is_empty(),
            "HubLayer::require_protocol(true) with no HubLayer::protocols: every WebSocket \
             upgrade would be refused; name the subprotocols this server speaks"
        );
        HubService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The [`Service`] made by [`HubLayer`]: answers WebSocket requests on its routes and passes
/// every other request to `S`.
#[derive(Clone)]
pub struct HubService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for HubService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubService")
            .field("inner", &self.inner)
            .field("router", &self.shared.router)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Is this a hub request, and for which room?
    fn classify<B>(&self, request: Request<B>) -> (Request<B>, RoomMatch) {
        if let Some(room) = self.router.match_path(request.uri().path()) {
            let decision = match room {
                Ok(room) => RoomMatch::Room(room),
                Err(rejection) => RoomMatch::Reject(rejection),
            };
            return (request, decision);
        }
        if !self.router.has_extractor() {
            return (request, RoomMatch::Pass);
        }
        let (parts, body) = request.into_parts();
        let decision = self
            .guard("HubLayer::extractor", &parts, None, || {
                self.router.extract(&parts)
            })
            .unwrap_or_else(RoomMatch::Reject);
        (Request::from_parts(parts, body), decision)
    }

    /// Runs `call`, the application callback named `callback` (for the log), for the request
    /// with head `parts`, catching a panic: counted and logged, and answered `500` instead of
    /// unwinding through the HTTP server's connection task, which would drop the client's
    /// connection without a word (and every other request on it, over HTTP/1.1).
    fn guard<T>(
        &self,
        callback: &'static str,
        parts: &Parts,
        room: Option<&str>,
        call: impl FnOnce() -> T,
    ) -> Result<T, Rejection> {
        // The callback only borrows the request head; whatever state of its own a panic left
        // behind is the application's, as for hooks.
        std::panic::catch_unwind(AssertUnwindSafe(call))
            .map_err(|payload| self.hub.callback_panicked(callback, parts, room, &*payload))
    }

    fn remote_addr(&self, parts: &Parts) -> Option<SocketAddr> {
        match &self.remote_addr {
            Some(find) => find(parts),
            None => default_remote_addr(parts),
        }
    }

    /// Checks a hub request up to the authorizer and reserves its place.
    fn prepare<B>(
        &self,
        request: Request<B>,
        room: String,
    ) -> Result<PendingConnection, Rejection> {
        let handshake =
            Handshake::validate(&request).map_err(|error| error.rejection(request.version()))?;
        let (mut parts, _body) = request.into_parts();
        // Only a predicate runs application code: the built-in policies never panic.
        self.guard("OriginPolicy::predicate", &parts, Some(&room), || {
            self.origin.check(&parts)
        })?
        .inspect_err(|_| self.hub.note_origin_refused(&parts, &self.origin))?;
        let protocol = self.protocols.select(&parts.headers)?;
        // Before the reservation: a request refused for any reason (a panicking `remote_addr`
        // finder included) never holds a place.
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| self.hub.no_upgrade_handle())?;
        let remote_addr = self.guard("HubLayer::remote_addr", &parts, Some(&room), || {
            self.remote_addr(&parts)
        })?;
        let reservation = self.hub.reserve(&room)?;
        Ok(PendingConnection {
            parts,
            on_upgrade,
            room,
            handshake,
            protocol,
            remote_addr,
            reservation,
        })
    }

    fn reject(&self, rejection: Rejection) -> Response<Bytes> {
        reject(&self.hub, rejection)
    }
}

fn reject(hub: &Hub, rejection: Rejection) -> Response<Bytes> {
    hub.note_rejection(rejection.status());
    tracing::debug!(status = %rejection.status(), reason = rejection.reason(),
        "tower-ws-hub: upgrade refused");
    rejection.into_response()
}

/// Validates and answers a hub request (with a boxed future only when authorizing).
fn upgrade<F, B>(shared: &Arc<Shared>, request: Request<B>, room: String) -> ResponseFuture<F> {
    let pending = match shared.prepare(request, room) {
        Ok(pending) => pending,
        Err(rejection) => return ResponseFuture::ready(shared.reject(rejection)),
    };
    let Some(authorizer) = &shared.authorizer else {
        let response = shared
            .hub
            .start(pending)
            .unwrap_or_else(|rejection| shared.reject(rejection));
        return ResponseFuture::ready(response);
    };
    let decision = shared.guard(
        "HubLayer::authorize",
        &pending.parts,
        Some(&pending.room),
        || authorizer.authorize(&pending.parts, &pending.room),
    );
    let decision = match decision {
        Ok(decision) => decision,
        Err(rejection) => {
            // Gives the place back.
            drop(pending);
            return ResponseFuture::ready(shared.reject(rejection));
        }
    };
    let timeout = shared.authorize_timeout;
    let mut authorizing = Authorizing {
        hub: shared.hub.clone(),
        pending: Some(pending),
        decision: Some(AssertUnwindSafe(decision).catch_unwind()),
    };
    ResponseFuture::authorizing(Box::pin(async move {
        let decision = authorizing
            .decision
            .as_mut()
            .expect("dropped only when done with");
        let decided = tokio::select! {
            // A decision that is ready wins; `start` refuses an `Allow` once shutdown began.
            biased;
            decided = decide(decision, timeout) => decided,
            // Shutdown does not wait for authorizations, and would refuse whatever they
            // decide: answer now, rather than hold the HTTP connection (and a graceful
            // shutdown of the HTTP server, which waits for it) until the authorizer decides.
            () = authorizing.hub.shutdown_started() => Decided::ShuttingDown,
        };
        let (hub, pending) = authorizing.into_parts();
        let rejection = match decided {
            Decided::Answer(Authorization::Allow) => {
                return hub
                    .start(pending)
                    .unwrap_or_else(|rejection| reject(&hub, rejection));
            }
            Decided::Answer(Authorization::Deny(rejection)) => rejection,
            Decided::Panicked(payload) => hub.callback_panicked(
                "HubLayer::authorize (its future)",
                &pending.parts,
                Some(&pending.room),
                &*payload,
            ),
            Decided::TimedOut(timeout) => {
                hub.authorization_timed_out(&pending.parts, &pending.room, timeout)
            }
            Decided::ShuttingDown => shutting_down(),
        };
        // Gives the place back.
        drop(pending);
        reject(&hub, rejection)
    }))
}

/// An upgrade request waiting for the authorizer, and the authorizer's future.
///
/// Dropping a future that has not decided runs the application's code too (the drops of what
/// it holds), whether the hub drops it (it timed out, or shutdown began) or the HTTP server
/// does (the client hung up, and the response future went with its connection): a panic there
/// is caught and counted like one in its poll, instead of unwinding through the HTTP server's
/// task, uncounted, with the default panic hook printing whatever the application put in its
/// message.
struct Authorizing {
    hub: Hub,
    /// `Some` until [`into_parts`](Self::into_parts).
    pending: Option<PendingConnection>,
    /// `Some` until [`drop_decision`](Self::drop_decision), which only `into_parts` and `drop`
    /// call.
    decision: Option<GuardedDecision>,
}

impl Authorizing {
    /// Drops the authorizer's future (once), catching a panic in its drop.
    fn drop_decision(&mut self) {
        let Some(decision) = self.decision.take() else {
            return;
        };
        if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| drop(decision)))
            && let Some(pending) = &self.pending
        {
            self.hub.callback_drop_panicked(
                "HubLayer::authorize (dropping its future)",
                &pending.parts,
                Some(&pending.room),
                &*payload,
            );
        }
    }

    /// Once decided (or given up on): drops the future and hands back the hub and the request.
    fn into_parts(mut self) -> (Hub, PendingConnection) {
        self.drop_decision();
        let pending = self.pending.take().expect("taken only here, by value");
        (self.hub.clone(), pending)
    }
}

impl Drop for Authorizing {
    fn drop(&mut self) {
        self.drop_decision();
    }
}

/// What became of an authorization.
enum Decided {
    /// The authorizer's decision.
    Answer(Authorization),
    /// Its future panicked, with this payload.
    Panicked(Box<dyn std::any::Any + Send>),
    /// It had not decided within this long ([`HubLayer::authorize_timeout`]).
    TimedOut(Duration),
    /// The hub began shutting down first.
    ShuttingDown,
}

/// The authorizer's future, catching a panic in its poll.
type GuardedDecision = futures_util::future::CatchUnwind<AssertUnwindSafe<AuthorizationFuture>>;

/// Waits for the authorizer's `decision`, at most `timeout`, catching a panic: the future is
/// the application's, as the call that made it is. A future that times out is not polled
/// again, so it decides nothing any more; the caller drops it.
async fn decide(decision: &mut GuardedDecision, timeout: Option<Duration>) -> Decided {
    let decided = match timeout {
        Some(timeout) => match tokio::time::timeout(timeout, decision).await {
            Ok(decided) => decided,
            Err(_) => return Decided::TimedOut(timeout),
        },
        None => decision.await,
    };
    decided.map_or_else(Decided::Panicked, Decided::Answer)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HubService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<HubBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (request, decision) = self.shared.classify(request);
        match decision {
            RoomMatch::Pass => ResponseFuture::inner(self.inner.call(request)),
            RoomMatch::Reject(rejection) => ResponseFuture::ready(self.shared.reject(rejection)),
            RoomMatch::Room(room) => upgrade(&self.shared, request, room),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "authorize_timeout must be positive (use None for no bound)")]
    fn a_zero_authorize_timeout_panics() {
        let _ = HubLayer::new(Hub::builder().build()).authorize_timeout(Some(Duration::ZERO));
    }

    #[test]
    fn subprotocol_names_must_be_tokens() {
        for good in [
            "chat",
            "chat.v2",
            "graphql-transport-ws",
            "v1!#$%&'*+-.^_`|~",
        ] {
            assert!(is_token(good), "{good}");
        }
        for bad in [
            "", "chat v1", " chat", "a;b", "a,b", "é", "a\tb", "a/b", "(x)", "a=b",
        ] {
            assert!(!is_token(bad), "{bad:?}");
            let refused =
                std::panic::catch_unwind(|| HubLayer::new(Hub::builder().build()).protocols([bad]));
            assert!(refused.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    #[should_panic(expected = "require_protocol(true) with no HubLayer::protocols")]
    fn requiring_a_protocol_without_any_panics_when_the_layer_is_applied() {
        let layer = HubLayer::new(Hub::builder().build()).require_protocol(true);
        let _ = layer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
    }

    #[test]
    fn authorizers_are_bounded_by_default() {
        assert_eq!(DEFAULT_AUTHORIZE_TIMEOUT, Duration::from_secs(10));
        let layer = HubLayer::new(Hub::builder().build());
        assert_eq!(
            layer.shared.authorize_timeout,
            Some(DEFAULT_AUTHORIZE_TIMEOUT)
        );
        let unbounded = layer.clone().authorize_timeout(None);
        assert_eq!(unbounded.shared.authorize_timeout, None);
        // The clone it was configured from keeps its own setting.
        assert_eq!(
            layer.shared.authorize_timeout,
            Some(DEFAULT_AUTHORIZE_TIMEOUT)
        );
    }
}
