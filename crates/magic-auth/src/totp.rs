//! TOTP (RFC 6238) as the second factor: enrolment, verification with replay protection, and
//! lockout after repeated failures — all stored in PostgreSQL, so they hold across sessions
//! and app instances.
//!
//! - The seed is 160 bits from the operating system's generator, stored sealed with
//!   `field-crypto`, bound to its row (tenant, `auth.totp`, `seed`, user): a copied ciphertext
//!   does not open for another user, and a database reader without the key sees nothing.
//! - Enrolment becomes active only with a valid code; that code's step is recorded, so it cannot
//!   be used again as the first sign-in code.
//! - A code is accepted for the current step ±1. The *matched* step is recorded in the same
//!   transaction that checks it (the row is locked `FOR UPDATE`), and only a step newer than every
//!   step accepted before passes: a code is never accepted twice, nor an older step after a
//!   newer one — also when two requests race.
//! - After [`TotpConfig::max_failures`] wrong codes (replays included) the account is locked for
//!   [`TotpConfig::lockout`], for every session; a correct code during the lockout is refused
//!   too and does not count.

use std::sync::Arc;
use std::time::Duration;

use field_crypto::{Context, Keyring};
use rls_guard::TenantPool;
use tenant_scope::{ActorId, TenantContext, TenantId};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::AuthError;
use crate::events::{AuthEventKind, AuthEvents, EventSink};

/// TOTP parameters (SHA-1, 6 digits, 30-second steps: what authenticator apps support).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpConfig {
    /// The issuer shown in authenticator apps.
    pub issuer: String,
    /// Wrong codes before the account is locked (default 5).
    pub max_failures: u32,
    /// How long the lock lasts (default 15 minutes).
    pub lockout: Duration,
}

impl TotpConfig {
    /// Defaults for `issuer`.
    #[must_use]
    pub fn new(issuer: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
        }
    }
}

const DIGITS: u8 = 6;
const STEP: u64 = 30;
const SKEW: u16 = 1;
const SEED_BYTES: usize = 20;

/// What an enrolment hands to the user: the `otpauth://` URL (for a QR code) and the secret in
/// base32 (to type in). Both are secrets; `Debug` does not print them.
pub struct Enrolment {
    /// The `otpauth://totp/..` URL.
    pub otpauth_url: Zeroizing<String>,
    /// The seed, base32.
    pub secret_base32: Zeroizing<String>,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Enrolment { [redacted] }")
    }
}

impl Enrolment {
    /// The `otpauth://` URL as a QR code: an `<svg>` element (no XML declaration), to inline in
    /// the enrolment page. It encodes the secret: serve it only to the enrolling user, over TLS,
    /// with `Cache-Control: no-store`.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] if the URL does not fit in a QR code (an issuer or account
    /// name of thousands of characters).
    pub fn qr_svg(&self) -> Result<Zeroizing<String>, AuthError> {
        let code = qrcode::QrCode::new(self.otpauth_url.as_bytes())
            .map_err(|_| AuthError::InvalidConfig("otpauth URL too long for a QR code"))?;
        let svg = Zeroizing::new(
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .quiet_zone(true)
                .build(),
        );
        let start = svg.find("<svg").unwrap_or(0);
        Ok(Zeroizing::new(svg[start..].to_owned()))
    }
}

/// The verdict on a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// Accepted; the step it matched is now used up.
    Accepted {
        /// The matched time step.
        step: u64,
    },
    /// A recovery code was accepted (and is now used up).
    RecoveryAccepted {
        /// Unused recovery codes left.
        codes_left: u32,
    },
    /// Wrong, replayed, malformed or not newer than an accepted one.
    Rejected {
        /// Wrong codes left before the lockout.
        remaining: u32,
    },
    /// The account is locked; no code is checked until then.
    Locked {
        /// Until when.
        until: OffsetDateTime,
    },
}

/// TOTP enrolment and verification.
pub struct TotpService {
    pool: TenantPool,
    keyring: Arc<Keyring>,
    config: TotpConfig,
    events: EventSink,
}

impl std::fmt::Debug for TotpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn seed_context(tenant: TenantId, user: ActorId) -> Context {
    Context::new(
        tenant.as_uuid().as_bytes(),
        "auth.totp",
        "seed",
        user.as_uuid().as_bytes(),
    )
}

fn totp(seed: Vec<u8>, issuer: &str, account: &str) -> Result<totp_rs::Totp, AuthError> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(SKEW)
        .with_step_duration(STEP)
        .with_secret(seed)
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|_| AuthError::InvalidConfig("totp parameters"))
}

impl TotpService {
    /// A service storing through `pool`, sealing seeds with `keyring`.
    #[must_use]
    pub fn new(pool: TenantPool, keyring: Arc<Keyring>, config: TotpConfig) -> Self {
        Self {
            pool,
            keyring,
            config,
            events: EventSink::default(),
        }
    }

    /// Also report TOTP events (enrolment, accepted and failed codes, lockouts, recovery
    /// codes) to `hook`.
    #[must_use]
    pub fn with_events(mut self, hook: Arc<dyn AuthEvents>) -> Self {
        self.events = EventSink::new(hook);
        self
    }

    fn report(&self, verdict: CodeCheck, tenant: TenantId, user: ActorId, phase: Option<Phase>) {
        let kind = match (verdict, phase) {
            (CodeCheck::Accepted { .. }, Some(Phase::Confirm)) => AuthEventKind::MfaEnrolled,
            (CodeCheck::Accepted { .. }, _) => AuthEventKind::CodeAccepted,
            (CodeCheck::RecoveryAccepted { .. }, _) => AuthEventKind::RecoveryCodeUsed,
            (CodeCheck::Rejected { .. }, _) => AuthEventKind::CodeFailed,
            (CodeCheck::Locked { .. }, _) => AuthEventKind::LockedOut,
        };
        self.events.emit(kind, tenant, Some(user), None);
    }

    fn context(tenant: TenantId) -> Result<TenantContext, AuthError> {
        TenantContext::for_job(tenant, None, "magic-auth totp")
            .map_err(|_| AuthError::InvalidConfig("tenant"))
    }

    /// Starts (or restarts) enrolment for `user`: a fresh seed, pending until
    /// [`TotpService::confirm`] sees a valid code. A user whose TOTP is already active is
    /// refused ([`AuthError::AlreadyEnrolled`]): replacing an active factor is a sensitive action
    /// that needs step-up first.
    ///
    /// # Errors
    /// [`AuthError::AlreadyEnrolled`]; [`AuthError::Random`]; [`AuthError::Crypto`] when the
    /// seed cannot be sealed; database errors.
    pub async fn enroll(
        &self,
        tenant: TenantId,
        user: ActorId,
        account: &str,
    ) -> Result<Enrolment, AuthError> {
        let mut seed = Zeroizing::new(vec![0u8; SEED_BYTES]);
        getrandom::fill(&mut seed).map_err(|_| AuthError::Random)?;
        let sealed = self
            .keyring
            .seal(&seed, &seed_context(tenant, user))
            .map_err(|_| AuthError::Crypto)?;
        let totp = totp(seed.to_vec(), &self.config.issuer, account)?;
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        let stored = sqlx::query(
            "INSERT INTO auth.totp (tenant_id, user_id, seed) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE \
               SET seed = EXCLUDED.seed, last_step = NULL, failed_attempts = 0, locked_until = NULL \
               WHERE auth.totp.confirmed_at IS NULL",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .bind(&sealed)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if stored == 0 {
            tx.rollback().await?;
            return Err(AuthError::AlreadyEnrolled);
        }
        tx.commit().await?;
        Ok(Enrolment {
            otpauth_url: Zeroizing::new(
                totp.to_url()
                    .map_err(|_| AuthError::InvalidConfig("totp url"))?,
            ),
            secret_base32: Zeroizing::new(totp.secret().to_base32()),
        })
    }

    /// Activates a pending enrolment with a valid code (at `now`, Unix seconds). The code's
    /// step is recorded: it cannot be reused to sign in.
    ///
    /// # Errors
    /// [`AuthError::NotEnrolled`] without a pending enrolment; database or crypto errors.
    pub async fn confirm(
        &self,
        tenant: TenantId,
        user: ActorId,
        code: &str,
        now: u64,
    ) -> Result<CodeCheck, AuthError> {
        self.check(tenant, user, code, now, Phase::Confirm).await
    }

    /// Checks a sign-in or step-up code (at `now`, Unix seconds) for an active enrolment.
    ///
    /// # Errors
    /// [`AuthError::NotEnrolled`] without an active enrolment; database or crypto errors.
    pub async fn verify(
        &self,
        tenant: TenantId,
        user: ActorId,
        code: &str,
        now: u64,
    ) -> Result<CodeCheck, AuthError> {
        self.check(tenant, user, code, now, Phase::Verify).await
    }

    async fn check(
        &self,
        tenant: TenantId,
        user: ActorId,
        code: &str,
        now: u64,
        phase: Phase,
    ) -> Result<CodeCheck, AuthError> {
        type Row = (
            Vec<u8>,
            Option<OffsetDateTime>,
            Option<i64>,
            i32,
            Option<OffsetDateTime>,
        );
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        // The row lock serialises concurrent attempts for this user.
        let row: Option<Row> = sqlx::query_as(
            "SELECT seed, confirmed_at, last_step, failed_attempts, locked_until FROM auth.totp \
             WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((sealed, confirmed, last_step, failed, locked_until)) = row else {
            tx.rollback().await?;
            return Err(AuthError::NotEnrolled);
        };
        let active = confirmed.is_some();
        if active != (phase == Phase::Verify) {
            tx.rollback().await?;
            return Err(if active {
                AuthError::AlreadyEnrolled
            } else {
                AuthError::NotEnrolled
            });
        }
        let now_at = OffsetDateTime::from_unix_timestamp(i64::try_from(now).unwrap_or(i64::MAX))
            .map_err(|_| AuthError::InvalidConfig("time"))?;
        if let Some(until) = locked_until.filter(|until| *until > now_at) {
            tx.rollback().await?;
            return Ok(CodeCheck::Locked { until });
        }
        let seed = self
            .keyring
            .open(&sealed, &seed_context(tenant, user))
            .map_err(|_| AuthError::Crypto)?;
        let totp = totp(seed.as_bytes().to_vec(), &self.config.issuer, "user")?;
        let matched = totp.check(code.trim(), now);
        let fresh = matched.filter(|step| {
            last_step.is_none_or(|last| i64::try_from(*step).is_ok_and(|s| s > last))
        });
        let verdict = if let Some(step) = fresh {
            let step_i = i64::try_from(step).map_err(|_| AuthError::InvalidConfig("time"))?;
            sqlx::query(
                "UPDATE auth.totp SET last_step = $3, failed_attempts = 0, locked_until = NULL, \
                 confirmed_at = COALESCE(confirmed_at, now()) \
                 WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .bind(step_i)
            .execute(&mut *tx)
            .await?;
            CodeCheck::Accepted { step }
        } else {
            self.fail(&mut tx, tenant, user, failed, now_at).await?
        };
        tx.commit().await?;
        self.report(verdict, tenant, user, Some(phase));
        Ok(verdict)
    }

    /// Counts a wrong code; locks the account at the limit.
    async fn fail(
        &self,
        tx: &mut rls_guard::TenantTx,
        tenant: TenantId,
        user: ActorId,
        failed: i32,
        now: OffsetDateTime,
    ) -> Result<CodeCheck, AuthError> {
        let failures = u32::try_from(failed).unwrap_or(0).saturating_add(1);
        if failures >= self.config.max_failures {
            let until = now
                + time::Duration::try_from(self.config.lockout)
                    .map_err(|_| AuthError::InvalidConfig("lockout"))?;
            sqlx::query(
                "UPDATE auth.totp SET failed_attempts = 0, locked_until = $3 \
                 WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .bind(until)
            .execute(&mut **tx)
            .await?;
            Ok(CodeCheck::Locked { until })
        } else {
            sqlx::query(
                "UPDATE auth.totp SET failed_attempts = $3 WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .bind(i32::try_from(failures).unwrap_or(i32::MAX))
            .execute(&mut **tx)
            .await?;
            Ok(CodeCheck::Rejected {
                remaining: self.config.max_failures - failures,
            })
        }
    }

    /// Replaces `session`'s user's recovery codes with [`RECOVERY_CODES`] new ones (the old
    /// ones stop working). A sensitive action: the session must be `aal2` with its last factor
    /// check at most `max_age` old — checked here too, not only by the route's guard.
    ///
    /// # Errors
    /// [`AuthError::StepUpRequired`]; [`AuthError::NotEnrolled`] without active TOTP; database
    /// errors.
    pub async fn regenerate_recovery_codes(
        &self,
        session: &crate::Session,
        max_age: Duration,
    ) -> Result<RecoveryCodes, AuthError> {
        let age = OffsetDateTime::now_utc() - session.authenticated_at;
        let fresh = time::Duration::try_from(max_age).is_ok_and(|max| age <= max);
        if session.assurance != crate::Assurance::Aal2 || !fresh {
            return Err(AuthError::StepUpRequired);
        }
        let (tenant, user) = (session.tenant, session.user);
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            codes.push(new_recovery_code()?);
        }
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        let active: Option<(Option<OffsetDateTime>,)> = sqlx::query_as(
            "SELECT confirmed_at FROM auth.totp WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        if !matches!(active, Some((Some(_),))) {
            tx.rollback().await?;
            return Err(AuthError::NotEnrolled);
        }
        sqlx::query(
            "UPDATE auth.recovery_codes SET used_at = now() \
             WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await?;
        for code in &codes {
            sqlx::query(
                "INSERT INTO auth.recovery_codes (tenant_id, user_id, code_hash, created_at) \
                 VALUES ($1, $2, $3, now())",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .bind(recovery_hash(tenant, user, code).as_slice())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.events.emit(
            AuthEventKind::RecoveryCodesRegenerated,
            tenant,
            Some(user),
            Some(session.id),
        );
        Ok(RecoveryCodes(Zeroizing::new(codes)))
    }

    /// Signs in with a recovery code instead of a TOTP code: each code works once. Wrong codes
    /// count towards the same lockout as wrong TOTP codes, and a locked account refuses them.
    ///
    /// # Errors
    /// [`AuthError::NotEnrolled`] without active TOTP; database errors.
    pub async fn use_recovery_code(
        &self,
        tenant: TenantId,
        user: ActorId,
        code: &str,
        now: u64,
    ) -> Result<CodeCheck, AuthError> {
        type Row = (Option<OffsetDateTime>, i32, Option<OffsetDateTime>);
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        let row: Option<Row> = sqlx::query_as(
            "SELECT confirmed_at, failed_attempts, locked_until FROM auth.totp \
             WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((Some(_), failed, locked_until)) = row else {
            tx.rollback().await?;
            return Err(AuthError::NotEnrolled);
        };
        let now_at = OffsetDateTime::from_unix_timestamp(i64::try_from(now).unwrap_or(i64::MAX))
            .map_err(|_| AuthError::InvalidConfig("time"))?;
        if let Some(until) = locked_until.filter(|until| *until > now_at) {
            tx.rollback().await?;
            return Ok(CodeCheck::Locked { until });
        }
        let used = sqlx::query(
            "UPDATE auth.recovery_codes SET used_at = now() \
             WHERE tenant_id = $1 AND user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .bind(recovery_hash(tenant, user, code).as_slice())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let verdict = if used == 1 {
            sqlx::query(
                "UPDATE auth.totp SET failed_attempts = 0 WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await?;
            let (left,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM auth.recovery_codes \
                 WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
            CodeCheck::RecoveryAccepted {
                codes_left: u32::try_from(left).unwrap_or(0),
            }
        } else {
            self.fail(&mut tx, tenant, user, failed, now_at).await?
        };
        tx.commit().await?;
        self.report(verdict, tenant, user, None);
        Ok(verdict)
    }
}

/// How many recovery codes a user gets.
pub const RECOVERY_CODES: usize = 10;
const RECOVERY_DOMAIN: &[u8] = b"magic-auth/recovery/v1\n";
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstvwxyz0123456789";

/// Fresh recovery codes, shown once. `Debug` does not print them; zeroised on drop.
pub struct RecoveryCodes(Zeroizing<Vec<String>>);

impl RecoveryCodes {
    /// The codes, `xxxx-xxxx-xxxx-xxxx` (80 bits each).
    #[must_use]
    pub fn codes(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCodes([{} redacted])", self.0.len())
    }
}

/// 16 characters from a 32-symbol alphabet (Crockford's: no `i`, `l`, `o`, `u`): 80 bits.
fn new_recovery_code() -> Result<String, AuthError> {
    let mut bytes = Zeroizing::new([0u8; 16]);
    getrandom::fill(&mut *bytes).map_err(|_| AuthError::Random)?;
    let mut code = String::with_capacity(19);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        code.push(char::from(RECOVERY_ALPHABET[usize::from(*b & 31)]));
    }
    Ok(code)
}

/// The stored form of a code: salted with the tenant and user, normalised (case, dashes and
/// spaces ignored; `i`/`l` read as `1`, `o` as `0`).
fn recovery_hash(tenant: TenantId, user: ActorId, code: &str) -> [u8; 32] {
    let normalised: Zeroizing<String> = Zeroizing::new(
        code.chars()
            .filter(|c| !matches!(c, '-' | ' '))
            .map(|c| match c.to_ascii_lowercase() {
                'i' | 'l' => '1',
                'o' => '0',
                other => other,
            })
            .collect(),
    );
    let mut input = Zeroizing::new(Vec::with_capacity(64));
    input.extend_from_slice(tenant.as_uuid().as_bytes());
    input.extend_from_slice(user.as_uuid().as_bytes());
    input.extend_from_slice(normalised.as_bytes());
    crate::token::hash_secret(RECOVERY_DOMAIN, &input)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Confirm,
    Verify,
}

/// The code an authenticator shows for `seed` at `time` (tests and enrolment screens).
///
/// # Errors
/// [`AuthError::InvalidConfig`] for a seed shorter than 128 bits.
pub fn code_at(seed: &[u8], time: u64) -> Result<String, AuthError> {
    Ok(totp(seed.to_vec(), "x", "x")?.generate(time).to_string())
}
