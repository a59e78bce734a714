//! Open redirects: the one redirect check against a corpus of payloads (control characters and
//! whitespace, backslashes, encoded slashes, protocol-relative and scheme URLs, userinfo, dot
//! segments), then the same corpus through the pages that carry a `next` and through the plain
//! HTTP listener. Each payload must be refused or normalised to a path on the app's own origin.
//!
//! Positive controls: every payload in `ESCAPES` really leaves the origin when a WHATWG URL
//! parser (the `url` crate, which follows the same standard as browsers) resolves it against
//! the base URL, and the check the app used before let `/\t/evil.example` through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{Browser, start};
use reference_app::App;
use tower::ServiceExt;
use url::Url;

const BASE: &str = "https://app.example.test";

/// Payloads a browser would follow to another origin (or into a script).
const ESCAPES: &[&str] = &[
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r/evil.example",
    "/\r\n/evil.example",
    "\t//evil.example",
    " //evil.example",
    "\u{0}//evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/\\/evil.example",
    "\\/evil.example",
    "//evil.example",
    "///evil.example",
    "////evil.example",
    "//evil.example/%2e%2e",
    "https://evil.example",
    "https://evil.example/notes",
    "HTTPS://EVIL.EXAMPLE/",
    "https:/\\evil.example",
    "http://app.example.test/notes",
    "https://app.example.test@evil.example/",
    "https://app.example.test:444/notes",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "java\tscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "ftp://evil.example/",
];

/// Payloads that stay on the origin in a URL parser, but are refused or must come out as a
/// plain local path: encoded slashes and backslashes, NUL and Unicode whitespace, and dot
/// segments that would leave a path starting with `//`.
const TRICKY: &[&str] = &[
    "/%2f%2fevil.example",
    "%2f%2fevil.example",
    "/%2F%2Fevil.example",
    "/%5cevil.example",
    "%5c%5cevil.example",
    "/%5c%5cevil.example",
    "/%09/evil.example",
    "/%0a/evil.example",
    "/\u{0}/evil.example",
    "/notes\u{0}",
    "/\u{3000}/evil.example",
    "/\u{a0}/evil.example",
    "/\u{2028}/evil.example",
    "/\u{85}/evil.example",
    "/\u{feff}//evil.example",
    "/\u{1b}[2J",
    "/.//evil.example",
    "/././/evil.example",
    "/notes/..//evil.example",
    "/%2e/%2fevil.example",
    "https:evil.example",
    "evil.example",
    "",
    "?next=//evil.example",
    "#//evil.example",
];

/// Local targets and what they normalise to.
const LEGITIMATE: &[(&str, &str)] = &[
    ("/notes", "/notes"),
    ("/notes?q=budget&page=2", "/notes?q=budget&page=2"),
    (
        "/staff/audit?action=note.created&before=20",
        "/staff/audit?action=note.created&before=20",
    ),
    (
        "/notes/123e4567-e89b-12d3-a456-426614174000",
        "/notes/123e4567-e89b-12d3-a456-426614174000",
    ),
    (
        "/search?q=%2F%2Fevil.example",
        "/search?q=%2F%2Fevil.example",
    ),
    ("/admin/members", "/admin/members"),
    ("https://app.example.test/notes?x=1", "/notes?x=1"),
    ("/a/../notes", "/notes"),
    ("/", "/"),
];

fn base() -> Url {
    Url::parse(BASE).unwrap()
}

/// What a browser does with a `Location` (or a link) of `target` on a page of the app.
fn followed(target: &str) -> Option<Url> {
    base().join(target).ok()
}

fn same_origin(url: &Url) -> bool {
    url.origin() == base().origin()
}

/// The closed outcome for one payload: refused, or a path that a browser resolves to the
/// app's own origin, that is already in normal form, and that holds no character a browser
/// would drop or reinterpret.
fn assert_closed(payload: &str, checked: Option<String>) {
    let Some(path) = checked else { return };
    assert!(
        path.starts_with('/') && !path.starts_with("//"),
        "{payload:?} became {path:?}"
    );
    assert!(
        !path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\'),
        "{payload:?} became {path:?}"
    );
    let url = followed(&path).unwrap();
    assert!(
        same_origin(&url),
        "{payload:?} became {path:?}, which leads to {url}"
    );
    // Normal form: checking the answer again gives the same answer.
    assert_eq!(
        reference_app::redirect_target(&path, BASE).as_deref(),
        Some(path.as_str()),
        "{payload:?}"
    );
}

#[test]
fn the_escapes_really_leave_the_origin_in_a_url_parser() {
    for payload in ESCAPES {
        let off = followed(payload).is_none_or(|u| !same_origin(&u));
        assert!(off, "{payload:?} is not an escape: the corpus has no teeth");
    }
}

#[test]
fn the_old_check_let_a_tab_through_to_another_host() {
    let old = |n: &str| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\');
    let payload = "/\t/evil.example";
    assert!(old(payload), "the old check passed it");
    assert_eq!(
        followed(payload).unwrap().host_str(),
        Some("evil.example"),
        "and a browser reads it as //evil.example"
    );
}

#[test]
fn every_escape_is_refused() {
    for payload in ESCAPES {
        assert_eq!(
            reference_app::redirect_target(payload, BASE),
            None,
            "{payload:?}"
        );
    }
}

#[test]
fn every_tricky_payload_is_refused_or_a_local_path() {
    for payload in TRICKY {
        assert_closed(payload, reference_app::redirect_target(payload, BASE));
    }
    // Whitespace and control characters are refused outright, wherever they are.
    for payload in TRICKY
        .iter()
        .filter(|p| p.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        assert_eq!(
            reference_app::redirect_target(payload, BASE),
            None,
            "{payload:?}"
        );
    }
    // A dot segment that would leave `//` at the front is refused, not passed on.
    assert_eq!(
        reference_app::redirect_target("/.//evil.example", BASE),
        None
    );
    assert_eq!(
        reference_app::redirect_target(&"/a".repeat(2000), BASE),
        None
    );
}

#[test]
fn legitimate_local_paths_with_queries_pass() {
    for (target, expected) in LEGITIMATE {
        assert_eq!(
            reference_app::redirect_target(target, BASE).as_deref(),
            Some(*expected),
            "{target:?}"
        );
    }
}

/// The hidden `next` of a code page's code form (the sign-out form in the header has its own).
fn hidden_next(body: &str) -> String {
    let form = body
        .split("action=\"/api/auth/step-up\"")
        .nth(1)
        .expect("the page has the step-up form");
    let value = form
        .split("name=\"next\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    // Undo askama's HTML escaping.
    value
        .replace("&#38;", "&")
        .replace("&#39;", "'")
        .replace("&#34;", "\"")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
}

async fn the_pages_and_the_http_listener_never_send_a_browser_elsewhere(app: &App) {
    let base = app.config.base_url.clone();
    let own = Url::parse(&base).unwrap();
    let local = |path: &str| {
        path.starts_with('/')
            && !path.starts_with("//")
            && !path.contains('\\')
            && own.join(path).unwrap().origin() == own.origin()
    };
    let mut bob = Browser::signed_in(app, "acme", "bob@acme.test").await;
    let payloads = ESCAPES.iter().chain(TRICKY).copied();
    for payload in payloads {
        let encoded: String = url::form_urlencoded::byte_serialize(payload.as_bytes()).collect();
        // The step-up page carries `next` into its form.
        let page = bob.get(&format!("/auth/step-up?next={encoded}")).await;
        if page.status == StatusCode::BAD_REQUEST {
            // Input hygiene: a control character in any field.
            assert!(page.body.contains("control character"), "{payload:?}");
            assert!(payload.chars().any(char::is_control), "{payload:?}");
            continue;
        }
        assert_eq!(page.status, StatusCode::OK, "{payload:?}");
        let next = hidden_next(&page.body);
        assert!(local(&next), "{payload:?} was carried as {next:?}");
        if ESCAPES.contains(&payload) {
            assert_eq!(next, "/notes", "{payload:?} falls back to the start page");
        }
        // A signed-in visit to the code page goes straight to `next`: checked the same way.
        let totp = bob.get(&format!("/auth/totp?next={encoded}")).await;
        if totp.status == StatusCode::SEE_OTHER {
            assert!(local(totp.location()), "{payload:?} -> {}", totp.location());
        }
        // The plain HTTP listener, for payloads that are a request target at all.
        if let Ok(request) = Request::get(payload).body(Body::empty()) {
            let answer = reference_app::redirect_app(base.clone())
                .oneshot(request)
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::PERMANENT_REDIRECT);
            let location = answer.headers()[header::LOCATION].to_str().unwrap();
            let to = Url::parse(location).unwrap();
            assert_eq!(to.origin(), own.origin(), "{payload:?} -> {location}");
            assert!(!to.path().starts_with("//"), "{payload:?} -> {location}");
        }
    }
    // Positive control: a legitimate `next` is carried as it is, and the listener keeps the path.
    let page = bob
        .get("/auth/step-up?next=%2Fnotes%3Fq%3Dbudget%26page%3D2")
        .await;
    assert_eq!(hidden_next(&page.body), "/notes?q=budget&page=2");
    let answer = reference_app::redirect_app(base.clone())
        .oneshot(Request::get("/notes?x=1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        answer.headers()[header::LOCATION],
        format!("{base}/notes?x=1")
    );
    let answer = reference_app::redirect_app(base.clone())
        .oneshot(
            Request::get("//evil.example/x")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.headers()[header::LOCATION], format!("{base}/"));
}

async fn a_confirmed_code_with_a_hostile_next_lands_on_the_start_page(app: &App) {
    let mut carol = Browser::new(app);
    let seed = carol.sign_in("globex", "carol@globex.test").await;
    // Step-up with a valid code and `next` = a protocol-relative URL: the session is renewed,
    // the browser stays home.
    let done = carol
        .send_code("/auth/step-up", &common::code(&seed, 1), "//evil.example/")
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/");
    // The payload from the issue, with a tab: refused before anything is checked.
    let tab = carol
        .send_code("/auth/step-up", "000000", "/\t/evil.example")
        .await;
    assert_eq!(tab.status, StatusCode::BAD_REQUEST);
    assert!(!tab.headers.contains_key(header::LOCATION));
}

#[tokio::test]
async fn no_redirect_of_the_app_leaves_its_origin() {
    // One app per test process (the cross-tenant authority is installed once).
    let app = start().await;
    the_pages_and_the_http_listener_never_send_a_browser_elsewhere(&app).await;
    a_confirmed_code_with_a_hostile_next_lands_on_the_start_page(&app).await;
}
