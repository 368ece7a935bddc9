//! [`ConnectionContext`]: what the application knows about one connection.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Version, request::Parts};

use super::Hub;
use super::handle::ConnectionHandle;
use crate::connection::queue::OutboundQueue;

/// Identifies one connection for the lifetime of its hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// The number behind the id (unique per hub, increasing).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// Copies one extension type from a request's extensions into a connection's.
pub(crate) type ExtensionCopier = fn(&Extensions, &mut Extensions);

pub(crate) fn copy_extension<T: Clone + Send + Sync + 'static>(
    from: &Extensions,
    to: &mut Extensions,
) {
    if let Some(value) = from.get::<T>() {
        to.insert(value.clone());
    }
}

/// What a connection keeps of its upgrade request's head, for hooks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Retention {
    pub(crate) headers: HeaderRetention,
    /// `None`: every extension; `Some`: only the listed types.
    pub(crate) extensions: Option<Vec<ExtensionCopier>>,
}

/// Which request headers a connection keeps: the two builder options are independent, so the
/// order of `keep_request_headers` and `keep_request_header` calls does not matter.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderRetention {
    /// Every header (`keep_request_headers(true)`). Default `false`: a browser's headers
    /// cost several KiB per connection.
    pub(crate) all: bool,
    /// These, whatever `all` says (every value of each; `keep_request_header`).
    pub(crate) named: Vec<HeaderName>,
}

impl HeaderRetention {
    fn keeps(&self, name: &HeaderName) -> bool {
        self.all || self.named.contains(name)
    }
}

/// A header value in its own allocation. hyper parses header values as slices of its
/// connection read buffer, so keeping the original would keep that whole buffer (8 KiB or more)
/// alive for as long as the WebSocket lives.
fn compact_value(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// A URI in its own allocation, for the same reason as [`compact_value`]: hyper parses the
/// request target as a slice of its read buffer.
#[cfg(feature = "axum")]
fn compact_uri(uri: &http::Uri) -> http::Uri {
    // `FromStr` copies the text into a new buffer of exactly its size.
    uri.to_string().parse().unwrap_or_else(|_| uri.clone())
}

/// Replaces the extensions known to hold slices of hyper's read buffer with copies.
///
/// axum's `Router` inserts `OriginalUri` (a clone of the request's `Uri`) into every request
/// before its layers run; kept as it is, it would keep the connection's whole read buffer
/// (8 KiB or more) alive as long as the WebSocket. Types we do not know cannot be copied
/// deeply: `HubBuilder::keep_extension` documents the same caveat for the application's own.
fn compact_extensions(extensions: &mut Extensions) {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::OriginalUri(uri)) = extensions.get_mut() {
        *uri = compact_uri(uri);
    }
    #[cfg(not(feature = "axum"))]
    let _ = extensions;
}

fn compact(headers: &HeaderMap, keep: &HeaderRetention) -> HeaderMap {
    let count = headers.keys().filter(|name| keep.keeps(name)).count();
    if count == 0 {
        // No allocation at all.
        return HeaderMap::new();
    }
    let mut kept = HeaderMap::with_capacity(count);
    for (name, value) in headers {
        if keep.keeps(name) {
            kept.append(name.clone(), compact_value(value));
        }
    }
    kept
}

/// One connection as hooks see it: its room, and the head of the request that opened it.
///
/// Whatever authentication middleware in front of the [`HubLayer`](crate::HubLayer) put in the
/// request extensions (a `User`, claims, a session) is in [`extensions`](Self::extensions).
pub struct ConnectionContext {
    hub: Hub,
    id: ConnectionId,
    room: Arc<str>,
    /// The connection's outbound queue, for [`handle`](Self::handle): attached when the
    /// socket arrives, before any hook runs. (Made then, after the handshake's temporary
    /// allocations are freed, rather than with the context: an idle connection measured
    /// about 0.04 KiB less.)
    queue: Weak<OutboundQueue>,
    headers: HeaderMap,
    extensions: Extensions,
    protocol: Option<HeaderValue>,
    remote_addr: Option<SocketAddr>,
    version: Version,
    connected_at: SystemTime,
}

impl std::fmt::Debug for ConnectionContext {
    /// Everything but the hub (whose `Debug` lists every room).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionContext")
            .field("id", &self.id)
            .field("room", &self.room)
            .field("headers", &self.headers)
            .field("extensions", &self.extensions)
            .field("protocol", &self.protocol)
            .field("remote_addr", &self.remote_addr)
            .field("version", &self.version)
            .field("connected_at", &self.connected_at)
            .finish_non_exhaustive()
    }
}

impl ConnectionContext {
    pub(crate) fn new(
        hub: Hub,
        id: ConnectionId,
        room: Arc<str>,
        parts: Parts,
        protocol: Option<HeaderValue>,
        remote_addr: Option<SocketAddr>,
        keep: &Retention,
    ) -> Self {
        let Parts {
            headers,
            extensions,
            version,
            ..
        } = parts;
        let mut extensions = match &keep.extensions {
            None => extensions,
            Some(copiers) => {
                let mut kept = Extensions::new();
                for copy in copiers {
                    copy(&extensions, &mut kept);
                }
                kept
            }
        };
        compact_extensions(&mut extensions);
        Self {
            queue: Weak::new(),
            hub,
            id,
            room,
            headers: compact(&headers, &keep.headers),
            extensions,
            protocol: protocol.map(|p| compact_value(&p)),
            remote_addr,
            version,
            connected_at: SystemTime::now(),
        }
    }

    /// The hub this connection belongs to: for a hook that publishes to another room (an
    /// announcement in a lobby when someone joins a room, a copy of what a client sends to an
    /// audit room), or reads the hub's rooms and counters. Hooks run with no lock of the hub
    /// held, so its methods may be called from them; only waiting in a hook for
    /// [`Hub::shutdown`] to finish would wait for the hook's own connection.
    ///
    /// [`Hub::publish`] never waits (local delivery happens before its first `.await`, and a
    /// broker that cannot take the message refuses it at once), but hooks are synchronous:
    /// spawn it, with a clone of the hub.
    ///
    /// ```
    /// use tower_ws_hub::Hub;
    ///
    /// let hub = Hub::builder()
    ///     .on_connect(|ctx| {
    ///         let hub = ctx.hub().clone();
    ///         let news = format!("someone joined {}", ctx.room());
    ///         tokio::spawn(async move {
    ///             if let Err(error) = hub.publish("lobby", news).await {
    ///                 tracing::warn!(%error, "lobby announcement not published");
    ///             }
    ///         });
    ///     })
    ///     .build();
    /// # drop(hub);
    /// ```
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The room this connection joined.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The upgrade request's headers that the hub was told to keep: none by default, all of
    /// them with [`HubBuilder::keep_request_headers`](crate::HubBuilder::keep_request_headers),
    /// and the ones named with
    /// [`HubBuilder::keep_request_header`](crate::HubBuilder::keep_request_header) in any
    /// case.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The upgrade request's extensions, as the middleware in front of the layer left them
    /// (hyper's upgrade handle aside), or the part of them that
    /// [`HubBuilder::keep_extension`](crate::HubBuilder::keep_extension) and
    /// [`keep_no_extensions`](crate::HubBuilder::keep_no_extensions) keep.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The subprotocol the server chose from the client's `Sec-WebSocket-Protocol` offer
    /// (see [`HubLayer::protocols`](crate::HubLayer::protocols)).
    pub fn protocol(&self) -> Option<&HeaderValue> {
        self.protocol.as_ref()
    }

    /// The client's address, when the server made it available (see
    /// [`HubLayer::remote_addr`](crate::HubLayer::remote_addr)).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// The HTTP version of the handshake (`HTTP/1.1`, or `HTTP/2` for extended CONNECT).
    pub fn http_version(&self) -> Version {
        self.version
    }

    /// When the connection was accepted.
    pub fn connected_at(&self) -> SystemTime {
        self.connected_at
    }

    /// A handle to this connection, to keep after the hook returns: the application sends
    /// it messages of its own, or closes it, from anywhere (a handler, a background task),
    /// for as long as it is open. See [`ConnectionHandle`].
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::sync::{Arc, Mutex};
    /// use tower_ws_hub::{ConnectionHandle, ConnectionId, Hub, Message};
    ///
    /// // Each user's open connections, by the name its auth middleware put in the request.
    /// #[derive(Clone)]
    /// struct User(String);
    /// type Sessions = Arc<Mutex<HashMap<String, HashMap<ConnectionId, ConnectionHandle>>>>;
    /// let sessions = Sessions::default();
    ///
    /// let (joined, left) = (sessions.clone(), sessions.clone());
    /// let hub = Hub::builder()
    ///     .keep_extension::<User>()
    ///     .on_connect(move |ctx| {
    ///         if let Some(User(name)) = ctx.extensions().get::<User>() {
    ///             let mut sessions = joined.lock().unwrap();
    ///             sessions.entry(name.clone()).or_default().insert(ctx.id(), ctx.handle());
    ///         }
    ///     })
    ///     .on_disconnect(move |ctx| {
    ///         if let Some(User(name)) = ctx.extensions().get::<User>() {
    ///             let mut sessions = left.lock().unwrap();
    ///             if let Some(open) = sessions.get_mut(name) {
    ///                 open.remove(&ctx.id());
    ///                 if open.is_empty() {
    ///                     sessions.remove(name);
    ///                 }
    ///             }
    ///         }
    ///     })
    ///     .build();
    ///
    /// // Later, anywhere: a private notice to every connection of one user (a clone of a
    /// // `Message` shares its payload; each `send` frames a copy of its own).
    /// let notice = Message::text("you have a new invitation");
    /// for handle in sessions.lock().unwrap().get("ada").into_iter().flat_map(|open| open.values()) {
    ///     let _ = handle.send(notice.clone());
    /// }
    /// # drop(hub);
    /// ```
    pub fn handle(&self) -> ConnectionHandle {
        ConnectionHandle::new(
            &self.hub,
            self.id,
            Arc::clone(&self.room),
            self.queue.clone(),
        )
    }

    /// Attaches the connection's outbound queue, once the socket has arrived.
    pub(crate) fn attach_queue(&mut self, queue: &Arc<OutboundQueue>) {
        self.queue = Arc::downgrade(queue);
    }
}
