//! Well-behaved clients that read in the background, to show that a misbehaving client hurts
//! nobody else.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Client, PROMPTLY, Server, eventually, wait_members};

/// A well-behaved client whose reads run in the background, so that it answers pings
/// (tungstenite flushes pongs as it reads) however long the test looks elsewhere.
pub struct Member {
    pub sink: futures_util::stream::SplitSink<Client, WsMessage>,
    pub inbox: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Member {
    pub async fn join(server: &Server, room: &str) -> Self {
        let (sink, mut stream) = server.connect(room).await.split();
        let (tx, inbox) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let WsMessage::Text(text) = message
                    && tx.send(text.to_string()).is_err()
                {
                    break;
                }
            }
        });
        Self { sink, inbox }
    }

    pub async fn send(&mut self, text: &str) {
        self.sink.send(WsMessage::text(text)).await.unwrap();
    }

    pub async fn next_text(&mut self) -> String {
        tokio::time::timeout(PROMPTLY, self.inbox.recv())
            .await
            .expect("no message in time")
            .expect("connection ended")
    }
}

/// Two well-behaved clients in room "calm", to show a misbehaving client hurts nobody else.
pub struct Bystanders {
    pub a: Member,
    pub b: Member,
}

impl Bystanders {
    pub async fn join(server: &Server) -> Self {
        let a = Member::join(server, "calm").await;
        let b = Member::join(server, "calm").await;
        wait_members(&server.hub, "calm", 2).await;
        Self { a, b }
    }

    /// They still talk to each other, and only they are connected.
    pub async fn assert_unharmed(&mut self, server: &Server) {
        self.a.send("still fine?").await;
        assert_eq!(self.b.next_text().await, "still fine?");
        self.b.send("still fine.").await;
        assert_eq!(self.a.next_text().await, "still fine.");
        eventually("only the bystanders left connected", || {
            server.hub.stats().connections == 2
        })
        .await;
        assert_eq!(server.hub.rooms(), ["calm"]);
        assert!(self.a.inbox.is_empty() && self.b.inbox.is_empty());
    }
}
