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
//!    confirmation (wrong browser, wrong secret) does not consume it.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rls_guard::TenantPool;
use subtle::ConstantTimeEq;
use tenant_scope::{ActorId, ActorKind, TenantContext, TenantId};
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::AuthError;
use crate::email::{EmailAddress, EmailPolicy};
use crate::events::{AuthEventKind, AuthEvents, EventSink};
use crate::limit::{DEFAULT_IPV6_PREFIX, Hit, Limit, MIN_IPV6_PREFIX, RateLimiter, client_key};
use crate::mailer::{Mailer, Message};
use crate::token::{SessionToken, hash_secret, random_secret};

const LINK_PREFIX: &str = "l1";
const LINK_DOMAIN: &[u8] = b"magic-auth/link/v1\n";
const VERIFIER_DOMAIN: &[u8] = b"magic-auth/link-verifier/v1\n";
const RATE_KEY_DOMAIN: &[u8] = b"magic-auth/rate-key/v1\n";

/// An account that may sign in, as the application's directory knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// The user.
    pub user: ActorId,
    /// `User` or `Staff`.
    pub kind: ActorKind,
    /// A disabled account gets no link (and the requester cannot tell).
    pub disabled: bool,
}

/// Finds accounts by normalised email address, per tenant. The application implements it.
pub trait AccountDirectory: Send + Sync + 'static {
    /// Why a lookup failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The account with this address in `tenant`, if any.
    fn find(
        &self,
        tenant: TenantId,
        email: &EmailAddress,
    ) -> impl Future<Output = Result<Option<Account>, Self::Error>> + Send;
}

/// The longest link lifetime accepted for [`LinkConfig::ttl`] (24 hours).
pub const MAX_LINK_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Magic-link settings, checked by [`LinkConfig::validate`] when the service is built
/// ([`MagicLinks::new`]).
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Where links point: `https://app.example.com`. Links are built from this, never from a
    /// request's `Host` header.
    pub base_url: Url,
    /// The landing page's path (default `/auth/link`): starts with one `/`; no `?`, `#`, `\`
    /// or control characters.
    pub landing_path: String,
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
        let path = &self.landing_path;
        if !path.starts_with('/')
            || path.starts_with("//")
            || path.len() > 200
            || path
                .chars()
                .any(|c| matches!(c, '?' | '#' | '\\') || c.is_control() || c.is_whitespace())
        {
            return Err(AuthError::InvalidConfig(
                "landing path must start with one '/', without query, fragment or spaces",
            ));
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
pub struct LinkRequest {
    /// The browser-binding verifier: set it as an `HttpOnly`, `Secure`, `__Host-` cookie.
    pub verifier: Zeroizing<String>,
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

/// A confirmed sign-in: create an `aal1` session for it (and ask for TOTP next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignIn {
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: ActorId,
    /// `User` or `Staff`.
    pub kind: ActorKind,
}

/// The magic-link service.
pub struct MagicLinks<D, M> {
    pool: TenantPool,
    limiter: RateLimiter,
    events: EventSink,
    directory: Arc<D>,
    mailer: Arc<M>,
    config: Arc<LinkConfig>,
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
        }
    }
}

fn context(tenant: TenantId) -> Result<TenantContext, AuthError> {
    TenantContext::for_job(tenant, None, "magic-auth link")
        .map_err(|_| AuthError::InvalidConfig("tenant"))
}

impl<D: AccountDirectory, M: Mailer> MagicLinks<D, M> {
    /// A service storing links through `pool`.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] when `config` does not pass [`LinkConfig::validate`].
    pub fn new(
        pool: TenantPool,
        directory: Arc<D>,
        mailer: Arc<M>,
        config: LinkConfig,
    ) -> Result<Self, AuthError> {
        config.validate()?;
        Ok(Self {
            limiter: RateLimiter::new(pool.clone()),
            events: EventSink::default(),
            pool,
            directory,
            mailer,
            config: Arc::new(config),
        })
    }

    /// Also report confirmed links to `hook`.
    #[must_use]
    pub fn with_events(mut self, hook: Arc<dyn AuthEvents>) -> Self {
        self.events = EventSink::new(hook);
        self
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
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        // A new request supersedes every older link of the account.
        sqlx::query(
            "UPDATE auth.login_links SET invalidated_at = $3 \
             WHERE tenant_id = $1 AND user_id = $2 AND consumed_at IS NULL AND invalidated_at IS NULL",
        )
        .bind(tenant.as_uuid())
        .bind(account.user.as_uuid())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO auth.login_links (tenant_id, id, user_id, actor_kind, secret_hash, \
             verifier_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(tenant.as_uuid())
        .bind(token.id())
        .bind(account.user.as_uuid())
        .bind(kind)
        .bind(token.hash_in(LINK_DOMAIN).as_slice())
        .bind(verifier_hash.as_slice())
        .bind(now)
        .bind(expires)
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
            body,
        };
        if let Err(error) = self.mailer.send(message).await {
            tracing::error!(error = %error, "sign-in link could not be sent");
            // An unsent link must not stay usable.
            let mut tx = self.pool.begin(&context(tenant)?).await?;
            sqlx::query(
                "UPDATE auth.login_links SET invalidated_at = now() WHERE tenant_id = $1 AND id = $2",
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

    /// Confirms a link (the landing page's `POST`) from the browser holding `verifier`.
    /// Consumes it on success only.
    ///
    /// # Errors
    /// [`AuthError::InvalidLink`] for every kind of failure — malformed, unknown, wrong secret,
    /// another browser, expired, used, superseded; database errors.
    pub async fn confirm(&self, token: &str, verifier: &str) -> Result<SignIn, AuthError> {
        type Row = (
            Uuid,
            String,
            Vec<u8>,
            Vec<u8>,
            OffsetDateTime,
            Option<OffsetDateTime>,
            Option<OffsetDateTime>,
        );
        let token =
            SessionToken::parse_with(token, LINK_PREFIX).map_err(|_| AuthError::InvalidLink)?;
        let tenant = token.tenant();
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        // The row lock makes two concurrent confirmations take turns: one wins.
        let row: Option<Row> = sqlx::query_as(
            "SELECT user_id, actor_kind, secret_hash, verifier_hash, expires_at, consumed_at, \
             invalidated_at FROM auth.login_links WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(token.id())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user, kind, secret_hash, verifier_hash, expires, consumed, invalidated)) = row
        else {
            tx.rollback().await?;
            return Err(AuthError::InvalidLink);
        };
        let secret_ok = bool::from(token.hash_in(LINK_DOMAIN).as_slice().ct_eq(&secret_hash));
        let browser_ok = bool::from(
            hash_secret(VERIFIER_DOMAIN, verifier.as_bytes())
                .as_slice()
                .ct_eq(&verifier_hash),
        );
        let live =
            consumed.is_none() && invalidated.is_none() && expires > OffsetDateTime::now_utc();
        let user = ActorId::from_uuid(user).map_err(|_| AuthError::InvalidLink);
        if !(secret_ok && browser_ok && live) || user.is_err() {
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
        let user = user?;
        let kind = if kind == "staff" {
            ActorKind::Staff
        } else {
            ActorKind::User
        };
        self.events.emit_as(
            AuthEventKind::LinkConfirmed,
            tenant,
            Some(user),
            Some(kind),
            Some(token.id()),
        );
        Ok(SignIn { tenant, user, kind })
    }
}
