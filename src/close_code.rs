//! WebSocket close codes the server sends, and when (RFC 6455 §7.4).
//!
//! The answer to a client's close frame carries the client's own code (and none when the
//! client's carried none), as RFC 6455 §5.5.1 suggests; a code the RFC forbids on the wire is
//! answered with [`PROTOCOL_ERROR`].
//!
//! The application closes a connection with a code of its own choosing (4000–4999 are for
//! applications to define) through [`ConnectionHandle::close`](crate::ConnectionHandle::close).

/// 1000: normal closure (the idle timeout).
pub const NORMAL: u16 = 1000;
/// 1001: the server is shutting down ([`Hub::shutdown`](crate::Hub::shutdown)).
pub const GOING_AWAY: u16 = 1001;
/// 1002: the client broke the protocol (unmasked frame, reserved bits or opcodes, fragmented or
/// oversized control frame, continuation without a start, bad close frame).
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1007: a text message was not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: policy violation; sent when the client did not answer a ping within the pong timeout,
/// or sent faster than the inbound rate limit.
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: a message or frame was larger than the configured limit.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: the server hit an unexpected condition (an application hook panicked).
pub const INTERNAL_ERROR: u16 = 1011;
/// 1013 ("try again later"): the client did not read fast enough and its outbound queue
/// overflowed ([`SlowConsumerPolicy::Disconnect`](crate::SlowConsumerPolicy::Disconnect)).
pub const SLOW_CONSUMER: u16 = 1013;
