//! The guards' refusals, as a person in a browser should meet them.
//!
//! magic-auth's guards answer with a JSON body and the `AuthRejection` in the response's
//! extensions. Routes under `/api/` keep that JSON shape (with wording that fits any account);
//! every other route gets a page instead:
//!
//! | Refusal | `GET`/`HEAD` (a followed link) | other methods (a submitted form) |
//! | --- | --- | --- |
//! | `401 unauthenticated` | a page with a link to sign in | the same |
//! | `403 mfa_required` | `303` to the code page, `next` = this page | `403` page linking to the code page, `next` = the page the form was on |
//! | `403 step_up_required` | `303` to the step-up page, `next` = this page | `403` step-up form, `next` = the page the form was on |
//! | `403 cross_origin_request` | — | a page saying nothing was done |
//! | `503 session_store_unavailable` | a page | the same |
//!
//! Every `next` goes through the one redirect check ([`LocalTarget`]). The wording never speaks
//! of staff: the same pages serve a customer's member and the operator's staff.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use magic_auth::{AuthRejection, Session};

use super::auth::TotpPage;
use super::{Nav, is_api, json_error, message, redirect, render};
use crate::redirect::LocalTarget;
use crate::state::AppState;

/// What the middleware needs of the request once the response is back.
struct Asked {
    method: Method,
    /// This request's own path and query (where a followed link wanted to go).
    here: Option<String>,
    /// The page a submitted form was on (`Referer`, sent same-origin only).
    referer: Option<String>,
    session: Option<Session>,
}

/// The middleware (see the [module docs](self)).
pub(super) async fn browser_refusals(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let api = is_api(request.uri().path());
    let asked = Asked {
        method: request.method().clone(),
        here: request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned()),
        referer: request
            .headers()
            .get(header::REFERER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        session: request.extensions().get::<Session>().cloned(),
    };
    let response = next.run(request).await;
    let Some(rejection) = response.extensions().get::<AuthRejection>().cloned() else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    if api {
        // The JSON shape stays; only the one sentence that spoke of staff to everyone changes.
        if rejection == AuthRejection::MfaRequired {
            let fresh = json_error(
                rejection.status(),
                rejection.code(),
                "complete the second factor (a code from your authenticator app) first",
            );
            let (fresh_parts, fresh_body) = fresh.into_parts();
            parts.headers = fresh_parts.headers;
            return Response::from_parts(parts, fresh_body);
        }
        return Response::from_parts(parts, body);
    }
    let mut page = page_for(&state, &asked, &rejection);
    // The refusal itself goes along (whatever reads it further out), its JSON body does not.
    let extensions = std::mem::take(&mut parts.extensions);
    page.extensions_mut().extend(extensions);
    page.extensions_mut().remove::<AuthRejection>();
    page
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The page (or redirect) for `rejection`.
fn page_for(state: &AppState, asked: &Asked, rejection: &AuthRejection) -> Response<Body> {
    let followed = matches!(asked.method, Method::GET | Method::HEAD);
    // Where to come back to: the link's own page, or the page the form was on.
    let back = if followed {
        asked.here.as_deref()
    } else {
        asked.referer.as_deref()
    };
    let back = LocalTarget::or(back, &state.base_url, "/");
    let session = asked.session.as_ref();
    match rejection {
        AuthRejection::MfaRequired if followed => redirect(
            state,
            &format!("/auth/totp?next={}", urlencode(back.as_str())),
        ),
        AuthRejection::MfaRequired => message(
            state,
            session,
            StatusCode::FORBIDDEN,
            "Enter your code first",
            "You opened the sign-in link, but have not yet entered the code from your \
             authenticator app. Nothing was done: enter the code, then try again.",
            Some((
                &format!("/auth/totp?next={}", urlencode(back.as_str())),
                "Enter your code",
            )),
        ),
        AuthRejection::StepUpRequired if followed => redirect(
            state,
            &format!("/auth/step-up?next={}", urlencode(back.as_str())),
        ),
        AuthRejection::StepUpRequired => render(
            StatusCode::FORBIDDEN,
            &TotpPage {
                nav: Nav::of(state, session),
                heading: "Confirm it is you".to_owned(),
                intro: Some(
                    "This action needs a code from your authenticator app entered in the last \
                     10 minutes. Nothing was done yet: enter a code, then repeat the action."
                        .to_owned(),
                ),
                enrolment: None,
                start: false,
                error: None,
                action: "/api/auth/step-up".to_owned(),
                next: back.as_str().to_owned(),
                back: format!("/auth/step-up?next={}", urlencode(back.as_str())),
            },
        ),
        AuthRejection::Unauthenticated => message(
            state,
            None,
            StatusCode::UNAUTHORIZED,
            "Sign in to continue",
            "You are not signed in, or your session has ended. Sign in, then open the page again.",
            Some(("/", "Sign in")),
        ),
        AuthRejection::CrossOrigin => message(
            state,
            session,
            StatusCode::FORBIDDEN,
            "Sent from another site",
            "This form was sent from a page that is not part of this app, so nothing was done. \
             If you meant to do this, open the app and try again from there.",
            Some(("/", "Open the app")),
        ),
        AuthRejection::Unavailable => message(
            state,
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            "Temporarily unavailable",
            "Sign-in cannot be checked right now. Nothing was changed; try again in a moment.",
            None,
        ),
        _ => message(
            state,
            session,
            rejection.status(),
            "Not allowed",
            "This request was refused. Nothing was done.",
            Some(("/", "Home")),
        ),
    }
}
