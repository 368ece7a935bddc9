//! [`ResponseFuture`]: the future of a [`HubService`](super::HubService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project::pin_project;

use super::body::HubBody;

/// Either the inner service's future (pass-through, not boxed) or a hub answer that is ready.
#[pin_project(project = ResponseFutureProj)]
#[derive(Debug)]
pub struct ResponseFuture<F> {
    #[pin]
    kind: Kind<F>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<F> {
    Inner(#[pin] F),
    Ready(Option<Response<Bytes>>),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner(future),
        }
    }

    pub(crate) fn ready(response: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Ready(Some(response)),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<HubBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner(future) => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(HubBody::inner))),
            KindProj::Ready(response) => {
                let response = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(response.map(HubBody::full)))
            }
        }
    }
}
