//! [`TenantLayer`] and [`Tenant`]: resolve the tenant before the inner service runs.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::context::Origin;
use crate::future::ResponseFuture;
use crate::resolve::{DynDirectory, DynResolver, RequestHead, TenantDirectory, TenantResolver};
use crate::{Actor, TenantContext, TenantError, TenantRejection, scope};

/// Resolves the tenant of every request before the inner service sees it (the layer of
/// [`Tenant`]).
///
/// On success the [`TenantContext`] is inserted into the request extensions and the inner
/// service's future runs inside the task-local tenant scope (see [`scope::current`]). On any
/// failure — no tenant, a malformed one, sources that disagree, an unknown tenant, a directory
/// that cannot answer — the request is answered with a [`TenantRejection`] and the inner service
/// is never called.
///
/// A signed-in [`Actor`] in the request extensions is always consulted, whatever the resolver:
/// a request whose other sources name a tenant other than the actor's is refused with
/// `tenant_mismatch`.
#[derive(Clone)]
pub struct TenantLayer {
    config: Arc<Config>,
}

struct Config {
    resolver: Box<dyn DynResolver>,
    directory: Option<Arc<dyn DynDirectory>>,
}

impl std::fmt::Debug for TenantLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLayer")
            .field("resolver", &self.config.resolver.name())
            .field("directory", &self.config.directory.is_some())
            .finish()
    }
}

impl TenantLayer {
    /// A layer resolving with `resolver` (often an [`AllAgree`](crate::AllAgree) of several).
    #[must_use]
    pub fn new(resolver: impl TenantResolver) -> Self {
        Self {
            config: Arc::new(Config {
                resolver: Box::new(resolver),
                directory: None,
            }),
        }
    }

    /// Also require the resolved tenant to be known to `directory`. A directory that cannot
    /// answer refuses the request (`503 tenant_unavailable`).
    #[must_use]
    pub fn with_directory(self, directory: impl TenantDirectory) -> Self {
        let resolver = match Arc::try_unwrap(self.config) {
            Ok(config) => config.resolver,
            Err(shared) => Box::new(SharedResolver(shared)),
        };
        Self {
            config: Arc::new(Config {
                resolver,
                directory: Some(Arc::new(directory)),
            }),
        }
    }

    /// Resolves the tenant context of a request head, exactly as the middleware does.
    ///
    /// # Errors
    /// The [`TenantError`] the middleware would answer with.
    pub async fn resolve(&self, head: &RequestHead<'_>) -> Result<TenantContext, TenantError> {
        let actor = head.extensions.get::<Actor>();
        let found = match self.config.resolver.resolve_boxed(head).await {
            // A signed-in actor asking for a tenant that is not theirs gets the same answer
            // whether that tenant exists or not: no existence oracle for other tenants' slugs.
            Err(TenantError::Unknown) if actor.is_some() => return Err(TenantError::Conflict),
            other => other?,
        };
        let tenant = match (found, actor) {
            (Some(t), Some(a)) if t != a.tenant() => return Err(TenantError::Conflict),
            (Some(t), _) => t,
            (None, Some(a)) => a.tenant(),
            (None, None) => return Err(TenantError::Missing),
        };
        if let Some(directory) = &self.config.directory
            && !directory.contains_boxed(tenant).await?
        {
            return Err(if actor.is_some() {
                TenantError::Conflict
            } else {
                TenantError::Unknown
            });
        }
        Ok(TenantContext::new(tenant, actor.cloned(), Origin::Request))
    }
}

/// Keeps a resolver shared with an earlier clone of the layer usable after `with_directory`.
struct SharedResolver(Arc<Config>);

impl TenantResolver for SharedResolver {
    fn name(&self) -> &'static str {
        self.0.resolver.name()
    }

    async fn resolve(
        &self,
        head: &RequestHead<'_>,
    ) -> Result<Option<crate::TenantId>, TenantError> {
        self.0.resolver.resolve_boxed(head).await
    }
}

impl<S> Layer<S> for TenantLayer {
    type Service = Tenant<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Tenant {
            inner,
            layer: self.clone(),
        }
    }
}

/// The middleware [`TenantLayer`] builds: see there.
#[derive(Debug, Clone)]
pub struct Tenant<S> {
    inner: S,
    layer: TenantLayer,
}

impl Tenant<()> {
    /// A [`TenantLayer`] resolving with `resolver` (`Tenant::layer(..)`).
    #[must_use]
    pub fn layer(resolver: impl TenantResolver) -> TenantLayer {
        TenantLayer::new(resolver)
    }
}

impl<S> Tenant<S> {
    /// Wraps `inner`, resolving as `layer` says.
    #[must_use]
    pub fn new(inner: S, layer: TenantLayer) -> Self {
        Self { inner, layer }
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Tenant<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        ResponseFuture::new(async move {
            match layer.resolve(&RequestHead::of(&request)).await {
                Ok(context) => {
                    request.extensions_mut().insert(context.clone());
                    // The scope covers the inner service's `call` too, not only its future.
                    let future = scope::sync_scope(context.clone(), || inner.call(request));
                    scope::scope(context, future).await
                }
                Err(error) => {
                    let rejection = TenantRejection::new(error);
                    tracing::debug!(code = rejection.code(), "request refused by tenant layer");
                    Ok(rejection.into_http())
                }
            }
        })
    }
}
