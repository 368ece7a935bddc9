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
use std::sync::Arc;
use std::task::{Context, Poll};

use http::request::Parts;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::handshake::Handshake;
use crate::hub::Hub;
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

struct Shared {
    hub: Hub,
    router: RoomRouter,
    remote_addr: Option<Box<RemoteAddrFn>>,
}

impl std::fmt::Debug for HubLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubLayer")
            .field("router", &self.shared.router)
            .field("remote_addr", &self.shared.remote_addr.is_some())
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
            }),
        }
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.shared)
            .expect("configure a HubLayer before cloning it or handing it to a router")
    }

    /// Serves WebSockets on paths matching `pattern`, such as `/ws/{room}`.
    ///
    /// Segments match exactly (no prefix matching); `{room}` is percent-decoded and names the
    /// room; other `{name}` segments match any one segment. May be called several times.
    ///
    /// # Panics
    ///
    /// If the pattern does not start with `/`, has no `{room}` segment or more than one, or has
    /// a malformed segment. Use [`try_route`](Self::try_route) to get the error instead.
    pub fn route(self, pattern: &str) -> Self {
        match self.try_route(pattern) {
            Ok(layer) => layer,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`route`](Self::route), returning the pattern error instead of panicking.
    ///
    /// # Errors
    ///
    /// The reason the pattern is invalid.
    pub fn try_route(mut self, pattern: &str) -> Result<Self, crate::route::InvalidRoutePattern> {
        let pattern = RoutePattern::parse(pattern)?;
        self.shared_mut().router.add_pattern(pattern);
        Ok(self)
    }

    /// Claims requests with a custom [`RoomExtractor`] (a closure over the request head),
    /// consulted for requests that no route pattern matched.
    pub fn extractor(mut self, extractor: impl RoomExtractor) -> Self {
        self.shared_mut().router.set_extractor(Box::new(extractor));
        self
    }

    /// How to find the client's address in the request head, for
    /// [`ConnectionContext::remote_addr`](crate::ConnectionContext::remote_addr).
    ///
    /// By default a [`SocketAddr`] request extension is used when present. With axum, served
    /// through `into_make_service_with_connect_info::<SocketAddr>()`:
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::extract::ConnectInfo;
    /// # let hub = tower_ws_hub::Hub::builder().build();
    /// let layer = tower_ws_hub::HubLayer::new(hub)
    ///     .route("/ws/{room}")
    ///     .remote_addr(|parts| {
    ///         parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0)
    ///     });
    /// # drop(layer);
    /// ```
    pub fn remote_addr(
        mut self,
        find: impl Fn(&Parts) -> Option<SocketAddr> + Send + Sync + 'static,
    ) -> Self {
        self.shared_mut().remote_addr = Some(Box::new(find));
        self
    }
}

impl<S> Layer<S> for HubLayer {
    type Service = HubService<S>;

    fn layer(&self, inner: S) -> Self::Service {
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
        let decision = self.router.extract(&parts);
        (Request::from_parts(parts, body), decision)
    }

    fn remote_addr<B>(&self, request: &Request<B>) -> Option<SocketAddr> {
        match &self.remote_addr {
            Some(find) => {
                // `Parts` cannot be borrowed out of a `Request`; rebuild a head without the body.
                let mut head = Request::new(());
                *head.method_mut() = request.method().clone();
                *head.uri_mut() = request.uri().clone();
                *head.version_mut() = request.version();
                *head.headers_mut() = request.headers().clone();
                *head.extensions_mut() = request.extensions().clone();
                find(&head.into_parts().0)
            }
            None => request.extensions().get::<SocketAddr>().copied(),
        }
    }

    /// Validates and answers a hub request.
    fn upgrade<B>(&self, request: Request<B>, room: String) -> Response<bytes::Bytes> {
        let hub = &self.hub;
        let answer = Handshake::validate(&request)
            .map_err(Rejection::from)
            .and_then(|handshake| {
                let remote_addr = self.remote_addr(&request);
                hub.accept(request, room, &handshake, remote_addr)
            });
        answer.unwrap_or_else(|rejection| self.reject(rejection))
    }

    fn reject(&self, rejection: Rejection) -> Response<bytes::Bytes> {
        self.hub.note_rejection();
        tracing::debug!(status = %rejection.status(), reason = rejection.reason(),
            "tower-ws-hub: upgrade refused");
        rejection.into_response()
    }
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
            RoomMatch::Room(room) => ResponseFuture::ready(self.shared.upgrade(request, room)),
        }
    }
}
