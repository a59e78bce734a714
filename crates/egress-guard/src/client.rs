//! The guarded HTTP client: every hop checked, every resolved address checked, the connection
//! made only to the addresses that were checked.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, LOCATION};
use http::{Method, StatusCode};
use url::Url;

use crate::policy::EgressPolicy;
use crate::target::{Target, TargetHost};
use crate::{Decision, Reason};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Looks up the addresses of a host name. Injectable, so tests can use a DNS server on
/// loopback and deployments a specific nameserver.
pub trait NameResolver: Send + Sync + 'static {
    /// All addresses of `host`.
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, std::io::Error>>;
}

/// A [`NameResolver`] backed by hickory-resolver.
pub struct HickoryResolver {
    inner: hickory_resolver::TokioResolver,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HickoryResolver")
    }
}

impl HickoryResolver {
    /// The system's configuration (`/etc/resolv.conf`).
    ///
    /// # Errors
    /// [`EgressError::Resolution`] when the system configuration cannot be read.
    pub fn system() -> Result<Self, EgressError> {
        hickory_resolver::TokioResolver::builder_tokio()
            .and_then(hickory_resolver::ResolverBuilder::build)
            .map(|inner| Self { inner })
            .map_err(|e| EgressError::Resolution(e.to_string()))
    }

    /// Queries only the nameserver at `addr` (UDP, then TCP), with caching and the hosts file
    /// off, so every request sees the server's current answer.
    ///
    /// # Errors
    /// [`EgressError::Resolution`] when the resolver cannot be built.
    pub fn with_nameserver(addr: SocketAddr) -> Result<Self, EgressError> {
        use hickory_resolver::config::{
            ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
        };
        let mut udp = ConnectionConfig::udp();
        udp.port = addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = addr.port();
        let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
            addr.ip(),
            true,
            vec![udp, tcp],
        )]);
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.attempts = 1;
        opts.timeout = Duration::from_secs(2);
        opts.use_hosts_file = ResolveHosts::Never;
        hickory_resolver::TokioResolver::builder_with_config(
            config,
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map(|inner| Self { inner })
        .map_err(|e| EgressError::Resolution(e.to_string()))
    }
}

impl NameResolver for HickoryResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, std::io::Error>> {
        Box::pin(async move {
            // A trailing dot makes the name absolute: no search-domain expansion.
            let fqdn = format!("{host}.");
            let answers = self
                .inner
                .lookup_ip(fqdn)
                .await
                .map_err(std::io::Error::other)?;
            Ok(answers.iter().collect())
        })
    }
}

/// Why a guarded request failed. A denial carries the [`Decision`] that denied it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// The policy denied the destination (at `hop`, 0 for the first request).
    #[error("egress denied at hop {hop}: {}", .decision.reason.code())]
    Denied {
        /// The decision.
        decision: Box<Decision>,
        /// Which hop (0 = the original URL, 1 = the first redirect, ...).
        hop: usize,
    },
    /// The host name did not resolve.
    #[error("name resolution failed: {0}")]
    Resolution(String),
    /// More redirects than allowed.
    #[error("too many redirects")]
    TooManyRedirects,
    /// A redirect without a usable `Location`.
    #[error("invalid redirect")]
    InvalidRedirect,
    /// The response body exceeded the cap.
    #[error("response body larger than {limit} bytes")]
    BodyTooLarge {
        /// The cap.
        limit: usize,
    },
    /// The request took longer than the total timeout.
    #[error("request timed out")]
    Timeout,
    /// The HTTP exchange failed.
    #[error("http error: {0}")]
    Http(#[source] reqwest::Error),
}

/// A resolver denial, carried through reqwest's error chain back to the client.
#[derive(Debug, thiserror::Error)]
#[error("resolved addresses denied")]
struct ResolveDenied(Box<Decision>);

/// reqwest's resolver hook: resolve, check every answer, hand reqwest only checked addresses.
struct FilteringResolver {
    names: Arc<dyn NameResolver>,
    policy: Arc<EgressPolicy>,
    resolved: Arc<Resolutions>,
}

/// The answers each host name last resolved to, so the client's per-hop decision can name the
/// addresses it connected to (a pooled connection reuses the last resolution).
#[derive(Default)]
struct Resolutions {
    hosts: std::sync::Mutex<std::collections::HashMap<String, Vec<IpAddr>>>,
}

impl Resolutions {
    const MAX_HOSTS: usize = 1024;

    fn remember(&self, host: &str, addresses: &[IpAddr]) {
        if let Ok(mut hosts) = self.hosts.lock() {
            if hosts.len() >= Self::MAX_HOSTS && !hosts.contains_key(host) {
                hosts.clear();
            }
            hosts.insert(host.to_owned(), addresses.to_vec());
        }
    }

    fn get(&self, host: &str) -> Vec<IpAddr> {
        self.hosts
            .lock()
            .ok()
            .and_then(|hosts| hosts.get(host).cloned())
            .unwrap_or_default()
    }
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let names = self.names.clone();
        let policy = self.policy.clone();
        let resolved = self.resolved.clone();
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(async move {
            let addresses = names.lookup(&host).await?;
            if addresses.is_empty() {
                return Err(std::io::Error::other("no addresses").into());
            }
            resolved.remember(&host, &addresses);
            // The scheme and port are the request's: the client fills them in when it
            // publishes the hop's decision.
            let target = Target {
                scheme: String::new(),
                host: TargetHost::Name(host),
                port: 0,
            };
            // One forbidden answer denies the name: a mix of public and private answers is how
            // rebinding attacks hedge.
            for ip in &addresses {
                let mut decision = policy.evaluate_address(&target, *ip);
                if !decision.allowed {
                    decision.addresses = addresses;
                    return Err(Box::new(ResolveDenied(Box::new(decision))) as _);
                }
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Headers removed on every redirect to another origin (scheme, host or port), whatever the
/// configuration: the standard credentials and the common custom ones.
pub const DEFAULT_SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
    "x-amz-security-token",
    "x-csrf-token",
];

/// Builds a [`GuardedClient`].
pub struct GuardedClientBuilder {
    policy: EgressPolicy,
    resolver: Option<Arc<dyn NameResolver>>,
    caller: Option<String>,
    sensitive_headers: Vec<HeaderName>,
    max_redirects: usize,
    body_limit: usize,
    connect_timeout: Duration,
    read_timeout: Duration,
    total_timeout: Duration,
}

impl std::fmt::Debug for GuardedClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedClientBuilder")
            .field("policy", &self.policy.name())
            .field("max_redirects", &self.max_redirects)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl GuardedClientBuilder {
    /// Resolve names with `resolver` (default: the system configuration through hickory).
    #[must_use]
    pub fn resolver(mut self, resolver: Arc<dyn NameResolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Name the tool or agent this client acts for: it is in every decision event.
    #[must_use]
    pub fn caller(mut self, caller: &str) -> Self {
        self.caller = Some(caller.to_owned());
        self
    }

    /// Also strip `headers` on a redirect to another origin, beside the defaults
    /// ([`DEFAULT_SENSITIVE_HEADERS`]): custom credential headers your tools send.
    #[must_use]
    pub fn sensitive_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.sensitive_headers.extend(headers);
        self
    }

    /// Follow at most `n` redirects (default 5), each checked like the first request.
    #[must_use]
    pub const fn max_redirects(mut self, n: usize) -> Self {
        self.max_redirects = n;
        self
    }

    /// Refuse response bodies over `bytes` (default 10 MiB), counted as received.
    #[must_use]
    pub const fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Connect timeout (default 5 s), per-read timeout (default 10 s), total (default 30 s).
    #[must_use]
    pub const fn timeouts(mut self, connect: Duration, read: Duration, total: Duration) -> Self {
        self.connect_timeout = connect;
        self.read_timeout = read;
        self.total_timeout = total;
        self
    }

    /// Builds the client. System proxy settings (`HTTP_PROXY` and friends) are ignored: a proxy
    /// would connect on our behalf to addresses the guard never saw.
    ///
    /// # Errors
    /// [`EgressError::Resolution`] when no resolver was given and the system configuration
    /// cannot be read; [`EgressError::Http`] when the HTTP client cannot be built.
    pub fn build(self) -> Result<GuardedClient, EgressError> {
        let names: Arc<dyn NameResolver> = match self.resolver {
            Some(r) => r,
            None => Arc::new(HickoryResolver::system()?),
        };
        let policy = Arc::new(self.policy);
        let resolved = Arc::new(Resolutions::default());
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(FilteringResolver {
                names,
                policy: policy.clone(),
                resolved: resolved.clone(),
            }))
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(EgressError::Http)?;
        let mut sensitive: Vec<HeaderName> = DEFAULT_SENSITIVE_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        sensitive.extend(self.sensitive_headers);
        Ok(GuardedClient {
            http,
            policy,
            resolved,
            caller: self.caller.map(Arc::from),
            sensitive: Arc::from(sensitive),
            max_redirects: self.max_redirects,
            body_limit: self.body_limit,
            read_timeout: self.read_timeout,
            total_timeout: self.total_timeout,
        })
    }
}

/// A response read whole (within the body cap).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GuardedResponse {
    /// The final status.
    pub status: StatusCode,
    /// The final headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The URL that answered (after redirects).
    pub url: Url,
    /// How many redirects were followed.
    pub redirects: usize,
}

/// An HTTP client for untrusted destinations. Cheap to clone.
#[derive(Clone)]
pub struct GuardedClient {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
    resolved: Arc<Resolutions>,
    caller: Option<Arc<str>>,
    sensitive: Arc<[HeaderName]>,
    max_redirects: usize,
    body_limit: usize,
    read_timeout: Duration,
    total_timeout: Duration,
}

impl std::fmt::Debug for GuardedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedClient")
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}

impl GuardedClient {
    /// A builder for a client enforcing `policy`.
    #[must_use]
    pub fn builder(policy: EgressPolicy) -> GuardedClientBuilder {
        GuardedClientBuilder {
            policy,
            resolver: None,
            caller: None,
            sensitive_headers: Vec::new(),
            max_redirects: 5,
            body_limit: 10 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
        }
    }

    /// `GET url`.
    ///
    /// # Errors
    /// See [`EgressError`].
    pub async fn get(&self, url: &str) -> Result<GuardedResponse, EgressError> {
        self.send(Method::GET, url, HeaderMap::new(), None).await
    }

    /// Sends a request, following (and checking) redirects.
    ///
    /// # Errors
    /// See [`EgressError`].
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<GuardedResponse, EgressError> {
        self.send_inner(method, url, headers, body).await
    }

    async fn send_inner(
        &self,
        mut method: Method,
        url: &str,
        mut headers: HeaderMap,
        mut body: Option<Bytes>,
    ) -> Result<GuardedResponse, EgressError> {
        // One timer for the whole request, re-armed before each wait: the read timeout bounds
        // the wait for each response head and each body chunk, the total timeout everything.
        let total_deadline = tokio::time::Instant::now() + self.total_timeout;
        let mut timer = std::pin::pin!(tokio::time::sleep_until(total_deadline));
        let read_timeout = self.read_timeout;
        let rearm = move |timer: &mut Pin<&mut tokio::time::Sleep>| {
            let next = (tokio::time::Instant::now() + read_timeout).min(total_deadline);
            timer.as_mut().reset(next);
        };
        let mut url = match Url::parse(url) {
            Ok(u) => u,
            Err(_) => {
                let decision = self.policy.evaluate_url(url);
                return Err(self.deny(decision, 0));
            }
        };
        for hop in 0..=self.max_redirects {
            // IP literals never reach the resolver, so this check is the only one they get.
            let Ok(target) = Target::from_url(&url) else {
                let decision = self.policy.evaluate_url(url.as_str());
                return Err(self.deny(decision, hop));
            };
            let (reason, floor) = self.policy.verdict(&target);
            if !self.policy.permits(reason, floor) {
                let decision = Decision::evaluate(&self.policy, Some(target), None, reason, floor);
                return Err(self.deny(decision, hop));
            }
            let verdict = Verdict {
                target,
                reason,
                floor,
            };
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(b) = &body {
                request = request.body(b.clone());
            }
            rearm(&mut timer);
            let sent = before(timer.as_mut(), request.send()).await;
            // Exactly one decision per hop is published: the resolver's denial (with the
            // request's own scheme and port), or the allowance with the addresses used.
            let sent = match sent {
                Ok(Err(error)) => match resolver_denial(&error) {
                    Some(mut denial) => {
                        denial.target = Some(verdict.target);
                        return Err(self.deny(denial, hop));
                    }
                    None => {
                        self.allow(verdict, hop);
                        return Err(EgressError::Http(error));
                    }
                },
                Ok(Ok(response)) => {
                    self.allow(verdict, hop);
                    response
                }
                Err(()) => {
                    self.allow(verdict, hop);
                    return Err(EgressError::Timeout);
                }
            };
            let mut response = sent;
            let status = response.status();
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                if hop == self.max_redirects {
                    return Err(EgressError::TooManyRedirects);
                }
                let next = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or(EgressError::InvalidRedirect)?;
                if next.origin() != url.origin() {
                    for name in self.sensitive.iter() {
                        headers.remove(name);
                    }
                }
                // 303 turns the request into a GET (a HEAD stays a HEAD); 301/302 do so for
                // a POST, as browsers and reqwest do.
                if (status == StatusCode::SEE_OTHER && method != Method::HEAD)
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && method == Method::POST)
                {
                    method = Method::GET;
                    body = None;
                    headers.remove(http::header::CONTENT_TYPE);
                    headers.remove(http::header::CONTENT_LENGTH);
                }
                url = next;
                continue;
            }
            // A body in one chunk is kept as it is; only a multi-chunk body is copied.
            let mut first: Option<Bytes> = None;
            let mut collected = BytesMut::new();
            loop {
                rearm(&mut timer);
                let chunk = before(timer.as_mut(), response.chunk())
                    .await
                    .map_err(|_| EgressError::Timeout)?;
                match chunk {
                    Ok(Some(chunk)) => {
                        let received = first.as_ref().map_or(0, Bytes::len) + collected.len();
                        if received + chunk.len() > self.body_limit {
                            return Err(EgressError::BodyTooLarge {
                                limit: self.body_limit,
                            });
                        }
                        match first.take() {
                            None if collected.is_empty() => first = Some(chunk),
                            None => collected.extend_from_slice(&chunk),
                            Some(earlier) => {
                                collected.extend_from_slice(&earlier);
                                collected.extend_from_slice(&chunk);
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(error) if error.is_timeout() => return Err(EgressError::Timeout),
                    Err(error) => return Err(EgressError::Http(error)),
                }
            }
            let body = first.unwrap_or_else(|| collected.freeze());
            return Ok(GuardedResponse {
                status,
                headers: std::mem::take(response.headers_mut()),
                body,
                url,
                redirects: hop,
            });
        }
        Err(EgressError::TooManyRedirects)
    }
}

/// What the policy said about a hop that may proceed.
struct Verdict {
    target: Target,
    reason: Reason,
    floor: bool,
}

impl GuardedClient {
    /// Publishes a denial at `hop` and turns it into the error.
    fn deny(&self, mut decision: Decision, hop: usize) -> EgressError {
        self.complete(&mut decision, hop);
        decision.publish(&self.policy);
        EgressError::Denied {
            decision: Box::new(decision),
            hop,
        }
    }

    /// Publishes the allowance of `hop`, with the addresses it connected to — built only when
    /// someone listens (a hook, or tracing at debug level), so the allowed path stays cheap.
    fn allow(&self, verdict: Verdict, hop: usize) {
        let quiet = self.policy.hooks().is_empty()
            && verdict.reason == Reason::Allowed
            && !tracing::enabled!(tracing::Level::DEBUG);
        if quiet {
            return;
        }
        let mut decision = Decision::evaluate(
            &self.policy,
            Some(verdict.target),
            None,
            verdict.reason,
            verdict.floor,
        );
        self.complete(&mut decision, hop);
        if decision.addresses.is_empty() {
            decision.addresses = match decision.target.as_ref().map(|t| &t.host) {
                Some(TargetHost::Name(name)) => self.resolved.get(name),
                Some(TargetHost::Ip(ip)) => vec![*ip],
                None => Vec::new(),
            };
        }
        decision.publish(&self.policy);
    }

    fn complete(&self, decision: &mut Decision, hop: usize) {
        decision.hop = Some(hop);
        decision.caller = self.caller.as_deref().map(str::to_owned);
    }
}

/// Runs `future` unless `timer` fires first.
async fn before<F: Future>(
    mut timer: Pin<&mut tokio::time::Sleep>,
    future: F,
) -> Result<F::Output, ()> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        timer.as_mut().poll(cx).map(|()| Err(()))
    })
    .await
}

/// The decision of the filtering resolver, if that is why reqwest failed.
fn resolver_denial(error: &reqwest::Error) -> Option<Decision> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(denied) = e.downcast_ref::<ResolveDenied>() {
            return Some((*denied.0).clone());
        }
        source = e.source();
    }
    None
}

impl tower_service::Service<http::Request<Bytes>> for GuardedClient {
    type Response = http::Response<Bytes>;
    type Error = EgressError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Bytes>) -> Self::Future {
        let client = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = (!body.is_empty()).then_some(body);
            let answer = client
                .send(parts.method, &parts.uri.to_string(), parts.headers, body)
                .await?;
            let mut response = http::Response::new(answer.body);
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            Ok(response)
        })
    }
}

/// A denial as a [`Reason`], for callers that only need the code.
impl EgressError {
    /// The policy's reason, when the error is a denial.
    #[must_use]
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::Denied { decision, .. } => Some(decision.reason),
            _ => None,
        }
    }
}
