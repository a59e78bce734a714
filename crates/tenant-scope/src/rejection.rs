//! HTTP refusals: the workspace's one [`Rejection`] type, and [`TenantRejection`] for requests
//! whose tenant cannot be resolved.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::{HeaderValue, Response, StatusCode, header};

use crate::TenantError;

/// A refused request, as every crate of the workspace answers it: an HTTP status, a stable
/// machine-readable code and a short human message.
///
/// The response ([`Rejection::into_http`], or `IntoResponse` with feature `axum`) has the body
/// `{"error":"<code>","message":"<text>"}` (the message JSON-escaped), `Content-Type:
/// application/json`, `Cache-Control: no-store`, and the `Rejection` itself in the response's
/// extensions, so outer layers (an audit layer, an application's error pages) can read the code
/// without parsing the body.
///
/// The refusals of the other crates ([`TenantRejection`], `magic_auth::AuthRejection`,
/// `rls_guard::RlsError`, `audit_log`'s layer) convert into it with `From` and render through it.
/// An application can build its own for its checks:
///
/// ```
/// use http::StatusCode;
/// use tenant_scope::Rejection;
///
/// let refusal = Rejection::new(StatusCode::FORBIDDEN, "plan_limit", "your plan allows 3 projects");
/// assert_eq!(refusal.body(), r#"{"error":"plan_limit","message":"your plan allows 3 projects"}"#);
/// let response: http::Response<String> = refusal.into_http();
/// assert_eq!(response.status(), StatusCode::FORBIDDEN);
/// ```
///
/// The code is `&'static str` on purpose: codes are a fixed vocabulary clients match on, never
/// text taken from the request. Keep messages free of request values and secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct Rejection {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
}

impl Rejection {
    /// A refusal with `status`, machine code `code` and the human `message`.
    #[must_use]
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// As [`new`](Self::new), in a `const` context.
    #[must_use]
    pub const fn from_static(
        status: StatusCode,
        code: &'static str,
        message: &'static str,
    ) -> Self {
        Self {
            status,
            code,
            message: Cow::Borrowed(message),
        }
    }

    /// The HTTP status.
    #[must_use]
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable machine-readable code (the body's `error`).
    #[must_use]
    pub const fn code(&self) -> &'static str {
        self.code
    }

    /// The human message (the body's `message`).
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same refusal with another message (for wording that fits an application).
    #[must_use]
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    /// The JSON body: `{"error":"<code>","message":"<text>"}`, both strings JSON-escaped.
    #[must_use]
    pub fn body(&self) -> String {
        let mut body = String::with_capacity(32 + self.code.len() + self.message.len());
        body.push_str("{\"error\":");
        push_json_string(&mut body, self.code);
        body.push_str(",\"message\":");
        push_json_string(&mut body, &self.message);
        body.push('}');
        body
    }

    /// The response, for any body type that can be built from a `String`.
    #[must_use]
    pub fn into_http<B: From<String>>(self) -> Response<B> {
        let mut response = Response::new(B::from(self.body()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response.extensions_mut().insert(self);
        response
    }
}

/// Appends `text` as a JSON string (RFC 8259: quote, backslash and control characters escaped).
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // The other control characters, and the line and paragraph separators that some
            // JavaScript parsers refuse inside strings.
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Rejection {
    fn into_response(self) -> axum::response::Response {
        self.into_http()
    }
}

/// A request refused because its tenant is missing, malformed, conflicting, unknown or cannot be
/// checked. It becomes an HTTP response with a stable machine-readable code:
///
/// | error | status | code |
/// |---|---|---|
/// | missing | 400 | `tenant_required` |
/// | malformed | 400 | `tenant_malformed` |
/// | conflicting sources | 403 | `tenant_mismatch` |
/// | unknown | 403 | `tenant_unknown` |
/// | cannot be checked | 503 | `tenant_unavailable` |
/// | cross-tenant grant refused | 403 | `cross_tenant_refused` |
/// | not resolved by a layer | 500 | `tenant_not_resolved` |
///
/// The body never repeats the offending value. A signed-in actor naming any tenant but their
/// own gets `tenant_mismatch` whether that tenant exists or not; only anonymous requests can
/// tell an unknown tenant (`tenant_unknown`) from a known one, which for subdomains is public
/// anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRejection {
    error: TenantError,
}

impl TenantRejection {
    /// The rejection for `error`.
    #[must_use]
    pub const fn new(error: TenantError) -> Self {
        Self { error }
    }

    /// The underlying error.
    #[must_use]
    pub const fn error(&self) -> &TenantError {
        &self.error
    }

    /// The HTTP status.
    #[must_use]
    pub const fn status(&self) -> StatusCode {
        match self.error {
            TenantError::Missing | TenantError::Malformed { .. } => StatusCode::BAD_REQUEST,
            TenantError::Conflict | TenantError::Unknown | TenantError::CrossTenantRefused(_) => {
                StatusCode::FORBIDDEN
            }
            TenantError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            TenantError::NoScope | TenantError::NotResolved => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self.error {
            TenantError::Missing => "tenant_required",
            TenantError::Malformed { .. } => "tenant_malformed",
            TenantError::Conflict => "tenant_mismatch",
            TenantError::Unknown => "tenant_unknown",
            TenantError::Unavailable => "tenant_unavailable",
            TenantError::CrossTenantRefused(_) => "cross_tenant_refused",
            TenantError::NoScope | TenantError::NotResolved => "tenant_not_resolved",
        }
    }

    /// The human message.
    #[must_use]
    pub const fn message(&self) -> &'static str {
        match self.error {
            TenantError::Missing => "this route needs a tenant",
            TenantError::Malformed { .. } => "the tenant identifier is malformed",
            TenantError::Conflict => "the request names a tenant other than the signed-in one",
            TenantError::Unknown => "unknown tenant",
            TenantError::Unavailable => "tenant resolution is temporarily unavailable",
            TenantError::CrossTenantRefused(_) => "cross-tenant access refused",
            TenantError::NoScope | TenantError::NotResolved => "tenant context unavailable",
        }
    }

    /// The response (see [`Rejection`]), for any body type that can be built from a `String`.
    #[must_use]
    pub fn into_http<B: From<String>>(self) -> Response<B> {
        Rejection::from(self).into_http()
    }
}

impl From<TenantRejection> for Rejection {
    fn from(rejection: TenantRejection) -> Self {
        Self::from_static(rejection.status(), rejection.code(), rejection.message())
    }
}

impl From<TenantError> for TenantRejection {
    fn from(error: TenantError) -> Self {
        Self::new(error)
    }
}

impl std::fmt::Display for TenantRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for TenantRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for TenantRejection {
    fn into_response(self) -> axum::response::Response {
        self.into_http()
    }
}

impl From<TenantError> for Rejection {
    fn from(error: TenantError) -> Self {
        TenantRejection::new(error).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_with_stable_code() {
        let r = TenantRejection::new(TenantError::Conflict);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            Rejection::from(r.clone()).body(),
            r#"{"error":"tenant_mismatch","message":"the request names a tenant other than the signed-in one"}"#
        );
        let resp: Response<String> = r.into_http();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        let carried = resp.extensions().get::<Rejection>().unwrap();
        assert_eq!(carried.code(), "tenant_mismatch");
    }

    #[test]
    fn every_tenant_error_keeps_its_status_code_and_message() {
        let table = [
            (
                TenantError::Missing,
                400,
                "tenant_required",
                "this route needs a tenant",
            ),
            (
                TenantError::Malformed {
                    source_name: "header",
                },
                400,
                "tenant_malformed",
                "the tenant identifier is malformed",
            ),
            (
                TenantError::Unknown,
                403,
                "tenant_unknown",
                "unknown tenant",
            ),
            (
                TenantError::Unavailable,
                503,
                "tenant_unavailable",
                "tenant resolution is temporarily unavailable",
            ),
            (
                TenantError::NotResolved,
                500,
                "tenant_not_resolved",
                "tenant context unavailable",
            ),
        ];
        for (error, status, code, message) in table {
            let r = Rejection::from(error);
            assert_eq!(
                (r.status().as_u16(), r.code(), r.message()),
                (status, code, message)
            );
        }
    }

    /// A message carrying quotes, backslashes, newlines or control characters cannot break out
    /// of its JSON string (a forged `"error"` key, a second object).
    #[test]
    fn a_custom_message_cannot_break_the_json() {
        let hostile =
            "a \"quote\", a back\\slash\nnew line\r\t\u{0}\u{1f}\u{2028}é\",\"error\":\"ok";
        let r = Rejection::new(StatusCode::FORBIDDEN, "plan_limit", hostile);
        let body = r.body();
        assert_eq!(
            body,
            r#"{"error":"plan_limit","message":"a \"quote\", a back\\slash\nnew line\r\t\u0000\u001f\u2028é\",\"error\":\"ok"}"#
        );
        assert!(!body.contains('\n') && !body.contains('\r'));
        // A real JSON parser reads exactly the message back, and one `error` key.
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["message"], hostile);
        assert_eq!(parsed["error"], "plan_limit");
        assert_eq!(parsed.as_object().unwrap().len(), 2);
        // Positive control: a plain message is written as is.
        let plain = Rejection::from_static(StatusCode::CONFLICT, "busy", "try again");
        assert_eq!(plain.body(), r#"{"error":"busy","message":"try again"}"#);
    }

    #[test]
    fn the_response_has_status_headers_body_and_the_rejection() {
        let r = Rejection::new(StatusCode::TOO_MANY_REQUESTS, "slow_down", "wait a minute")
            .with_message(String::from("wait \"a\" minute"));
        assert_eq!(r.to_string(), "wait \"a\" minute (slow_down)");
        let resp: Response<String> = r.clone().into_http();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(resp.extensions().get::<Rejection>(), Some(&r));
        assert_eq!(resp.body(), &r.body());
    }
}
