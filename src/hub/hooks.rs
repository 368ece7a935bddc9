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

impl Hooks {
    /// Runs the message hook (forwarding unchanged without one).
    pub(crate) fn inbound(&self, context: &ConnectionContext, message: Message) -> InboundAction {
        match &self.on_message {
            Some(hook) => hook(context, message),
            None => InboundAction::Forward(message),
        }
    }
}
