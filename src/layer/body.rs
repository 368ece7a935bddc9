//! [`HubBody`]: the response body of a [`HubService`](super::HubService).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project::pin_project;

/// Either the inner service's body, untouched, or the short body of a hub answer (a rejection's
/// reason, or the empty body of a `101`).
#[pin_project(project = HubBodyProj)]
#[derive(Debug)]
pub struct HubBody<B> {
    #[pin]
    kind: Kind<B>,
}

#[pin_project(project = KindProj)]
#[derive(Debug)]
enum Kind<B> {
    Inner(#[pin] B),
    Full(Option<Bytes>),
}

impl<B> HubBody<B> {
    /// Wraps a body of the inner service's type: for middleware around a
    /// [`HubService`](super::HubService) that answers some requests itself.
    pub fn new(body: B) -> Self {
        Self::inner(body)
    }

    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner(body),
        }
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }
}

impl<B: Default> Default for HubBody<B> {
    fn default() -> Self {
        Self::inner(B::default())
    }
}

impl<B> Body for HubBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner(body) => body.poll_frame(cx),
            KindProj::Full(bytes) => {
                Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes.into()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
