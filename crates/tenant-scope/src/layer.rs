//! [`TenantLayer`]: resolve the tenant before the inner service runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::Origin;
use crate::resolve::{RequestHead, TenantDirectory, TenantResolver};
use crate::{Actor, TenantContext, TenantError, TenantRejection, scope};

/// Resolves the tenant of every request before the inner service sees it.
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
    resolver: Box<dyn TenantResolver>,
    directory: Option<Arc<dyn TenantDirectory>>,
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

    /// Also require the resolved tenant to be known to `directory`.
    #[must_use]
    pub fn with_directory(self, directory: Arc<dyn TenantDirectory>) -> Self {
        let resolver = match Arc::try_unwrap(self.config) {
            Ok(config) => config.resolver,
            Err(shared) => Box::new(SharedResolver(shared)),
        };
        Self {
            config: Arc::new(Config {
                resolver,
                directory: Some(directory),
            }),
        }
    }

    /// Resolves the tenant context of a request head, exactly as the middleware does.
    ///
    /// # Errors
    /// The [`TenantError`] the middleware would answer with.
    pub fn resolve(&self, head: &RequestHead<'_>) -> Result<TenantContext, TenantError> {
        let actor = head.extensions.get::<Actor>();
        let found = match self.config.resolver.resolve(head) {
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
            && !directory.contains(tenant)?
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

    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<crate::TenantId>, TenantError> {
        self.0.resolver.resolve(head)
    }
}

impl<S> Layer<S> for TenantLayer {
    type Service = TenantService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The middleware built by [`TenantLayer`].
#[derive(Debug, Clone)]
pub struct TenantService<S> {
    inner: S,
    layer: TenantLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TenantService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match self.layer.resolve(&RequestHead::of(&request)) {
            Ok(context) => {
                request.extensions_mut().insert(context.clone());
                let inner = &mut self.inner;
                let future = scope::sync_scope(context.clone(), || inner.call(request));
                ResponseFuture {
                    kind: Kind::Inner {
                        future: scope::scope(context, future),
                    },
                }
            }
            Err(error) => {
                let rejection = TenantRejection::new(error);
                tracing::debug!(code = rejection.code(), "request refused by tenant layer");
                ResponseFuture {
                    kind: Kind::Rejected {
                        response: Some(rejection.into_http()),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`TenantService`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: TaskLocalFuture<TenantContext, F> },
        Rejected { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Rejected { response } => {
                #[allow(clippy::expect_used)] // Polling a completed future violates its contract.
                let response = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(response))
            }
        }
    }
}
