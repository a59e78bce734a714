//! axum integration (feature `axum`): a handler takes a [`TenantTx`] argument and receives a
//! transaction bound to the tenant [`TenantLayer`](tenant_scope::TenantLayer) resolved.
//!
//! ```no_run
//! use axum::{Router, extract::FromRef, routing::get};
//! use rls_guard::{RlsError, TenantPool, TenantTx};
//!
//! #[derive(Clone)]
//! struct AppState { db: TenantPool }
//!
//! impl FromRef<AppState> for TenantPool {
//!     fn from_ref(state: &AppState) -> Self { state.db.clone() }
//! }
//!
//! async fn count_projects(mut tx: TenantTx) -> Result<String, RlsError> {
//!     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects").fetch_one(&mut *tx).await?;
//!     tx.commit().await?;
//!     Ok(n.to_string())
//! }
//! # fn app(state: AppState) -> Router { Router::new().route("/projects/count", get(count_projects)).with_state(state) }
//! ```

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use tenant_scope::TenantContext;

use crate::{RlsError, TenantPool, TenantTx};

impl<S> FromRequestParts<S> for TenantTx
where
    TenantPool: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = RlsError;

    /// Opens a transaction bound to the request's tenant. No resolved tenant is a 500
    /// (`tenant_not_resolved`, the route lacks `TenantLayer`); an unreachable database a 503
    /// (`database_unavailable`); a statement the database refused a 500 (`database_error`).
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let context = parts
            .extensions
            .get::<TenantContext>()
            .ok_or(RlsError::NoTenantContext)?;
        TenantPool::from_ref(state).begin(context).await
    }
}

impl IntoResponse for RlsError {
    /// The [`Rejection`](tenant_scope::Rejection) of [`RlsError::rejection`]; the details stay in
    /// the log.
    fn into_response(self) -> Response {
        let rejection = self.rejection();
        tracing::warn!(error = %self, code = rejection.code(), "request refused by rls-guard");
        rejection.into_response()
    }
}
