//! Where a redirect may send a browser: one check, used by every redirect the app answers.
//!
//! A target comes from the app itself (`/notes`), from a `next` field a person can edit, or from
//! a request path (the plain-HTTP listener). Each is parsed as a URL relative to the app's base
//! URL, the way a browser reads a `Location` header, and must stay on the base URL's origin. The
//! answer is the normalised path and query on that origin, never the raw text: `/a/../b` becomes
//! `/b`, and a same-origin absolute URL becomes its path.
//!
//! Refused, before any parsing: an empty or over-long target, any control character or
//! whitespace anywhere in it (browsers drop tabs and newlines from URLs, so `/\t/evil.example`
//! is read as `//evil.example`, another host), and a backslash (read as `/` in `http(s)` URLs).
//! Refused after parsing: another scheme, host or port, and a path that starts with `//`
//! (which a browser would read as another host).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use url::Url;

/// The longest target accepted, in bytes.
const MAX_LEN: usize = 2048;

/// Why a redirect target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RedirectRefused {
    /// Empty, or longer than 2048 bytes.
    #[error("the redirect target is empty or too long")]
    Length,
    /// A control character or whitespace somewhere in the target.
    #[error("the redirect target contains a control character or whitespace")]
    ControlOrSpace,
    /// A backslash, which browsers read as a slash.
    #[error("the redirect target contains a backslash")]
    Backslash,
    /// Not a URL, even relative to the base URL.
    #[error("the redirect target is not a URL")]
    NotUrl,
    /// Another origin (scheme, host or port), or a path a browser would read as one.
    #[error("the redirect target leaves the app's origin")]
    OtherOrigin,
    /// The app's own base URL does not parse (a configuration error).
    #[error("the base URL is not a URL")]
    Base,
}

/// A path (and query) on the app's own origin, checked by [`LocalTarget::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalTarget(String);

impl LocalTarget {
    /// Checks `raw` against the origin of `base_url` (see the [module docs](self)).
    ///
    /// # Errors
    /// [`RedirectRefused`] saying why the target may not be used.
    pub(crate) fn parse(raw: &str, base_url: &str) -> Result<Self, RedirectRefused> {
        if raw.is_empty() || raw.len() > MAX_LEN {
            return Err(RedirectRefused::Length);
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(RedirectRefused::ControlOrSpace);
        }
        if raw.contains('\\') {
            return Err(RedirectRefused::Backslash);
        }
        let base = Url::parse(base_url).map_err(|_| RedirectRefused::Base)?;
        let url = base.join(raw).map_err(|_| RedirectRefused::NotUrl)?;
        if url.origin() != base.origin() || !matches!(url.scheme(), "https" | "http") {
            return Err(RedirectRefused::OtherOrigin);
        }
        let path = url.path();
        if !path.starts_with('/') || path.starts_with("//") {
            return Err(RedirectRefused::OtherOrigin);
        }
        let target = match url.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        Ok(Self(target))
    }

    /// `raw` if it passes, else `fallback` (which must pass: the app's own paths do).
    pub(crate) fn or(raw: Option<&str>, base_url: &str, fallback: &str) -> Self {
        raw.and_then(|r| Self::parse(r, base_url).ok())
            .unwrap_or_else(|| Self(fallback.to_owned()))
    }

    /// The path and query.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The absolute URL on `base_url`'s origin.
    pub(crate) fn absolute(&self, base_url: &str) -> String {
        format!("{}{}", base_url.trim_end_matches('/'), self.0)
    }
}

/// The one way the app redirects: `303 See Other` to `target` if it passes
/// [`LocalTarget::parse`], else to the home page. `target` is usually the app's own path; where
/// it came from a request, it has been through [`LocalTarget::parse`] already.
pub(crate) fn see_other(base_url: &str, target: &str) -> Response {
    let target = LocalTarget::parse(target, base_url).unwrap_or_else(|refused| {
        tracing::warn!(%refused, "redirect target refused");
        LocalTarget("/".to_owned())
    });
    to_local(StatusCode::SEE_OTHER, &target)
}

/// A redirect with `status` to a checked target.
pub(crate) fn to_local(status: StatusCode, target: &LocalTarget) -> Response {
    match HeaderValue::from_str(target.as_str()) {
        Ok(location) => (status, [(header::LOCATION, location)]).into_response(),
        // A checked target holds no control character: unreachable, but closed if it were not.
        Err(_) => (status, [(header::LOCATION, HeaderValue::from_static("/"))]).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://app.example.test";

    #[test]
    fn a_local_path_with_a_query_passes_unchanged() {
        assert_eq!(
            LocalTarget::parse("/notes?q=a%20b&x=1", BASE)
                .map(|t| t.0)
                .ok(),
            Some("/notes?q=a%20b&x=1".to_owned())
        );
    }

    #[test]
    fn a_dot_segment_that_would_leave_a_double_slash_is_refused() {
        assert_eq!(
            LocalTarget::parse("/.//evil.example", BASE),
            Err(RedirectRefused::OtherOrigin)
        );
    }

    #[test]
    fn a_tab_is_refused_where_the_old_check_let_it_through() {
        assert_eq!(
            LocalTarget::parse("/\t/evil.example", BASE),
            Err(RedirectRefused::ControlOrSpace)
        );
    }
}
