//! One WebSocket connection, from the upgraded socket to its last byte.
//!
//! Each connection is a single task running a [`Driver`](driver::Driver): one `poll` reads
//! frames (tungstenite's protocol state machine), runs the message hook and fans out, writes
//! everything the outbound queue holds with vectored writes of pre-encoded frames
//! ([`wire`]), answers and sends pings, and walks the close handshake. There is no lock around
//! the socket and no second task per connection.
//!
//! Close codes the server sends are listed in [`close_code`](crate::close_code).

mod boundary;
mod driver;
pub(crate) mod frames;
mod io;
pub(crate) mod queue;
mod wire;

use std::sync::Arc;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::hub::{ConnectionContext, Hub};
use io::{Early, Socket};
use queue::{CloseIntent, OutboundQueue};

/// The TCP socket under hyper's `Upgraded`, with the bytes the server read past the request
/// head, when the server is one we know: hyper-util's auto builder (`axum::serve`) wraps the
/// socket in a private type that its own `downcast` sees through; hyper's builders do not.
fn tcp_socket(upgraded: Upgraded) -> Result<(TcpStream, bytes::Bytes), Upgraded> {
    use hyper_util::server::conn::auto::upgrade;
    match upgrade::downcast::<TokioIo<TcpStream>>(upgraded) {
        Ok(parts) => Ok((parts.io.into_inner(), parts.read_buf)),
        Err(upgraded) => upgraded
            .downcast::<TokioIo<TcpStream>>()
            .map(|parts| (parts.io.into_inner(), parts.read_buf)),
    }
}

/// Serves a socket the server handed over after the `101`/`200`. A plain TCP socket is read
/// and written directly (and gets `TCP_NODELAY` unless configured otherwise); anything else
/// (TLS, an HTTP/2 stream, another transport) through hyper's `Upgraded`.
///
/// Not an `async fn`: that would store its arguments a second time beside the [`serve`]
/// future it awaits, in every connection task (about 0.6 KiB measured).
pub(crate) fn serve_upgraded(
    context: ConnectionContext,
    upgraded: Upgraded,
) -> impl Future<Output = ()> {
    let socket = match tcp_socket(upgraded) {
        Ok((tcp, early)) => {
            if context.hub().inner().config.tcp_nodelay
                && let Err(error) = tcp.set_nodelay(true)
            {
                tracing::debug!(id = %context.id(), %error, "tower-ws-hub: could not set TCP_NODELAY");
            }
            Socket::Tcp(Early::new(early), tcp)
        }
        Err(upgraded) => Socket::Upgraded(TokioIo::new(upgraded)),
    };
    serve(context, socket)
}

/// Serves one upgraded connection until it closes: join the room, run the hooks, drive the
/// socket, leave the room.
pub(crate) async fn serve<S>(mut context: ConnectionContext, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let queue = Arc::new(OutboundQueue::new(context.hub().queue_limits()));
    context.attach_queue(&queue);
    let context = &context;
    let hub = context.hub();
    // Leaves the room, then runs `on_disconnect`, however this future ends: driven to its end,
    // or dropped on the way (the runtime shutting down with the connection open).
    let ending = Ending {
        membership: Some(hub.join(context, Arc::clone(&queue))),
        hub,
        context,
    };
    let membership = ending.membership.as_ref().expect("joined");
    // A panicking hook closes its connection with 1011; `on_disconnect` still runs.
    if let Some(hook) = &hub.inner().hooks.on_connect
        && hub
            .inner()
            .guard_hook("on_connect", context, || hook(context))
            .is_err()
    {
        queue.close(CloseIntent::InternalError);
    }
    tracing::debug!(id = %context.id(), room = context.room(), "tower-ws-hub: connection open");
    let end = driver::Driver::new(io, queue, membership, context).await;
    tracing::debug!(id = %context.id(), room = context.room(), ?end, "tower-ws-hub: connection closed");
    drop(ending);
}

/// A joined connection's last steps, run on drop: leave the room, then `on_disconnect`.
struct Ending<'a> {
    membership: Option<crate::hub::Membership>,
    hub: &'a Hub,
    context: &'a ConnectionContext,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let Some(membership) = self.membership.take() else {
            return;
        };
        drop(membership);
        let (hub, context) = (self.hub, self.context);
        if let Some(hook) = &hub.inner().hooks.on_disconnect {
            let _ = hub
                .inner()
                .guard_hook("on_disconnect", context, || hook(context));
        }
    }
}
