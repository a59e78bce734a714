//! Task-local tenant scope, so code deep in a call stack (and background jobs) knows the tenant
//! without threading it through every signature — and fails when there is none.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tenant_scope::{scope, TenantContext, TenantId};
//! let ctx = TenantContext::for_job(TenantId::new_random(), None, "nightly-report").unwrap();
//! let tenant = ctx.tenant();
//! let seen = scope::scope(ctx, async { scope::current_tenant() }).await;
//! assert_eq!(seen, Ok(tenant));
//! assert!(scope::current_tenant().is_err()); // outside the scope: an error, never a default
//! # }
//! ```

use std::future::Future;

use tokio::task::JoinHandle;
use tokio::task::futures::TaskLocalFuture;

use crate::{TenantContext, TenantError, TenantId};

tokio::task_local! {
    static CURRENT: TenantContext;
}

/// Runs `future` with `context` as the current tenant scope.
pub fn scope<F: Future>(context: TenantContext, future: F) -> TaskLocalFuture<TenantContext, F> {
    CURRENT.scope(context, future)
}

/// Runs `f` synchronously with `context` as the current tenant scope.
pub fn sync_scope<R>(context: TenantContext, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(context, f)
}

/// The current tenant context.
///
/// # Errors
/// [`TenantError::NoScope`] outside any tenant scope.
pub fn current() -> Result<TenantContext, TenantError> {
    CURRENT
        .try_with(TenantContext::clone)
        .map_err(|_| TenantError::NoScope)
}

/// The current tenant.
///
/// # Errors
/// [`TenantError::NoScope`] outside any tenant scope.
pub fn current_tenant() -> Result<TenantId, TenantError> {
    CURRENT
        .try_with(TenantContext::tenant)
        .map_err(|_| TenantError::NoScope)
}

/// Spawns `future` on the Tokio runtime carrying the current tenant scope into it.
///
/// Tokio's task-locals do not cross `tokio::spawn`; this does, explicitly.
///
/// # Errors
/// [`TenantError::NoScope`] when called outside a tenant scope: background work without a tenant
/// is refused rather than run unscoped.
pub fn spawn<F>(future: F) -> Result<JoinHandle<F::Output>, TenantError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let context = current()?;
    Ok(tokio::spawn(CURRENT.scope(context, future)))
}

/// Spawns `future` with an explicitly given tenant scope (for job runners that load the tenant
/// from the job record).
pub fn spawn_with<F>(context: TenantContext, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(CURRENT.scope(context, future))
}
