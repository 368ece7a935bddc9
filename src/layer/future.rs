//! [`ResponseFuture`]: the future of a [`HubService`](super::HubService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project::pin_project;

use super::body::HubBody;

/// The inner service's future (pass-through, not boxed), a hub answer that is ready, or (only
/// when a [`RoomAuthorizer`](crate::RoomAuthorizer) is configured) a boxed authorization.
#[pin_project(project = ResponseFutureProj)]
pub struct ResponseFuture<F> {
    #[pin]
    kind: Kind<F>,
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Inner(_) => "Inner",
            Kind::Ready(_) => "Ready",
            Kind::Authorizing(_) => "Authorizing",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

#[pin_project(project = KindProj)]
enum Kind<F> {
    Inner(#[pin] F),
    Ready(Option<Response<Bytes>>),
    Authorizing(#[pin] BoxedResponse),
}

type BoxedResponse = Pin<Box<dyn Future<Output = Response<Bytes>> + Send + 'static>>;

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

    pub(crate) fn authorizing(future: BoxedResponse) -> Self {
        Self {
            kind: Kind::Authorizing(future),
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
            KindProj::Authorizing(future) => future
                .poll(cx)
                .map(|response| Ok(response.map(HubBody::full))),
        }
    }
}
