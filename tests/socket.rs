//! The socket the hub takes over after the `101`: Nagle's algorithm is off on it unless
//! configured otherwise (the hub coalesces writes itself), frames a client sent in the same
//! packets as its handshake are read first, whichever server handed the socket over (axum's
//! `serve`, i.e. hyper-util's auto builder, or hyper's own HTTP/1 builder), and what the hub
//! writes is flushed, for transports that keep what they accept until then (TLS).

mod support;

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::serve::ListenerExt;
use hyper_util::rt::TokioIo;
use support::raw::{MASK, Upgrade, encode_frame, opcode};
use support::*;
use tokio::net::TcpListener;
use tower_ws_hub::{Hub, HubLayer};

/// The server side of every accepted connection, as a second descriptor of the same socket
/// (socket options read through it are the socket's own).
type Accepted = Arc<Mutex<Vec<OwnedFd>>>;

/// Records `tcp`, after turning Nagle's algorithm off on it if `server_nodelay`, as a server
/// may do for every connection it accepts.
fn keep(accepted: &Accepted, tcp: &tokio::net::TcpStream, server_nodelay: bool) {
    if server_nodelay {
        tcp.set_nodelay(true).unwrap();
    }
    let fd = tcp.as_fd().try_clone_to_owned().unwrap();
    accepted.lock().unwrap().push(fd);
}

/// `axum::serve` on a free port, recording each accepted socket.
async fn serve_axum(hub: Hub, accepted: &Accepted, server_nodelay: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::clone(accepted);
    let listener = listener.tap_io(move |tcp| keep(&accepted, tcp, server_nodelay));
    let app = Router::new().layer(HubLayer::new(hub).route("/ws/{room}"));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// hyper's HTTP/1 builder with upgrades (no hyper-util server), over `transport(tcp)` for each
/// accepted socket.
async fn serve_hyper_http1_over<T>(
    hub: Hub,
    transport: impl Fn(tokio::net::TcpStream) -> T + Send + 'static,
) -> SocketAddr
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().layer(HubLayer::new(hub).route("/ws/{room}"));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let io = TokioIo::new(transport(tcp));
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// hyper's HTTP/1 builder with upgrades, recording each accepted socket.
async fn serve_hyper_http1(hub: Hub, accepted: &Accepted, server_nodelay: bool) -> SocketAddr {
    let accepted = Arc::clone(accepted);
    serve_hyper_http1_over(hub, move |tcp| {
        keep(&accepted, &tcp, server_nodelay);
        tcp
    })
    .await
}

/// Whether the one WebSocket the server accepted has Nagle's algorithm off, the server having
/// turned it off itself (`server_nodelay`) or left it on.
async fn nodelay_of_the_websocket(hub: Hub, serve: Server, server_nodelay: bool) -> bool {
    let accepted = Accepted::default();
    let addr = match serve {
        Server::Axum => serve_axum(hub.clone(), &accepted, server_nodelay).await,
        Server::HyperHttp1 => serve_hyper_http1(hub.clone(), &accepted, server_nodelay).await,
    };
    let _client = connect(&format!("ws://{addr}/ws/nagle")).await;
    // Joined the room: the hub has taken the socket over (and set its options).
    wait_members(&hub, "nagle", 1).await;
    let fd = accepted.lock().unwrap().pop().expect("one accepted socket");
    std::net::TcpStream::from(fd).nodelay().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Server {
    Axum,
    HyperHttp1,
}

#[tokio::test]
async fn nagle_is_off_on_websockets_by_default_whichever_server_hands_them_over() {
    for server in [Server::Axum, Server::HyperHttp1] {
        let hub = Hub::builder().build();
        assert!(
            nodelay_of_the_websocket(hub, server, false).await,
            "{server:?}: TCP_NODELAY not set"
        );
    }
}

/// Either way: Nagle's algorithm left on by the server stays on, turned off stays off.
#[tokio::test]
async fn tcp_nodelay_false_leaves_the_socket_as_the_server_made_it() {
    for server in [Server::Axum, Server::HyperHttp1] {
        for server_nodelay in [false, true] {
            let hub = Hub::builder().tcp_nodelay(false).build();
            assert_eq!(
                nodelay_of_the_websocket(hub, server, server_nodelay).await,
                server_nodelay,
                "{server:?}: the server set TCP_NODELAY to {server_nodelay}"
            );
        }
    }
}

#[tokio::test]
async fn frames_sent_with_the_handshake_are_read_first() {
    for server in [Server::Axum, Server::HyperHttp1] {
        let hub = Hub::builder().build();
        let accepted = Accepted::default();
        let addr = match server {
            Server::Axum => serve_axum(hub.clone(), &accepted, false).await,
            Server::HyperHttp1 => serve_hyper_http1(hub.clone(), &accepted, false).await,
        };
        let mut listener = connect(&format!("ws://{addr}/ws/early")).await;
        wait_members(&hub, "early", 1).await;

        // Two frames in the same write as the request, before any `101` came back.
        let mut early = encode_frame(true, 0, opcode::TEXT, Some(MASK), b"early bird");
        early.extend(encode_frame(true, 0, opcode::TEXT, Some(MASK), b"second"));
        let mut eager = Upgrade::new("/ws/early")
            .open_with_early(addr, &early)
            .await;
        assert_eq!(next_text(&mut listener).await, "early bird", "{server:?}");
        assert_eq!(next_text(&mut listener).await, "second", "{server:?}");

        // And the connection goes on as usual afterwards.
        eager.send(opcode::TEXT, b"later").await;
        assert_eq!(next_text(&mut listener).await, "later", "{server:?}");
    }
}

/// Messages, pongs and the close handshake reach the client over a transport that buffers
/// writes until flushed: nothing the hub wrote waits for a later write to push it out.
#[tokio::test]
async fn what_the_hub_writes_is_flushed_over_a_buffering_transport() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let hub = Hub::builder().build();
    // A transport that keeps what it is given until flushed, as a TLS stream does with the
    // records it could not send yet when the socket was full.
    let addr = serve_hyper_http1_over(hub.clone(), tokio::io::BufWriter::new).await;
    let mut client = connect(&format!("ws://{addr}/ws/buffered")).await;
    wait_members(&hub, "buffered", 1).await;
    hub.publish("buffered", tower_ws_hub::Message::text("hello"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut client).await, "hello");
    client
        .send(WsMessage::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(PROMPTLY, client.next())
        .await
        .expect("a pong in time");
    assert!(
        matches!(pong, Some(Ok(WsMessage::Pong(ref payload))) if &payload[..] == b"are you there"),
        "{pong:?}"
    );
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    assert_eq!(close_code_to_end(&mut client).await, Some(1000));
}
