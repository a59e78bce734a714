//! Passwordless sign-in for multi-tenant services: email magic link + TOTP, MFA for staff,
//! step-up for sensitive actions, and sessions stored in PostgreSQL that can be revoked at once.
//!
//! The session layer every other part stands on:
//!
//! - [`SessionToken`]: 256-bit secrets from the operating system's generator, carried as
//!   `v1.<tenant>.<session id>.<secret>`; the database keeps only a hash of the secret, compared
//!   in constant time; every malformed token is one uniform error.
//! - [`SessionStore`]: sessions in PostgreSQL (tenant-scoped with row-level security through
//!   `rls-guard`), checked on every request in one round trip, with idle and absolute expiry
//!   (activity never extends a session past the absolute limit), assurance levels (`aal1` after
//!   the email step, `aal2` after the second factor), and revocation of one session, of all of a
//!   user's sessions (optionally but the current one) — effective on the next request on every
//!   app instance, because there is no cache — and final under every race: a rotation,
//!   step-up, recovery or link sign-in running at the same moment as a revocation, a lockout
//!   or [`SessionStore::disable_account`] never leaves a live session behind (they take turns
//!   on a per-account row lock, and a sign-in is checked against the account's generation).
//!
//! - [`totp::TotpService`]: TOTP enrolment (160-bit seed sealed with `field-crypto`, bound to
//!   its row; active only after a valid code, whose step is then used up), verification for the
//!   current step ±1 with the matched step recorded under a row lock (no code twice, no older
//!   step after a newer one, also under concurrency), and a lockout that cannot be waited out:
//!   locks that grow with each 5 consecutive failures, then a hard limit (20 by default, at
//!   most 100) that only a recovery code or an operator's [`totp::TotpService::unlock`] lifts.
//!
//! - [`MagicLinks`]: email links requested without revealing whether an account exists (the
//!   work runs in the background: same answer, same timing), bound to the requesting browser by
//!   a verifier cookie, single use under a row lock, 15-minute expiry, superseded by a newer
//!   request (at most one pending link per account, under any burst), built from the
//!   configured base URL; links follow the account (read again at confirmation, refused once
//!   it is disabled or signed out everywhere, [`MagicLinks::invalidate_links`]);
//!   [`EmailAddress`] validation and
//!   normalisation; the [`mailer::Mailer`] trait with a development outbox.
//! - [`SessionManagerLayer`] and the guards ([`GuardLayer`], built with `Guard::require_auth()`
//!   and the like, or [`Guard::custom`] for an application's own check): cookie → `Session` +
//!   `Actor`, `401 unauthenticated`, `403 mfa_required`, `403 step_up_required`,
//!   `403 cross_origin_request`, and `503 session_store_unavailable` when sessions cannot be
//!   checked; every refusal an [`AuthRejection`] with the workspace's JSON shape
//!   ([`tenant_scope::Rejection`]). With feature `axum`, handlers take `Session` or
//!   `Option<Session>` as arguments (a missing session is `401 unauthenticated`).
//!
//! - Recovery codes (10 × 80 bits, hashed, single use, regeneration needs step-up) and
//!   [`RateLimiter`] (PostgreSQL, across instances) for link requests per address and client
//!   (IPv6 clients by prefix, default /64: [`client_key`]).
//!
//! - Every configuration is checked when its service is built: a value that cannot be used is
//!   an [`AuthError::InvalidConfig`] there, never a request that fails open.
//!
//! - Settings flows: replacing the authenticator ([`totp::TotpService::start_replacement`],
//!   after a fresh step-up or with a recovery code; the old seed destroyed and the other
//!   sessions ended on completion), changing the e-mail address
//!   ([`MagicLinks::request_email_change`]: a notice to the old address, a single-use
//!   confirmation bound to the session sent to the new one, applied through
//!   [`AccountDirectory::change_email`] only on confirmation), disabling the account
//!   ([`SessionStore::disable_account`]), and [`mailer::Notice`]s for each.
//!
//! - [`AuthEvents`]: every sign-in step, failure, lockout and revocation, for an audit log.
//!
//! - [`mailer::SmtpMailer`]: delivery through an SMTP relay over required TLS (lettre), or in
//!   plain text to a loopback catcher only.
//!
//! - [`routes`] (feature `axum`): the whole flow above as ready-made JSON routes
//!   ([`routes::SignInRoutes`]), so an application writes no sign-in code of its own.
//!
//! - [`audit`] (feature `audit-log`, default): `audit_log::AuditLog` as the events hook.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod account;
#[cfg(feature = "audit-log")]
pub mod audit;
mod cache;
mod email;
mod error;
mod events;
#[cfg(feature = "axum")]
mod extract;
pub mod future;
mod layer;
mod limit;
mod link;
pub mod mailer;
#[cfg(feature = "axum")]
pub mod routes;
pub mod schema;
mod session;
mod token;
pub mod totp;

pub use cache::{MAX_CACHE_AGE, SessionCacheConfig};
pub use email::{EmailAddress, EmailPolicy};
pub use error::AuthError;
pub use events::{AuthEvent, AuthEventKind, AuthEvents};
pub use layer::{
    AuthRejection, DEFAULT_STEP_UP_MAX_AGE, Guard, GuardLayer, SESSION_COOKIE, SessionManager,
    SessionManagerLayer, clear_session_cookie, cookie_value, session_cookie,
};
pub use limit::{
    DEFAULT_IPV6_PREFIX, Hit, Limit, MAX_HITS, MAX_WINDOW, MIN_IPV6_PREFIX, RateLimiter, client_key,
};
pub use link::{
    Account, AccountDirectory, Delivery, EmailChange, LinkConfig, LinkRequest, MAX_LINK_TTL,
    MagicLinks, SignIn,
};
pub use schema::session_liveness;
/// The [`secrecy`] crate, re-exported: tokens, verifiers, links and credentials are handed out
/// and taken in as [`SecretString`](secrecy::SecretString).
pub use secrecy;
pub use session::{
    Assurance, MAX_SESSION_LIFETIME, NewSession, Session, SessionConfig, SessionStore,
    SessionSummary,
};
pub use token::{SessionToken, TOKEN_LEN};

// The README's code blocks compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
