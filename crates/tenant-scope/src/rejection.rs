//! HTTP answers for requests whose tenant cannot be resolved.

use http::{HeaderValue, Response, StatusCode, header};

use crate::TenantError;

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

    fn message(&self) -> &'static str {
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

    /// The JSON body: `{"error":"<code>","message":"<text>"}`.
    #[must_use]
    pub fn body(&self) -> String {
        // Both strings are fixed ASCII without quotes or backslashes, so no escaping is needed.
        format!(
            "{{\"error\":\"{}\",\"message\":\"{}\"}}",
            self.code(),
            self.message()
        )
    }

    /// The response, for any body type that can be built from a `String`.
    #[must_use]
    pub fn into_http<B: From<String>>(self) -> Response<B> {
        let mut response = Response::new(B::from(self.body()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_json_with_stable_code() {
        let r = TenantRejection::new(TenantError::Conflict);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            r.body(),
            r#"{"error":"tenant_mismatch","message":"the request names a tenant other than the signed-in one"}"#
        );
        let resp: Response<String> = r.into_http();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }
}
