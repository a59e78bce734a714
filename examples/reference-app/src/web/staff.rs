//! The staff console: the approval queue and the audit viewer of any workspace, each opened
//! through a cross-tenant grant with a reason (audited in that workspace's chain before access).

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use magic_auth::Session;
use tenant_scope::{Actor, ActorKind, TenantContext};
use tool_sandbox::{ProposalStatus, SandboxError};

use super::auth::parse_id;
use super::{Nav, internal, message, render};
use crate::agent;
use crate::state::{AppState, TenantInfo};

struct Pending {
    id: String,
    tool: String,
    version: u32,
    arguments: String,
    flags: String,
    sources: String,
    warnings: String,
    digest: String,
    created: String,
}

#[derive(Template)]
#[template(path = "approvals.html")]
struct ApprovalsPage {
    nav: Nav,
    tenants: Vec<String>,
    tenant: Option<String>,
    reason: String,
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

async fn queue_page(
    state: &AppState,
    session: &Session,
    slug: Option<&str>,
    reason: &str,
    outcome: Option<Result<String, String>>,
) -> Response {
    let tenants = tenant_slugs(state).await;
    let status = match &outcome {
        Some(Err(_)) => StatusCode::CONFLICT,
        _ => StatusCode::OK,
    };
    let error = outcome.map(|o| o.unwrap_or_else(|e| e));
    let mut page = ApprovalsPage {
        nav: Nav::of(state, Some(session)),
        tenants,
        tenant: None,
        reason: reason.to_owned(),
        proposals: Vec::new(),
        error,
    };
    if session.kind != ActorKind::Staff {
        return refused(state, session, Denied::NotStaff);
    }
    if let Some(slug) = slug {
        let (tenant, context) = match grant(state, session, slug, reason).await {
            Ok(g) => g,
            Err(d) => return refused(state, session, d),
        };
        let proposals = match state
            .gate
            .proposals(&context, Some(ProposalStatus::Pending))
            .await
        {
            Ok(p) => p,
            Err(e) => return internal(state, &e),
        };
        page.tenant = Some(tenant.slug);
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
                created: p.created_at.to_string(),
            })
            .collect();
    }
    render(status, &page)
}

/// A cross-tenant grant on a `GET` (the console's tenant pickers) must come from the console's
/// own pages: a link on another site (`Sec-Fetch-Site: cross-site` or `same-site`) would make
/// a signed-in staff member's browser record a grant with a reason someone else wrote. Typed
/// URLs and bookmarks (`none`), and clients without fetch metadata, are not cross-site.
fn cross_site_grant(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Option<Response> {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    (q.contains_key("tenant") && !matches!(site, "same-origin" | "none")).then(|| {
        message(
            state,
            Some(session),
            StatusCode::FORBIDDEN,
            "Open the console from its own pages",
            "A cross-tenant view was requested from another site. Nothing was granted; pick the \
             workspace and give your reason on the console itself.",
            Some(("/staff/approvals", "Approval queue")),
        )
    })
}

pub(super) async fn approvals(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = cross_site_grant(&state, &session, &headers, &q) {
        return refused;
    }
    let reason = q.get("reason").map_or("", String::as_str);
    queue_page(
        &state,
        &session,
        q.get("tenant").map(String::as_str),
        reason,
        None,
    )
    .await
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
    let reason = form.get("reason").map_or("", String::as_str).to_owned();
    let (Some(id), Some(digest)) = (
        parse_id(&id),
        form.get("digest")
            .and_then(|d| hex::decode(d).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok()),
    ) else {
        return queue_page(
            &state,
            &session,
            Some(&slug),
            &reason,
            Some(Err("Malformed approval.".to_owned())),
        )
        .await;
    };
    let (tenant, context) = match grant(&state, &session, &slug, &reason).await {
        Ok(g) => g,
        Err(d) => return refused(&state, &session, d),
    };
    let proposal = match state.gate.approve(&context, &session, id, &digest).await {
        Ok(p) => p,
        Err(e) => {
            return queue_page(
                &state,
                &session,
                Some(&slug),
                &reason,
                Some(Err(refusal_text(&e))),
            )
            .await;
        }
    };
    let run = run_approved(&state, &tenant, &proposal);
    match run.await {
        Ok(result) => {
            let outcome = match result.result {
                Ok(_) => format!("{} ran.", proposal.tool),
                Err(e) => format!("{} failed: {}.", proposal.tool, e.code()),
            };
            queue_page(
                &state,
                &session,
                Some(&slug),
                &reason,
                Some(Ok(format!("Approved. {outcome}"))),
            )
            .await
        }
        Err(e) => {
            queue_page(
                &state,
                &session,
                Some(&slug),
                &reason,
                Some(Err(refusal_text(&e))),
            )
            .await
        }
    }
}

pub(super) async fn reject(
    State(state): State<AppState>,
    session: Session,
    Path((slug, id)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let reason = form.get("reason").map_or("", String::as_str).to_owned();
    let Some(id) = parse_id(&id) else {
        return queue_page(
            &state,
            &session,
            Some(&slug),
            &reason,
            Some(Err("Malformed request.".to_owned())),
        )
        .await;
    };
    let (_, context) = match grant(&state, &session, &slug, &reason).await {
        Ok(g) => g,
        Err(d) => return refused(&state, &session, d),
    };
    let note = match state
        .gate
        .reject(&context, &session, id, "rejected by staff")
        .await
    {
        Ok(_) => Ok("Rejected.".to_owned()),
        Err(e) => Err(refusal_text(&e)),
    };
    queue_page(&state, &session, Some(&slug), &reason, Some(note)).await
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    tenants: Vec<String>,
    tenant: Option<String>,
    reason: String,
    status: String,
    events: Vec<(u64, String, String, String, String)>,
}

pub(super) async fn audit(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = cross_site_grant(&state, &session, &headers, &q) {
        return refused;
    }
    let reason = q.get("reason").map_or("", String::as_str).to_owned();
    let mut page = AuditPage {
        nav: Nav::of(&state, Some(&session)),
        tenants: tenant_slugs(&state).await,
        tenant: None,
        reason: reason.clone(),
        status: String::new(),
        events: Vec::new(),
    };
    if session.kind != ActorKind::Staff {
        return refused(&state, &session, Denied::NotStaff);
    }
    if let Some(slug) = q.get("tenant") {
        let (tenant, _context) = match grant(&state, &session, slug, &reason).await {
            Ok(g) => g,
            Err(d) => return refused(&state, &session, d),
        };
        let keys = audit_log::TrustedKeys::new().with(state.checkpoints.verifying_key());
        // The checkpoints kept outside the database count too: deleting the newest events and
        // the stored checkpoints together does not hide the truncation.
        let external = match crate::checkpoints::load(&state.checkpoint_file, tenant.id) {
            Ok(c) => c,
            Err(e) => return internal(&state, &e),
        };
        page.status = match audit_log::verify(&state.raw, tenant.id, &keys, &external).await {
            Ok(report) if report.is_intact() => {
                format!("chain verified, {} events intact", report.events)
            }
            Ok(report) => format!("CHAIN BROKEN: {report:?}"),
            Err(e) => return internal(&state, &e),
        };
        match audit_log::AuditQuery::new(tenant.id)
            .limit(200)
            .fetch(&state.raw)
            .await
        {
            Ok(events) => {
                page.events = events
                    .into_iter()
                    .rev()
                    .map(|e| {
                        (
                            e.seq,
                            e.occurred_at.to_string(),
                            e.actor_kind,
                            e.action,
                            e.outcome,
                        )
                    })
                    .collect();
            }
            Err(e) => return internal(&state, &e),
        }
        page.tenant = Some(tenant.slug);
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
