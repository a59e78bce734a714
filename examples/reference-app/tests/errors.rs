//! The error paths over HTTP: an expired link, wrong codes up to the lockout (spread over two
//! instances, and holding on both), a session revoked
//! through one app instance refused by another on the same database (and the link rate limit
//! shared by both), a stale second factor at a sensitive route, and the assistant's fetch of a
//! metadata address refused by the egress guard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::{Browser, as_admin_in, start};
use uuid::Uuid;

#[tokio::test]
async fn error_paths_answer_closed_and_hold_across_instances() {
    let app = start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;

    // 1. An expired link signs nobody in.
    let mut bob = Browser::new(&app);
    let before = app.outbox_links().len();
    bob.ask_link("acme", "bob@acme.test").await;
    for _ in 0..200 {
        if app.outbox_links().len() > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let token = app
        .outbox_links()
        .last()
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap()
        .to_owned();
    let expired = as_admin_in(
        &admin,
        "acme",
        "UPDATE auth.login_links SET created_at = now() - interval '1 hour', expires_at = now() - interval '1 second' \
         WHERE user_id = (SELECT user_id FROM workspace.members WHERE email = $1)",
        "bob@acme.test",
    )
    .await;
    assert_eq!(expired, 1);
    let refused = bob.confirm_link(&token).await;
    assert_eq!(refused.location(), "/?error=link_invalid");
    let page = bob.get(refused.location()).await;
    assert!(page.body.contains("expired"), "the page says why in words");
    assert!(!bob.cookies.contains_key("__Host-session"));

    // A second instance on the same database, as a second replica behind a load balancer.
    let other = app.second_instance().await.unwrap();

    // 2. Wrong codes, spread over both instances: after five, the account is locked — even the
    //    right code is refused, by either instance.
    let mut alice = Browser::new(&app);
    let confirmed = alice.open_link("acme", "alice@acme.test").await;
    assert_eq!(confirmed.status, StatusCode::SEE_OTHER);
    let seed = alice.enrol_totp("/notes").await;
    let (name, value) = app
        .mint_session("acme", "alice@acme.test", false)
        .await
        .unwrap()
        .split_once('=')
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .unwrap();
    let mut second_device = Browser::new(&app);
    second_device.cookies.insert(name, value);
    let mut second_device_elsewhere = Browser::new(&other);
    second_device_elsewhere.cookies = second_device.cookies.clone();
    for i in 0..5 {
        let device = if i % 2 == 0 {
            &mut second_device
        } else {
            &mut second_device_elsewhere
        };
        let wrong = device.send_code("/auth/totp", "000000", "/notes").await;
        assert_eq!(wrong.status, StatusCode::SEE_OTHER);
        assert!(wrong.location().contains("error="), "{}", wrong.location());
    }
    // The lock also signed the account out everywhere (magic-auth ends every session in the
    // transaction that locks): the right code finds no session on either instance.
    for device in [&mut second_device, &mut second_device_elsewhere] {
        let right = device
            .send_code("/auth/totp", &common::code(&seed, 1), "/notes")
            .await;
        assert_eq!(
            right.location(),
            "/auth/totp?next=%2Fnotes&error=unauthenticated",
            "{}",
            right.body
        );
        let page = device.get(right.location()).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
        assert!(page.body.contains("Sign in to continue"), "{}", page.body);
    }
    assert_eq!(
        second_device.get("/notes").await.status,
        StatusCode::UNAUTHORIZED
    );
    let (locked,): (bool,) = sqlx::query_as(
        "SELECT locked_until > now() FROM auth.totp t JOIN workspace.members m \
         ON m.tenant_id = t.tenant_id AND m.user_id = t.user_id WHERE m.email = 'alice@acme.test'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(locked);

    // 3. Across the two instances: a session revoked through one is refused by the other at
    //    once, and the per-address link limit counts requests made to both.
    let mut carol = Browser::signed_in(&app, "globex", "carol@globex.test").await;
    let mut carol_elsewhere = Browser::new(&other);
    carol_elsewhere.cookies = carol.cookies.clone();
    assert_eq!(carol_elsewhere.get("/notes").await.status, StatusCode::OK);
    assert_eq!(
        carol
            .post("/api/auth/sign-out", &[("next", "/")])
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        carol_elsewhere.get("/notes").await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut first = Browser::new(&app);
    let mut second = Browser::new(&other);
    let mut limited = false;
    for i in 0..12 {
        let browser = if i % 2 == 0 { &mut first } else { &mut second };
        let page = browser.ask_link("globex", "shared@globex.test").await;
        if page.location() == "/?error=rate_limited" {
            limited = true;
            break;
        }
        assert_eq!(page.location(), "/?sent=1");
    }
    assert!(
        limited,
        "the limit is in the database, not in one instance's memory"
    );

    // 4. A stale second factor at a sensitive route: 403, and (a form in a browser) the
    //    step-up form in place of the action.
    let mut sam = Browser::signed_in(&app, "ops", "sam@ops.test").await;
    sam.stale_second_factor("ops", "sam@ops.test").await;
    let refused = sam
        .post(
            &format!("/staff/approvals/acme/{}/approve", Uuid::new_v4()),
            &[
                ("digest", &"00".repeat(32)),
                ("reason", "checking the stale factor path"),
            ],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.body.contains("action=\"/api/auth/step-up\"")
            && refused.body.contains("Confirm it is you"),
        "{}",
        refused.body
    );

    // 5. The assistant asked to fetch the cloud metadata endpoint: refused by the egress guard,
    //    recorded as egress.denied with the agent as actor; the turn goes on.
    let mut dave = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    let run = dave
        .post(
            "/assistant",
            &[(
                "prompt",
                "Summarise http://169.254.169.254/latest/meta-data/iam/",
            )],
        )
        .await;
    assert_eq!(run.status, StatusCode::OK);
    assert!(run.body.contains("failed: egress_denied"), "{}", run.body);
    assert!(
        run.body.contains("Done."),
        "the turn continued after the refusal: {}",
        run.body
    );
    common::sequence_all(&admin).await;
    let (denied,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit.events WHERE action = 'egress.denied' AND actor_kind = 'agent'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(denied, 1);

    // 6. The per-client link limit: the app terminates TLS, so the peer address is the client.
    one_client_asking_for_links_to_many_addresses_is_limited(&app).await;
}

/// One link request from `client` for a fresh address.
async fn link_request_from(app: &reference_app::App, client: std::net::SocketAddr) -> StatusCode {
    use axum::body::Body;
    use axum::http::{Request, header};
    use tower::ServiceExt;
    let form = format!(
        "workspace=acme&email=someone-{}%40acme.test",
        Uuid::new_v4().simple()
    );
    let request = Request::builder()
        .method("POST")
        .uri("/api/auth/link")
        .header(header::ORIGIN, app.config.base_url.as_str())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .extension(axum::extract::ConnectInfo(client))
        .body(Body::from(form))
        .unwrap();
    app.router.clone().oneshot(request).await.unwrap().status()
}

/// One client asking for links to many addresses is limited, another client is not.
async fn one_client_asking_for_links_to_many_addresses_is_limited(app: &reference_app::App) {
    let noisy: std::net::SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let mut limited_at = None;
    for i in 1..=40 {
        let status = link_request_from(app, noisy).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited_at = Some(i);
            break;
        }
        assert_eq!(status, StatusCode::SEE_OTHER);
    }
    // 30 per 15 minutes per client address, whatever the addresses asked for.
    assert_eq!(limited_at, Some(31));
    // Another client is not affected.
    let other: std::net::SocketAddr = "198.51.100.4:40000".parse().unwrap();
    assert_eq!(link_request_from(app, other).await, StatusCode::SEE_OTHER);
}
