//! Application hooks: on connect, on disconnect, on every inbound message.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crate::hub::context::ConnectionContext;
use crate::hub::stats::Counters;
use crate::log_throttle::LogThrottle;
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

/// Where hook panics are counted and logged.
pub(crate) struct PanicSink<'a> {
    pub(crate) counters: &'a Counters,
    pub(crate) log: &'a LogThrottle,
}

impl PanicSink<'_> {
    /// Runs `call`, the hook named `hook`, catching a panic: a hook's bug must end its own
    /// connection (with 1011), not skip the rest of the connection's bookkeeping
    /// (`on_disconnect`, the close handshake).
    pub(crate) fn guard<T>(
        &self,
        hook: &'static str,
        context: &ConnectionContext,
        call: impl FnOnce() -> T,
    ) -> Result<T, HookPanicked> {
        std::panic::catch_unwind(AssertUnwindSafe(call)).map_err(|payload| {
            let total = self.counters.hook_panics.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if let Some(suppressed) = self.log.allow() {
                let message = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(not a string)");
                tracing::error!(id = %context.id(), room = context.room(), hook,
                    panic = message, similar_events_suppressed = suppressed, total_hook_panics = total,
                    "tower-ws-hub: a hook panicked; its connection is closed with 1011");
            }
            HookPanicked
        })
    }
}

impl Hooks {
    /// Runs the message hook (forwarding unchanged without one).
    pub(crate) fn inbound(
        &self,
        sink: &PanicSink<'_>,
        context: &ConnectionContext,
        message: Message,
    ) -> Result<InboundAction, HookPanicked> {
        match &self.on_message {
            Some(hook) => sink.guard("on_message", context, || hook(context, message)),
            None => Ok(InboundAction::Forward(message)),
        }
    }
}
