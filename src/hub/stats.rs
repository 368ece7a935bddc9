//! Counters the hub keeps, and the [`HubStats`] snapshot it hands out.

use std::sync::atomic::{AtomicU64, Ordering};

/// The hub's live counters. Relaxed atomics: these are statistics, not synchronisation; the
/// two exceptions keep a snapshot's related figures consistent (`connection_closed`,
/// `handshake_refused`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
    pub(crate) handshakes_rejected: AtomicU64,
    pub(crate) handshakes_malformed: AtomicU64,
    pub(crate) handshakes_forbidden: AtomicU64,
    pub(crate) handshakes_unavailable: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_published: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) dropped_messages: AtomicU64,
    pub(crate) slow_consumer_disconnects: AtomicU64,
    pub(crate) protocol_closes: AtomicU64,
    pub(crate) pong_timeouts: AtomicU64,
    pub(crate) rate_limit_closes: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) hook_panics: AtomicU64,
    pub(crate) callback_panics: AtomicU64,
    pub(crate) authorize_timeouts: AtomicU64,
    pub(crate) discarded_on_close: AtomicU64,
    pub(crate) backlog_holds: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn incr(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Counts an upgrade request answered with `status`, in `handshakes_rejected` and in the
    /// class its status says (see `HubStats::handshakes_malformed` for what is in none).
    ///
    /// The total first, then the class with Release, paired with the Acquire loads of the
    /// classes in `snapshot`, which reads them before the total: a snapshot that sees a class
    /// counted also sees its total, so the three classes never add up to more than
    /// `handshakes_rejected`.
    pub(crate) fn handshake_refused(&self, status: http::StatusCode) {
        use http::StatusCode;
        Self::incr(&self.handshakes_rejected);
        let class = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => &self.handshakes_forbidden,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                &self.handshakes_unavailable
            }
            status if status.is_client_error() => &self.handshakes_malformed,
            _ => return,
        };
        class.fetch_add(1, Ordering::Release);
    }

    /// Counts a connection closed. Release, paired with the Acquire in
    /// [`open_connections`](Self::open_connections) and `snapshot`: whoever sees this close
    /// also sees its connection's open, which happened before it in the connection's task.
    pub(crate) fn connection_closed(&self) {
        self.connections_closed.fetch_add(1, Ordering::Release);
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A snapshot of the hub's counters ([`Hub::stats`](crate::Hub::stats)).
///
/// Counters only grow; `connections` and `rooms` are the current values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Connections open now.
    pub connections: u64,
    /// Rooms with at least one local member now.
    pub rooms: usize,
    /// Connections accepted since start.
    pub connections_opened: u64,
    /// Connections closed since start.
    pub connections_closed: u64,
    /// Upgrade requests refused (bad handshake or room name, an `Origin` the policy refused, a
    /// missing required subprotocol, an authorizer's denial, limits, shutting down,
    /// unsupported server, a layer callback that panicked, an authorizer too slow to decide),
    /// and accepted ones whose socket never came (upgrade timeout, or the shutdown grace
    /// period over first).
    pub handshakes_rejected: u64,
    /// Of `handshakes_rejected`, those answered with a client error other than `401`, `403`
    /// and `429`: a malformed handshake (`400`, `405`, `426`, ...), a bad room name, a missing
    /// required subprotocol, a plain (non-WebSocket) request to a WebSocket route (`426`), or
    /// an authorizer's or extractor's own 4xx. A figure that grows with nothing else says a
    /// client or a proxy sends broken upgrades (a proxy that drops the `Upgrade` header, say),
    /// or that something requests WebSocket paths over plain HTTP.
    ///
    /// The three classes count requests refused with an answer. `handshakes_rejected` also
    /// counts what is in none of them: `500`s (the layer's callbacks panicking, also in
    /// `callback_panics`, or a server without upgrade support), any other status an
    /// authorizer chose (a redirect, say), and upgrades answered `101` whose socket never came
    /// (the upgrade timeout, or a shutdown's grace period over first).
    pub handshakes_malformed: u64,
    /// Of `handshakes_rejected`, those answered `401` or `403`: an `Origin` the policy refused,
    /// or an authorizer's denial.
    pub handshakes_forbidden: u64,
    /// Of `handshakes_rejected`, those answered `503` or `429`: the connection limits (the
    /// server's, a room's), a shutdown under way when the request came, an authorizer too slow
    /// to decide (`authorize_timeouts`), or an authorizer's own `429`/`503`. A figure that
    /// grows says this instance is full.
    pub handshakes_unavailable: u64,
    /// Data messages received from clients.
    pub messages_received: u64,
    /// Messages published to rooms on this instance (by its clients and by
    /// [`Hub::publish`](crate::Hub::publish)). Messages from other instances, and from a
    /// Redis `Emitter`, are counted in
    /// [`BrokerStatus::received`](crate::BrokerStatus::received) instead, so the sum over
    /// instances counts each message a hub published once.
    pub messages_published: u64,
    /// Messages queued for local receivers (one per receiver), replies of the message hook
    /// and messages sent with [`ConnectionHandle::send`](crate::ConnectionHandle::send)
    /// included.
    pub deliveries: u64,
    /// Messages dropped because a receiver's outbound queue was full: the newest or the oldest
    /// ones, by policy, and under `Disconnect` the new message with every message still queued
    /// for the receiver it disconnects, or taken for its socket and not started. Those that
    /// had been queued were counted in `deliveries`; the new message refused by `DropNewest`
    /// or `Disconnect` (or one larger than the whole queue) was not.
    pub dropped_messages: u64,
    /// Connections closed because they did not keep up.
    pub slow_consumer_disconnects: u64,
    /// Messages queued for a connection (counted in `deliveries`) that it never wrote because
    /// it closed first: the client closed or vanished, or the server closed it for a protocol
    /// error, a timeout, the rate limit, a hook panic or the end of the shutdown grace period.
    /// Counted when the connection's task ends. What a slow-consumer disconnect discards counts
    /// in `dropped_messages` instead; only a frame it had half written, and that the client
    /// then never read to the end, lands here.
    ///
    /// So for each connection, what it was queued (`deliveries`) is written to its socket,
    /// dropped, or counted here.
    pub discarded_on_close: u64,
    /// Connections closed for a protocol error, an oversized message or invalid UTF-8: by the
    /// hub (with 1002, 1009 or 1007), or by a client that closed with 1002 (protocol error)
    /// itself, or with a close code the RFC forbids on the wire (tungstenite reports those as
    /// 1002).
    pub protocol_closes: u64,
    /// Connections closed because they did not answer a ping in time.
    pub pong_timeouts: u64,
    /// Connections closed for sending faster than the inbound rate limit.
    pub rate_limit_closes: u64,
    /// Connections closed by the idle timeout.
    pub idle_timeouts: u64,
    /// Hook calls that panicked: an `on_connect` or `on_message` panic closes its connection
    /// with 1011 (`on_disconnect` still runs); an `on_disconnect` panic is counted and logged,
    /// the connection being closed already.
    pub hook_panics: u64,
    /// Calls of the layer's own callbacks that panicked while an upgrade request was answered:
    /// the room [`extractor`](crate::HubLayer::extractor), an
    /// [`OriginPolicy::predicate`](crate::OriginPolicy::predicate), the
    /// [`remote_addr`](crate::HubLayer::remote_addr) finder, and the
    /// [authorizer](crate::HubLayer::authorize) (its call or its future). Each is answered
    /// `500` (also counted in `handshakes_rejected`), gives back the place the request held,
    /// and is logged at most once a second with the callback's name and the panic message.
    /// An authorizer's future that panics as it is dropped undecided (past
    /// [`authorize_timeout`](crate::HubLayer::authorize_timeout), at shutdown, or because its
    /// client hung up) is counted and logged too; its request keeps its `503` (or, its client
    /// gone, has no answer).
    /// Kept apart from `hook_panics`: these are the layer's configuration, run before any
    /// connection exists, and a panic costs a request, not a connection.
    pub callback_panics: u64,
    /// Upgrade requests whose [authorizer](crate::HubLayer::authorize) did not decide within
    /// [`authorize_timeout`](crate::HubLayer::authorize_timeout): answered `503` with
    /// `Retry-After` (also counted in `handshakes_rejected`), their place given back, logged
    /// at most once a second. A figure that grows says the authorizer's backend is slow or
    /// down.
    pub authorize_timeouts: u64,
    /// Writes held back because the hub was behind: a lone message for a connection waited up
    /// to [`max_write_interval`](crate::HubBuilder::max_write_interval) to share its write
    /// with what came next (see [`write_interval`](crate::HubBuilder::write_interval)). A
    /// figure that keeps growing says this instance receives from Redis faster than it hands
    /// out.
    pub backlog_holds: u64,
}

impl Counters {
    /// Connections open now: opened minus closed. `closed` is read first (Acquire, see
    /// [`connection_closed`](Self::connection_closed)): a connection that opens and closes
    /// between the two reads then counts as open for this one reading, instead of making the
    /// figure too low (or 0).
    pub(crate) fn open_connections(&self) -> u64 {
        let closed = self.connections_closed.load(Ordering::Acquire);
        get(&self.connections_opened).saturating_sub(closed)
    }

    pub(crate) fn snapshot(&self, rooms: usize) -> HubStats {
        let closed = self.connections_closed.load(Ordering::Acquire);
        let opened = get(&self.connections_opened);
        // The classes before their total (see `handshake_refused`).
        let handshakes_malformed = self.handshakes_malformed.load(Ordering::Acquire);
        let handshakes_forbidden = self.handshakes_forbidden.load(Ordering::Acquire);
        let handshakes_unavailable = self.handshakes_unavailable.load(Ordering::Acquire);
        HubStats {
            connections: opened.saturating_sub(closed),
            rooms,
            connections_opened: opened,
            connections_closed: closed,
            handshakes_rejected: get(&self.handshakes_rejected),
            handshakes_malformed,
            handshakes_forbidden,
            handshakes_unavailable,
            messages_received: get(&self.messages_received),
            messages_published: get(&self.messages_published),
            deliveries: get(&self.deliveries),
            dropped_messages: get(&self.dropped_messages),
            slow_consumer_disconnects: get(&self.slow_consumer_disconnects),
            protocol_closes: get(&self.protocol_closes),
            pong_timeouts: get(&self.pong_timeouts),
            rate_limit_closes: get(&self.rate_limit_closes),
            idle_timeouts: get(&self.idle_timeouts),
            hook_panics: get(&self.hook_panics),
            callback_panics: get(&self.callback_panics),
            authorize_timeouts: get(&self.authorize_timeouts),
            discarded_on_close: get(&self.discarded_on_close),
            backlog_holds: get(&self.backlog_holds),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn refused_handshakes_are_classed_by_status() {
        let counters = Counters::default();
        for status in [400, 405, 426, 404, 401, 403, 403, 503, 429, 500] {
            counters.handshake_refused(StatusCode::from_u16(status).unwrap());
        }
        let stats = counters.snapshot(0);
        assert_eq!(stats.handshakes_rejected, 10);
        assert_eq!(stats.handshakes_malformed, 4);
        assert_eq!(stats.handshakes_forbidden, 3);
        assert_eq!(stats.handshakes_unavailable, 2);
    }

    /// A snapshot taken while other threads refuse handshakes never shows the classes adding
    /// up to more than their total. Reading the total before the classes (as this once did)
    /// failed here within a few thousand snapshots.
    #[test]
    fn classes_never_exceed_their_total_in_a_snapshot() {
        let counters = Counters::default();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for status in [400, 403, 503] {
                let (counters, stop) = (&counters, &stop);
                scope.spawn(move || {
                    let status = http::StatusCode::from_u16(status).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        counters.handshake_refused(status);
                    }
                });
            }
            let mut checked = 0;
            while checked < 200_000 {
                let stats = counters.snapshot(0);
                let classes = stats.handshakes_malformed
                    + stats.handshakes_forbidden
                    + stats.handshakes_unavailable;
                if classes > stats.handshakes_rejected {
                    stop.store(true, Ordering::Relaxed);
                    panic!("snapshot {checked}: classes {classes} > total {stats:?}");
                }
                checked += 1;
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
