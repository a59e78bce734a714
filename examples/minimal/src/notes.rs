//! Step 5: handlers take what the layers put in the request: the signed-in `Session`, a
//! transaction bound to the request's tenant (`TenantTx`), the tenant (`TenantContext`), the
//! audit handle.

use audit_log::{AuditHandle, Outcome, Target};
use axum::Json;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use magic_auth::{Assurance, Session};
use rls_guard::TenantTx;
use serde_json::{Value, json};
use tenant_scope::TenantContext;

use crate::Error;

/// Who is signed in: the session the session layer found (its cookie checked in the database).
pub(crate) async fn me(session: Session) -> Json<Value> {
    Json(json!({
        "user": session.user.to_string(),
        "workspace": session.tenant.to_string(),
        "assurance": match session.assurance {
            Assurance::Aal1 => "aal1",
            Assurance::Aal2 => "aal2",
        },
    }))
}

pub(crate) async fn list_notes(mut tx: TenantTx) -> Result<Json<Value>, Error> {
    // No `WHERE tenant_id`: row-level security shows the request's tenant only.
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, body FROM minimal.notes ORDER BY body")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    let notes: Vec<Value> = rows
        .iter()
        .map(|(id, body)| json!({ "id": id.to_string(), "body": body }))
        .collect();
    Ok(Json(json!({ "notes": notes })))
}

#[derive(serde::Deserialize)]
pub(crate) struct NewNote {
    pub(crate) body: String,
}

pub(crate) async fn create_note(
    context: TenantContext,
    mut tx: TenantTx,
    Json(note): Json<NewNote>,
) -> Result<Json<Value>, Error> {
    let (id,): (uuid::Uuid,) =
        sqlx::query_as("INSERT INTO minimal.notes (tenant_id, body) VALUES ($1, $2) RETURNING id")
            .bind(context.tenant().as_uuid())
            .bind(&note.body)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(Json(json!({ "id": id.to_string() })))
}

pub(crate) async fn show_note(mut tx: TenantTx, Path(id): Path<String>) -> Result<Response, Error> {
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return Ok(not_found());
    };
    let row: Option<(String,)> = sqlx::query_as("SELECT body FROM minimal.notes WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    // Another workspace's note is not there at all: the same answer as a missing one.
    Ok(row.map_or_else(not_found, |(body,)| {
        Json(json!({ "body": body })).into_response()
    }))
}

/// The audited admin action: the deletion and its audit record commit together or not at all.
pub(crate) async fn delete_note(
    mut tx: TenantTx,
    audit: AuditHandle,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return Ok(not_found());
    };
    let deleted = sqlx::query("DELETE FROM minimal.notes WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Ok(not_found());
    }
    let event = audit
        .event(Outcome::Allowed)
        .with_target(Target::new("note", &id.to_string()))?;
    audit.append(&mut tx, event).await?;
    tx.commit().await?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

fn not_found() -> Response {
    tenant_scope::Rejection::from_static(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such note",
    )
    .into_response()
}
