//! An HTTP/1.1 forward proxy that applies an [`EgressPolicy`] to every request: the way out for
//! a program that cannot be handed a [`GuardedClient`](crate::GuardedClient) (a sandboxed
//! subprocess, say) but honours `http_proxy` / `https_proxy`.
//!
//! Two request forms are served:
//!
//! - `CONNECT host:port` (HTTPS tunnelling): the destination is checked, then the proxy answers
//!   `200 Connection Established` and copies bytes both ways;
//! - absolute-form `http://` requests: the destination is checked, the request is forwarded in
//!   origin-form with `Connection: close` and hop-by-hop headers removed, and the response is
//!   copied back.
//!
//! Every destination goes through the same steps as in the guarded client: the policy's
//! decision on the normalised [`Target`], then every address the name resolves to is judged
//! against the floor (one forbidden answer denies the name), and the connection goes only to an
//! address that was judged — the name is never resolved again. Exactly one [`Decision`] per
//! request is published to the policy's hooks, whether allowed or denied. A denial is answered
//! with `403` and no connection is made.
//!
//! Anything else is refused before any decision: a request head over the size cap, a malformed
//! request line or header, an origin-form request, a request body with `Transfer-Encoding`
//! (`400`), a method a proxy does not forward (`405`). Connections are bounded by a connect
//! timeout, an idle timeout and a cap on concurrent connections (over the cap: `503`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use url::Url;

use crate::client::NameResolver;
use crate::policy::EgressPolicy;
use crate::target::{Target, TargetHost};
use crate::{Decision, Reason};

/// The largest request head (request line and headers) the proxy reads.
pub const DEFAULT_HEAD_LIMIT: usize = 16 * 1024;

/// Methods forwarded in absolute-form (`CONNECT` is handled separately).
const FORWARDED_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Headers that describe one hop and are never forwarded (the `Host` header is rewritten).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

const MAX_HEADERS: usize = 100;

/// An egress-checking HTTP/1.1 forward proxy. Cheap to clone; see the module documentation.
#[derive(Clone)]
pub struct EgressProxy {
    policy: Arc<EgressPolicy>,
    resolver: Arc<dyn NameResolver>,
    caller: Option<Arc<str>>,
    hooks: Vec<Arc<dyn crate::DecisionHook>>,
    head_limit: usize,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("policy", &self.policy.name())
            .field("caller", &self.caller)
            .field("hooks", &self.hooks.len())
            .field("head_limit", &self.head_limit)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl EgressProxy {
    /// A proxy enforcing `policy`, resolving names with `resolver`. Defaults: 16 KiB request
    /// head, 5 s connect timeout, 60 s idle timeout, 64 concurrent connections.
    #[must_use]
    pub fn new(policy: EgressPolicy, resolver: Arc<dyn NameResolver>) -> Self {
        Self {
            policy: Arc::new(policy),
            resolver,
            caller: None,
            hooks: Vec::new(),
            head_limit: DEFAULT_HEAD_LIMIT,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
        }
    }

    /// Name the tool or agent this proxy serves: it is in every decision.
    #[must_use]
    pub fn caller(mut self, caller: &str) -> Self {
        self.caller = Some(Arc::from(caller));
        self
    }

    /// Also publish every decision of this proxy to `hook`, after the policy's own hooks: a
    /// caller that serves one run (a tool, an agent's turn) collects that run's decisions here.
    #[must_use]
    pub fn with_hook(mut self, hook: Arc<dyn crate::DecisionHook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// The policy's name.
    #[must_use]
    pub fn policy_name(&self) -> &str {
        self.policy.name()
    }

    /// The largest request head read (default 16 KiB); a larger one is answered with `400`.
    #[must_use]
    pub const fn head_limit(mut self, bytes: usize) -> Self {
        self.head_limit = bytes;
        self
    }

    /// How long connecting to a destination may take (default 5 s).
    #[must_use]
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a connection may stay without traffic in either direction, including while the
    /// request head is read (default 60 s).
    #[must_use]
    pub const fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// At most `n` client connections at once (default 64); more are answered with `503`.
    #[must_use]
    pub const fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Serves proxy requests on `listener` until the returned future is dropped (or the task
    /// running it aborted). Each client connection runs in its own task.
    ///
    /// # Errors
    /// Never returns in normal operation; transient accept errors (out of file descriptors)
    /// are retried after a pause.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let this = Arc::new(self);
        // Connection tasks are aborted when the server stops.
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "egress proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Answered from a short-lived task (one second at most) that also reads what
                // the client already sent, so the close is not a reset.
                tasks.spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        stream
                            .write_all(&response(503, "too many connections\n"))
                            .await?;
                        stream.shutdown().await?;
                        let mut sink = [0u8; 4096];
                        while stream.read(&mut sink).await? > 0 {}
                        Ok::<(), io::Error>(())
                    })
                    .await;
                });
                continue;
            };
            let this = this.clone();
            tasks.spawn(async move {
                let _permit = permit;
                if let Err(error) = this.handle(stream).await {
                    tracing::debug!(%error, "egress proxy: connection ended");
                }
            });
        }
    }

    /// Starts [`serve`](Self::serve) on the current tokio runtime; the proxy stops when the
    /// returned handle is dropped.
    #[must_use]
    pub fn spawn(self, listener: TcpListener) -> ProxyHandle {
        ProxyHandle(tokio::spawn(async move {
            let _ = self.serve(listener).await;
        }))
    }

    async fn handle(&self, mut client: TcpStream) -> io::Result<()> {
        let (head, leftover) = match self.read_head(&mut client).await {
            Ok(read) => read,
            Err(HeadError::Io(e)) => return Err(e),
            Err(HeadError::Bad(why)) => return refuse(&mut client, 400, why).await,
        };
        let request = match parse_request(&head) {
            Ok(r) => r,
            Err((status, why)) => return refuse(&mut client, status, why).await,
        };
        let target = match &request.kind {
            Kind::Connect { target } | Kind::Forward { target, .. } => target.clone(),
        };
        let addresses = match self.decide(target).await {
            Ok(addresses) => addresses,
            Err(Refusal::Denied(code)) => {
                let body = format!("egress denied: {code}\n");
                return refuse(&mut client, 403, &body).await;
            }
            Err(Refusal::Unresolved) => {
                return refuse(&mut client, 502, "name resolution failed\n").await;
            }
        };
        let port = match &request.kind {
            Kind::Connect { target } | Kind::Forward { target, .. } => target.port,
        };
        let Some(mut upstream) = self.connect(&addresses, port).await else {
            return refuse(&mut client, 502, "connection to the destination failed\n").await;
        };
        match request.kind {
            Kind::Connect { .. } => {
                self.write(&mut client, b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await?;
                self.write(&mut upstream, &leftover).await?;
                self.tunnel(client, upstream).await
            }
            Kind::Forward {
                head: forwarded,
                content_length,
                ..
            } => {
                self.write(&mut upstream, forwarded.as_bytes()).await?;
                let first = leftover.len().min(content_length);
                self.write(&mut upstream, &leftover[..first]).await?;
                let mut rest = content_length - first;
                let mut buf = vec![0u8; 16 * 1024];
                while rest > 0 {
                    let want = rest.min(buf.len());
                    let n = self.read(&mut client, &mut buf[..want]).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.write(&mut upstream, &buf[..n]).await?;
                    rest -= n;
                }
                // Only the response flows from here: nothing more the client sends is read.
                let (mut up_read, _up_write) = upstream.split();
                let activity = Activity::new();
                pump(&mut up_read, &mut client, &activity, self.idle_timeout).await
            }
        }
    }

    /// The decision for `target`: the policy, then every resolved address. Publishes exactly
    /// one decision and returns the checked addresses to connect to.
    async fn decide(&self, target: Target) -> Result<Vec<IpAddr>, Refusal> {
        let (reason, floor) = self.policy.verdict(&target);
        let mut decision = Decision::evaluate(&self.policy, Some(target), None, reason, floor);
        decision.caller = self.caller.as_deref().map(str::to_owned);
        if !decision.allowed {
            self.publish(&decision);
            return Err(Refusal::Denied(reason.code()));
        }
        let Some(target) = decision.target.clone() else {
            return Err(Refusal::Denied(Reason::UnparsableUrl.code()));
        };
        let addresses = match &target.host {
            TargetHost::Ip(ip) => vec![*ip],
            TargetHost::Name(name) => {
                let looked_up =
                    tokio::time::timeout(self.connect_timeout, self.resolver.lookup(name)).await;
                match looked_up {
                    Ok(Ok(addresses)) if !addresses.is_empty() => addresses,
                    _ => {
                        self.publish(&decision);
                        return Err(Refusal::Unresolved);
                    }
                }
            }
        };
        // One forbidden answer denies the name: a mix of public and private answers is how
        // rebinding attacks hedge.
        if matches!(target.host, TargetHost::Name(_)) {
            for ip in &addresses {
                let mut denial = self.policy.evaluate_address(&target, *ip);
                if !denial.allowed {
                    denial.addresses.clone_from(&addresses);
                    denial.caller.clone_from(&decision.caller);
                    self.publish(&denial);
                    return Err(Refusal::Denied(denial.reason.code()));
                }
            }
        }
        decision.addresses.clone_from(&addresses);
        self.publish(&decision);
        Ok(addresses)
    }

    /// Publishes `decision` to the policy's hooks, then this proxy's.
    fn publish(&self, decision: &Decision) {
        decision.publish(&self.policy);
        for hook in &self.hooks {
            hook.record(decision);
        }
    }

    /// Connects to the first checked address that answers.
    async fn connect(&self, addresses: &[IpAddr], port: u16) -> Option<TcpStream> {
        for ip in addresses {
            let addr = SocketAddr::new(*ip, port);
            if let Ok(Ok(stream)) =
                tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await
            {
                return Some(stream);
            }
        }
        None
    }

    async fn read_head(&self, client: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.read(client, &mut chunk).await.map_err(HeadError::Io)?;
            if n == 0 {
                return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            let searched_from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&buf[searched_from..], b"\r\n\r\n") {
                let end = searched_from + end + 4;
                if end > self.head_limit {
                    return Err(HeadError::Bad("request head too large\n"));
                }
                let leftover = buf.split_off(end);
                return Ok((buf, leftover));
            }
            if buf.len() > self.head_limit {
                return Err(HeadError::Bad("request head too large\n"));
            }
        }
    }

    async fn read<R: AsyncRead + Unpin>(&self, r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        tokio::time::timeout(self.idle_timeout, r.read(buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W, buf: &[u8]) -> io::Result<()> {
        tokio::time::timeout(self.idle_timeout, w.write_all(buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    /// Copies both ways until both sides have finished or nothing moved for the idle timeout.
    async fn tunnel(&self, mut client: TcpStream, mut upstream: TcpStream) -> io::Result<()> {
        let activity = Activity::new();
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let (a, b) = futures::future::join(
            pump(&mut cr, &mut uw, &activity, self.idle_timeout),
            pump(&mut ur, &mut cw, &activity, self.idle_timeout),
        )
        .await;
        a.and(b)
    }
}

/// Stops the proxy (and its connections) when dropped.
#[derive(Debug)]
pub struct ProxyHandle(tokio::task::JoinHandle<()>);

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Refusal {
    Denied(&'static str),
    Unresolved,
}

enum HeadError {
    Io(io::Error),
    Bad(&'static str),
}

/// The last time either direction of a connection moved bytes.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Copies `r` to `w` until end of stream (then shuts `w` down), an error, or the connection
/// has been idle in both directions for `idle`.
async fn pump<R, W>(r: &mut R, w: &mut W, activity: &Activity, idle: Duration) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(Ok(0)) => {
                let _ = w.shutdown().await;
                return Ok(());
            }
            Ok(Ok(n)) => {
                activity.touch();
                tokio::time::timeout(idle, w.write_all(&buf[..n]))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                activity.touch();
            }
            Ok(Err(e)) => return Err(e),
            Err(_) if activity.idle_for() >= idle => {
                let _ = w.shutdown().await;
                return Err(io::ErrorKind::TimedOut.into());
            }
            Err(_) => {}
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason_phrase(status),
        body.len()
    )
    .into_bytes()
}

async fn refuse(client: &mut TcpStream, status: u16, body: &str) -> io::Result<()> {
    let answer = response(status, body);
    tokio::time::timeout(Duration::from_secs(5), async {
        client.write_all(&answer).await?;
        client.shutdown().await
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// A parsed proxy request.
struct Request {
    kind: Kind,
}

enum Kind {
    /// `CONNECT host:port`.
    Connect { target: Target },
    /// An absolute-form `http://` request, rewritten in origin-form.
    Forward {
        target: Target,
        head: String,
        content_length: usize,
    },
}

type Bad = (u16, &'static str);

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a request head (ending in an empty line) strictly.
fn parse_request(head: &[u8]) -> Result<Request, Bad> {
    const MALFORMED: Bad = (400, "malformed request\n");
    let head = head.strip_suffix(b"\r\n\r\n").ok_or(MALFORMED)?;
    // Only CRLF line ends; no bare CR or LF, no NUL or other controls (but tab in values).
    let text = std::str::from_utf8(head).map_err(|_| MALFORMED)?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or(MALFORMED)?;
    if !request_line
        .bytes()
        .all(|b| (0x21..0x7f).contains(&b) || b == b' ')
    {
        return Err(MALFORMED);
    }
    let mut parts = request_line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    if method.is_empty() || !method.bytes().all(is_tchar) || uri.is_empty() {
        return Err(MALFORMED);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(MALFORMED);
    }
    let mut headers: Vec<(String, &str)> = Vec::new();
    for line in lines {
        if line.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(MALFORMED);
        }
        // No obsolete line folding, no space before the colon.
        let (name, value) = line.split_once(':').ok_or(MALFORMED)?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(MALFORMED);
        }
        headers.push((name.to_ascii_lowercase(), value.trim_matches([' ', '\t'])));
        if headers.len() > MAX_HEADERS {
            return Err((400, "too many headers\n"));
        }
    }
    if method == "CONNECT" {
        return Ok(Request {
            kind: Kind::Connect {
                target: connect_target(uri)?,
            },
        });
    }
    if !FORWARDED_METHODS.contains(&method) {
        return Err((405, "method not allowed\n"));
    }
    forward(method, uri, version, &headers).map(|kind| Request { kind })
}

/// `host:port` of a CONNECT request, port required.
fn connect_target(authority: &str) -> Result<Target, Bad> {
    const BAD: Bad = (400, "CONNECT needs host:port\n");
    let valid = authority
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    let (host, port) = authority.rsplit_once(':').ok_or(BAD)?;
    if !valid || host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD);
    }
    let port: u16 = port.parse().map_err(|_| BAD)?;
    if port == 0 {
        return Err(BAD);
    }
    let mut target = Target::parse(&format!("https://{host}:{port}/")).map_err(|_| BAD)?;
    // The URL parser drops a default port; the tunnel goes to the port that was asked for.
    target.port = port;
    Ok(target)
}

/// An absolute-form `http://` request, rewritten for the origin.
fn forward(
    method: &str,
    uri: &str,
    version: &str,
    headers: &[(String, &str)],
) -> Result<Kind, Bad> {
    if !uri.starts_with("http://") {
        return Err((400, "only absolute-form http:// requests and CONNECT\n"));
    }
    let url = Url::parse(uri).map_err(|_| (400, "malformed URL\n"))?;
    if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
        return Err((400, "malformed URL\n"));
    }
    let target = Target::from_url(&url).map_err(|_| (400, "malformed URL\n"))?;
    let mut content_length: Option<usize> = None;
    let mut listed: Vec<String> = Vec::new();
    for (name, value) in headers {
        match name.as_str() {
            "transfer-encoding" => return Err((400, "transfer-encoding not supported\n")),
            "content-length" => {
                let valid = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                let n: usize = value
                    .parse()
                    .ok()
                    .filter(|_| valid)
                    .ok_or((400, "bad content-length\n"))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err((400, "bad content-length\n"));
                }
                content_length = Some(n);
            }
            "connection" => listed.extend(
                value
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty()),
            ),
            _ => {}
        }
    }
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut head = format!("{method} {path} {version}\r\nHost: {host}\r\n");
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) || listed.contains(name) {
            continue;
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    Ok(Kind::Forward {
        target,
        head,
        content_length: content_length.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Result<Request, Bad> {
        parse_request(head.as_bytes())
    }

    #[test]
    fn strict_parsing() {
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET http://a.example/ HTTP/2\r\n\r\n",
            "GET  http://a.example/ HTTP/1.1\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nX: a\nY: b\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nX : a\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\n folded\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nX: a\0b\r\n\r\n",
            "GET http://u:p@a.example/ HTTP/1.1\r\n\r\n",
            "GET https://a.example/ HTTP/1.1\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "CONNECT a.example HTTP/1.1\r\n\r\n",
            "CONNECT a.example:0 HTTP/1.1\r\n\r\n",
            "CONNECT a.example:443/x HTTP/1.1\r\n\r\n",
            "CONNECT u@a.example:443 HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse(bad).err().map(|e| e.0), Some(400), "{bad:?}");
        }
        assert_eq!(
            parse("TRACE http://a.example/ HTTP/1.1\r\n\r\n")
                .err()
                .map(|e| e.0),
            Some(405)
        );
    }

    #[test]
    fn forwarded_head_is_origin_form_without_hop_by_hop_headers() {
        let Ok(Request {
            kind: Kind::Forward { head, target, .. },
        }) = parse(
            "GET http://A.example:8080/p?q=1 HTTP/1.1\r\nHost: evil\r\nProxy-Authorization: x\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nAccept: */*\r\n\r\n",
        )
        else {
            unreachable!("parses");
        };
        assert_eq!(target.port, 8080);
        assert_eq!(
            head,
            "GET /p?q=1 HTTP/1.1\r\nHost: a.example:8080\r\naccept: */*\r\nConnection: close\r\n\r\n"
        );
        let Ok(Request {
            kind: Kind::Connect { target },
        }) = parse("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
        else {
            unreachable!("parses");
        };
        assert_eq!((target.host_text(), target.port), ("a.example".into(), 443));
        let Ok(Request {
            kind: Kind::Connect { target },
        }) = parse("CONNECT [::1]:8443 HTTP/1.1\r\n\r\n")
        else {
            unreachable!("parses");
        };
        assert_eq!((target.host_text(), target.port), ("::1".into(), 8443));
    }
}
