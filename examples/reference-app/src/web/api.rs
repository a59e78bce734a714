//! The JSON API for the same resources as the pages. Errors are JSON with a stable machine code:
//! `400 invalid_input`, `404 not_found` (also for another tenant's object), `500
//! internal_error`, `503 database_unavailable` when the database cannot be reached — the guards
//! in front answer `401 unauthenticated`, `403 mfa_required` and `403 cross_origin_request`
//! the same way.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use magic_auth::Session;
use serde::Deserialize;
use serde_json::json;
use tenant_scope::TenantContext;

use super::auth::parse_id;
use crate::notes::{self, Note, NoteError};
use crate::state::AppState;

/// A JSON error with its stable code.
fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    super::json_error(status, code, message)
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such object")
}

fn failed(e: &NoteError) -> Response {
    match e {
        NoteError::Invalid(why) => error(StatusCode::BAD_REQUEST, "invalid_input", why),
        NoteError::Database(db) if db.is_unavailable() => {
            tracing::warn!(error = %db, "database unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "try again later",
            )
        }
        other => internal_error(other),
    }
}

pub(crate) fn note_json(n: &Note) -> serde_json::Value {
    json!({
        "id": n.id,
        "title": n.title,
        "body": n.body,
        "phone": n.phone,
        "updated_at": n.updated_at.unix_timestamp(),
    })
}

pub(super) async fn list_notes(State(state): State<AppState>, context: TenantContext) -> Response {
    match notes::list(&state, &context).await {
        Ok(all) => {
            Json(json!({ "notes": all.iter().map(note_json).collect::<Vec<_>>() })).into_response()
        }
        Err(e) => failed(&e),
    }
}

/// A new note.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewNote {
    title: String,
    #[serde(default)]
    body: String,
    phone: Option<String>,
}

pub(super) async fn create_note(
    State(state): State<AppState>,
    context: TenantContext,
    body: Result<Json<NewNote>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(new)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "expected {\"title\", \"body\", \"phone\"?} as JSON",
        );
    };
    match notes::save(
        &state,
        &context,
        None,
        &new.title,
        &new.body,
        new.phone.as_deref(),
    )
    .await
    {
        Ok(id) => (StatusCode::CREATED, Json(json!({ "id": id }))).into_response(),
        Err(e) => failed(&e),
    }
}

pub(super) async fn get_note(
    State(state): State<AppState>,
    context: TenantContext,
    Path(id): Path<String>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found();
    };
    match notes::get(&state, &context, id).await {
        Ok(Some(n)) => Json(note_json(&n)).into_response(),
        Ok(None) => not_found(),
        Err(e) => failed(&e),
    }
}

pub(super) async fn delete_note(
    State(state): State<AppState>,
    context: TenantContext,
    Path(id): Path<String>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found();
    };
    match notes::delete(&state, &context, id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(),
        Err(e) => failed(&e),
    }
}

pub(super) async fn sessions(State(state): State<AppState>, session: Session) -> Response {
    match state.sessions.list(session.tenant, session.user).await {
        Ok(list) => Json(json!({
            "sessions": list.iter().map(|s| json!({
                "id": s.id,
                "current": s.id == session.id,
                "two_factors": s.assurance == magic_auth::Assurance::Aal2,
                "created_at": s.created_at.unix_timestamp(),
                "last_seen_at": s.last_seen_at.unix_timestamp(),
                "user_agent": s.user_agent,
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "session list failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request could not be completed",
            )
        }
    }
}

fn proposal_json(p: &tool_sandbox::Proposal) -> serde_json::Value {
    json!({
        "id": p.id,
        "tool": p.tool,
        "tool_version": p.tool_version,
        "arguments": serde_json::from_str::<serde_json::Value>(&p.arguments).unwrap_or(serde_json::Value::Null),
        "digest": p.digest_hex(),
        "status": p.status,
        "flags": p.flags,
        "taint_sources": p.taint_sources,
        "warnings": p.warnings,
        "created_at": p.created_at.unix_timestamp(),
        "expires_at": p.expires_at.unix_timestamp(),
    })
}

/// The workspace's proposals (what its assistant asked for, and what became of it).
pub(super) async fn proposals(State(state): State<AppState>, context: TenantContext) -> Response {
    match state.gate.proposals(&context, None).await {
        Ok(all) => Json(json!({ "proposals": all.iter().map(proposal_json).collect::<Vec<_>>() }))
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "proposal list failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request could not be completed",
            )
        }
    }
}

/// A staff decision on a proposal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) struct Decision {
    decision: String,
    digest: String,
    reason: String,
}

/// Staff only, with a fresh second factor (the route's guard): approve (and run) or reject a
/// proposal of `tenant`, opened through a cross-tenant grant for `reason`.
pub(super) async fn decide(
    State(state): State<AppState>,
    session: Session,
    Path((slug, id)): Path<(String, String)>,
    body: Result<Json<Decision>, axum::extract::rejection::JsonRejection>,
) -> Response {
    // Authorization before validation: a non-staff caller learns nothing about the input.
    if session.kind != tenant_scope::ActorKind::Staff {
        return error(
            StatusCode::FORBIDDEN,
            "staff_only",
            "this endpoint is not available to your account",
        );
    }
    let Ok(Json(decision)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "expected {\"decision\", \"digest\", \"reason\"} as JSON",
        );
    };
    let Some(id) = parse_id(&id) else {
        return not_found();
    };
    let (tenant, context) =
        match super::staff::grant(&state, &session, &slug, &decision.reason).await {
            Ok(g) => g,
            Err(super::staff::Denied::NotStaff) => {
                return error(
                    StatusCode::FORBIDDEN,
                    "staff_only",
                    "this endpoint is not available to your account",
                );
            }
            Err(super::staff::Denied::Page(page)) => {
                return if page.status() == StatusCode::NOT_FOUND {
                    not_found()
                } else {
                    error(
                        StatusCode::FORBIDDEN,
                        "cross_tenant_refused",
                        "a reason of at least 10 characters is required",
                    )
                };
            }
        };
    let refused = |e: &tool_sandbox::SandboxError| match e {
        tool_sandbox::SandboxError::NoSuchProposal => not_found(),
        tool_sandbox::SandboxError::ApprovalRefused(r) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": r.code(), "message": super::staff::refusal_text(e) })),
        )
            .into_response(),
        other => {
            tracing::error!(error = %other, "decision failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "nothing was decided",
            )
        }
    };
    match decision.decision.as_str() {
        "approve" => {
            let Some(digest) = hex::decode(&decision.digest)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    "digest must be 64 hex digits",
                );
            };
            let proposal = match state.gate.approve(&context, &session, id, &digest).await {
                Ok(p) => p,
                Err(e) => return refused(&e),
            };
            match super::staff::run_approved(&state, &tenant, &proposal).await {
                Ok(run) => Json(json!({
                    "status": "approved",
                    "ran": run.result.is_ok(),
                    "error": run.result.err().map(|e| e.code()),
                }))
                .into_response(),
                Err(e) => refused(&e),
            }
        }
        "reject" => match state
            .gate
            .reject(&context, &session, id, "rejected by staff")
            .await
        {
            Ok(_) => Json(json!({ "status": "rejected" })).into_response(),
            Err(e) => refused(&e),
        },
        _ => error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "decision is \"approve\" or \"reject\"",
        ),
    }
}

/// An assistant request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AssistantRequest {
    prompt: String,
}

/// One assistant turn: the transcript, with held calls named by their proposal id.
pub(super) async fn assistant(
    State(state): State<AppState>,
    session: Session,
    body: Result<Json<AssistantRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "expected {\"prompt\"} as JSON",
        );
    };
    let prompt = request.prompt.trim();
    if prompt.is_empty() || prompt.len() > 2000 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "the prompt must hold 1 to 2000 characters",
        );
    }
    let model = state.model.clone();
    match crate::agent::run_turn(&state, &session.actor(), session.id, prompt, model.as_ref()).await
    {
        Ok(lines) => Json(json!({
            "transcript": lines
                .iter()
                .map(|l| json!({ "who": l.who, "text": l.text }))
                .collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => internal_error(&e),
    }
}

/// Passes only an admin of the context's tenant (`403 admin_required`; a failed lookup is a
/// `500`, never a pass).
async fn require_admin(
    state: &AppState,
    session: &Session,
    context: &TenantContext,
) -> Result<(), Response> {
    match super::admin::is_admin(state, session, context).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(error(
            StatusCode::FORBIDDEN,
            "admin_required",
            "only an admin of this workspace can do that",
        )),
        Err(e) => Err(internal_error(&e)),
    }
}

fn internal_error(e: &(dyn std::error::Error + 'static)) -> Response {
    if super::session_ended(e) {
        return error(
            StatusCode::UNAUTHORIZED,
            "session_ended",
            "your session has ended; sign in again",
        );
    }
    if super::database_unavailable(e) {
        tracing::warn!(error = %e, "database unavailable");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "try again later",
        );
    }
    tracing::error!(error = %e, "api request failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "the request could not be completed",
    )
}

/// The tenant's members (admins only).
pub(super) async fn members(
    State(state): State<AppState>,
    session: Session,
    context: TenantContext,
) -> Response {
    if let Err(refused) = require_admin(&state, &session, &context).await {
        return refused;
    }
    match super::admin::member_rows(&state, &context).await {
        Ok(rows) => Json(json!({
            "members": rows
                .iter()
                .map(|(id, name, email, role)| json!({
                    "id": id, "name": name, "email": email, "role": role,
                }))
                .collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => internal_error(&e),
    }
}

/// A role change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleRequest {
    role: String,
}

/// The role change's JSON body, or why it was refused.
type RoleBody = Result<Json<RoleRequest>, axum::extract::rejection::JsonRejection>;

/// Changes a member's role (admins only; audited in the same transaction).
pub(super) async fn change_role(
    State(state): State<AppState>,
    session: Session,
    audit: audit_log::AuditHandle,
    context: TenantContext,
    Path(user): Path<String>,
    body: RoleBody,
) -> Response {
    role_change(&state, &session, Some(&audit), &context, &user, body).await
}

/// The same role change without its audit record: the load benchmark's baseline for what the
/// audit costs (`App::unaudited_write_baseline`), never served by the app.
pub(super) async fn change_role_unaudited(
    State(state): State<AppState>,
    session: Session,
    context: TenantContext,
    Path(user): Path<String>,
    body: RoleBody,
) -> Response {
    role_change(&state, &session, None, &context, &user, body).await
}

async fn role_change(
    state: &AppState,
    session: &Session,
    audit: Option<&audit_log::AuditHandle>,
    context: &TenantContext,
    user: &str,
    body: RoleBody,
) -> Response {
    use super::admin::RoleChange;
    // Authorization before validation: a non-admin learns nothing about the input.
    if let Err(refused) = require_admin(state, session, context).await {
        return refused;
    }
    let Ok(Json(request)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "expected {\"role\"} as JSON",
        );
    };
    match super::admin::set_role(state, session, audit, context, user, &request.role).await {
        Ok(RoleChange::Changed) => Json(json!({ "status": "changed" })).into_response(),
        Ok(RoleChange::NoSuchMember) => not_found(),
        Ok(RoleChange::UnknownRole) => error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "a role is admin or member",
        ),
        Ok(RoleChange::OwnRole) => error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "ask another admin to change your role",
        ),
        Err(e) => internal_error(&e),
    }
}

/// The export (admins only, a fresh second factor, recorded before any data leaves).
pub(super) async fn export(
    State(state): State<AppState>,
    session: Session,
    audit: audit_log::AuditHandle,
    context: TenantContext,
) -> Response {
    if let Err(refused) = require_admin(&state, &session, &context).await {
        return refused;
    }
    match super::admin::export_notes(&state, &audit, &context).await {
        Ok(notes) => Json(json!({ "notes": notes })).into_response(),
        Err(e) => internal_error(&e),
    }
}
