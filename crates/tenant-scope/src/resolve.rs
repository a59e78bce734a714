//! Where the tenant of a request comes from.
//!
//! A [`TenantResolver`] looks at the request head and answers one of three ways: it found a
//! tenant, it found nothing (`Ok(None)`), or it found something it must refuse (`Err`). Refusals
//! are final: a malformed header is not "absent", and the layer rejects the request.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, Uri, header};

use crate::{Actor, TenantError, TenantId};

/// The parts of a request a resolver may look at.
#[derive(Debug, Clone, Copy)]
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
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError>;
}

impl<R: TenantResolver + ?Sized> TenantResolver for Arc<R> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError> {
        (**self).resolve(head)
    }
}

/// The tenant of the signed-in [`Actor`] in the request extensions. The primary source.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActorResolver;

impl TenantResolver for ActorResolver {
    fn name(&self) -> &'static str {
        "actor"
    }

    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError> {
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

    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError> {
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
/// Implementations are synchronous snapshots (an in-memory map the application refreshes), so
/// resolution never touches the database.
pub trait TenantDirectory: Send + Sync + 'static {
    /// The tenant whose slug (subdomain label) is `slug`.
    ///
    /// # Errors
    /// [`TenantError::Unavailable`] when the directory cannot answer.
    fn by_slug(&self, slug: &str) -> Result<Option<TenantId>, TenantError>;

    /// Whether `tenant` exists and is active.
    ///
    /// # Errors
    /// [`TenantError::Unavailable`] when the directory cannot answer.
    fn contains(&self, tenant: TenantId) -> Result<bool, TenantError>;
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
    fn by_slug(&self, slug: &str) -> Result<Option<TenantId>, TenantError> {
        Ok(self.by_slug.get(slug).copied())
    }

    fn contains(&self, tenant: TenantId) -> Result<bool, TenantError> {
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
    directory: Arc<dyn TenantDirectory>,
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
    pub fn new(base_domain: &str, directory: Arc<dyn TenantDirectory>) -> Self {
        Self {
            base: base_domain.trim_end_matches('.').to_ascii_lowercase(),
            directory,
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

    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError> {
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
        match self.directory.by_slug(prefix)? {
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
    sources: Vec<Arc<dyn TenantResolver>>,
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

    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, TenantError> {
        let mut agreed: Option<TenantId> = None;
        let mut conflict = false;
        for source in &self.sources {
            // Every source runs, so a malformed value anywhere is reported even after a conflict.
            if let Some(found) = source.resolve(head)? {
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
