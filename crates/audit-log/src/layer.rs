//! [`AuditLayer`] and [`Audit`]: a tower middleware that audits privileged routes.

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, request::Parts};
use rls_guard::TenantTx;
use tenant_scope::{Rejection, TenantContext};
use tower_layer::Layer;
use tower_service::Service;

use crate::event::{AuditActor, AuditEvent, Outcome, Target};
use crate::future::ResponseFuture;
use crate::sink::Queued;
use crate::{Action, AuditError, AuditLog};

type TargetFn = dyn Fn(&Parts) -> Option<Target> + Send + Sync;
type IpFn = dyn Fn(&Parts) -> Option<IpAddr> + Send + Sync;

/// A machine code for a denial, put in a response's extensions by the control that denied it
/// (e.g. `mfa_required`); the audit layer records it as the reason.
///
/// Responses built from a [`tenant_scope::Rejection`] need none: the layer reads the
/// rejection's code from the response's extensions. This is for responses built otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenialReason(pub &'static str);

/// Marks a route as privileged and audits every request to it.
///
/// Put it *after* the session and tenant layers (it reads the request's
/// [`TenantContext`](tenant_scope::TenantContext)) and *before* the route guards (MFA, step-up,
/// role checks), so their denials pass through it and are recorded:
///
/// ```text
/// session -> TenantLayer -> AuditLayer -> guards -> handler
/// ```
///
/// For each request it records one event: the route's action, the actor and tenant, the target,
/// the request id, client address and user agent, and the outcome — `allowed` for a success,
/// `denied` for 401/403 (with the code of the [`Rejection`](tenant_scope::Rejection) or the
/// [`DenialReason`] a guard put in the response's extensions, or `http_401`/`http_403`),
/// `failed` otherwise.
///
/// The handler gets an [`AuditHandle`] in the request's extensions (an extractor with feature
/// `axum`). Appending through it inside
/// the handler's own transaction makes the action and its record atomic (if the audit write
/// fails, the action rolls back); the layer then records nothing more for a success (if the
/// handler appended and still answers 4xx/5xx, the layer records that failure too: the record of
/// what the client saw). Without the handle, the layer records after the response, in a task of
/// its own (so once the handler has answered, a dropped response future still gets its record;
/// a future dropped while the handler is still running records nothing — use the handle for
/// such routes); if that fails for an allowed
/// action, the response is replaced by `503 audit_unavailable` (store unreachable) or
/// `500 audit_failed` — the action may have happened: use the handle for atomicity. A
/// privileged route reached with no tenant context is refused with `500 audit_context_missing`
/// before the handler runs: a privileged action that cannot be attributed does not run.
///
/// The request id is read from `x-request-id` (configurable); put a request-id layer that
/// replaces client-sent ids in front if ids must be trusted. Without one, the layer makes one.
#[derive(Clone)]
pub struct AuditLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    log: AuditLog,
    action: Action,
    target: Option<Arc<TargetFn>>,
    client_ip: Option<Arc<IpFn>>,
    request_id_header: HeaderName,
}

impl std::fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLayer")
            .field("action", &self.config.action)
            .finish_non_exhaustive()
    }
}

impl AuditLayer {
    /// Audits requests as `action`, writing to `log`.
    #[must_use]
    pub fn new(log: AuditLog, action: Action) -> Self {
        Self {
            config: Arc::new(Config {
                log,
                action,
                target: None,
                client_ip: None,
                request_id_header: HeaderName::from_static("x-request-id"),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// How to name the target from the request (e.g. from the path).
    #[must_use]
    pub fn with_target(
        mut self,
        target: impl Fn(&Parts) -> Option<Target> + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().target = Some(Arc::new(target));
        self
    }

    /// How to find the client's address (e.g. from axum's `ConnectInfo`, or a trusted proxy
    /// header).
    #[must_use]
    pub fn with_client_ip(
        mut self,
        client_ip: impl Fn(&Parts) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().client_ip = Some(Arc::new(client_ip));
        self
    }

    /// The request id header (default `x-request-id`).
    #[must_use]
    pub fn with_request_id_header(mut self, name: HeaderName) -> Self {
        self.config_mut().request_id_header = name;
        self
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The middleware [`AuditLayer`] builds: see there.
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("action", &self.config.action)
            .finish_non_exhaustive()
    }
}

impl Audit<()> {
    /// An [`AuditLayer`] auditing requests as `action`, writing to `log` (`Audit::layer(..)`).
    #[must_use]
    pub fn layer(log: AuditLog, action: Action) -> AuditLayer {
        AuditLayer::new(log, action)
    }
}

impl<S> Audit<S> {
    /// Wraps `inner`, auditing as `layer` says.
    #[must_use]
    pub fn new(inner: S, layer: AuditLayer) -> Self {
        Self {
            inner,
            config: layer.config,
        }
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

/// The handler's way to append the route's event inside its own transaction.
#[derive(Clone)]
pub struct AuditHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    log: AuditLog,
    template: AuditEvent,
    /// The receipt of the commit that must include what the handler appended (the latest
    /// append, when several): it counts as recorded only once that commit has succeeded.
    appended: std::sync::Mutex<Option<rls_guard::CommitReceipt>>,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle")
            .field("action", self.inner.template.action())
            .finish_non_exhaustive()
    }
}

impl AuditHandle {
    /// The route's event with `outcome`, pre-filled with tenant, actor, action, target, request
    /// id, address and user agent; add metadata or targets before appending it.
    #[must_use]
    pub fn event(&self, outcome: Outcome) -> AuditEvent {
        let mut event = self.inner.template.clone();
        event.outcome = outcome;
        event
    }

    /// Appends `event` inside the caller's tenant-bound transaction (see
    /// [`AuditLog::append`]), and makes that transaction's commit state that the queued event
    /// is there ([`rls_guard::TenantTx::check_at_commit`]): a commit that succeeds has
    /// committed the event, so the layer records nothing more for a successful response. If
    /// the transaction was rolled back (or the event rolled back to a savepoint, which fails
    /// the commit), the layer records the request itself.
    ///
    /// # Errors
    /// As [`AuditLog::append`]: roll the transaction back.
    pub async fn append(&self, tx: &mut TenantTx, event: AuditEvent) -> Result<Queued, AuditError> {
        let appended = self.inner.log.append(tx, event).await?;
        let id = i64::try_from(appended.id).map_err(|_| AuditError::TaskFailed)?;
        let check = rls_guard::CommitCheck::row_exists("audit.pending", "id", id)?;
        let receipt = tx.check_at_commit(check);
        if let Ok(mut slot) = self.inner.appended.lock() {
            *slot = Some(receipt);
        }
        Ok(appended)
    }

    /// Whether what the handler appended is committed: only the receipt of the `TenantTx`
    /// commit that stated the event was there says so. Anything else (no append, a rollback,
    /// a commit that failed or went around `TenantTx::commit`) counts as not committed, so the
    /// layer records the request itself: at worst a second record, never none.
    fn committed(&self) -> bool {
        self.inner
            .appended
            .lock()
            .ok()
            .and_then(|slot| slot.as_ref().map(rls_guard::CommitReceipt::is_committed))
            .unwrap_or(false)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let (mut parts, body) = request.into_parts();
        let Some(context) = parts.extensions.get::<TenantContext>().cloned() else {
            tracing::error!(action = %config.action, "privileged route reached without a tenant context; refused");
            return ResponseFuture::new(async { Ok(CONTEXT_MISSING.into_http()) });
        };
        let template = template(&config, &parts, &context);
        let handle = AuditHandle {
            inner: Arc::new(HandleInner {
                log: config.log.clone(),
                template,
                appended: std::sync::Mutex::new(None),
            }),
        };
        parts.extensions.insert(handle.clone());
        let request = Request::from_parts(parts, body);
        ResponseFuture::new(async move {
            let result = inner.call(request).await;
            let response = match result {
                Ok(response) => response,
                Err(error) => {
                    let event = handle.event(Outcome::failed("service_error"));
                    if let Err(e) = record_detached(&config.log, event).await {
                        tracing::error!(error = %e, "audit record of a failed request could not be written");
                    }
                    return Err(error);
                }
            };
            let status = response.status();
            if status.as_u16() < 400 && handle.committed() {
                return Ok(response);
            }
            let reason = response
                .extensions()
                .get::<DenialReason>()
                .map(|r| r.0)
                .or_else(|| {
                    response
                        .extensions()
                        .get::<Rejection>()
                        .map(Rejection::code)
                });
            let outcome = outcome_of(status, reason);
            let allowed = matches!(outcome, Outcome::Allowed);
            match record_detached(&config.log, handle.event(outcome)).await {
                Ok(_) => Ok(response),
                Err(e) if allowed => {
                    tracing::error!(error = %e, action = %config.action, "audit record could not be written; the request is answered as failed");
                    Ok(if e.is_unavailable() {
                        UNAVAILABLE.into_http()
                    } else {
                        FAILED.into_http()
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, action = %config.action, "audit record of a refusal could not be written");
                    Ok(response)
                }
            }
        })
    }
}

/// Records `event` in a task of its own: if the response future is dropped (the client went
/// away, an outer timeout fired) after the action ran, the record is still written.
async fn record_detached(log: &AuditLog, event: AuditEvent) -> Result<Queued, AuditError> {
    let log = log.clone();
    tokio::spawn(async move { log.record(event).await })
        .await
        .map_err(|_| AuditError::TaskFailed)?
}

fn template(config: &Config, parts: &Parts, context: &TenantContext) -> AuditEvent {
    let actor = context
        .actor()
        .map_or_else(AuditActor::anonymous, AuditActor::from_actor);
    let mut event = AuditEvent::new(
        context.tenant(),
        actor,
        config.action.clone(),
        Outcome::Allowed,
    );
    if let Some(target) = config.target.as_ref().and_then(|f| f(parts)) {
        event.targets.push(target);
    }
    // The request id is whatever the request-id layer in front set (strip any id a client sent
    // before that layer if ids must be trusted); without one, a fresh id is made so the record
    // can still be correlated with logs.
    let request_id = header_text(parts.headers.get(&config.request_id_header))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    event = event.with_request_id(&request_id);
    if let Some(ua) = header_text(parts.headers.get(http::header::USER_AGENT)) {
        event = event.with_user_agent(&ua);
    }
    if let Some(ip) = config.client_ip.as_ref().and_then(|f| f(parts)) {
        event = event.with_ip(ip);
    }
    event
}

/// A header as text; bytes that are not UTF-8 are replaced (and the text is encoded later).
fn header_text(value: Option<&HeaderValue>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn outcome_of(status: StatusCode, reason: Option<&'static str>) -> Outcome {
    match status.as_u16() {
        0..=399 => Outcome::Allowed,
        401 => Outcome::denied(reason.unwrap_or("http_401")),
        403 => Outcome::denied(reason.unwrap_or("http_403")),
        code => match reason {
            Some(reason) => Outcome::failed(reason),
            None => Outcome::failed(&format!("http_{code}")),
        },
    }
}

/// A privileged route reached without a tenant context.
const CONTEXT_MISSING: Rejection = Rejection::from_static(
    StatusCode::INTERNAL_SERVER_ERROR,
    "audit_context_missing",
    "this action cannot be attributed to a tenant",
);

/// The record of an allowed action could not be written: the store is unreachable.
const UNAVAILABLE: Rejection = Rejection::from_static(
    StatusCode::SERVICE_UNAVAILABLE,
    "audit_unavailable",
    "the audit log is unavailable; the action may not have been recorded",
);

/// The record of an allowed action could not be written.
const FAILED: Rejection = Rejection::from_static(
    StatusCode::INTERNAL_SERVER_ERROR,
    "audit_failed",
    "the action could not be recorded in the audit log",
);
