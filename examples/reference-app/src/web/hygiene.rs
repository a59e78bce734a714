//! Input hygiene, before any handler: every request body is read up to [`BODY_LIMIT`] (larger is
//! `413 payload_too_large`, for forms and JSON alike), and a control character in any field of
//! the query string, a form or a JSON document (names included, at any depth) is
//! `400 control_character`. The multi-line fields — a note's `body` and the assistant's
//! `prompt` — may hold tabs and line breaks; no other field may hold any control character.
//!
//! Routes under `/api/` answer `{"error": "<code>", "message": "<text>"}`; the pages answer
//! with a page.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::{is_api, json_error, message};
use crate::state::AppState;

/// The largest request body, in bytes (a note's body is at most 20,000 bytes of text).
pub(crate) const BODY_LIMIT: usize = 256 * 1024;

/// Fields that hold several lines of text.
const MULTI_LINE: [&str; 2] = ["body", "prompt"];

/// Why a request's input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum InputRejection {
    /// A field (named when its name is printable) holds a control character.
    #[error("a field contains a control character")]
    ControlCharacter {
        /// The field's name, if it is itself printable and short.
        field: Option<String>,
    },
    /// The body is larger than [`BODY_LIMIT`].
    #[error("the request body is too large")]
    TooLarge,
    /// The body could not be read.
    #[error("the request body could not be read")]
    Unreadable,
}

impl InputRejection {
    /// The HTTP status.
    pub(crate) const fn status(&self) -> StatusCode {
        match self {
            Self::ControlCharacter { .. } | Self::Unreadable => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The stable machine code.
    pub(crate) const fn code(&self) -> &'static str {
        match self {
            Self::ControlCharacter { .. } => "control_character",
            Self::TooLarge => "payload_too_large",
            Self::Unreadable => "invalid_input",
        }
    }

    /// One sentence for people.
    fn text(&self) -> String {
        match self {
            Self::ControlCharacter { field: Some(f) } => format!(
                "The field \"{f}\" contains a control character (such as NUL). Remove it and try again."
            ),
            Self::ControlCharacter { field: None } => {
                "A field contains a control character (such as NUL). Remove it and try again."
                    .to_owned()
            }
            Self::TooLarge => format!(
                "The request is larger than {} KiB. Send less text at once.",
                BODY_LIMIT / 1024
            ),
            Self::Unreadable => "The request could not be read. Try again.".to_owned(),
        }
    }

    fn respond(&self, state: &AppState, api: bool) -> Response {
        if api {
            return json_error(self.status(), self.code(), &self.text());
        }
        let title = match self {
            Self::ControlCharacter { .. } => "Unexpected characters",
            Self::TooLarge => "Too much text",
            Self::Unreadable => "The request could not be read",
        };
        message(
            state,
            None,
            self.status(),
            title,
            &self.text(),
            Some(("/", "Home")),
        )
    }
}

/// Whether `c` may appear in the field `name`.
fn allowed(name: &str, c: char) -> bool {
    !c.is_control() || (matches!(c, '\t' | '\n' | '\r') && MULTI_LINE.contains(&name))
}

fn refused(name: &str) -> InputRejection {
    let printable = name.len() <= 40 && !name.chars().any(char::is_control);
    InputRejection::ControlCharacter {
        field: printable.then(|| name.to_owned()),
    }
}

/// Checks one field: its name, and its value as a field of that name.
fn check_field(name: &str, value: &str) -> Result<(), InputRejection> {
    if name.chars().any(|c| !allowed("", c)) || value.chars().any(|c| !allowed(name, c)) {
        return Err(refused(name));
    }
    Ok(())
}

/// Checks `application/x-www-form-urlencoded` pairs (a query string or a form body).
fn check_pairs(encoded: &[u8]) -> Result<(), InputRejection> {
    url::form_urlencoded::parse(encoded).try_for_each(|(name, value)| check_field(&name, &value))
}

/// Checks every string in a JSON document; a string in an array counts as a field of the
/// array's name.
fn check_json(name: &str, value: &serde_json::Value) -> Result<(), InputRejection> {
    match value {
        serde_json::Value::String(s) => check_field(name, s),
        serde_json::Value::Array(items) => items.iter().try_for_each(|v| check_json(name, v)),
        serde_json::Value::Object(fields) => fields.iter().try_for_each(|(k, v)| {
            check_field(k, "")?;
            check_json(k, v)
        }),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            Ok(())
        }
    }
}

/// Checks the query string and the body of `request` (see the [module docs](self)); the body is
/// handed on as read.
async fn check(request: Request) -> Result<Request, InputRejection> {
    if let Some(query) = request.uri().query() {
        check_pairs(query.as_bytes())?;
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let (parts, body) = request.into_parts();
    // `Bytes` stops reading at axum's default limit (2 MiB) with a 413; the app's own limit is
    // smaller.
    let bytes = Bytes::from_request(Request::new(body), &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                InputRejection::TooLarge
            } else {
                InputRejection::Unreadable
            }
        })?;
    if bytes.len() > BODY_LIMIT {
        return Err(InputRejection::TooLarge);
    }
    if content_type == "application/x-www-form-urlencoded" {
        check_pairs(&bytes)?;
    } else if content_type == "application/json" || content_type.ends_with("+json") {
        // A document that does not parse is the handler's to refuse (`400 invalid_input`).
        if let Ok(document) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            check_json("", &document)?;
        }
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The middleware (see the [module docs](self)).
pub(super) async fn input_hygiene(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let api = is_api(request.uri().path());
    match check(request).await {
        Ok(request) => next.run(request).await,
        Err(rejection) => rejection.respond(&state, api),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_pass_in_multi_line_fields_only() {
        assert!(check_field("body", "one\r\ntwo\tthree").is_ok());
        assert!(check_field("prompt", "one\ntwo").is_ok());
        assert!(check_field("title", "one\ntwo").is_err());
        assert!(check_field("body", "nul\0").is_err());
        assert!(check_field("body", "escape\u{1b}[2J").is_err());
        assert!(check_field("body", "c1\u{85}").is_err());
        assert!(check_field("ti\0tle", "x").is_err());
    }

    #[test]
    fn json_is_checked_at_every_depth_and_in_names() {
        let clean = serde_json::json!({"a": [{"b": "fine"}], "body": "x\ny"});
        assert!(check_json("", &clean).is_ok());
        let deep = serde_json::json!({"a": [{"b": "bad\u{0}"}]});
        assert_eq!(
            check_json("", &deep),
            Err(InputRejection::ControlCharacter {
                field: Some("b".to_owned())
            })
        );
        let name = serde_json::json!({"na\u{7}me": "x"});
        assert_eq!(
            check_json("", &name),
            Err(InputRejection::ControlCharacter { field: None })
        );
    }
}
