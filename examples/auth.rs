//! Authentication in front of the hub: an ordinary axum middleware checks a bearer token, puts
//! the `User` it stands for into the request extensions, or answers `401`. Unauthenticated
//! upgrade requests never reach the hub. The hub's message hook then reads the `User` from
//! `ConnectionContext::extensions()` and stamps its name on every message (`"alice: hello"`).
//!
//! Browsers cannot set headers on a WebSocket request, so the token is taken from
//! `Authorization: Bearer <token>` or, failing that and on WebSocket upgrades only, from a
//! `?token=<token>` query parameter. (Query strings end up in access logs: prefer short-lived
//! tokens for them in production.)
//!
//! Run it:
//!
//! ```text
//! cargo run --example auth                    # listens on 127.0.0.1:3002 ($ADDR to change)
//! ```
//!
//! Then, with [websocat](https://github.com/vi/websocat), in two terminals:
//!
//! ```text
//! websocat -H 'Authorization: Bearer alice-token' ws://127.0.0.1:3002/ws/lobby
//! websocat 'ws://127.0.0.1:3002/ws/lobby?token=bob-token'
//! ```
//!
//! What one types, the other sees as `alice: ...` or `bob: ...`. Without a valid token:
//!
//! ```text
//! curl -i http://127.0.0.1:3002/ws/lobby      # 401 Unauthorized
//! curl -H 'Authorization: Bearer bob-token' http://127.0.0.1:3002/whoami
//! ```
//!
//! The example also keeps each user's open connections (a [`ConnectionHandle`] per connection,
//! taken in `on_connect`, dropped in `on_disconnect`), for two things a room cannot do: a
//! private message to one user, whatever room they are in, and closing every connection of one
//! user at once.
//!
//! ```text
//! curl -H 'Authorization: Bearer alice-token' -d 'psst' http://127.0.0.1:3002/dm/bob
//! curl -X POST -H 'Authorization: Bearer bob-token' http://127.0.0.1:3002/disconnect
//! ```
//!
//! Bob's connections get `alice (private): psst`; then they are closed with code 4000,
//! "disconnected".
//!
//! `/disconnect` is not a logout: bob's token stays valid, and his clients may reconnect at
//! once. Revoking a token belongs to the auth system that issued it (its session store, or a
//! deny-list checked where `user_for_token` is). The token is checked once, at the upgrade: when
//! that system revokes a session, have it close the session's connections the way `disconnect`
//! does, or they stay open with the revoked credentials. Mind an upgrade authenticated just
//! before the revocation whose `on_connect` registers its handle just after the sweep: check
//! the session again in `on_connect`, once the handle is registered, and close it if revoked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Extension, Router};
use tower_ws_hub::{
    ConnectionContext, ConnectionHandle, ConnectionId, Hub, HubLayer, InboundAction, Message,
    SendError,
};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who made the request, as established by [`authenticate`].
#[derive(Clone, Debug)]
struct User {
    name: Arc<str>,
}

/// One user's open WebSocket connections.
type Connections = HashMap<ConnectionId, ConnectionHandle>;

/// Each user's open WebSocket connections on this instance.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<Arc<str>, Connections>>>);

impl Sessions {
    /// `on_connect`: remembers the connection under its user.
    fn opened(&self, ctx: &ConnectionContext) {
        if let Some(user) = ctx.extensions().get::<User>() {
            let mut users = self.0.lock().unwrap();
            let open = users.entry(Arc::clone(&user.name)).or_default();
            open.insert(ctx.id(), ctx.handle());
        }
    }

    /// `on_disconnect`: forgets it (and the user, with their last connection).
    fn closed(&self, ctx: &ConnectionContext) {
        if let Some(user) = ctx.extensions().get::<User>() {
            let mut users = self.0.lock().unwrap();
            if let Some(open) = users.get_mut(&user.name) {
                open.remove(&ctx.id());
                if open.is_empty() {
                    users.remove(&user.name);
                }
            }
        }
    }

    /// The handles of `name`'s open connections (cloned: nothing is sent under the lock).
    fn of(&self, name: &str) -> Vec<ConnectionHandle> {
        let users = self.0.lock().unwrap();
        users
            .get(name)
            .map(|open| open.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// The token store. A real application would ask its session store or verify a JWT here,
/// and compare secrets in constant time (the `subtle` crate, or a lookup by the token's hash):
/// `==` stops at the first differing byte, and how long it takes says how much of a guess was
/// right.
fn user_for_token(token: &str) -> Option<User> {
    const TOKENS: &[(&str, &str)] = &[("alice-token", "alice"), ("bob-token", "bob")];
    TOKENS
        .iter()
        .find(|(known, _)| *known == token)
        .map(|(_, name)| User {
            name: Arc::from(*name),
        })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3002".to_owned());
    let sessions = Sessions::default();
    let (opened, closed) = (sessions.clone(), sessions.clone());
    let hub = Hub::builder()
        .on_message(stamp_sender)
        .on_connect(move |ctx| opened.opened(ctx))
        .on_disconnect(move |ctx| closed.closed(ctx))
        .build();

    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/dm/{name}", post(direct_message))
        .route("/disconnect", post(disconnect))
        .with_state(sessions)
        // The hub layer: `/ws/{room}` becomes WebSocket rooms.
        .layer(HubLayer::new(hub.clone()).route("/ws/{room}"))
        // Order matters: in axum each `.layer(..)` wraps everything above it, so the layer added
        // LAST runs FIRST. Authentication is added after the hub layer, so it sees every request,
        // upgrades included, before the hub does. Swap the two lines and the hub would accept
        // WebSockets without ever asking for a token.
        .layer(middleware::from_fn(authenticate));

    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|error| format!("cannot listen on $ADDR ({addr}): {error}"))?;

    let local_addr = listener.local_addr()?;

    // The hub writes each connection's queued frames in one go: Nagle's algorithm would only
    // delay them.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tracing::info!(%local_addr, "auth example listening: ws://{local_addr}/ws/<room>?token=alice-token");

    axum::serve(listener, app)
        .with_graceful_shutdown(hub.shutdown_signal())
        .await?;
    Ok(())
}

/// Middleware: finds the token, looks it up, and either inserts the `User` or answers `401`.
/// The query parameter counts on WebSocket upgrades only, which browsers cannot send headers
/// with: anywhere else a token in the URL would only end up in more access logs.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let token = bearer_token(request.headers()).or_else(|| {
        is_websocket_upgrade(&request)
            .then(|| query_token(request.uri()))
            .flatten()
    });
    let Some(token) = token else {
        return unauthorized(
            "missing token: send `Authorization: Bearer <token>` (or `?token=` on a WebSocket \
             upgrade)",
        );
    };
    let Some(user) = user_for_token(token) else {
        tracing::info!(path = request.uri().path(), "refused an invalid token");
        return unauthorized("invalid token");
    };
    request.extensions_mut().insert(user);
    next.run(request).await
}

/// A WebSocket upgrade: `Upgrade: websocket` (HTTP/1.1), or an extended CONNECT (HTTP/2,
/// RFC 8441; the hub checks the rest).
fn is_websocket_upgrade(request: &Request) -> bool {
    request.method() == axum::http::Method::CONNECT
        || request
            .headers()
            .get(header::UPGRADE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The `token` query parameter. Tokens here are URL-safe, so no percent-decoding is needed (an
/// encoded token simply does not match).
fn query_token(uri: &Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|token| !token.is_empty())
}

fn unauthorized(reason: &'static str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        reason,
    )
        .into_response()
}

/// The hub's message hook: what alice sends reaches the room as `alice: <text>`.
fn stamp_sender(ctx: &ConnectionContext, message: Message) -> InboundAction {
    // Always present: the middleware refuses requests without a user before the hub sees them.
    let Some(user) = ctx.extensions().get::<User>() else {
        return InboundAction::Drop;
    };
    match message.as_text() {
        Some(text) => InboundAction::Forward(Message::text(format!("{}: {text}", user.name))),
        None => InboundAction::Reply(Message::text("only text messages are supported")),
    }
}

async fn whoami(Extension(user): Extension<User>) -> String {
    format!("{}\n", user.name)
}

/// `POST /dm/{name}`: the body, as `<sender> (private): <body>`, to every connection `name` has
/// open on this instance, whatever its room. `404` if they have none; `503` if none of them
/// took it (their outbound queues are full: those clients are not keeping up).
async fn direct_message(
    State(sessions): State<Sessions>,
    Extension(sender): Extension<User>,
    Path(name): Path<String>,
    body: String,
) -> (StatusCode, String) {
    // Made once: each connection's copy shares its bytes.
    let message = Message::text(format!("{} (private): {body}", sender.name));
    let (mut sent, mut refused) = (0, 0);
    for handle in sessions.of(&name) {
        match handle.send(message.clone()) {
            Ok(()) => sent += 1,
            // Closing: about to leave the sessions.
            Err(SendError::Closed) => {}
            Err(_) => refused += 1,
        }
    }
    match (sent, refused) {
        (0, 0) => (StatusCode::NOT_FOUND, format!("{name} is not connected\n")),
        (0, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{name}'s connections are not keeping up; try again later\n"),
        ),
        _ => (StatusCode::OK, format!("sent to {sent} connection(s)\n")),
    }
}

/// `POST /disconnect`: closes every connection of the caller on this instance with 4000,
/// "disconnected" (what is already queued for them is written first). The token stays valid:
/// see the module docs.
async fn disconnect(State(sessions): State<Sessions>, Extension(user): Extension<User>) -> String {
    let closed = sessions
        .of(&user.name)
        .iter()
        .filter(|handle| handle.close(4000, "disconnected").is_ok())
        .count();
    format!("closed {closed} connection(s)\n")
}
