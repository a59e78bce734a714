//! The fixture the account and race tests share: a directory the test can change while links
//! are pending, every service on one database, and reads of what is stored (as the test
//! superuser, outside row-level security).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use magic_auth::secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use field_crypto::{KeyMaterial, Keyring};
use magic_auth::mailer::DevOutbox;
use magic_auth::totp::{CodeCheck, TotpConfig, TotpService};
use magic_auth::{
    Account, AccountDirectory, AuthEvent, AuthEventKind, AuthEvents, EmailAddress, EmailChange,
    Limit, LinkConfig, MagicLinks, SessionConfig, SessionStore,
};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use tenant_scope::{ActorId, ActorKind, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};

/// A fixed clock for TOTP (Unix seconds).
pub const NOW: u64 = 1_900_000_020;

pub fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    Template::new("magic_auth_accounts", sql)
}

/// The application's directory, which the test changes (disable, demote) at will.
#[derive(Default)]
pub struct Directory(Mutex<HashMap<(TenantId, String), Account>>);

impl Directory {
    pub fn put(&self, tenant: TenantId, email: &str, account: Account) {
        self.0
            .lock()
            .unwrap()
            .insert((tenant, email.to_owned()), account);
    }

    /// The account with this address, as the directory holds it now.
    pub fn find_sync(&self, tenant: TenantId, email: &str) -> Option<Account> {
        self.0
            .lock()
            .unwrap()
            .get(&(tenant, email.to_owned()))
            .copied()
    }

    pub fn edit(&self, tenant: TenantId, user: ActorId, change: impl Fn(&mut Account)) {
        for ((t, _), account) in self.0.lock().unwrap().iter_mut() {
            if *t == tenant && account.user == user {
                change(account);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

impl AccountDirectory for Directory {
    type Error = Never;
    async fn find(&self, tenant: TenantId, email: &EmailAddress) -> Result<Option<Account>, Never> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(&(tenant, email.as_str().to_owned()))
            .copied())
    }
    async fn find_by_user(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<Account>, Never> {
        Ok(self
            .0
            .lock()
            .unwrap()
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
            .lock()
            .unwrap()
            .iter()
            .find(|((t, _), a)| *t == tenant && a.user == user)
            .and_then(|((_, email), _)| EmailAddress::parse(email).ok()))
    }
    async fn change_email(
        &self,
        tenant: TenantId,
        user: ActorId,
        new: &EmailAddress,
    ) -> Result<EmailChange, Never> {
        let mut all = self.0.lock().unwrap();
        let new_key = (tenant, new.as_str().to_owned());
        if all.get(&new_key).is_some_and(|a| a.user != user) {
            return Ok(EmailChange::Taken);
        }
        let Some(old_key) = all
            .iter()
            .find(|((t, _), a)| *t == tenant && a.user == user && !a.disabled)
            .map(|(k, _)| k.clone())
        else {
            return Ok(EmailChange::NoAccount);
        };
        let account = all.remove(&old_key).unwrap();
        all.insert(new_key, account);
        Ok(EmailChange::Changed)
    }
    async fn account_disabled(&self, tenant: TenantId, user: ActorId) -> Result<(), Never> {
        self.edit(tenant, user, |account| {
            *account = Account::new(account.user, account.kind, true);
        });
        Ok(())
    }
}

#[derive(Default)]
pub struct Recorder(Mutex<Vec<AuthEvent>>);

impl AuthEvents for Recorder {
    fn record(&self, event: &AuthEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Recorder {
    pub fn kinds(&self) -> Vec<AuthEventKind> {
        self.0.lock().unwrap().iter().map(|e| e.kind).collect()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

pub struct Fixture {
    pub db: TestDb,
    pub tenant: TenantId,
    pub directory: Arc<Directory>,
    pub outbox: Arc<DevOutbox>,
    pub links: Arc<MagicLinks<Directory, DevOutbox>>,
    pub sessions: SessionStore,
    pub totp: Arc<TotpService>,
    pub events: Arc<Recorder>,
    pub admin: sqlx::PgPool,
}

/// Every service on one fresh database, through a runtime pool of `connections`.
pub async fn fixture(connections: u32) -> Fixture {
    let db = fresh_database(&template()).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, connections).await)
        .await
        .unwrap();
    let events = Arc::new(Recorder::default());
    let directory = Arc::new(Directory::default());
    let outbox = Arc::new(DevOutbox::new());
    let mut config = LinkConfig::new("https://app.example.test").unwrap();
    // The tests request many links for one address on purpose.
    config.per_email = Limit::new(1_000_000, std::time::Duration::from_secs(60));
    let links = Arc::new(
        MagicLinks::new(
            pool.clone(),
            directory.clone(),
            outbox.clone(),
            config,
            Box::new([7; 32]),
        )
        .unwrap()
        .with_events(events.clone()),
    );
    let sessions = SessionStore::new(pool.clone(), SessionConfig::default(), Box::new([7; 32]))
        .unwrap()
        .with_events(events.clone());
    let mut keyring = Keyring::new();
    keyring
        .add_key(1, &KeyMaterial::from_bytes(Box::new([7; 32])))
        .unwrap();
    keyring.promote(1).unwrap();
    let totp = Arc::new(
        TotpService::new(pool, Arc::new(keyring), TotpConfig::new("Tenantguard"))
            .unwrap()
            .with_events(events.clone()),
    );
    let admin = db.pool(Role::Admin, 2).await;
    Fixture {
        db,
        tenant: TenantId::new_random(),
        directory,
        outbox,
        links,
        sessions,
        totp,
        events,
        admin,
    }
}

impl Fixture {
    /// A new account in the directory.
    pub fn account(&self, email: &str, kind: ActorKind) -> ActorId {
        let user = ActorId::new_random();
        self.directory
            .put(self.tenant, email, Account::new(user, kind, false));
        user
    }

    /// Requests a link for `email` and waits for its delivery: (token, verifier).
    pub async fn link_for(&self, email: &str) -> (String, String) {
        let request = self.links.request(self.tenant, email, None).await.unwrap();
        request.delivery.await.unwrap().unwrap();
        (
            self.newest_token(),
            request.verifier.expose_secret().to_owned(),
        )
    }

    /// The token in the newest message of the outbox.
    pub fn newest_token(&self) -> String {
        token_in_body(self.outbox.messages().last().unwrap().body.expose_secret())
    }

    /// Live sessions of `user`, as stored.
    pub async fn live_sessions(&self, user: ActorId) -> i64 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM auth.sessions WHERE tenant_id = $1 AND user_id = $2 \
             AND revoked_at IS NULL AND idle_expires_at > now() AND absolute_expires_at > now()",
        )
        .bind(self.tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_one(&self.admin)
        .await
        .unwrap();
        n
    }

    /// All sessions of `user` ever stored.
    pub async fn all_sessions(&self, user: ActorId) -> i64 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM auth.sessions WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(self.tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_one(&self.admin)
        .await
        .unwrap();
        n
    }

    /// Pending (unconsumed, not invalidated, unexpired) links of `user`, as stored.
    pub async fn pending_links(&self, user: ActorId) -> i64 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM auth.login_links WHERE tenant_id = $1 AND user_id = $2 \
             AND consumed_at IS NULL AND invalidated_at IS NULL AND expires_at > now()",
        )
        .bind(self.tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_one(&self.admin)
        .await
        .unwrap();
        n
    }

    /// Enrols `user` in TOTP (confirmed at `NOW - 60`); returns the seed.
    pub async fn enrolled(&self, user: ActorId) -> Vec<u8> {
        let e = self
            .totp
            .enroll(self.tenant, user, "ada@example.com")
            .await
            .unwrap();
        let seed = totp_rs::Secret::try_from_base32(e.secret_base32.expose_secret())
            .unwrap()
            .as_bytes()
            .to_vec();
        let code = code_at(&seed, NOW - 60).unwrap();
        assert!(matches!(
            self.totp
                .confirm(self.tenant, user, &code, NOW - 60)
                .await
                .unwrap(),
            CodeCheck::Accepted { .. }
        ));
        seed
    }
}

pub fn token_in_body(body: &str) -> String {
    let url = body.lines().find(|l| l.starts_with("https://")).unwrap();
    let url = url::Url::parse(url).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "token")
        .unwrap()
        .1
        .into_owned()
}

/// The code an authenticator shows for `seed` at `time`, as the text a user types.
pub fn code_at(seed: &[u8], time: u64) -> Result<String, magic_auth::AuthError> {
    magic_auth::totp::code_at(&seed.to_vec().into(), time)
        .map(|code| code.expose_secret().to_owned())
}

/// A code for `seed` that is wrong at `now` (and at the neighbouring steps).
pub fn wrong_code(seed: &[u8], now: u64) -> String {
    let valid: Vec<String> = [now - 30, now, now + 30]
        .iter()
        .map(|t| code_at(seed, *t).unwrap())
        .collect();
    (0u32..)
        .map(|n| format!("{:06}", (n * 7919 + 13) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap()
}

/// A transaction of the admin role bound to `tenant` (as rls-guard's binding check requires), to
/// write what an attacker with database access would write.
pub async fn bound_admin_tx(
    admin: &sqlx::PgPool,
    tenant: TenantId,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = admin.begin().await.unwrap();
    sqlx::raw_sql(&format!(
        "SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.commit_binding = '{tenant}:'"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}
