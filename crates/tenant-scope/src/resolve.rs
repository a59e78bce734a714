//! Where the tenant of a request comes from.
//!
//! A [`TenantResolver`] looks at the request head and answers one of three ways: it found a
//! tenant, it found nothing (`Ok(None)`), or it found something it must refuse (`Err`). Refusals
//! are final: a malformed header is not "absent", and the layer rejects the request.
//!
//! Both extension points are asynchronous, so a [`TenantDirectory`] can be backed by the
//! database. Implementations may write `async fn`:
//!
//! ```
//! use std::convert::Infallible;
//! use tenant_scope::{TenantDirectory, TenantId};
//!
//! struct OneTenant(TenantId);
//!
//! impl TenantDirectory for OneTenant {
//!     type Error = Infallible;
//!
//!     async fn by_slug(&self, slug: &str) -> Result<Option<TenantId>, Infallible> {
//!         Ok((slug == "acme").then_some(self.0))
//!     }
//!
//!     async fn contains(&self, tenant: TenantId) -> Result<bool, Infallible> {
//!         Ok(tenant == self.0)
//!     }
//! }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, Uri, header};

use crate::{Actor, TenantError, TenantId};

/// The parts of a request a resolver may look at.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (where authentication layers put the [`Actor`]).
    pub extensions: &'a http::Extensions,
}

impl<'a> RequestHead<'a> {
    /// A view of `request`'s head.
    #[must_use]
    pub fn of<B>(request: &'a http::Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// A source of the acting tenant.
pub trait TenantResolver: Send + Sync + 'static {
    /// The resolver's name, used in errors and logs (for example `"header"`).
    fn name(&self) -> &'static str;

    /// Looks for a tenant in `head`.
    ///
    /// # Errors
    /// Any [`TenantError`] refuses the request; return `Ok(None)` only when the source is
    /// genuinely absent.
    fn resolve(
        &self,
        head: &RequestHead<'_>,
    ) -> impl Future<Output = Result<Option<TenantId>, TenantError>> + Send;
}

impl<R: TenantResolver> TenantResolver for Arc<R> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn resolve(
        &self,
        head: &RequestHead<'_>,
    ) -> impl Future<Output = Result<Option<TenantId>, TenantError>> + Send {
        (**self).resolve(head)
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`TenantResolver`] behind a pointer (the trait's `impl Future` is not object safe).
pub(crate) trait DynResolver: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    fn resolve_boxed<'a>(
        &'a self,
        head: &'a RequestHead<'a>,
    ) -> BoxFuture<'a, Result<Option<TenantId>, TenantError>>;
}

impl<R: TenantResolver> DynResolver for R {
    fn name(&self) -> &'static str {
        TenantResolver::name(self)
    }

    fn resolve_boxed<'a>(
        &'a self,
        head: &'a RequestHead<'a>,
    ) -> BoxFuture<'a, Result<Option<TenantId>, TenantError>> {
        Box::pin(self.resolve(head))
    }
}

/// The tenant of the signed-in [`Actor`] in the request extensions. The primary source.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActorResolver;

impl TenantResolver for ActorResolver {
    fn name(&self) -> &'static str {
        "actor"
    }

    async fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError> {
        Ok(head.extensions.get::<Actor>().map(Actor::tenant))
    }
}

/// The tenant named by a header that a trusted proxy sets.
///
/// Only use this behind a proxy that removes the header from client requests. Even then, the
/// header never overrides a signed-in actor: [`TenantLayer`](crate::TenantLayer) refuses a request
/// whose header disagrees with the actor's tenant.
#[derive(Debug, Clone)]
pub struct HeaderResolver {
    header: HeaderName,
}

impl HeaderResolver {
    /// Reads the tenant from `header`.
    #[must_use]
    pub const fn new(header: HeaderName) -> Self {
        Self { header }
    }
}

impl TenantResolver for HeaderResolver {
    fn name(&self) -> &'static str {
        "header"
    }

    async fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError> {
        let malformed = TenantError::Malformed {
            source_name: "header",
        };
        let mut values = head.headers.get_all(&self.header).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        // Two copies of the header are an ambiguity an attacker could exploit between proxies.
        if values.next().is_some() {
            return Err(malformed);
        }
        let text = value.to_str().map_err(|_| malformed.clone())?;
        text.parse().map(Some).map_err(|_| malformed)
    }
}

/// Looks tenants up by slug and tells whether a tenant is known.
///
/// Asynchronous, so it can be a query (a `tenants` table) as well as an in-memory snapshot
/// ([`StaticDirectory`]). It fails closed: any error refuses the request with
/// `503 tenant_unavailable` (the error itself is logged, never sent).
pub trait TenantDirectory: Send + Sync + 'static {
    /// Why the directory could not answer (for example `sqlx::Error`).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The tenant whose slug (subdomain label, lowercase) is `slug`, or `None` if there is none.
    ///
    /// # Errors
    /// When the directory cannot answer; the request is refused.
    fn by_slug(
        &self,
        slug: &str,
    ) -> impl Future<Output = Result<Option<TenantId>, Self::Error>> + Send;

    /// Whether `tenant` exists and is active.
    ///
    /// # Errors
    /// When the directory cannot answer; the request is refused.
    fn contains(&self, tenant: TenantId) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

impl<D: TenantDirectory> TenantDirectory for Arc<D> {
    type Error = D::Error;

    fn by_slug(
        &self,
        slug: &str,
    ) -> impl Future<Output = Result<Option<TenantId>, Self::Error>> + Send {
        (**self).by_slug(slug)
    }

    fn contains(&self, tenant: TenantId) -> impl Future<Output = Result<bool, Self::Error>> + Send {
        (**self).contains(tenant)
    }
}

/// A [`TenantDirectory`] behind a pointer, its errors logged and turned into
/// [`TenantError::Unavailable`].
pub(crate) trait DynDirectory: Send + Sync + 'static {
    fn by_slug_boxed<'a>(
        &'a self,
        slug: &'a str,
    ) -> BoxFuture<'a, Result<Option<TenantId>, TenantError>>;

    fn contains_boxed(&self, tenant: TenantId) -> BoxFuture<'_, Result<bool, TenantError>>;
}

fn unavailable(error: &(dyn std::error::Error + 'static)) -> TenantError {
    tracing::error!(error = %error, "tenant directory cannot answer; request refused");
    TenantError::Unavailable
}

impl<D: TenantDirectory> DynDirectory for D {
    fn by_slug_boxed<'a>(
        &'a self,
        slug: &'a str,
    ) -> BoxFuture<'a, Result<Option<TenantId>, TenantError>> {
        Box::pin(async move { self.by_slug(slug).await.map_err(|e| unavailable(&e)) })
    }

    fn contains_boxed(&self, tenant: TenantId) -> BoxFuture<'_, Result<bool, TenantError>> {
        Box::pin(async move { self.contains(tenant).await.map_err(|e| unavailable(&e)) })
    }
}

/// A fixed, in-memory [`TenantDirectory`].
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    by_slug: HashMap<String, TenantId>,
}

impl StaticDirectory {
    /// An empty directory.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tenant under `slug` (compared case-insensitively).
    #[must_use]
    pub fn with_tenant(mut self, slug: &str, tenant: TenantId) -> Self {
        self.by_slug.insert(slug.to_ascii_lowercase(), tenant);
        self
    }
}

impl TenantDirectory for StaticDirectory {
    type Error = Infallible;

    async fn by_slug(&self, slug: &str) -> Result<Option<TenantId>, Infallible> {
        Ok(self.by_slug.get(slug).copied())
    }

    async fn contains(&self, tenant: TenantId) -> Result<bool, Infallible> {
        Ok(self.by_slug.values().any(|t| *t == tenant))
    }
}

/// The tenant named by the first label of the host under a base domain
/// (`acme.example.com` under `example.com` is the tenant with slug `acme`).
///
/// The bare base domain and hosts outside it name no tenant. A deeper subdomain
/// (`a.b.example.com`), an invalid label or a slug the directory does not know is refused.
#[derive(Clone)]
pub struct SubdomainResolver {
    base: String,
    directory: Arc<dyn DynDirectory>,
}

impl std::fmt::Debug for SubdomainResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubdomainResolver")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl SubdomainResolver {
    /// Resolves slugs under `base_domain` through `directory`.
    #[must_use]
    pub fn new(base_domain: &str, directory: impl TenantDirectory) -> Self {
        Self {
            base: base_domain.trim_end_matches('.').to_ascii_lowercase(),
            directory: Arc::new(directory),
        }
    }

    /// The request's host, lowercased, without port or trailing dot.
    fn host(head: &RequestHead<'_>) -> Result<Option<String>, TenantError> {
        let malformed = || TenantError::Malformed {
            source_name: "subdomain",
        };
        let mut host_headers = head.headers.get_all(header::HOST).iter();
        let from_header = match (host_headers.next(), host_headers.next()) {
            (None, _) => None,
            (Some(value), None) => {
                let text = value.to_str().map_err(|_| malformed())?;
                let authority: http::uri::Authority = text.parse().map_err(|_| malformed())?;
                if authority.as_str().contains('@') {
                    return Err(malformed());
                }
                Some(authority.host().to_ascii_lowercase())
            }
            (Some(_), Some(_)) => return Err(malformed()),
        };
        // HTTP/2 carries the authority in the URI; HTTP/1.1 in the Host header. When both are
        // present they must agree, or routing and tenant resolution could see different hosts.
        let from_uri = head.uri.authority().map(|a| a.host().to_ascii_lowercase());
        let host = match (from_uri, from_header) {
            (Some(u), Some(h)) if u != h => return Err(malformed()),
            (Some(u), _) => Some(u),
            (None, h) => h,
        };
        Ok(host.map(|h| h.trim_end_matches('.').to_owned()))
    }
}

impl TenantResolver for SubdomainResolver {
    fn name(&self) -> &'static str {
        "subdomain"
    }

    async fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError> {
        let Some(host) = Self::host(head)? else {
            return Ok(None);
        };
        if host == self.base {
            return Ok(None);
        }
        let Some(prefix) = host
            .strip_suffix(&self.base)
            .and_then(|p| p.strip_suffix('.'))
        else {
            return Ok(None);
        };
        let valid_label = !prefix.is_empty()
            && prefix.len() <= 63
            && !prefix.starts_with('-')
            && !prefix.ends_with('-')
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_label {
            return Err(TenantError::Malformed {
                source_name: "subdomain",
            });
        }
        match self.directory.by_slug_boxed(prefix).await? {
            Some(tenant) => Ok(Some(tenant)),
            None => Err(TenantError::Unknown),
        }
    }
}

/// Combines resolvers: every source that is present must name the same tenant.
///
/// Any refusal from any source refuses the request (a malformed header is not ignored because
/// the session named a tenant). Disagreement is [`TenantError::Conflict`]; no source at all is
/// [`TenantError::Missing`] when used by [`TenantLayer`](crate::TenantLayer).
#[derive(Clone, Default)]
pub struct AllAgree {
    sources: Vec<Arc<dyn DynResolver>>,
}

impl std::fmt::Debug for AllAgree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.sources.iter().map(|s| s.name()))
            .finish()
    }
}

impl AllAgree {
    /// No sources yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source.
    #[must_use]
    pub fn with(mut self, source: impl TenantResolver) -> Self {
        self.sources.push(Arc::new(source));
        self
    }
}

impl TenantResolver for AllAgree {
    fn name(&self) -> &'static str {
        "all-agree"
    }

    async fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError> {
        let mut agreed: Option<TenantId> = None;
        let mut conflict = false;
        for source in &self.sources {
            // Every source runs, so a malformed value anywhere is reported even after a conflict.
            if let Some(found) = source.resolve_boxed(head).await? {
                match agreed {
                    Some(t) if t != found => conflict = true,
                    _ => agreed = Some(found),
                }
            }
        }
        if conflict {
            Err(TenantError::Conflict)
        } else {
            Ok(agreed)
        }
    }
}
