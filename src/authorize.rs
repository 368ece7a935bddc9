//! [`RoomAuthorizer`]: may this request join this room?
//!
//! Authentication stays with the application's own middleware in front of the layer; the
//! authorizer runs after it, before the upgrade, and sees what it left in the request
//! extensions. It is async so that it can ask a database or a permission service.

use std::future::Future;
use std::pin::Pin;

use http::request::Parts;

use crate::rejection::Rejection;

/// The answer of a [`RoomAuthorizer`].
#[derive(Debug, Clone)]
pub enum Authorization {
    /// Let the client join.
    Allow,
    /// Refuse the upgrade with this answer.
    Deny(Rejection),
}

impl From<bool> for Authorization {
    /// `true` allows; `false` denies with `403 Forbidden`.
    fn from(allowed: bool) -> Self {
        if allowed {
            Self::Allow
        } else {
            Self::Deny(Rejection::forbidden("not allowed to join this room"))
        }
    }
}

impl From<Result<(), Rejection>> for Authorization {
    fn from(result: Result<(), Rejection>) -> Self {
        match result {
            Ok(()) => Self::Allow,
            Err(rejection) => Self::Deny(rejection),
        }
    }
}

/// A boxed authorization decision.
pub type AuthorizationFuture = Pin<Box<dyn Future<Output = Authorization> + Send + 'static>>;

/// Decides, before the upgrade, whether a request may join a room.
///
/// Implemented for closures `Fn(&Parts, &str) -> impl Future<Output = D>` where `D` is `bool`
/// (`false` → 403), `Result<(), Rejection>` (any status) or [`Authorization`]. The future must
/// be `'static`: take what it needs from the request head before the `async` block.
///
/// A panic, in the call or in the future, answers the request `500` and gives back the place
/// it held (see [`HubLayer::authorize`](crate::HubLayer::authorize)).
///
/// ```
/// use http::request::Parts;
/// use tower_ws_hub::{Hub, HubLayer};
///
/// #[derive(Clone)]
/// struct User { rooms: Vec<String> }
///
/// let layer = HubLayer::new(Hub::builder().build())
///     .route("/ws/{room}")
///     .authorize(|parts: &Parts, room: &str| {
///         // Put there by the authentication middleware in front of the layer.
///         let user = parts.extensions.get::<User>().cloned();
///         let room = room.to_owned();
///         async move { user.is_some_and(|user| user.rooms.contains(&room)) }
///     });
/// # drop(layer);
/// ```
pub trait RoomAuthorizer: Send + Sync + 'static {
    /// Decides for one request head and room.
    fn authorize(&self, parts: &Parts, room: &str) -> AuthorizationFuture;
}

impl<F, Fut, D> RoomAuthorizer for F
where
    F: Fn(&Parts, &str) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = D> + Send + 'static,
    D: Into<Authorization>,
{
    fn authorize(&self, parts: &Parts, room: &str) -> AuthorizationFuture {
        let decision = self(parts, room);
        Box::pin(async move { decision.await.into() })
    }
}
