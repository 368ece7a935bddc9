//! Application hooks: on connect, on disconnect, on every inbound message.

use std::sync::Arc;

use crate::hub::context::ConnectionContext;
use crate::message::Message;

/// What the message hook decided for one inbound message.
#[derive(Debug, Clone)]
pub enum InboundAction {
    /// Publish this message to the sender's room (the original, or a transformed one).
    Forward(Message),
    /// Send this message back to the sender only; nothing reaches the room.
    Reply(Message),
    /// Drop the message.
    Drop,
}

pub(crate) type ConnectionHook = Arc<dyn Fn(&ConnectionContext) + Send + Sync>;
pub(crate) type MessageHook =
    Arc<dyn Fn(&ConnectionContext, Message) -> InboundAction + Send + Sync>;

/// The hooks a hub was built with.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) on_connect: Option<ConnectionHook>,
    pub(crate) on_disconnect: Option<ConnectionHook>,
    pub(crate) on_message: Option<MessageHook>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_connect", &self.on_connect.is_some())
            .field("on_disconnect", &self.on_disconnect.is_some())
            .field("on_message", &self.on_message.is_some())
            .finish()
    }
}

/// A hook panicked; the panic was caught, counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HookPanicked;

/// The text of a panic's payload, for the log.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}
