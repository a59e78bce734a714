//! Magic links against a real PostgreSQL: enumeration, single use, browser binding, expiry,
//! supersession, crafted addresses and delivery failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use magic_auth::secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use magic_auth::mailer::{DevOutbox, Mailer, Message};
use magic_auth::{
    Account, AccountDirectory, AuthError, Delivery, EmailAddress, EmailPolicy, Limit, LinkConfig,
    MagicLinks,
};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use tenant_scope::{ActorId, ActorKind, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};

fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    Template::new("magic_auth_links", sql)
}

#[derive(Default)]
struct Directory(HashMap<(TenantId, String), Account>);

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl AccountDirectory for Directory {
    type Error = Never;
    async fn find(&self, tenant: TenantId, email: &EmailAddress) -> Result<Option<Account>, Never> {
        Ok(self.0.get(&(tenant, email.as_str().to_owned())).copied())
    }
    async fn find_by_user(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<Account>, Never> {
        Ok(self
            .0
            .iter()
            .find(|((t, _), a)| *t == tenant && a.user == user)
            .map(|(_, a)| *a))
    }
    async fn address_of(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<EmailAddress>, Never> {
        Ok(self
            .0
            .iter()
            .find(|((t, _), a)| *t == tenant && a.user == user)
            .and_then(|((_, email), _)| EmailAddress::parse(email).ok()))
    }
    // These tests never change an address.
    async fn change_email(
        &self,
        _: TenantId,
        _: ActorId,
        _: &EmailAddress,
    ) -> Result<magic_auth::EmailChange, Never> {
        Ok(magic_auth::EmailChange::NoAccount)
    }
}

struct Fixture {
    db: TestDb,
    links: MagicLinks<Directory, DevOutbox>,
    outbox: Arc<DevOutbox>,
    tenant: TenantId,
    ada: ActorId,
}

async fn fixture(ttl: Duration) -> Fixture {
    fixture_with(|config| config.ttl = ttl).await
}

async fn fixture_with(edit: impl FnOnce(&mut LinkConfig)) -> Fixture {
    let db = fresh_database(&template()).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 4).await)
        .await
        .unwrap();
    let tenant = TenantId::new_random();
    let ada = ActorId::new_random();
    let mut dir = Directory::default();
    dir.0.insert(
        (tenant, "ada@example.com".into()),
        Account::new(ada, ActorKind::Staff, false),
    );
    dir.0.insert(
        (tenant, "gone@example.com".into()),
        Account::new(ActorId::new_random(), ActorKind::User, true),
    );
    let outbox = Arc::new(DevOutbox::new());
    let mut config = LinkConfig::new("https://app.example.test").unwrap();
    edit(&mut config);
    let links = MagicLinks::new(
        pool,
        Arc::new(dir),
        outbox.clone(),
        config,
        Box::new([7; 32]),
    )
    .unwrap();
    Fixture {
        db,
        links,
        outbox,
        tenant,
        ada,
    }
}

/// The token in the newest message.
fn token_in(outbox: &DevOutbox) -> String {
    let body = outbox
        .messages()
        .last()
        .unwrap()
        .body
        .expose_secret()
        .to_owned();
    let url = body.lines().find(|l| l.starts_with("https://")).unwrap();
    let url = url::Url::parse(url).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "token")
        .unwrap()
        .1
        .into_owned()
}

#[tokio::test]
async fn known_and_unknown_addresses_get_the_same_answer_and_only_known_ones_get_mail() {
    let f = fixture(Duration::from_secs(900)).await;
    let known = f
        .links
        .request(f.tenant, "Ada@Example.com", None)
        .await
        .unwrap();
    let unknown = f
        .links
        .request(f.tenant, "nobody@example.com", None)
        .await
        .unwrap();
    let disabled = f
        .links
        .request(f.tenant, "gone@example.com", None)
        .await
        .unwrap();
    // The verifier is a SecretString: neither it nor the answer holding it shows it.
    let verifier = known.verifier.expose_secret();
    let shown = format!("{known:?} {:?}", known.verifier);
    assert!(
        !shown.contains(verifier) && !shown.contains(&verifier[..8]),
        "{shown}"
    );
    // The synchronous answer is a verifier of the same shape in every case.
    for r in [&known, &disabled] {
        assert_eq!(
            r.verifier.expose_secret().len(),
            unknown.verifier.expose_secret().len()
        );
    }
    assert_eq!(known.delivery.await.unwrap().unwrap(), Delivery::Sent);
    assert_eq!(
        unknown.delivery.await.unwrap().unwrap(),
        Delivery::NoAccount
    );
    assert_eq!(
        disabled.delivery.await.unwrap().unwrap(),
        Delivery::NoAccount
    );
    let messages = f.outbox.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].to.as_str(), "ada@example.com");
    // Built from the configured base URL.
    assert!(
        messages[0]
            .body
            .expose_secret()
            .contains("https://app.example.test/auth/link?token=l1.")
    );
    assert!(!format!("{:?}", messages[0]).contains("token="));
    assert!(!format!("{:?}", messages[0].body).contains("token="));
}

#[tokio::test]
async fn a_link_works_once_from_the_browser_that_asked_and_is_stored_only_as_hashes() {
    let f = fixture(Duration::from_secs(900)).await;
    let r = f
        .links
        .request(f.tenant, "ada@example.com", None)
        .await
        .unwrap();
    r.delivery.await.unwrap().unwrap();
    let token = token_in(&f.outbox);
    // Another browser (a forwarded link, a scanner): refused, and the link is not burnt.
    let other_browser = "0".repeat(64);
    assert!(matches!(
        f.links.confirm(token.clone(), other_browser.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    assert!(matches!(
        f.links.confirm(token.clone(), "").await,
        Err(AuthError::InvalidLink)
    ));
    let sign_in = f
        .links
        .confirm(token.clone(), r.verifier.clone())
        .await
        .unwrap();
    assert_eq!(
        (sign_in.tenant, sign_in.user, sign_in.kind),
        (f.tenant, f.ada, ActorKind::Staff)
    );
    // Single use.
    assert!(matches!(
        f.links.confirm(token.clone(), r.verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    // Only hashes in the table.
    let admin = f.db.pool(Role::Admin, 1).await;
    let (row,): (String,) = sqlx::query_as("SELECT l::text FROM auth.login_links l")
        .fetch_one(&admin)
        .await
        .unwrap();
    let secret = token.rsplit('.').next().unwrap();
    assert!(
        !row.contains(secret) && !row.contains(r.verifier.expose_secret()),
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_clicks_yield_one_sign_in() {
    let f = fixture(Duration::from_secs(900)).await;
    let r = f
        .links
        .request(f.tenant, "ada@example.com", None)
        .await
        .unwrap();
    r.delivery.await.unwrap().unwrap();
    let token = token_in(&f.outbox);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (links, token, verifier) = (
            f.links.clone(),
            token.clone(),
            r.verifier.expose_secret().to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            links.confirm(token.clone(), verifier.clone()).await.is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn a_newer_request_supersedes_the_older_link_and_links_expire() {
    let f = fixture(Duration::from_secs(2)).await;
    let first = f
        .links
        .request(f.tenant, "ada@example.com", None)
        .await
        .unwrap();
    first.delivery.await.unwrap().unwrap();
    let old = token_in(&f.outbox);
    let second = f
        .links
        .request(f.tenant, "ada@example.com", None)
        .await
        .unwrap();
    second.delivery.await.unwrap().unwrap();
    let new = token_in(&f.outbox);
    assert_ne!(old, new);
    assert!(matches!(
        f.links.confirm(old.clone(), first.verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(matches!(
        f.links.confirm(new.clone(), second.verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));
}

#[tokio::test]
async fn malformed_and_over_long_tokens_are_invalid_links() {
    let f = fixture(Duration::from_secs(900)).await;
    let session_shaped = magic_auth::SessionToken::generate(f.tenant)
        .unwrap()
        .to_cookie_value();
    for token in [
        String::new(),
        "l1".into(),
        "x".repeat(50_000),
        session_shaped.expose_secret().to_owned(),
    ] {
        assert!(matches!(
            f.links.confirm(token.clone(), "v").await,
            Err(AuthError::InvalidLink)
        ));
    }
}

#[tokio::test]
async fn crafted_addresses_are_refused_before_any_lookup_or_mail() {
    let f = fixture(Duration::from_secs(900)).await;
    for email in [
        "ada@example.com\r\nBcc: all@example.com",
        "\"ada@example.com\"@evil.example",
        "ada\u{FF20}example.com",
    ] {
        assert!(matches!(
            f.links.request(f.tenant, email, None).await,
            Err(AuthError::InvalidEmail)
        ));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(f.outbox.messages().is_empty());
}

struct Failing;

#[derive(Debug, thiserror::Error)]
#[error("smtp down")]
struct Down;

impl Mailer for Failing {
    type Error = Down;
    async fn send(&self, _message: Message) -> Result<(), Down> {
        Err(Down)
    }
}

#[tokio::test]
async fn a_failed_delivery_is_reported_to_the_app_and_leaves_no_usable_link() {
    let db = fresh_database(&template()).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 2).await)
        .await
        .unwrap();
    let tenant = TenantId::new_random();
    let mut dir = Directory::default();
    dir.0.insert(
        (tenant, "ada@example.com".into()),
        Account::new(ActorId::new_random(), ActorKind::User, false),
    );
    let links = MagicLinks::new(
        pool,
        Arc::new(dir),
        Arc::new(Failing),
        LinkConfig::new("https://app.example.test").unwrap(),
        Box::new([7; 32]),
    )
    .unwrap();
    let r = links
        .request(tenant, "ada@example.com", None)
        .await
        .unwrap();
    assert!(matches!(
        r.delivery.await.unwrap(),
        Err(AuthError::Delivery)
    ));
    let admin = db.pool(Role::Admin, 1).await;
    let (usable,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM auth.login_links WHERE invalidated_at IS NULL AND consumed_at IS NULL",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(usable, 0);
}

#[test]
fn base_urls_must_be_https_or_loopback_http() {
    assert!(LinkConfig::new("https://app.example.com").is_ok());
    assert!(LinkConfig::new("http://localhost:8443").is_ok());
    for bad in [
        "http://app.example.com",
        "https://app.example.com/?x=1",
        "ftp://x",
        "/relative",
    ] {
        assert!(LinkConfig::new(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn link_requests_are_rate_limited_per_address_and_per_client_alike_for_unknown_accounts() {
    let f = fixture(Duration::from_secs(900)).await;
    // Per address: 5 in the window, whether or not the account exists.
    for email in ["ada@example.com", "nobody@example.com"] {
        for _ in 0..5 {
            let r = f.links.request(f.tenant, email, None).await.unwrap();
            r.delivery.await.unwrap().unwrap();
        }
        assert!(matches!(
            f.links.request(f.tenant, email, None).await,
            Err(AuthError::RateLimited { .. })
        ));
    }
    // Normalisation cannot be used to dodge it.
    assert!(matches!(
        f.links.request(f.tenant, " ADA@example.COM ", None).await,
        Err(AuthError::RateLimited { .. })
    ));
    // Per client address: 30 in the window across addresses.
    let ip: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    for i in 0..30 {
        f.links
            .request(f.tenant, &format!("u{i}@example.com"), Some(ip))
            .await
            .unwrap();
    }
    assert!(matches!(
        f.links
            .request(f.tenant, "fresh@example.com", Some(ip))
            .await,
        Err(AuthError::RateLimited { .. })
    ));
    // Another tenant's counters are its own.
    let other = TenantId::new_random();
    assert!(
        f.links
            .request(other, "ada@example.com", Some(ip))
            .await
            .is_ok()
    );
    // The table holds no addresses.
    let admin = f.db.pool(Role::Admin, 1).await;
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM auth.rate_limits")
        .fetch_all(&admin)
        .await
        .unwrap();
    assert!(keys.iter().all(|k| !k.contains('@')), "{keys:?}");
}

#[tokio::test]
async fn forty_requests_from_one_ipv6_64_are_limited_while_another_64_is_not() {
    let f = fixture(Duration::from_secs(900)).await;
    // 40 requests, each from another address of one /64 (and for another email address, so
    // the per-address limit stays out of it): the 31st and later are refused.
    let mut limited = 0;
    for i in 0..40u16 {
        let ip = std::net::IpAddr::from([0x2001, 0xdb8, 0xa, 0xb, i, 0xffff, i, 1]);
        match f
            .links
            .request(f.tenant, &format!("v6-{i}@example.com"), Some(ip))
            .await
        {
            Ok(_) => assert!(i < 30, "request {i} from the same /64 was allowed"),
            Err(AuthError::RateLimited { .. }) => limited += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(limited, 10);
    // The control: the neighbouring /64 is another client.
    let neighbour: std::net::IpAddr = "2001:db8:a:c::1".parse().unwrap();
    assert!(
        f.links
            .request(f.tenant, "neighbour@example.com", Some(neighbour))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn the_ipv6_prefix_is_configurable() {
    let f = fixture_with(|c| {
        c.ipv6_prefix = 128;
        c.per_ip.max = 2;
    })
    .await;
    for i in 0..3u16 {
        let ip = std::net::IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i]);
        // Each address is a client of its own at /128.
        assert!(
            f.links
                .request(f.tenant, &format!("p{i}@example.com"), Some(ip))
                .await
                .is_ok()
        );
    }
}

#[tokio::test]
async fn an_ipv4_mapped_address_is_counted_as_its_ipv4_address() {
    let f = fixture_with(|c| c.per_ip.max = 3).await;
    let v4: std::net::IpAddr = "192.0.2.9".parse().unwrap();
    let mapped: std::net::IpAddr = "::ffff:192.0.2.9".parse().unwrap();
    for (i, ip) in [v4, mapped, v4].into_iter().enumerate() {
        assert!(
            f.links
                .request(f.tenant, &format!("m{i}@example.com"), Some(ip))
                .await
                .is_ok()
        );
    }
    // The fourth request from the same IPv4 client, written as IPv4-mapped IPv6: refused.
    assert!(matches!(
        f.links
            .request(f.tenant, "m3@example.com", Some(mapped))
            .await,
        Err(AuthError::RateLimited { .. })
    ));
    // The control: another IPv4 client is not limited.
    let other: std::net::IpAddr = "192.0.2.10".parse().unwrap();
    assert!(
        f.links
            .request(f.tenant, "m4@example.com", Some(other))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn each_refused_email_shape_is_refused_before_any_lookup_or_mail() {
    let f = fixture(Duration::from_secs(900)).await;
    for email in [
        "=?utf-8?q?ada=40example.com?=@evil.example",
        "\"ada\"@example.com",
        "ada(comment)@example.com",
        "@relay.example:ada@example.com",
        "ada%example.com@evil.example",
        "example.com!ada@evil.example",
        "ada@[192.0.2.1]",
        "ada@[IPv6:2001:db8::1]",
        "ada@192.0.2.1",
        "Ada <ada@example.com>",
    ] {
        assert!(
            matches!(
                f.links.request(f.tenant, email, None).await,
                Err(AuthError::InvalidEmail)
            ),
            "{email:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(f.outbox.messages().is_empty());
    // The control: the plain address gets its link.
    let r = f
        .links
        .request(f.tenant, "Ada@Example.com", None)
        .await
        .unwrap();
    assert_eq!(r.delivery.await.unwrap().unwrap(), Delivery::Sent);
    assert_eq!(f.outbox.messages().len(), 1);
}

#[tokio::test]
async fn ip_literal_domains_are_accepted_only_when_configured() {
    let f = fixture_with(|c| c.email = EmailPolicy::new().with_ip_literals()).await;
    let r = f
        .links
        .request(f.tenant, "ops@[192.0.2.1]", None)
        .await
        .unwrap();
    assert_eq!(r.delivery.await.unwrap().unwrap(), Delivery::NoAccount);
    // Encoded-words and the rest stay refused under that policy.
    assert!(matches!(
        f.links
            .request(f.tenant, "=?utf-8?q?x?=@[192.0.2.1]", None)
            .await,
        Err(AuthError::InvalidEmail)
    ));
}

#[tokio::test]
async fn nonsensical_link_configs_are_refused_when_the_service_is_built() {
    let db = fresh_database(&template()).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 1).await)
        .await
        .unwrap();
    let build = |config: LinkConfig| {
        MagicLinks::new(
            pool.clone(),
            Arc::new(Directory::default()),
            Arc::new(DevOutbox::new()),
            config,
            Box::new([7; 32]),
        )
    };
    // The control: the defaults build.
    let ok = LinkConfig::new("https://app.example.test").unwrap();
    assert!(build(ok.clone()).is_ok());
    let limit = |max: u32, window: Duration| Limit::new(max, window);
    type Edit = Box<dyn Fn(&mut LinkConfig)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("zero ttl", Box::new(|c| c.ttl = Duration::ZERO)),
        ("overflowing ttl", Box::new(|c| c.ttl = Duration::MAX)),
        (
            "ttl over a day",
            Box::new(|c| c.ttl = Duration::from_secs(86_401)),
        ),
        (
            "per-address max 0",
            Box::new(move |c| c.per_email = limit(0, Duration::from_secs(60))),
        ),
        (
            "per-client zero window",
            Box::new(move |c| c.per_ip = limit(30, Duration::ZERO)),
        ),
        (
            "per-client overflowing window",
            Box::new(move |c| c.per_ip = limit(30, Duration::MAX)),
        ),
        (
            "per-client max over the counter",
            Box::new(move |c| c.per_ip = limit(u32::MAX, Duration::from_secs(60))),
        ),
        ("ipv6 prefix 0", Box::new(|c| c.ipv6_prefix = 0)),
        ("ipv6 prefix 16", Box::new(|c| c.ipv6_prefix = 16)),
        ("ipv6 prefix 129", Box::new(|c| c.ipv6_prefix = 129)),
        (
            "landing path with a query",
            Box::new(|c| c.landing_path = "/auth/link?x=1".into()),
        ),
        (
            "landing path to another host",
            Box::new(|c| c.landing_path = "//evil.example/".into()),
        ),
        (
            "subject with a header",
            Box::new(|c| c.subject = "Hi\r\nBcc: all@example.com".into()),
        ),
        (
            "plain-http base URL",
            Box::new(|c| c.base_url = url::Url::parse("http://app.example.test").unwrap()),
        ),
    ];
    for (what, edit) in edits {
        let mut config = ok.clone();
        edit(&mut config);
        assert!(
            matches!(build(config), Err(AuthError::InvalidConfig(_))),
            "{what} was accepted"
        );
    }
}
