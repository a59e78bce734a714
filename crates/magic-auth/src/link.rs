//! Email magic links: requested without revealing whether an account exists, bound to the
//! browser that asked, single use, short-lived, and superseded by a newer request.
//!
//! Flow (the HTTP glue is the application's; `tests/flow.rs` shows one):
//! 1. `POST /auth/request` → [`MagicLinks::request`]. The answer is the same for every
//!    well-formed address: the account lookup, the link and the email happen in a background
//!    task, so neither the body, the status, the headers nor the timing depend on whether the
//!    account exists. The answer sets the returned verifier as a `__Host-` cookie.
//! 2. The email holds `<base URL><landing path>?token=...`, built from the configured base URL,
//!    never from a request's `Host` header.
//! 3. `GET`/`HEAD` on the landing page shows a form that `POST`s the token back; it must not call
//!    anything here, so an email scanner that fetches the link neither signs in nor burns it.
//!    Answer it with `Referrer-Policy: no-referrer`.
//! 4. `POST` → [`MagicLinks::confirm`] with the token and the verifier cookie: the link must be
//!    unexpired, unused, not superseded, and confirmed from the browser that requested it; it is
//!    consumed under a row lock, so two concurrent clicks yield one sign-in. A failed
//!    confirmation (wrong browser, wrong secret) does not consume it. The account is read
//!    again ([`AccountDirectory::find_by_user`]): the sign-in is for what it is now, or
//!    refused. Then [`SessionStore::sign_in`](crate::SessionStore::sign_in) creates the
//!    session, unless the account was disabled or signed out everywhere since.
//!
//! A link is pending until it is used, expires, or is invalidated: by a newer request for the
//! account (requests take turns on the account's lock, and a partial unique index allows one
//! pending link per account), by [`MagicLinks::invalidate_links`],
//! [`SessionStore::revoke_all`](crate::SessionStore::revoke_all),
//! [`SessionStore::disable_account`](crate::SessionStore::disable_account), a TOTP lockout, or
//! a failed delivery.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rls_guard::TenantPool;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use subtle::ConstantTimeEq;
use tenant_scope::{ActorId, ActorKind, TenantContext, TenantId};
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::AuthError;
use crate::account;
use crate::email::{EmailAddress, EmailPolicy};
use crate::events::{AuthEventKind, AuthEvents, EventSink};
use crate::limit::{DEFAULT_IPV6_PREFIX, Hit, Limit, MIN_IPV6_PREFIX, RateLimiter, client_key};
use crate::mailer::{Mailer, Message, Notice};
use crate::session::{Session, micros, report_ended, row_hmac};
use crate::token::{SessionToken, hash_secret, into_secret, random_secret};

const LINK_PREFIX: &str = "l1";
const LINK_DOMAIN: &[u8] = b"magic-auth/link/v1\n";
const VERIFIER_DOMAIN: &[u8] = b"magic-auth/link-verifier/v1\n";
const RATE_KEY_DOMAIN: &[u8] = b"magic-auth/rate-key/v1\n";
const EMAIL_CHANGE_PREFIX: &str = "e1";
const EMAIL_CHANGE_DOMAIN: &[u8] = b"magic-auth/email-change/v1\n";
/// The domain of a link row's MAC.
const LINK_ROW_MAC_DOMAIN: &[u8] = b"magic-auth/link-row/v1\n";
/// The domain of an e-mail change row's MAC.
const EMAIL_CHANGE_ROW_MAC_DOMAIN: &[u8] = b"magic-auth/email-change-row/v1\n";

/// The MAC of an e-mail change row under the row key: whose change it is, the session that
/// asked (after its step-up), the new address, the token's hash and its lifetime.
#[allow(clippy::too_many_arguments)]
fn email_change_row_mac(
    key: &SecretBox<[u8; 32]>,
    tenant: TenantId,
    id: Uuid,
    user: Uuid,
    session: Uuid,
    new_email: &str,
    secret_hash: &[u8],
    (created_at, expires_at): (OffsetDateTime, OffsetDateTime),
) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut mac = row_hmac(key, EMAIL_CHANGE_ROW_MAC_DOMAIN);
    mac.update(tenant.as_uuid().as_bytes());
    mac.update(id.as_bytes());
    mac.update(user.as_bytes());
    mac.update(session.as_bytes());
    mac.update(secret_hash);
    mac.update(&micros(created_at));
    mac.update(&micros(expires_at));
    // Last, so no other field's bytes can be read as part of it.
    mac.update(new_email.as_bytes());
    mac
}

/// What a link row's MAC covers: whose link it is, its secrets and its lifetime (everything
/// but whether it was used, which the database's trigger lets move only once).
struct LinkFacts<'a> {
    tenant: TenantId,
    id: Uuid,
    user: Uuid,
    kind: &'a str,
    secret_hash: &'a [u8],
    verifier_hash: &'a [u8],
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

/// The MAC of a link row's facts under the row key.
fn link_row_mac(key: &SecretBox<[u8; 32]>, facts: &LinkFacts<'_>) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut mac = row_hmac(key, LINK_ROW_MAC_DOMAIN);
    mac.update(facts.tenant.as_uuid().as_bytes());
    mac.update(facts.id.as_bytes());
    mac.update(facts.user.as_bytes());
    mac.update(&[u8::from(facts.kind == "staff")]);
    mac.update(facts.secret_hash);
    mac.update(facts.verifier_hash);
    mac.update(&micros(facts.created_at));
    mac.update(&micros(facts.expires_at));
    mac
}

/// An account that may sign in, as the application's directory knows it ([`Account::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Account {
    /// The user.
    pub user: ActorId,
    /// `User` or `Staff`.
    pub kind: ActorKind,
    /// A disabled account gets no link (and the requester cannot tell), and a link it was
    /// sent before is refused when confirmed.
    pub disabled: bool,
}

impl Account {
    /// `user`, a `kind` account, disabled for sign-in or not.
    #[must_use]
    pub const fn new(user: ActorId, kind: ActorKind, disabled: bool) -> Self {
        Self {
            user,
            kind,
            disabled,
        }
    }
}

/// Finds accounts, per tenant: by normalised email address when a link is requested, and by
/// user when it is confirmed (a link follows the account as it is then). The application
/// implements it.
pub trait AccountDirectory: Send + Sync + 'static {
    /// Why a lookup failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The account with this address in `tenant`, if any.
    fn find(
        &self,
        tenant: TenantId,
        email: &EmailAddress,
    ) -> impl Future<Output = Result<Option<Account>, Self::Error>> + Send;

    /// The account `user` in `tenant` as it is now, if it still exists. Called by
    /// [`MagicLinks::confirm`] at every confirmation: a missing or disabled account, an account
    /// whose `user` is not `user`, and an error all refuse the sign-in.
    fn find_by_user(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> impl Future<Output = Result<Option<Account>, Self::Error>> + Send;

    /// The current address of account `user` in `tenant`, if the account exists. Called by
    /// [`MagicLinks::request_email_change`] (the old address gets a notice) and
    /// [`MagicLinks::confirm_email_change`].
    fn address_of(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> impl Future<Output = Result<Option<EmailAddress>, Self::Error>> + Send;

    /// Sets the address of account `user` in `tenant` to `new`: called once, by
    /// [`MagicLinks::confirm_email_change`], only after the single-use confirmation token bound
    /// to `(tenant, user, new)` and to the requesting session was verified and used up.
    ///
    /// Contract: atomic; from then on [`AccountDirectory::find`] finds the account by `new`
    /// and no longer by its old address. [`EmailChange::Taken`] (nothing changed) when another
    /// account of `tenant` holds `new`; [`EmailChange::NoAccount`] (nothing changed) when
    /// `user` is missing or disabled; [`EmailChange::Changed`] otherwise (also when the
    /// address already was `new`). Never changes another account or tenant.
    fn change_email(
        &self,
        tenant: TenantId,
        user: ActorId,
        new: &EmailAddress,
    ) -> impl Future<Output = Result<EmailChange, Self::Error>> + Send;

    /// Told that account `user` in `tenant` was disabled, by
    /// [`SignInRoutes`](crate::routes::SignInRoutes)' `POST /account/disable`, after
    /// [`SessionStore::disable_account`](crate::SessionStore::disable_account) committed: so
    /// that the application's own record can follow (a flag its pages show, or that
    /// [`AccountDirectory::find`] reports as [`Account::disabled`]). magic-auth refuses every
    /// sign-in of the account whatever this does; an error is logged. The default does
    /// nothing.
    fn account_disabled(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (tenant, user);
        std::future::ready(Ok(()))
    }
}

/// What [`AccountDirectory::change_email`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmailChange {
    /// The account's address is now the new one.
    Changed,
    /// Another account of the tenant has the address: nothing changed.
    Taken,
    /// The account is missing or disabled: nothing changed.
    NoAccount,
}

/// The longest link lifetime accepted for [`LinkConfig::ttl`] (24 hours).
pub const MAX_LINK_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Magic-link settings, checked by [`LinkConfig::validate`] when the service is built
/// ([`MagicLinks::new`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Where links point: `https://app.example.com`. Links are built from this, never from a
    /// request's `Host` header.
    pub base_url: Url,
    /// The landing page's path (default `/auth/link`): starts with one `/`; no `?`, `#`, `\`
    /// or control characters.
    pub landing_path: String,
    /// The path of the page that confirms an e-mail address change (default
    /// `/settings/email/confirm`; the same rules as `landing_path`). The confirmation link sent
    /// to the new address points there, with `?token=..`; like the landing page, its `GET`
    /// should only show a form that `POST`s the token back.
    pub email_change_path: String,
    /// How long a link is valid (default 15 minutes; between one second and [`MAX_LINK_TTL`]).
    pub ttl: Duration,
    /// The email's subject (1 to 200 bytes, no control characters).
    pub subject: String,
    /// Link requests per email address (default 5 per 15 minutes), whether or not an account
    /// has it — so the limit reveals nothing.
    pub per_email: Limit,
    /// Link requests per client (default 30 per 15 minutes), the client keyed by
    /// [`client_key`](crate::client_key): IPv4 by address, IPv6 by its `ipv6_prefix`.
    pub per_ip: Limit,
    /// How many leading bits of an IPv6 client address one client is (default 64,
    /// [`DEFAULT_IPV6_PREFIX`](crate::DEFAULT_IPV6_PREFIX); between
    /// [`MIN_IPV6_PREFIX`](crate::MIN_IPV6_PREFIX) and 128).
    pub ipv6_prefix: u8,
    /// Which optional address shapes are accepted (default: none — no IP literals).
    pub email: EmailPolicy,
}

fn check_base_url(url: &Url) -> Result<(), AuthError> {
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !scheme_ok || url.query().is_some() || url.fragment().is_some() || url.host().is_none() {
        return Err(AuthError::InvalidConfig(
            "base URL must be https (http only on loopback), without query or fragment",
        ));
    }
    Ok(())
}

impl LinkConfig {
    /// Defaults for `base_url`.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] unless `base_url` is an absolute `https` URL (or `http` on
    /// a loopback host, for development) with no query or fragment.
    pub fn new(base_url: &str) -> Result<Self, AuthError> {
        let url = Url::parse(base_url).map_err(|_| AuthError::InvalidConfig("base URL"))?;
        check_base_url(&url)?;
        Ok(Self {
            base_url: url,
            landing_path: "/auth/link".to_owned(),
            email_change_path: "/settings/email/confirm".to_owned(),
            ttl: Duration::from_secs(15 * 60),
            subject: "Your sign-in link".to_owned(),
            per_email: Limit {
                max: 5,
                window: Duration::from_secs(15 * 60),
            },
            per_ip: Limit {
                max: 30,
                window: Duration::from_secs(15 * 60),
            },
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            email: EmailPolicy::new(),
        })
    }

    /// Checks that every value is usable: see each field for its bounds.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] naming the first value out of bounds.
    pub fn validate(&self) -> Result<(), AuthError> {
        check_base_url(&self.base_url)?;
        for path in [&self.landing_path, &self.email_change_path] {
            if !path.starts_with('/')
                || path.starts_with("//")
                || path.len() > 200
                || path
                    .chars()
                    .any(|c| matches!(c, '?' | '#' | '\\') || c.is_control() || c.is_whitespace())
            {
                return Err(AuthError::InvalidConfig(
                    "landing and e-mail change paths must start with one '/', without query, \
                     fragment or spaces",
                ));
            }
        }
        if self.ttl.as_secs() == 0 || self.ttl > MAX_LINK_TTL {
            return Err(AuthError::InvalidConfig(
                "link ttl must be between one second and 24 hours",
            ));
        }
        time::Duration::try_from(self.ttl).map_err(|_| AuthError::InvalidConfig("link ttl"))?;
        if self.subject.is_empty()
            || self.subject.len() > 200
            || self.subject.chars().any(char::is_control)
        {
            return Err(AuthError::InvalidConfig(
                "subject must be 1 to 200 bytes without control characters",
            ));
        }
        self.per_email.validate()?;
        self.per_ip.validate()?;
        if !(MIN_IPV6_PREFIX..=128).contains(&self.ipv6_prefix) {
            return Err(AuthError::InvalidConfig(
                "ipv6_prefix must be between 32 and 128",
            ));
        }
        Ok(())
    }
}

/// What [`MagicLinks::request`] returns, the same for every well-formed address.
#[non_exhaustive]
pub struct LinkRequest {
    /// The browser-binding verifier: set it as an `HttpOnly`, `Secure`, `__Host-` cookie (expose
    /// it only there).
    pub verifier: SecretString,
    /// The background delivery. Do not await it before answering the request (that would
    /// reveal, by timing, whether the account exists); log or count its outcome instead.
    pub delivery: tokio::task::JoinHandle<Result<Delivery, AuthError>>,
}

impl std::fmt::Debug for LinkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkRequest { [redacted] }")
    }
}

/// What the background delivery did (for the application's logs and metrics only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A link was sent.
    Sent,
    /// No account, or a disabled one: nothing was sent.
    NoAccount,
}

/// A confirmed sign-in: create its `aal1` session with [`SessionStore::sign_in`](crate::SessionStore::sign_in)
/// (and ask for TOTP next). Only [`MagicLinks::confirm`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignIn {
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: ActorId,
    /// `User` or `Staff`: what the account is at confirmation, read again from the directory.
    pub kind: ActorKind,
    /// The account's generation at confirmation: the session is refused if it has moved.
    pub(crate) generation: i64,
}

/// The magic-link service.
pub struct MagicLinks<D, M> {
    pool: TenantPool,
    limiter: RateLimiter,
    events: EventSink,
    directory: Arc<D>,
    mailer: Arc<M>,
    config: Arc<LinkConfig>,
    row_key: Arc<SecretBox<[u8; 32]>>,
}

impl<D, M> std::fmt::Debug for MagicLinks<D, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MagicLinks")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<D, M> Clone for MagicLinks<D, M> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            limiter: self.limiter.clone(),
            events: self.events.clone(),
            directory: self.directory.clone(),
            mailer: self.mailer.clone(),
            config: self.config.clone(),
            row_key: self.row_key.clone(),
        }
    }
}

fn context(tenant: TenantId) -> Result<TenantContext, AuthError> {
    TenantContext::for_job(tenant, None, "magic-auth link")
        .map_err(|_| AuthError::InvalidConfig("tenant"))
}

impl<D: AccountDirectory, M: Mailer> MagicLinks<D, M> {
    /// A service storing links through `pool`. `row_key` (32 random bytes, the same on every
    /// instance, kept outside the database; the [`SessionStore`](crate::SessionStore)'s row key
    /// may serve) signs each link row the service writes: a link row the runtime role writes or
    /// changes itself — injected SQL inserting a link with a secret it knows, or pointing its
    /// own link at another account — carries no valid signature and signs no one in.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] when `config` does not pass [`LinkConfig::validate`].
    pub fn new(
        pool: TenantPool,
        directory: Arc<D>,
        mailer: Arc<M>,
        config: LinkConfig,
        row_key: impl Into<SecretBox<[u8; 32]>>,
    ) -> Result<Self, AuthError> {
        config.validate()?;
        Ok(Self {
            limiter: RateLimiter::new(pool.clone()),
            events: EventSink::default(),
            pool,
            directory,
            mailer,
            config: Arc::new(config),
            row_key: Arc::new(row_key.into()),
        })
    }

    /// Also report confirmed links to `hook`.
    #[must_use]
    pub fn with_events(mut self, hook: Arc<dyn AuthEvents>) -> Self {
        self.events = EventSink::new(hook);
        self
    }

    /// The configuration the service was built with.
    #[cfg(feature = "axum")]
    pub(crate) fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// The current address of `user` in `tenant`, if the account exists and is enabled.
    #[cfg(feature = "axum")]
    /// Tells the directory that `user`'s account was disabled
    /// ([`AccountDirectory::account_disabled`]); a failure is logged.
    #[cfg(feature = "axum")]
    pub(crate) async fn account_disabled(&self, tenant: TenantId, user: ActorId) {
        if let Err(error) = self.directory.account_disabled(tenant, user).await {
            tracing::error!(%error, "the account directory was not told of a disabled account");
        }
    }

    #[cfg(feature = "axum")]
    pub(crate) async fn address(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<EmailAddress>, AuthError> {
        let account = self
            .directory
            .find_by_user(tenant, user)
            .await
            .map_err(|error| {
                tracing::error!(%error, "the account directory failed");
                AuthError::Directory
            })?;
        if !account.is_some_and(|a| a.user == user && !a.disabled) {
            return Ok(None);
        }
        self.directory
            .address_of(tenant, user)
            .await
            .map_err(|error| {
                tracing::error!(%error, "the account directory failed");
                AuthError::Directory
            })
    }

    /// Sends `notice` to `address` in the background. A failure is logged, never shown: the
    /// change it tells of is already made.
    #[cfg(feature = "axum")]
    pub(crate) fn notify(&self, address: EmailAddress, notice: Notice) {
        let mailer = Arc::clone(&self.mailer);
        tokio::spawn(async move {
            if let Err(error) = mailer.send(notice.message(address)).await {
                tracing::error!(%error, "a security notice could not be sent");
            }
        });
    }

    /// Requests a sign-in link for `email` in `tenant`, from `client` (its address, for the
    /// per-client limit, counted by [`client_key`]). Answers the same way for known and unknown addresses: the rate
    /// limits are counted for every address alike, and the lookup, the link and the email run
    /// in a background task (needs a Tokio runtime).
    ///
    /// # Errors
    /// [`AuthError::InvalidEmail`] for an address that is not acceptable (that says nothing
    /// about accounts); [`AuthError::RateLimited`]; [`AuthError::Random`]; database errors
    /// from the limiter (refuse the request).
    pub async fn request(
        &self,
        tenant: TenantId,
        email: &str,
        client: Option<IpAddr>,
    ) -> Result<LinkRequest, AuthError> {
        let email = EmailAddress::parse_with(email, self.config.email)?;
        let email_key = format!(
            "link:email:{}",
            hex::encode(hash_secret(RATE_KEY_DOMAIN, email.as_str().as_bytes()))
        );
        let mut keys = vec![(email_key, self.config.per_email)];
        if let Some(ip) = client {
            let client = client_key(ip, self.config.ipv6_prefix);
            let ip_key = hex::encode(hash_secret(RATE_KEY_DOMAIN, client.as_bytes()));
            keys.push((format!("link:ip:{ip_key}"), self.config.per_ip));
        }
        for (key, limit) in keys {
            if let Hit::Limited { retry_at } = self.limiter.hit(tenant, &key, limit).await? {
                return Err(AuthError::RateLimited { retry_at });
            }
        }
        let verifier = random_secret()?;
        let verifier_hash = hash_secret(VERIFIER_DOMAIN, verifier.as_bytes());
        let verifier = into_secret(verifier);
        let service = self.clone();
        let delivery =
            tokio::spawn(async move { service.deliver(tenant, email, verifier_hash).await });
        Ok(LinkRequest { verifier, delivery })
    }

    async fn deliver(
        &self,
        tenant: TenantId,
        email: EmailAddress,
        verifier_hash: [u8; 32],
    ) -> Result<Delivery, AuthError> {
        let account = self.directory.find(tenant, &email).await.map_err(|e| {
            tracing::error!(error = %e, "account directory lookup failed");
            AuthError::Directory
        })?;
        let Some(account) = account.filter(|a| !a.disabled) else {
            return Ok(Delivery::NoAccount);
        };
        let token = SessionToken::generate(tenant)?;
        let now = OffsetDateTime::now_utc();
        let expires = time::Duration::try_from(self.config.ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .ok_or(AuthError::InvalidConfig("link lifetime"))?;
        let kind = if account.kind == ActorKind::Staff {
            "staff"
        } else {
            "user"
        };
        let secret_hash = token.hash_in(LINK_DOMAIN);
        let row_mac = {
            use hmac::Mac;
            link_row_mac(
                &self.row_key,
                &LinkFacts {
                    tenant,
                    id: token.id(),
                    user: *account.user.as_uuid(),
                    kind,
                    secret_hash: secret_hash.as_slice(),
                    verifier_hash: verifier_hash.as_slice(),
                    created_at: now,
                    expires_at: expires,
                },
            )
            .finalize()
            .into_bytes()
        };
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        // Requests for one account take turns on its lock: each supersedes every older link,
        // so at most one is pending whatever the burst (a unique index holds it too).
        if account::lock(&mut tx, tenant, account.user).await?.disabled {
            tx.rollback().await?;
            return Ok(Delivery::NoAccount);
        }
        account::invalidate_pending_links(&mut tx, tenant, account.user).await?;
        sqlx::query(
            "INSERT INTO auth.login_links (tenant_id, id, user_id, actor_kind, secret_hash, \
             verifier_hash, created_at, expires_at, row_mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(tenant.as_uuid())
        .bind(token.id())
        .bind(account.user.as_uuid())
        .bind(kind)
        .bind(secret_hash.as_slice())
        .bind(verifier_hash.as_slice())
        .bind(now)
        .bind(expires)
        .bind(row_mac.as_slice())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut link = self.config.base_url.clone();
        link.set_path(&self.config.landing_path);
        link.query_pairs_mut()
            .append_pair("token", &token.encode_with(LINK_PREFIX));
        let body = Zeroizing::new(format!(
            "Sign in by opening this link in the browser where you asked for it:\n\n{link}\n\n\
             It works once, for {} minutes. If you did not ask for it, ignore this email.\n",
            self.config.ttl.as_secs() / 60
        ));
        let message = Message {
            to: email,
            subject: self.config.subject.clone(),
            body: into_secret(body),
        };
        if let Err(error) = self.mailer.send(message).await {
            tracing::error!(error = %error, "sign-in link could not be sent");
            // An unsent link must not stay usable.
            let mut tx = self.pool.begin(&context(tenant)?).await?;
            sqlx::query(
                "UPDATE auth.login_links SET invalidated_at = now() \
                 WHERE tenant_id = $1 AND id = $2 AND invalidated_at IS NULL",
            )
            .bind(tenant.as_uuid())
            .bind(token.id())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Err(AuthError::Delivery);
        }
        Ok(Delivery::Sent)
    }

    /// Invalidates every pending sign-in link of `user` in `tenant` — and a link confirmed but
    /// not yet turned into a session ([`SessionStore::sign_in`](crate::SessionStore::sign_in)
    /// refuses it). Returns how many links were pending. Reported as
    /// [`AuthEventKind::LinksInvalidated`]. ([`SessionStore::revoke_all`](crate::SessionStore::revoke_all)
    /// and [`SessionStore::disable_account`](crate::SessionStore::disable_account) do this too.)
    ///
    /// # Errors
    /// Database errors.
    pub async fn invalidate_links(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<u64, AuthError> {
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        account::bump(&mut tx, tenant, user, account::Disable::Keep).await?;
        let links = account::invalidate_pending_links(&mut tx, tenant, user).await?;
        tx.commit().await?;
        self.events
            .emit(AuthEventKind::LinksInvalidated, tenant, Some(user), None);
        Ok(links)
    }

    /// Confirms a link (the landing page's `POST`) from the browser holding `verifier`.
    /// Consumes it on success only (and when the account, read again, refuses it).
    ///
    /// The link follows the account: the account is read again from the directory
    /// ([`AccountDirectory::find_by_user`]) after the link is consumed, and the sign-in is for
    /// what the account is now (its kind), or refused — missing, disabled, or a directory
    /// error. A link is also refused once the account is disabled, its sessions revoked
    /// ([`SessionStore::revoke_all`](crate::SessionStore::revoke_all)) or its links
    /// invalidated, and so is the session for a sign-in confirmed just before that
    /// ([`SessionStore::sign_in`](crate::SessionStore::sign_in)).
    ///
    /// `token` (from the link) and `verifier` (from the cookie) are secrets: pass
    /// [`SecretString`]s, or the `String`s read from the request (moved into one).
    ///
    /// # Errors
    /// [`AuthError::InvalidLink`] for every kind of failure — malformed, unknown, wrong secret,
    /// another browser, expired, used, superseded, invalidated, an account that is gone or
    /// disabled; [`AuthError::Directory`] when the directory fails (the link is used up);
    /// database errors.
    pub async fn confirm(
        &self,
        token: impl Into<SecretString>,
        verifier: impl Into<SecretString>,
    ) -> Result<SignIn, AuthError> {
        let (token, verifier): (SecretString, SecretString) = (token.into(), verifier.into());
        let (token, verifier) = (token.expose_secret(), verifier.expose_secret());
        type Row = (
            String,
            Vec<u8>,
            Vec<u8>,
            OffsetDateTime,
            OffsetDateTime,
            Option<OffsetDateTime>,
            Option<OffsetDateTime>,
            Option<Vec<u8>>,
        );
        let token =
            SessionToken::parse_with(token, LINK_PREFIX).map_err(|_| AuthError::InvalidLink)?;
        let tenant = token.tenant();
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        // Whose link it is, to take the account's lock before the link's (the order every
        // operation on an account's links and sessions follows).
        let owner: Option<(Uuid,)> =
            sqlx::query_as("SELECT user_id FROM auth.login_links WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_uuid())
                .bind(token.id())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(user) = owner.and_then(|(user,)| ActorId::from_uuid(user).ok()) else {
            tx.rollback().await?;
            return Err(AuthError::InvalidLink);
        };
        let state = account::lock(&mut tx, tenant, user).await?;
        // Read again under the locks: two concurrent confirmations take turns, one wins; an
        // invalidation committed before the lock was taken is seen here.
        let row: Option<Row> = sqlx::query_as(
            "SELECT actor_kind, secret_hash, verifier_hash, created_at, expires_at, consumed_at, \
                    invalidated_at, row_mac \
             FROM auth.login_links WHERE tenant_id = $1 AND id = $2 AND user_id = $3 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(token.id())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((kind, secret_hash, verifier_hash, created, expires, consumed, invalidated, mac)) =
            row
        else {
            tx.rollback().await?;
            return Err(AuthError::InvalidLink);
        };
        // The row must be one this service wrote, unchanged: whose link it is, its secrets and
        // its lifetime. A row without a valid MAC (written or redirected by injected SQL, or
        // from before links carried one) signs no one in.
        let signed = {
            use hmac::Mac;
            let expected = link_row_mac(
                &self.row_key,
                &LinkFacts {
                    tenant,
                    id: token.id(),
                    user: *user.as_uuid(),
                    kind: &kind,
                    secret_hash: &secret_hash,
                    verifier_hash: &verifier_hash,
                    created_at: created,
                    expires_at: expires,
                },
            );
            mac.is_some_and(|mac| expected.verify_slice(&mac).is_ok())
        };
        let secret_ok =
            signed && bool::from(token.hash_in(LINK_DOMAIN).as_slice().ct_eq(&secret_hash));
        let browser_ok = bool::from(
            hash_secret(VERIFIER_DOMAIN, verifier.as_bytes())
                .as_slice()
                .ct_eq(&verifier_hash),
        );
        let live = consumed.is_none()
            && invalidated.is_none()
            && expires > OffsetDateTime::now_utc()
            && !state.disabled;
        if !(secret_ok && browser_ok && live) {
            tx.rollback().await?;
            return Err(AuthError::InvalidLink);
        }
        sqlx::query(
            "UPDATE auth.login_links SET consumed_at = now() WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(token.id())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // The account as it is now. Read after the link is used up (no connection is held
        // while the application's directory runs); a refusal here leaves the link used.
        let account = self
            .directory
            .find_by_user(tenant, user)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "account directory lookup failed at confirmation");
                AuthError::Directory
            })?;
        let Some(account) = account.filter(|a| a.user == user && !a.disabled) else {
            return Err(AuthError::InvalidLink);
        };
        self.events.emit_as(
            AuthEventKind::LinkConfirmed,
            tenant,
            Some(user),
            Some(account.kind),
            Some(token.id()),
        );
        Ok(SignIn {
            tenant,
            user,
            kind: account.kind,
            generation: state.generation,
        })
    }

    /// Asks to change the e-mail address of `session`'s account to `new`: a sensitive action,
    /// so `session` must be `aal2` with its last factor check at most `max_age` old
    /// ([`Session::is_fresh`], checked here, not only by the route's guard).
    ///
    /// Sends a notice ([`Notice::EmailChangeRequested`]) to the current address, then a
    /// confirmation link to `new`: `<base URL><email change path>?token=e1.<tenant>.<id>.<secret>`,
    /// a single-use token (256-bit secret, stored as a hash) bound to the tenant, the account,
    /// `new` and this session, valid for [`LinkConfig::ttl`]. Nothing changes until
    /// [`MagicLinks::confirm_email_change`]. A newer request supersedes an older pending one.
    /// Requests count against [`LinkConfig::per_email`] per account (no mail flood). When
    /// either message cannot be sent, the change is invalidated. Reported as
    /// [`AuthEventKind::EmailChangeRequested`] (identifiers only, never an address).
    ///
    /// # Errors
    /// [`AuthError::StepUpRequired`]; [`AuthError::InvalidEmail`] for an unacceptable address;
    /// [`AuthError::EmailUnavailable`] when `new` is the current address;
    /// [`AuthError::RateLimited`]; [`AuthError::InvalidToken`] when the session was revoked,
    /// the account disabled or is gone from the directory; [`AuthError::Directory`];
    /// [`AuthError::Delivery`]; database errors.
    pub async fn request_email_change(
        &self,
        session: &Session,
        new: &str,
        max_age: Duration,
    ) -> Result<(), AuthError> {
        if !session.is_fresh(max_age) {
            return Err(AuthError::StepUpRequired);
        }
        let (tenant, user) = (session.tenant, session.user);
        let new = EmailAddress::parse_with(new, self.config.email)?;
        let key = format!("email-change:user:{}", user.as_uuid().simple());
        if let Hit::Limited { retry_at } = self
            .limiter
            .hit(tenant, &key, self.config.per_email)
            .await?
        {
            return Err(AuthError::RateLimited { retry_at });
        }
        let Some(current) = self.address_of(tenant, user).await? else {
            return Err(AuthError::InvalidToken);
        };
        if current == new {
            return Err(AuthError::EmailUnavailable);
        }
        let token = SessionToken::generate(tenant)?;
        let now = OffsetDateTime::now_utc();
        let expires = time::Duration::try_from(self.config.ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .ok_or(AuthError::InvalidConfig("link lifetime"))?;
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        // Lock order: the account row, then the session and the change rows.
        if account::lock(&mut tx, tenant, user).await?.disabled
            || !account::session_is_live(&mut tx, session).await?
        {
            tx.rollback().await?;
            return Err(AuthError::InvalidToken);
        }
        sqlx::query(
            "UPDATE auth.email_changes SET invalidated_at = now() WHERE tenant_id = $1 \
             AND user_id = $2 AND consumed_at IS NULL AND invalidated_at IS NULL",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await?;
        let secret_hash = token.hash_in(EMAIL_CHANGE_DOMAIN);
        let row_mac = {
            use hmac::Mac;
            email_change_row_mac(
                &self.row_key,
                tenant,
                token.id(),
                *user.as_uuid(),
                session.id,
                new.as_str(),
                secret_hash.as_slice(),
                (now, expires),
            )
            .finalize()
            .into_bytes()
        };
        sqlx::query(
            "INSERT INTO auth.email_changes (tenant_id, id, user_id, session_id, new_email, \
             secret_hash, created_at, expires_at, row_mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(tenant.as_uuid())
        .bind(token.id())
        .bind(user.as_uuid())
        .bind(session.id)
        .bind(new.as_str())
        .bind(secret_hash.as_slice())
        .bind(now)
        .bind(expires)
        .bind(row_mac.as_slice())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut link = self.config.base_url.clone();
        link.set_path(&self.config.email_change_path);
        link.query_pairs_mut()
            .append_pair("token", &token.encode_with(EMAIL_CHANGE_PREFIX));
        let confirmation = Message {
            to: new,
            subject: "Confirm your new e-mail address".to_owned(),
            body: into_secret(Zeroizing::new(format!(
                "To make this the e-mail address of your account, open this link in the browser \
                 session where you asked for the change:\n\n{link}\n\n\
                 It works once, for {} minutes. If you did not ask for it, ignore this email.\n",
                self.config.ttl.as_secs() / 60
            ))),
        };
        // The old address hears of it first: no change can be confirmed that it was not told of.
        let notice = Notice::EmailChangeRequested.message(current);
        for message in [notice, confirmation] {
            if let Err(error) = self.mailer.send(message).await {
                tracing::error!(error = %error, "e-mail change message could not be sent");
                let mut tx = self.pool.begin(&context(tenant)?).await?;
                sqlx::query(
                    "UPDATE auth.email_changes SET invalidated_at = now() \
                     WHERE tenant_id = $1 AND id = $2 AND invalidated_at IS NULL",
                )
                .bind(tenant.as_uuid())
                .bind(token.id())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Err(AuthError::Delivery);
            }
        }
        self.events.emit(
            AuthEventKind::EmailChangeRequested,
            tenant,
            Some(user),
            Some(session.id),
        );
        Ok(())
    }

    /// Confirms an e-mail address change with the token from the confirmation link, from the
    /// session that asked for it, and applies it. The token must be well formed, of this
    /// tenant and account, unexpired, unused, not superseded, and requested by `session` —
    /// which must still be live (a revocation, a disable or a newer request since refuses it).
    /// It is used up (under the account's lock) *before* the directory applies the change
    /// ([`AccountDirectory::change_email`]): a replay, a second tab or another session is
    /// refused whatever happens next.
    ///
    /// Then every *other* session of the account is revoked and every pending sign-in link
    /// invalidated (the generation moves), a notice ([`Notice::EmailChanged`]) goes to the old
    /// address (a failure is logged: the change is made), and
    /// [`AuthEventKind::EmailChanged`] is reported. Returns the new address.
    ///
    /// `token` (from the link) is a secret: pass a [`SecretString`], or the `String` read from
    /// the request (moved into one).
    ///
    /// # Errors
    /// [`AuthError::InvalidLink`] for every refusal of the token (malformed, unknown, wrong
    /// secret, another session or account or tenant, expired, used, superseded, the session
    /// revoked, the account disabled or gone); [`AuthError::EmailUnavailable`] when another
    /// account has the address by then; [`AuthError::Directory`]; database errors.
    pub async fn confirm_email_change(
        &self,
        session: &Session,
        token: impl Into<SecretString>,
    ) -> Result<EmailAddress, AuthError> {
        let token: SecretString = token.into();
        let token = token.expose_secret();
        type Row = (
            Vec<u8>,
            Uuid,
            String,
            OffsetDateTime,
            OffsetDateTime,
            Option<OffsetDateTime>,
            Option<OffsetDateTime>,
            Option<Vec<u8>>,
        );
        let token = SessionToken::parse_with(token, EMAIL_CHANGE_PREFIX)
            .map_err(|_| AuthError::InvalidLink)?;
        let (tenant, user) = (session.tenant, session.user);
        if token.tenant() != tenant {
            return Err(AuthError::InvalidLink);
        }
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        if account::lock(&mut tx, tenant, user).await?.disabled
            || !account::session_is_live(&mut tx, session).await?
        {
            tx.rollback().await?;
            return Err(AuthError::InvalidLink);
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT secret_hash, session_id, new_email, created_at, expires_at, consumed_at, \
                    invalidated_at, row_mac \
             FROM auth.email_changes WHERE tenant_id = $1 AND id = $2 AND user_id = $3 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(token.id())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((secret_hash, asked_by, new, created, expires, consumed, invalidated, mac)) = row
        else {
            tx.rollback().await?;
            return Err(AuthError::InvalidLink);
        };
        // The row must be one this service wrote for the session that asked (after its
        // step-up), unchanged: a row the runtime role inserted, with an address and a token of
        // its choosing, changes nothing.
        let signed = {
            use hmac::Mac;
            let expected = email_change_row_mac(
                &self.row_key,
                tenant,
                token.id(),
                *user.as_uuid(),
                asked_by,
                &new,
                &secret_hash,
                (created, expires),
            );
            mac.is_some_and(|mac| expected.verify_slice(&mac).is_ok())
        };
        let secret_ok = signed
            && bool::from(
                token
                    .hash_in(EMAIL_CHANGE_DOMAIN)
                    .as_slice()
                    .ct_eq(&secret_hash),
            );
        let live = consumed.is_none()
            && invalidated.is_none()
            && expires > OffsetDateTime::now_utc()
            && asked_by == session.id;
        let new = EmailAddress::parse_with(&new, self.config.email).ok();
        let (true, true, Some(new)) = (secret_ok, live, new) else {
            tx.rollback().await?;
            return Err(AuthError::InvalidLink);
        };
        sqlx::query(
            "UPDATE auth.email_changes SET consumed_at = now() WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(token.id())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let old = self.address_of(tenant, user).await?;
        let change = self
            .directory
            .change_email(tenant, user, &new)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "account directory could not change the address");
                AuthError::Directory
            })?;
        match change {
            EmailChange::Changed => {}
            EmailChange::Taken => return Err(AuthError::EmailUnavailable),
            _ => return Err(AuthError::InvalidLink),
        }
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        let ended = account::end_sign_ins(
            &mut tx,
            tenant,
            user,
            Some(session.id),
            account::Disable::Keep,
        )
        .await?;
        tx.commit().await?;
        self.events.emit(
            AuthEventKind::EmailChanged,
            tenant,
            Some(user),
            Some(session.id),
        );
        report_ended(&self.events, tenant, user, ended);
        if let Some(old) = old.filter(|old| *old != new)
            && let Err(error) = self.mailer.send(Notice::EmailChanged.message(old)).await
        {
            tracing::error!(error = %error, "e-mail change notice could not be sent");
        }
        Ok(new)
    }

    async fn address_of(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<EmailAddress>, AuthError> {
        self.directory.address_of(tenant, user).await.map_err(|e| {
            tracing::error!(error = %e, "account directory lookup failed");
            AuthError::Directory
        })
    }
}
