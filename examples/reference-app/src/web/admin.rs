//! Tenant administration: members' roles and the data export. Both are privileged: the audit
//! layer records every attempt (denials by the guards included), and the handlers append their
//! record in the same transaction as the change, so a failed audit write rolls the change back.

use std::collections::HashMap;

use askama::Template;
use audit_log::{AuditHandle, Outcome, Target};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use magic_auth::Session;
use tenant_scope::TenantContext;
use uuid::Uuid;

use super::auth::parse_id;
use super::{Nav, internal, message, redirect, render};
use crate::notes;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub(super) enum AdminError {
    #[error("database: {0}")]
    Database(#[from] rls_guard::RlsError),
    #[error("audit: {0}")]
    Audit(#[from] audit_log::AuditError),
}

impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.into())
    }
}

struct Member {
    id: String,
    name: String,
    email: String,
    role: String,
    me: bool,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    nav: Nav,
    tenant: String,
    members: Vec<Member>,
    error: Option<String>,
}

/// Whether the signed-in user administers the context's tenant (read in its own RLS-bound
/// transaction; any failure counts as "no").
pub(crate) async fn is_admin(
    state: &AppState,
    session: &Session,
    context: &TenantContext,
) -> Result<bool, rls_guard::RlsError> {
    let role: Option<(String, bool)> = state
        .pool
        .read(
            context,
            "SELECT role, disabled FROM workspace.members WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(context.tenant().as_uuid())
        .bind(session.user.as_uuid())
        .fetch_optional()
        .await?;
    Ok(matches!(role, Some((r, false)) if r == "admin"))
}

/// Passes only an admin of the context's tenant; anything else (a member, a failed lookup)
/// is the refusal to answer with.
async fn require_admin(
    state: &AppState,
    session: &Session,
    context: &TenantContext,
) -> Result<(), Response> {
    match is_admin(state, session, context).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(admins_only(state, session)),
        Err(e) => Err(internal(state, &e)),
    }
}

fn admins_only(state: &AppState, session: &Session) -> Response {
    message(
        state,
        Some(session),
        StatusCode::FORBIDDEN,
        "Admins only",
        "Only an admin of this workspace can do that.",
        Some(("/notes", "Back to notes")),
    )
}

/// The tenant's members: (user id, display name, email, role).
pub(super) async fn member_rows(
    state: &AppState,
    context: &TenantContext,
) -> Result<Vec<(Uuid, String, String, String)>, rls_guard::RlsError> {
    state
        .pool
        .read(
            context,
            "SELECT user_id, display_name, email, role FROM workspace.members \
             WHERE tenant_id = $1 ORDER BY email",
        )
        .bind(context.tenant().as_uuid())
        .fetch_all()
        .await
}

pub(super) async fn members(
    State(state): State<AppState>,
    session: Session,
    context: TenantContext,
) -> Response {
    if let Err(refused) = require_admin(&state, &session, &context).await {
        return refused;
    }
    let rows = match member_rows(&state, &context).await {
        Ok(rows) => rows,
        Err(e) => return internal(&state, &e),
    };
    let tenant = state
        .tenant(context.tenant())
        .await
        .ok()
        .flatten()
        .map_or_else(String::new, |t| t.name);
    render(
        StatusCode::OK,
        &AdminPage {
            nav: Nav::of(&state, Some(&session)),
            tenant,
            members: rows
                .into_iter()
                .map(|(id, name, email, role)| Member {
                    me: id == *session.user.as_uuid(),
                    id: id.to_string(),
                    name,
                    email,
                    role,
                })
                .collect(),
            error: None,
        },
    )
}

/// What a role change came to.
pub(super) enum RoleChange {
    Changed,
    NoSuchMember,
    UnknownRole,
    OwnRole,
}

/// Sets `user`'s role, with its audit record in the same transaction. The caller has checked
/// that the session administers the context's tenant. `audit` is `None` only on the load
/// benchmark's unaudited baseline route (`App::unaudited_write_baseline`), never served.
pub(super) async fn set_role(
    state: &AppState,
    session: &Session,
    audit: Option<&AuditHandle>,
    context: &TenantContext,
    user: &str,
    role: &str,
) -> Result<RoleChange, AdminError> {
    let Some(user) = parse_id(user) else {
        return Ok(RoleChange::NoSuchMember);
    };
    if role != "admin" && role != "member" {
        return Ok(RoleChange::UnknownRole);
    }
    if user == *session.user.as_uuid() {
        return Ok(RoleChange::OwnRole);
    }
    let mut tx = state.pool.begin(context).await?;
    // The record first: it commits or rolls back with the change either way, and the member's
    // row, which concurrent changes queue on, is then locked only from the update to the
    // commit, as it would be without the record.
    if let Some(audit) = audit {
        let event = audit
            .event(Outcome::Allowed)
            .with_target(Target::new("member", &user.to_string()))?
            .with_metadata(serde_json::json!({ "role": role }))?;
        audit.append(&mut tx, event).await?;
    }
    let n =
        sqlx::query("UPDATE workspace.members SET role = $3 WHERE tenant_id = $1 AND user_id = $2")
            .bind(context.tenant().as_uuid())
            .bind(user)
            .bind(role)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if n == 0 {
        // The record goes with the change: the audit layer records the refusal itself.
        tx.rollback().await?;
        return Ok(RoleChange::NoSuchMember);
    }
    tx.commit().await?;
    Ok(RoleChange::Changed)
}

pub(super) async fn change_role(
    State(state): State<AppState>,
    session: Session,
    audit: AuditHandle,
    context: TenantContext,
    Path(user): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // Authorization before anything else: a non-admin learns nothing about the request.
    if let Err(refused) = require_admin(&state, &session, &context).await {
        return refused;
    }
    let role = form.get("role").map_or("", String::as_str);
    let (status, title, text) =
        match set_role(&state, &session, Some(&audit), &context, &user, role).await {
            Ok(RoleChange::Changed) => return redirect(&state, "/admin/members"),
            Ok(RoleChange::NoSuchMember) => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such member.",
            ),
            Ok(RoleChange::UnknownRole) => (
                StatusCode::BAD_REQUEST,
                "Unknown role",
                "A member is either an admin or a member.",
            ),
            Ok(RoleChange::OwnRole) => (
                StatusCode::BAD_REQUEST,
                "Not your own role",
                "Ask another admin to change your role.",
            ),
            Err(e) => return internal(&state, &e),
        };
    message(
        &state,
        Some(&session),
        status,
        title,
        text,
        Some(("/admin/members", "Back")),
    )
}

/// The tenant's notes for export, after its audit record is committed: nothing leaves
/// unrecorded. The caller has checked that the session administers the context's tenant.
pub(super) async fn export_notes(
    state: &AppState,
    audit: &AuditHandle,
    context: &TenantContext,
) -> Result<serde_json::Value, ExportError> {
    let all = notes::list(state, context).await?;
    let mut tx = state.pool.begin(context).await.map_err(AdminError::from)?;
    let event = audit
        .event(Outcome::Allowed)
        .with_metadata(serde_json::json!({ "notes": all.len(), "format": "json" }))
        .map_err(AdminError::from)?;
    audit
        .append(&mut tx, event)
        .await
        .map_err(AdminError::from)?;
    tx.commit().await.map_err(AdminError::from)?;
    Ok(serde_json::Value::Array(
        all.iter()
            .map(|n| serde_json::json!({"id": n.id, "title": n.title, "body": n.body, "phone": n.phone}))
            .collect(),
    ))
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExportError {
    #[error(transparent)]
    Notes(#[from] notes::NoteError),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// The export: sensitive (the route needs a fresh second factor), recorded before any data
/// leaves.
pub(super) async fn export(
    State(state): State<AppState>,
    session: Session,
    audit: AuditHandle,
    context: TenantContext,
) -> Response {
    if let Err(refused) = require_admin(&state, &session, &context).await {
        return refused;
    }
    let body = match export_notes(&state, &audit, &context).await {
        Ok(body) => body,
        Err(e) => return internal(&state, &e),
    };
    let mut response = (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"notes.json\""),
    );
    response
}
