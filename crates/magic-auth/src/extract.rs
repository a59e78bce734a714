//! axum extractors for [`Session`] (feature `axum`).

use std::convert::Infallible;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::{AuthRejection, Session};

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = AuthRejection;

    /// The session [`SessionManagerLayer`](crate::SessionManagerLayer) found for the request's
    /// cookie. Without one (no cookie, a bad one, or a route without the layer) the handler is
    /// refused with `401 unauthenticated`.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(AuthRejection::Unauthenticated)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = Infallible;

    /// `Option<Session>`: the signed-in session, or `None` for an anonymous request.
    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Session>().cloned())
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        self.into_http()
    }
}
