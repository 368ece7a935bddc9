//! One WebSocket connection, from the upgraded socket to its last byte.
//!
//! Each connection is a single task running a [`Driver`](driver::Driver): one `poll` reads
//! frames (tungstenite's protocol state machine), runs the message hook and fans out, writes
//! everything the outbound queue holds with vectored writes of pre-encoded frames
//! ([`wire`]), answers and sends pings, and walks the close handshake. There is no lock around
//! the socket and no second task per connection.
//!
//! Close codes the server sends are listed in [`close_code`](crate::close_code).

mod driver;
pub(crate) mod frames;
mod io;
pub(crate) mod queue;
mod wire;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::hub::{ConnectionContext, Hub};
use queue::OutboundQueue;

/// Serves one upgraded connection until it closes: join the room, run the hooks, drive the
/// socket, leave the room.
pub(crate) async fn serve<S>(hub: Hub, context: ConnectionContext, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let queue = Arc::new(OutboundQueue::new(hub.queue_limits()));
    let membership = hub.join(&context, Arc::clone(&queue));
    if let Some(hook) = &hub.inner().hooks.on_connect {
        hook(&context);
    }
    tracing::debug!(id = %context.id(), room = context.room(), "tower-ws-hub: connection open");
    let end = driver::Driver::new(io, queue, &membership, &context).await;
    tracing::debug!(id = %context.id(), room = context.room(), ?end, "tower-ws-hub: connection closed");
    drop(membership);
    if let Some(hook) = &hub.inner().hooks.on_disconnect {
        hook(&context);
    }
}
