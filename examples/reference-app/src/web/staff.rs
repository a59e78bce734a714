//! The staff console: the approval queue and the audit viewer of any workspace. A staff member
//! opens a workspace for a visit with one cross-tenant grant and a reason (sent in a POST,
//! audited in that workspace's chain before access); every console page and decision uses that
//! grant until it expires or the visit is closed.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use magic_auth::Session;
use tenant_scope::{Actor, ActorKind, Origin, TenantContext};
use tool_sandbox::{ProposalStatus, SandboxError};

use super::auth::parse_id;
use super::{Nav, When, internal, message, redirect, render, when};
use crate::agent;
use crate::state::{AppState, TenantInfo, Visit};

struct Pending {
    id: String,
    tool: String,
    version: u32,
    arguments: String,
    flags: String,
    sources: String,
    warnings: String,
    digest: String,
    created: When,
}

#[derive(Template)]
#[template(path = "approvals.html")]
struct ApprovalsPage {
    nav: Nav,
    /// The page the visit form comes back to.
    next: &'static str,
    tenants: Vec<String>,
    visit: Option<VisitView>,
    proposals: Vec<Pending>,
    error: Option<String>,
}

pub(super) enum Denied {
    NotStaff,
    Page(Response),
}

/// Resolves the workspace and grants the staff member a context in it, for `reason`.
pub(super) async fn grant(
    state: &AppState,
    session: &Session,
    slug: &str,
    reason: &str,
) -> Result<(TenantInfo, TenantContext), Denied> {
    if session.kind != ActorKind::Staff {
        return Err(Denied::NotStaff);
    }
    let tenant = match state.tenant_by_slug(slug).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(Denied::Page(message(
                state,
                Some(session),
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such workspace.",
                Some(("/staff/approvals", "Back")),
            )));
        }
        Err(e) => return Err(Denied::Page(internal(state, &e))),
    };
    match state
        .cross_tenant
        .grant(&session.actor(), tenant.id, reason)
        .await
    {
        Ok(context) => Ok((tenant, context)),
        Err(_) => Err(Denied::Page(message(
            state,
            Some(session),
            StatusCode::FORBIDDEN,
            "Access refused",
            "Opening another workspace needs a reason of at least 10 characters, and it is recorded in that workspace's audit log.",
            Some(("/staff/approvals", "Back")),
        ))),
    }
}

fn refused(state: &AppState, session: &Session, denied: Denied) -> Response {
    match denied {
        // Said to a customer's member: nothing about who else may open it.
        Denied::NotStaff => message(
            state,
            Some(session),
            StatusCode::FORBIDDEN,
            "Not available",
            "This page is not part of your workspace.",
            Some(("/notes", "Back to your notes")),
        ),
        Denied::Page(page) => page,
    }
}

async fn tenant_slugs(state: &AppState) -> Vec<String> {
    state
        .tenants()
        .await
        .map(|t| {
            t.into_iter()
                .map(|t| t.slug)
                .filter(|s| s != "ops")
                .collect()
        })
        .unwrap_or_default()
}

/// Which console page a visit opens on.
#[derive(Clone, Copy)]
enum ConsolePage {
    Approvals,
    Audit,
}

impl ConsolePage {
    fn from_form(form: &HashMap<String, String>) -> Self {
        match form.get("next").map(String::as_str) {
            Some("audit") => Self::Audit,
            _ => Self::Approvals,
        }
    }

    const fn path(self) -> &'static str {
        match self {
            Self::Approvals => "/staff/approvals",
            Self::Audit => "/staff/audit",
        }
    }
}

/// What a console page says about the open visit.
pub(super) struct VisitView {
    tenant: String,
    reason: String,
    until: When,
}

impl VisitView {
    fn of(visit: &Visit) -> Self {
        Self {
            tenant: visit.tenant.slug.clone(),
            reason: match visit.context.origin() {
                Origin::CrossTenant { reason } => reason.to_string(),
                _ => String::new(),
            },
            until: visit
                .context
                .expires_at()
                .map(|at| when(time::OffsetDateTime::from(at)))
                .unwrap_or_default(),
        }
    }
}

/// Who is not staff: refused before anything about a workspace is looked at.
struct NotStaff;

/// The session's open visit, when the member is staff.
fn visit_of(state: &AppState, session: &Session) -> Result<Option<Visit>, NotStaff> {
    if session.kind != ActorKind::Staff {
        return Err(NotStaff);
    }
    Ok(state.visits.get(session.id))
}

/// `POST /staff/visit` (`tenant`, `reason`, `next`): opens a workspace for this console visit
/// with one audited cross-tenant grant, then shows the page asked for. The reason travels in
/// the body, never in a URL (URLs end up in logs and histories).
pub(super) async fn open_visit(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let next = ConsolePage::from_form(&form);
    let slug = form.get("tenant").map_or("", String::as_str);
    let reason = form.get("reason").map_or("", String::as_str);
    match grant(&state, &session, slug, reason).await {
        Ok((tenant, context)) => {
            state.visits.open(session.id, Visit { tenant, context });
            redirect(&state, next.path())
        }
        Err(denied) => refused(&state, &session, denied),
    }
}

/// `POST /staff/visit/end`: closes the visit (its grant is not used again).
pub(super) async fn end_visit(State(state): State<AppState>, session: Session) -> Response {
    if session.kind != ActorKind::Staff {
        return refused(&state, &session, Denied::NotStaff);
    }
    state.visits.close(session.id);
    redirect(&state, "/staff/approvals")
}

async fn queue_page(
    state: &AppState,
    session: &Session,
    outcome: Option<Result<String, String>>,
) -> Response {
    let visit = match visit_of(state, session) {
        Ok(v) => v,
        Err(NotStaff) => return refused(state, session, Denied::NotStaff),
    };
    let status = match &outcome {
        Some(Err(_)) => StatusCode::CONFLICT,
        _ => StatusCode::OK,
    };
    let error = outcome.map(|o| o.unwrap_or_else(|e| e));
    let mut page = ApprovalsPage {
        nav: Nav::of(state, Some(session)),
        next: "approvals",
        tenants: tenant_slugs(state).await,
        visit: visit.as_ref().map(VisitView::of),
        proposals: Vec::new(),
        error,
    };
    if let Some(visit) = visit {
        let proposals = match state
            .gate
            .proposals(&visit.context, Some(ProposalStatus::Pending))
            .await
        {
            Ok(p) => p,
            Err(e) => return internal(state, &e),
        };
        page.proposals = proposals
            .into_iter()
            .map(|p| Pending {
                id: p.id.to_string(),
                tool: p.tool.clone(),
                version: p.tool_version,
                arguments: serde_json::from_str::<serde_json::Value>(&p.arguments)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or_else(|_| p.arguments.clone()),
                flags: p
                    .flags
                    .as_array()
                    .map(|flags| {
                        flags
                            .iter()
                            .map(|f| {
                                format!(
                                    "{} ({})",
                                    f["pointer"].as_str().unwrap_or("?"),
                                    f["provenance"].as_str().unwrap_or("?")
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                sources: p.taint_sources.join(", "),
                warnings: p.warnings.join(", "),
                digest: p.digest_hex(),
                created: when(p.created_at),
            })
            .collect();
    }
    render(status, &page)
}

pub(super) async fn approvals(State(state): State<AppState>, session: Session) -> Response {
    queue_page(&state, &session, None).await
}

/// The visit a decision on `slug` acts through: the open visit of that workspace, or a
/// refusal (a decision never opens a workspace by itself).
fn visit_for(state: &AppState, session: &Session, slug: &str) -> Result<Visit, Box<Response>> {
    match visit_of(state, session) {
        Ok(Some(visit)) if visit.tenant.slug == slug => Ok(visit),
        Ok(_) => Err(Box::new(message(
            state,
            Some(session),
            StatusCode::CONFLICT,
            "Open the workspace first",
            "This workspace is not open in your console (or its visit has ended). Open it \
             again with a reason; nothing was decided.",
            Some(("/staff/approvals", "Approval queue")),
        ))),
        Err(NotStaff) => Err(Box::new(refused(state, session, Denied::NotStaff))),
    }
}

pub(super) fn refusal_text(e: &SandboxError) -> String {
    match e {
        SandboxError::ApprovalRefused(r) => match r.code() {
            "step_up_required" => {
                "Confirm it is you first: your last code check is too old.".to_owned()
            }
            "proposing_session" | "self_approval" => {
                "You cannot approve an action you asked for.".to_owned()
            }
            "not_pending" => "This proposal was already decided.".to_owned(),
            "expired" => "This proposal has expired.".to_owned(),
            "digest_mismatch" => {
                "The proposal changed since you opened it; review it again.".to_owned()
            }
            other => format!("Refused: {other}."),
        },
        SandboxError::NoSuchProposal => "There is no such proposal in this workspace.".to_owned(),
        _ => "The approval could not be recorded; nothing was approved.".to_owned(),
    }
}

pub(super) async fn approve(
    State(state): State<AppState>,
    session: Session,
    Path((slug, id)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let visit = match visit_for(&state, &session, &slug) {
        Ok(v) => v,
        Err(refusal) => return *refusal,
    };
    let (Some(id), Some(digest)) = (
        parse_id(&id),
        form.get("digest")
            .and_then(|d| hex::decode(d).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok()),
    ) else {
        let malformed = Some(Err("Malformed approval.".to_owned()));
        return queue_page(&state, &session, malformed).await;
    };
    let outcome = match state
        .gate
        .approve(&visit.context, &session, id, &digest)
        .await
    {
        Ok(proposal) => match run_approved(&state, &visit.tenant, &proposal).await {
            Ok(run) => Ok(match run.result {
                Ok(_) => format!("Approved. {} ran.", proposal.tool),
                Err(e) => format!("Approved. {} failed: {}.", proposal.tool, e.code()),
            }),
            Err(e) => Err(refusal_text(&e)),
        },
        Err(e) => Err(refusal_text(&e)),
    };
    queue_page(&state, &session, Some(outcome)).await
}

pub(super) async fn reject(
    State(state): State<AppState>,
    session: Session,
    Path((slug, id)): Path<(String, String)>,
) -> Response {
    let visit = match visit_for(&state, &session, &slug) {
        Ok(v) => v,
        Err(refusal) => return *refusal,
    };
    let Some(id) = parse_id(&id) else {
        let malformed = Some(Err("Malformed request.".to_owned()));
        return queue_page(&state, &session, malformed).await;
    };
    let note = match state
        .gate
        .reject(&visit.context, &session, id, "rejected by staff")
        .await
    {
        Ok(_) => Ok("Rejected.".to_owned()),
        Err(e) => Err(refusal_text(&e)),
    };
    queue_page(&state, &session, Some(note)).await
}

/// How many events the audit viewer shows per page.
const AUDIT_PAGE: u32 = 50;

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    next: &'static str,
    tenants: Vec<String>,
    visit: Option<VisitView>,
    status: String,
    filter: AuditFilter,
    events: Vec<AuditRow>,
    /// The query string of the next (older) page, when there is one.
    older: Option<String>,
    error: Option<String>,
}

/// The viewer's filters as typed (shown again in the form).
#[derive(Default)]
struct AuditFilter {
    action: String,
    actor: String,
    since: String,
    until: String,
}

impl AuditFilter {
    fn of(q: &HashMap<String, String>) -> Self {
        let field = |name: &str| q.get(name).map_or("", |v| v.trim()).to_owned();
        Self {
            action: field("action"),
            actor: field("actor"),
            since: field("since"),
            until: field("until"),
        }
    }

    /// The query these filters select, or what is wrong with one of them.
    fn query(&self, tenant: tenant_scope::TenantId) -> Result<audit_log::AuditQuery, String> {
        let mut query = audit_log::AuditQuery::new(tenant).limit(AUDIT_PAGE);
        if !self.action.is_empty() {
            let action = audit_log::Action::new(&self.action)
                .map_err(|_| "That is not an action name.".to_owned())?;
            query = query.with_action(&action);
        }
        if !self.actor.is_empty() {
            let actor = parse_id(&self.actor).ok_or("The actor is an id (a UUID).")?;
            query = query.with_actor(actor);
        }
        if let Some(day) = day(&self.since)? {
            query = query.since(day.midnight().assume_utc());
        }
        if let Some(day) = day(&self.until)? {
            let next = day.next_day().ok_or("That date is out of range.")?;
            query = query.until(next.midnight().assume_utc());
        }
        Ok(query)
    }

    /// The filters as a query string, for the next page's link.
    fn to_query(&self, before: u64) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("action", &self.action),
            ("actor", &self.actor),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !value.is_empty() {
                query.append_pair(name, value);
            }
        }
        query.append_pair("before", &before.to_string());
        query.finish()
    }
}

/// A date typed as `YYYY-MM-DD` (what a date input sends); empty is none.
fn day(raw: &str) -> Result<Option<time::Date>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    let invalid = || "A date is written YYYY-MM-DD.".to_owned();
    let mut parts = raw.splitn(3, '-').map(str::parse::<u32>);
    let (Some(Ok(year)), Some(Ok(month)), Some(Ok(day))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(invalid)?;
    let (Ok(year), Ok(day)) = (i32::try_from(year), u8::try_from(day)) else {
        return Err(invalid());
    };
    time::Date::from_calendar_date(year, month, day)
        .map(Some)
        .map_err(|_| invalid())
}

struct AuditRow {
    seq: u64,
    when: When,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    reason: String,
}

impl AuditRow {
    /// The row for `event`, naming its actor from `names` (the workspace's members) when it
    /// is one of them; staff and agents by kind and a short id.
    fn of(event: &audit_log::StoredEvent, names: &HashMap<uuid::Uuid, String>) -> Self {
        let record = event.record_json().unwrap_or_default();
        let actor = match event.actor_id {
            Some(id) => names.get(&id).cloned().unwrap_or_else(|| {
                let short: String = id.to_string().chars().take(8).collect();
                format!("{} {short}", event.actor_kind)
            }),
            None => event.actor_kind.clone(),
        };
        let target = record["targets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {}",
                            t["kind"].as_str().unwrap_or("?"),
                            t["id"].as_str().unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        Self {
            seq: event.seq,
            when: when(event.occurred_at),
            actor,
            action: event.action.clone(),
            target,
            outcome: event.outcome.clone(),
            reason: record["outcome"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// `GET /staff/audit`: the open workspace's audit log, newest first, filtered by action,
/// actor and day, a page at a time (`before` is the position the page starts before).
pub(super) async fn audit(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let visit = match visit_of(&state, &session) {
        Ok(v) => v,
        Err(NotStaff) => return refused(&state, &session, Denied::NotStaff),
    };
    let filter = AuditFilter::of(&q);
    let mut page = AuditPage {
        nav: Nav::of(&state, Some(&session)),
        next: "audit",
        tenants: tenant_slugs(&state).await,
        visit: visit.as_ref().map(VisitView::of),
        status: String::new(),
        events: Vec::new(),
        older: None,
        error: None,
        filter,
    };
    let Some(visit) = visit else {
        return render(StatusCode::OK, &page);
    };
    let tenant = visit.tenant.id;
    let keys = audit_log::TrustedKeys::new().with(state.checkpoints.verifying_key());
    // The checkpoints kept outside the database count too: deleting the newest events and
    // the stored checkpoints together does not hide the truncation.
    let external = match crate::checkpoints::load(&state.checkpoint_file, tenant) {
        Ok(c) => c,
        Err(e) => return internal(&state, &e),
    };
    page.status = match audit_log::verify(&state.raw, tenant, &keys, &external).await {
        Ok(report) if report.is_intact() && report.pending > 0 => format!(
            "chain verified, {} events intact, {} not yet chained",
            report.events, report.pending
        ),
        Ok(report) if report.is_intact() => {
            format!("chain verified, {} events intact", report.events)
        }
        Ok(report) => format!("CHAIN BROKEN: {report:?}"),
        Err(e) => return internal(&state, &e),
    };
    let mut query = match page.filter.query(tenant) {
        Ok(query) => query,
        Err(error) => {
            page.error = Some(error);
            return render(StatusCode::BAD_REQUEST, &page);
        }
    };
    if let Some(before) = q.get("before").and_then(|b| b.parse::<u64>().ok()) {
        query = query.before(before);
    }
    let names: HashMap<uuid::Uuid, String> =
        match super::admin::member_rows(&state, &visit.context).await {
            Ok(rows) => rows
                .into_iter()
                .map(|(id, name, _, _)| (id, name))
                .collect(),
            Err(e) => return internal(&state, &e),
        };
    match query.fetch(&state.raw).await {
        Ok(events) => {
            page.events = events.iter().map(|e| AuditRow::of(e, &names)).collect();
            let full = page.events.len() == AUDIT_PAGE as usize;
            page.older = page
                .events
                .last()
                .filter(|last| full && last.seq > 1)
                .map(|last| page.filter.to_query(last.seq));
        }
        Err(e) => return internal(&state, &e),
    }
    render(StatusCode::OK, &page)
}

/// Runs an approved proposal now: consumes the approval (once) as the workspace's assistant,
/// with exactly the approved arguments.
pub(super) async fn run_approved(
    state: &AppState,
    tenant: &TenantInfo,
    proposal: &tool_sandbox::Proposal,
) -> Result<tool_sandbox::ToolRun, SandboxError> {
    let assistant = Actor::new(ActorKind::Agent, tenant.assistant, tenant.id);
    let policy = agent::policy(&assistant)?;
    let ctx = agent::assistant_context(&assistant)?;
    let arguments: serde_json::Value =
        serde_json::from_str(&proposal.arguments).map_err(|_| SandboxError::CorruptProposal)?;
    let approved = state
        .gate
        .consume(&ctx, &policy, proposal.id, &arguments)
        .await?;
    state.gate.execute(approved).await
}
