//! Feeds arbitrary `Cookie` headers to `cookie_value`, the session layer's cookie parser, and
//! round-trips tokens through `session_cookie`. Invariants:
//! - a value found is part of one header, contains no `;`, and does not depend on the order of
//!   the headers or on unrelated cookies added;
//! - a second cookie of the same name (cookie tossing) voids it;
//! - the `name=value` part of the `Set-Cookie` that `session_cookie` writes, sent back among
//!   arbitrary other cookies, yields that token or nothing, never another value.
#![no_main]

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use magic_auth::secrecy::ExposeSecret;
use magic_auth::{SESSION_COOKIE, Session, SessionToken, cookie_value, session_cookie};
use tenant_scope::{ActorId, ActorKind, TenantId};
use time::OffsetDateTime;

fn headers<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for v in values {
        map.append(COOKIE, v.clone());
    }
    map
}

fn within(found: &str, values: &[HeaderValue]) -> bool {
    let start = found.as_ptr() as usize;
    values.iter().any(|v| {
        let bytes = v.as_bytes();
        let from = bytes.as_ptr() as usize;
        start >= from && start + found.len() <= from + bytes.len()
    })
}

fn split_input(data: &[u8]) -> (String, Vec<HeaderValue>) {
    // First line: the cookie name looked for; then header values separated by 0xff.
    let (name, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"__Host-session"[..], data),
    };
    let name = String::from_utf8_lossy(name).into_owned();
    let values = rest
        .split(|&b| b == 0xff)
        .filter_map(|part| HeaderValue::from_bytes(part).ok())
        .collect();
    (name, values)
}

fuzz_target!(|data: &[u8]| {
    let (name, values) = split_input(data);
    let map = headers(&values);
    let found = cookie_value(&map, &name);
    let reversed = headers(values.iter().rev());
    assert_eq!(
        cookie_value(&reversed, &name),
        found,
        "header order changed the result"
    );
    let unrelated = format!("{}x=1", name.replace([';', '='], ""));
    if let Ok(extra) = HeaderValue::from_str(&unrelated) {
        let mut more = map.clone();
        more.append(COOKIE, extra);
        assert_eq!(
            cookie_value(&more, &name),
            found,
            "an unrelated cookie changed the result"
        );
    }
    if let Some(value) = found {
        assert!(!value.contains(';'), "{value:?}");
        assert!(within(value, &values), "the value is not part of a header");
        if let Ok(tossed) = HeaderValue::from_str(&format!("{name}=tossed")) {
            let mut more = map.clone();
            more.append(COOKIE, tossed);
            assert_eq!(
                cookie_value(&more, &name),
                None,
                "a tossed duplicate was not refused"
            );
        }
    }

    // Round trip: a session cookie, sent back among the fuzzed cookies.
    if data.len() < 16 {
        return;
    }
    let tenant_bytes: [u8; 16] = data[..16].try_into().unwrap_or([1; 16]);
    let Ok(tenant) = TenantId::from_uuid(uuid::Uuid::from_bytes(tenant_bytes)) else {
        return;
    };
    let Ok(token) = SessionToken::generate(tenant) else {
        return;
    };
    let session = Session::new(
        tenant,
        token.id(),
        ActorId::new_random(),
        ActorKind::User,
        magic_auth::Assurance::Aal1,
        OffsetDateTime::now_utc(),
        &magic_auth::SessionConfig::default(),
    )
    .expect("a session of the default lifetime");
    let set_cookie = session_cookie(&token, &session);
    let set_cookie = set_cookie.to_str().expect("Set-Cookie is visible ASCII");
    let pair = set_cookie.split(';').next().unwrap_or_default();
    let expected = token.to_cookie_value();
    assert_eq!(pair, format!("{SESSION_COOKIE}={}", expected.expose_secret()));
    let mut sent: Vec<HeaderValue> = values.clone();
    let at = usize::from(data[0]) % (sent.len() + 1);
    sent.insert(
        at,
        HeaderValue::from_str(pair).expect("the pair is a header value"),
    );
    let map = headers(&sent);
    match cookie_value(&map, SESSION_COOKIE) {
        None => {}
        Some(value) => {
            assert_eq!(value, expected.expose_secret(), "another session cookie was taken");
            let parsed =
                SessionToken::parse(&value.into()).expect("the written token parses");
            assert_eq!((parsed.tenant(), parsed.id()), (token.tenant(), token.id()));
            assert_eq!(
                parsed.to_cookie_value().expose_secret(),
                token.to_cookie_value().expose_secret()
            );
        }
    }
    // Alone, it is always found.
    let alone = headers(std::iter::once(&HeaderValue::from_str(pair).unwrap()));
    assert_eq!(
        cookie_value(&alone, SESSION_COOKIE),
        Some(expected.expose_secret())
    );
});
