//! axum extractor for [`AuditHandle`] (feature `axum`).

use std::convert::Infallible;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::StatusCode;
use http::request::Parts;
use tenant_scope::Rejection;

use crate::AuditHandle;

/// A handler asked for the audit handle on a route without an [`AuditLayer`](crate::AuditLayer).
const HANDLE_MISSING: Rejection = Rejection::from_static(
    StatusCode::INTERNAL_SERVER_ERROR,
    "audit_handle_missing",
    "this action is not audited and was not run",
);

impl<S: Send + Sync> FromRequestParts<S> for AuditHandle {
    type Rejection = Rejection;

    /// Takes the handle [`AuditLayer`](crate::AuditLayer) put in the request. A route without
    /// the layer has none, and the handler is refused (`500 audit_handle_missing`) rather than
    /// run unaudited.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuditHandle>()
            .cloned()
            .ok_or(HANDLE_MISSING)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for AuditHandle {
    type Rejection = Infallible;

    /// `Option<AuditHandle>`: the layer's handle, or `None` on a route without the layer.
    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<AuditHandle>().cloned())
    }
}
