//! axum extractor for [`TenantContext`] (feature `axum`).

use axum::extract::FromRequestParts;
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
