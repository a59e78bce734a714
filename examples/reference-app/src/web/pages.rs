//! A tenant member's pages: notes, the assistant, sessions. Every handler gets the tenant from
//! `TenantLayer` (the signed-in actor's tenant) and reaches the database only through a
//! tenant-bound transaction.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use magic_auth::{Assurance, Session};
use tenant_scope::TenantContext;

use super::auth::parse_id;
use super::{Nav, When, internal, message, redirect, render, when};
use crate::agent;
use crate::notes::{self, Note, NoteError};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "notes.html")]
struct NotesPage {
    nav: Nav,
    tenant: String,
    notes: Vec<Note>,
    phone: String,
    error: Option<String>,
}

async fn notes_page(
    state: &AppState,
    session: &Session,
    context: &TenantContext,
    phone: &str,
    error: Option<String>,
) -> Response {
    let found = if phone.trim().is_empty() {
        notes::list(state, context).await
    } else {
        notes::by_phone(state, context, phone).await
    };
    let tenant = match state.tenant(context.tenant()).await {
        Ok(t) => t.map_or_else(String::new, |t| t.name),
        Err(e) => return internal(state, &e),
    };
    match found {
        Ok(notes) => render(
            if error.is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            },
            &NotesPage {
                nav: Nav::of(state, Some(session)),
                tenant,
                notes,
                phone: phone.to_owned(),
                error,
            },
        ),
        Err(e) => internal(state, &e),
    }
}

pub(super) async fn notes(
    State(state): State<AppState>,
    session: Session,
    context: TenantContext,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    notes_page(
        &state,
        &session,
        &context,
        q.get("phone").map_or("", String::as_str),
        None,
    )
    .await
}

pub(super) async fn create_note(
    State(state): State<AppState>,
    session: Session,
    context: TenantContext,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).map_or("", String::as_str);
    let phone = Some(get("phone")).filter(|p| !p.trim().is_empty());
    match notes::save(&state, &context, None, get("title"), get("body"), phone).await {
        Ok(_) => redirect(&state, "/notes"),
        Err(NoteError::Invalid(why)) => {
            notes_page(&state, &session, &context, "", Some(why.to_owned())).await
        }
        Err(e) => internal(&state, &e),
    }
}

#[derive(Template)]
#[template(path = "note_edit.html")]
struct EditPage {
    nav: Nav,
    note: Note,
    error: Option<String>,
}

fn no_such_note(state: &AppState, session: &Session) -> Response {
    message(
        state,
        Some(session),
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such note.",
        Some(("/notes", "Back to notes")),
    )
}

pub(super) async fn edit_note(
    State(state): State<AppState>,
    session: Session,
    context: TenantContext,
    Path(id): Path<String>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return no_such_note(&state, &session);
    };
    match notes::get(&state, &context, id).await {
        Ok(Some(note)) => render(
            StatusCode::OK,
            &EditPage {
                nav: Nav::of(&state, Some(&session)),
                note,
                error: None,
            },
        ),
        Ok(None) => no_such_note(&state, &session),
        Err(e) => internal(&state, &e),
    }
}

pub(super) async fn update_note(
    State(state): State<AppState>,
    session: Session,
    context: TenantContext,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return no_such_note(&state, &session);
    };
    // Only an existing note of this tenant can be edited (another tenant's id is "not found").
    let existing = match notes::get(&state, &context, id).await {
        Ok(Some(note)) => note,
        Ok(None) => return no_such_note(&state, &session),
        Err(e) => return internal(&state, &e),
    };
    let get = |k: &str| form.get(k).map_or("", String::as_str);
    let phone = Some(get("phone")).filter(|p| !p.trim().is_empty());
    match notes::save(&state, &context, Some(id), get("title"), get("body"), phone).await {
        Ok(_) => redirect(&state, "/notes"),
        Err(NoteError::Invalid(why)) => render(
            StatusCode::BAD_REQUEST,
            &EditPage {
                nav: Nav::of(&state, Some(&session)),
                note: existing,
                error: Some(why.to_owned()),
            },
        ),
        Err(e) => internal(&state, &e),
    }
}

pub(super) async fn delete_note(
    State(state): State<AppState>,
    session: Session,
    context: TenantContext,
    Path(id): Path<String>,
) -> Response {
    // Another tenant's note, a malformed id and a missing note all get the same answer.
    let Some(id) = parse_id(&id) else {
        return message(
            &state,
            Some(&session),
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such note.",
            Some(("/notes", "Back to notes")),
        );
    };
    match notes::delete(&state, &context, id).await {
        Ok(true) => redirect(&state, "/notes"),
        Ok(false) => message(
            &state,
            Some(&session),
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such note.",
            Some(("/notes", "Back to notes")),
        ),
        Err(e) => internal(&state, &e),
    }
}

#[derive(Template)]
#[template(path = "assistant.html")]
struct AssistantPage {
    nav: Nav,
    prompt: String,
    transcript: Vec<(&'static str, String)>,
}

pub(super) async fn assistant(State(state): State<AppState>, session: Session) -> Response {
    render(
        StatusCode::OK,
        &AssistantPage {
            nav: Nav::of(&state, Some(&session)),
            prompt: "Summarise all my notes".to_owned(),
            transcript: Vec::new(),
        },
    )
}

pub(super) async fn run_assistant(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let prompt = form
        .get("prompt")
        .map_or("", String::as_str)
        .trim()
        .to_owned();
    if prompt.is_empty() || prompt.len() > 2000 {
        return message(
            &state,
            Some(&session),
            StatusCode::BAD_REQUEST,
            "Ask something",
            "Type a request of up to 2000 characters.",
            Some(("/assistant", "Back")),
        );
    }
    let model = state.model.clone();
    match agent::run_turn(
        &state,
        &session.actor(),
        session.id,
        &prompt,
        model.as_ref(),
    )
    .await
    {
        Ok(lines) => render(
            StatusCode::OK,
            &AssistantPage {
                nav: Nav::of(&state, Some(&session)),
                prompt,
                transcript: lines.into_iter().map(|l| (l.who, l.text)).collect(),
            },
        ),
        Err(e) => internal(&state, &e),
    }
}

struct SessionRow {
    id: String,
    created: When,
    last_seen: When,
    assurance: &'static str,
    agent: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage {
    nav: Nav,
    sessions: Vec<SessionRow>,
}

pub(super) async fn sessions(State(state): State<AppState>, session: Session) -> Response {
    match state.sessions.list(session.tenant, session.user).await {
        Ok(list) => render(
            StatusCode::OK,
            &SessionsPage {
                nav: Nav::of(&state, Some(&session)),
                sessions: list
                    .into_iter()
                    .map(|s| SessionRow {
                        id: s.id.to_string(),
                        created: when(s.created_at),
                        last_seen: when(s.last_seen_at),
                        assurance: if s.assurance == Assurance::Aal2 {
                            "two factors"
                        } else {
                            "email link only"
                        },
                        agent: s.user_agent.unwrap_or_default(),
                        current: s.id == session.id,
                    })
                    .collect(),
            },
        ),
        Err(e) => internal(&state, &e),
    }
}

pub(super) async fn revoke_session(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let not_found = || {
        message(
            &state,
            Some(&session),
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such session.",
            Some(("/sessions", "Back")),
        )
    };
    let Some(id) = parse_id(&id) else {
        return not_found();
    };
    // Only the user's own sessions: someone else's id answers like a missing one.
    match state.sessions.list(session.tenant, session.user).await {
        Ok(mine) if mine.iter().any(|s| s.id == id) => {
            match state.sessions.revoke(session.tenant, id).await {
                Ok(_) => redirect(&state, "/sessions"),
                Err(e) => internal(&state, &e),
            }
        }
        Ok(_) => not_found(),
        Err(e) => internal(&state, &e),
    }
}

pub(super) async fn revoke_others(State(state): State<AppState>, session: Session) -> Response {
    match state
        .sessions
        .revoke_all(session.tenant, session.user, Some(session.id))
        .await
    {
        Ok(_) => redirect(&state, "/sessions"),
        Err(e) => internal(&state, &e),
    }
}
