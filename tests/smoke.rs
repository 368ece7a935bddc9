mod support;

use support::*;
use tower_ws_hub::{Hub, Message};

#[tokio::test]
async fn a_message_reaches_the_other_member_but_not_the_sender() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut a = server.connect("lobby").await;
    let mut b = server.connect("lobby").await;
    wait_members(&server.hub, "lobby", 2).await;
    send_text(&mut a, "hello").await;
    assert_eq!(next_text(&mut b).await, "hello");
    assert_silent(&mut a, std::time::Duration::from_millis(200)).await;
    server
        .hub
        .publish("lobby", Message::text("from app"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut a).await, "from app");
    assert_eq!(next_text(&mut b).await, "from app");
    let body = reqwest_get(&server.http_url("/healthz")).await;
    assert_eq!(body, "ok");
}

async fn reqwest_get(url: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}
