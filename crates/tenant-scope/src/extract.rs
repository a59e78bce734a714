//! axum extractor for [`TenantContext`] (feature `axum`).

use std::convert::Infallible;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use crate::{TenantContext, TenantError, TenantRejection};

impl<S: Send + Sync> FromRequestParts<S> for TenantContext {
    type Rejection = TenantRejection;

    /// Takes the context [`TenantLayer`](crate::TenantLayer) resolved. A route without the layer
    /// has none, and the handler is refused (500 `tenant_not_resolved`) rather than run unscoped.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<TenantContext>()
            .cloned()
            .ok_or(TenantRejection::new(TenantError::NotResolved))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for TenantContext {
    type Rejection = Infallible;

    /// `Option<TenantContext>`: the context the layer resolved, or `None` on a route without it.
    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<TenantContext>().cloned())
    }
}
