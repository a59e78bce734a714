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
//! - Lockout that cannot be waited out: every [`TotpConfig::max_failures`]-th consecutive wrong
//!   code (replays, malformed input and wrong recovery codes included) locks the factor, for
//!   every session; the first lock lasts [`TotpConfig::lockout`] and each further one twice as
//!   long, up to [`TotpConfig::max_lockout`]. A lock does not reset the count: only an accepted
//!   code, a recovery code or [`TotpService::unlock`] does. Each lock (timed or hard) also
//!   signs the account out everywhere, in the transaction that counts the failure: every
//!   session revoked, every pending link invalidated, a step-up or sign-in running at that
//!   moment refused. At [`TotpConfig::hard_limit`]
//!   consecutive failures (at most [`MAX_HARD_LIMIT`]) TOTP codes are refused until a recovery
//!   code is used or an operator unlocks the factor. A code submitted during a lock is refused
//!   — the right one too — and does not count.
//! - Each attempt is recorded as a failure *before* the code is checked (in the same
//!   transaction, committed even when the check itself fails), so no error path — a seed that
//!   does not open, a clock out of range — lets an attempt go uncounted.

use std::sync::Arc;
use std::time::Duration;

use field_crypto::{Context, Keyring};
use rls_guard::TenantPool;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use subtle::ConstantTimeEq;
use tenant_scope::{ActorId, TenantContext, TenantId};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::AuthError;
use crate::account::{self, Disable, Ended};
use crate::events::{AuthEventKind, AuthEvents, EventSink};
use crate::session::report_ended;
use crate::token::{into_secret, secret_copy};

/// The highest [`TotpConfig::hard_limit`] accepted: at most this many consecutive wrong codes
/// before TOTP is refused until a recovery code or an operator unlocks it.
pub const MAX_HARD_LIMIT: u32 = 100;

/// The longest lock accepted for [`TotpConfig::max_lockout`] (30 days).
pub const MAX_LOCKOUT: Duration = Duration::from_secs(30 * 24 * 60 * 60);

const MAX_ISSUER_BYTES: usize = 100;

/// TOTP parameters (SHA-1, 6 digits, 30-second steps: what authenticator apps support) and the
/// lockout ladder. Checked by [`TotpConfig::validate`] when the service is built
/// ([`TotpService::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TotpConfig {
    /// The issuer shown in authenticator apps (1 to 100 bytes; no `:` and no control
    /// characters, which would break the `otpauth://` label).
    pub issuer: String,
    /// Consecutive wrong codes per lock (default 5): the 5th, 10th, 15th.. consecutive failure
    /// locks the factor. Between 1 and [`TotpConfig::hard_limit`].
    pub max_failures: u32,
    /// How long the first lock lasts (default 15 minutes; at least one second). Each further
    /// lock lasts twice as long as the one before.
    pub lockout: Duration,
    /// The longest a single lock lasts (default 24 hours; at least `lockout`, at most
    /// [`MAX_LOCKOUT`]).
    pub max_lockout: Duration,
    /// Consecutive wrong codes after which TOTP codes are refused until a recovery code is used
    /// or [`TotpService::unlock`] is called (default 20; between `max_failures` and
    /// [`MAX_HARD_LIMIT`]).
    pub hard_limit: u32,
}

impl TotpConfig {
    /// Defaults for `issuer`: a lock after every 5 consecutive failures, 15 minutes for the
    /// first, doubling up to 24 hours, and the hard limit at 20.
    #[must_use]
    pub fn new(issuer: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            max_lockout: Duration::from_secs(24 * 60 * 60),
            hard_limit: 20,
        }
    }

    /// Checks that every value is usable: see each field for its bounds.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] naming the first value out of bounds.
    pub fn validate(&self) -> Result<(), AuthError> {
        let bad = AuthError::InvalidConfig;
        if self.issuer.is_empty()
            || self.issuer.len() > MAX_ISSUER_BYTES
            || self.issuer.chars().any(|c| c == ':' || c.is_control())
        {
            return Err(bad(
                "totp issuer must be 1 to 100 bytes, without ':' or control characters",
            ));
        }
        if self.hard_limit == 0 || self.hard_limit > MAX_HARD_LIMIT {
            return Err(bad("totp hard_limit must be between 1 and 100"));
        }
        if self.max_failures == 0 || self.max_failures > self.hard_limit {
            return Err(bad(
                "totp max_failures must be at least 1 and at most hard_limit",
            ));
        }
        if self.lockout.as_secs() == 0 {
            return Err(bad("totp lockout must be at least one second"));
        }
        if self.max_lockout > MAX_LOCKOUT || self.lockout > self.max_lockout {
            return Err(bad(
                "totp lockout must not exceed max_lockout, nor max_lockout 30 days",
            ));
        }
        // Within 30 days, both are representable as `time::Duration`; checked all the same.
        time::Duration::try_from(self.max_lockout).map_err(|_| bad("totp max_lockout"))?;
        Ok(())
    }

    /// How long the lock after `failures` consecutive failures lasts, if that failure locks:
    /// `lockout` at `max_failures`, doubling at each further multiple, capped at
    /// `max_lockout`. Every step is checked; an overflow is the cap.
    fn lock_span(&self, failures: u32) -> Option<Duration> {
        if self.max_failures == 0 || failures == 0 || !failures.is_multiple_of(self.max_failures) {
            return None;
        }
        let doublings = failures / self.max_failures - 1;
        let span = 2u32
            .checked_pow(doublings)
            .and_then(|factor| self.lockout.checked_mul(factor))
            .map_or(self.max_lockout, |span| span.min(self.max_lockout));
        Some(span)
    }

    /// The state after one more failure (`failures` counts it), at `now`.
    fn after_failure(&self, failures: u32, was_hard: bool, now: OffsetDateTime) -> Failure {
        let hard = was_hard || failures >= self.hard_limit;
        if hard && !was_hard {
            // Reaching the hard limit: no timed lock on top, so a recovery code works at once.
            return Failure::HardLocked;
        }
        if let Some(span) = self.lock_span(failures) {
            let until = time::Duration::try_from(span)
                .ok()
                .and_then(|span| now.checked_add(span));
            return match until {
                Some(until) => Failure::Locked { until, hard },
                // Unreachable with a validated config and a representable clock; closed anyway.
                None => Failure::HardLocked,
            };
        }
        if hard {
            return Failure::HardLocked;
        }
        let to_lock = failures
            .checked_rem(self.max_failures)
            .map_or(0, |into| self.max_failures - into);
        Failure::Rejected {
            remaining: to_lock.min(self.hard_limit.saturating_sub(failures)),
        }
    }
}

/// What one more failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Rejected { remaining: u32 },
    Locked { until: OffsetDateTime, hard: bool },
    HardLocked,
}

impl Failure {
    const fn verdict(self) -> CodeCheck {
        match self {
            Self::Rejected { remaining } => CodeCheck::Rejected { remaining },
            Self::Locked { until, .. } => CodeCheck::Locked { until },
            Self::HardLocked => CodeCheck::HardLocked,
        }
    }

    const fn is_hard(self) -> bool {
        matches!(self, Self::HardLocked | Self::Locked { hard: true, .. })
    }

    const fn until(self) -> Option<OffsetDateTime> {
        match self {
            Self::Locked { until, .. } => Some(until),
            _ => None,
        }
    }
}

const DIGITS: u8 = 6;
const STEP: u64 = 30;
const SKEW: u16 = 1;
const SEED_BYTES: usize = 20;

/// What an enrolment hands to the user: the `otpauth://` URL (for a QR code) and the secret in
/// base32 (to type in). Both are secrets ([`SecretString`]s, exposed only where they are shown
/// to the enrolling user); `Debug` does not print them.
#[non_exhaustive]
pub struct Enrolment {
    /// The `otpauth://totp/..` URL.
    pub otpauth_url: SecretString,
    /// The seed, base32.
    pub secret_base32: SecretString,
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
    pub fn qr_svg(&self) -> Result<SecretString, AuthError> {
        let code = qrcode::QrCode::new(self.otpauth_url.expose_secret().as_bytes())
            .map_err(|_| AuthError::InvalidConfig("otpauth URL too long for a QR code"))?;
        let svg = Zeroizing::new(
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .quiet_zone(true)
                .build(),
        );
        let start = svg.find("<svg").unwrap_or(0);
        Ok(secret_copy(&svg[start..]))
    }
}

/// The verdict on a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
        /// Wrong codes left before the next lock (or the hard limit).
        remaining: u32,
    },
    /// The factor is locked; no code is checked until then.
    Locked {
        /// Until when.
        until: OffsetDateTime,
    },
    /// The hard limit of consecutive failures was reached: TOTP codes are refused until a
    /// recovery code is used or an operator calls [`TotpService::unlock`]; waiting does not
    /// help.
    HardLocked,
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

/// A recovery code's seal: its hash, bound to the account.
fn recovery_context(tenant: TenantId, user: ActorId) -> Context {
    Context::new(
        tenant.as_uuid().as_bytes(),
        "auth.recovery_codes",
        "code_hash",
        user.as_uuid().as_bytes(),
    )
}

fn seed_context(tenant: TenantId, user: ActorId) -> Context {
    Context::new(
        tenant.as_uuid().as_bytes(),
        "auth.totp",
        "seed",
        user.as_uuid().as_bytes(),
    )
}

/// The authenticator of an account, as [`TotpService::enrolment_state`] reads it.
#[derive(Debug)]
#[non_exhaustive]
pub enum EnrolmentState {
    /// No enrolment was ever started.
    NotStarted,
    /// Started and not yet confirmed: the same QR code and key as when it was started (the
    /// person may have scanned it already), ready to show again.
    Pending(Enrolment),
    /// Confirmed: codes are checked with [`TotpService::verify`].
    Active,
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
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] when `config` does not pass [`TotpConfig::validate`].
    pub fn new(
        pool: TenantPool,
        keyring: Arc<Keyring>,
        config: TotpConfig,
    ) -> Result<Self, AuthError> {
        config.validate()?;
        Ok(Self {
            pool,
            keyring,
            config,
            events: EventSink::default(),
        })
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
            (CodeCheck::HardLocked, _) => AuthEventKind::HardLockedOut,
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
        let enrolment = self.enrolment_of(&seed, account)?;
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        let stored = sqlx::query(
            "INSERT INTO auth.totp (tenant_id, user_id, seed) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE \
               SET seed = EXCLUDED.seed, last_step = NULL, failed_attempts = 0, locked_until = NULL, \
                   hard_locked_at = NULL \
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
        Ok(enrolment)
    }

    /// What [`TotpService::enroll`] and [`TotpService::start_replacement`] hand out for `seed`.
    fn enrolment_of(&self, seed: &[u8], account: &str) -> Result<Enrolment, AuthError> {
        let totp = totp(seed.to_vec(), &self.config.issuer, account)?;
        Ok(Enrolment {
            otpauth_url: into_secret(Zeroizing::new(
                totp.to_url()
                    .map_err(|_| AuthError::InvalidConfig("totp url"))?,
            )),
            secret_base32: into_secret(Zeroizing::new(totp.secret().to_base32())),
        })
    }

    /// Reads `user`'s authenticator without changing anything: none, active, or pending — and
    /// a pending one with the QR code and key it was started with, opened from its sealed seed,
    /// so a page can show it again instead of starting a new one (a reload, a second tab or a
    /// link scanner must not invalidate a code the person has just scanned). `account` is the
    /// label shown in the authenticator app, as given to [`TotpService::enroll`].
    ///
    /// Serve a pending enrolment only to the account's own session, over TLS, with
    /// `Cache-Control: no-store`: it is the secret.
    ///
    /// # Errors
    /// [`AuthError::Crypto`] when the stored seed does not open under this keyring and this
    /// account (a row moved to another account or tenant opens for neither); database errors.
    pub async fn enrolment_state(
        &self,
        tenant: TenantId,
        user: ActorId,
        account: &str,
    ) -> Result<EnrolmentState, AuthError> {
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        let row: Option<(bool, Vec<u8>)> = sqlx::query_as(
            "SELECT confirmed_at IS NOT NULL, seed FROM auth.totp \
             WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        match row {
            None => Ok(EnrolmentState::NotStarted),
            Some((true, _)) => Ok(EnrolmentState::Active),
            Some((false, sealed)) => {
                let seed = self
                    .keyring
                    .open(&sealed, &seed_context(tenant, user))
                    .map_err(|_| AuthError::Crypto)?;
                Ok(EnrolmentState::Pending(
                    self.enrolment_of(seed.as_bytes(), account)?,
                ))
            }
        }
    }

    /// The replacement authenticator that `session` started
    /// ([`TotpService::start_replacement`]) and has not completed, with the QR code and key it
    /// was started with, or `None`. A replacement started from another session of the account
    /// is not shown here (it can only be completed from that session). `account` is the label
    /// shown in the authenticator app.
    ///
    /// # Errors
    /// [`AuthError::Crypto`] when the stored seed does not open under this keyring and this
    /// account; database errors.
    pub async fn pending_replacement(
        &self,
        session: &crate::Session,
        account: &str,
    ) -> Result<Option<Enrolment>, AuthError> {
        let (tenant, user) = (session.tenant, session.user);
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        let row: Option<(Option<Vec<u8>>, Option<uuid::Uuid>)> = sqlx::query_as(
            "SELECT replacement_seed, replacement_session FROM auth.totp \
             WHERE tenant_id = $1 AND user_id = $2 AND confirmed_at IS NOT NULL",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some((Some(sealed), Some(started_by))) = row else {
            return Ok(None);
        };
        if started_by != session.id {
            return Ok(None);
        }
        let seed = self
            .keyring
            .open(&sealed, &replacement_context(tenant, user))
            .map_err(|_| AuthError::Crypto)?;
        self.enrolment_of(seed.as_bytes(), account).map(Some)
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
        let now_at = unix_time(now)?;
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        // The row lock serialises concurrent attempts for this user.
        let Some(state) = FactorState::load(&mut tx, tenant, user).await? else {
            tx.rollback().await?;
            return Err(AuthError::NotEnrolled);
        };
        let active = state.confirmed;
        if active != (phase == Phase::Verify) {
            tx.rollback().await?;
            return Err(if active {
                AuthError::AlreadyEnrolled
            } else {
                AuthError::NotEnrolled
            });
        }
        if let Some(until) = state.locked_until.filter(|until| *until > now_at) {
            tx.rollback().await?;
            return Ok(CodeCheck::Locked { until });
        }
        if state.is_hard_locked(&self.config) {
            tx.rollback().await?;
            return Ok(CodeCheck::HardLocked);
        }
        // Counted as a failure first; an accepted code below undoes it in the same transaction.
        let failure = self
            .record_failure(&mut tx, tenant, user, &state, now_at)
            .await?;
        let matched = match self.evaluate(tenant, user, &state, code, now) {
            Ok(matched) => matched,
            Err(error) => {
                // The attempt stays counted: an error is no way around the lockout.
                let ended = Self::sign_out_if_locked(&mut tx, tenant, user, failure).await?;
                tx.commit().await?;
                self.report(failure.verdict(), tenant, user, Some(phase));
                report_ended(&self.events, tenant, user, ended);
                return Err(error);
            }
        };
        let mut ended = Ended::default();
        let verdict = if let Some((step, step_i)) = matched {
            sqlx::query(
                "UPDATE auth.totp SET last_step = $3, failed_attempts = 0, locked_until = NULL, \
                 hard_locked_at = NULL, confirmed_at = COALESCE(confirmed_at, now()) \
                 WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .bind(step_i)
            .execute(&mut *tx)
            .await?;
            CodeCheck::Accepted { step }
        } else {
            ended = Self::sign_out_if_locked(&mut tx, tenant, user, failure).await?;
            failure.verdict()
        };
        tx.commit().await?;
        self.report(verdict, tenant, user, Some(phase));
        report_ended(&self.events, tenant, user, ended);
        Ok(verdict)
    }

    /// The step `code` matches at `now` (also as stored), if it is newer than the newest step
    /// accepted before. Opens the seed.
    fn evaluate(
        &self,
        tenant: TenantId,
        user: ActorId,
        state: &FactorState,
        code: &str,
        now: u64,
    ) -> Result<Option<(u64, i64)>, AuthError> {
        let seed = self
            .keyring
            .open(&state.sealed, &seed_context(tenant, user))
            .map_err(|_| AuthError::Crypto)?;
        let totp = totp(seed.as_bytes().to_vec(), &self.config.issuer, "user")?;
        let matched = totp
            .check(code.trim(), now)
            .and_then(|step| Some((step, i64::try_from(step).ok()?)));
        Ok(matched.filter(|(_, step)| state.last_step.is_none_or(|last| *step > last)))
    }

    /// A failure that locks the factor (a timed lock or the hard limit) also signs the account
    /// out everywhere, in the transaction that counts it: every session revoked, every pending
    /// link invalidated, and a sign-in or step-up running at that moment refused.
    async fn sign_out_if_locked(
        tx: &mut rls_guard::TenantTx,
        tenant: TenantId,
        user: ActorId,
        failure: Failure,
    ) -> Result<Ended, AuthError> {
        if matches!(failure, Failure::Locked { .. } | Failure::HardLocked) {
            account::end_sign_ins(tx, tenant, user, None, Disable::Keep).await
        } else {
            Ok(Ended::default())
        }
    }

    /// Counts one more consecutive failure (and sets the lock it leads to) in `tx`.
    async fn record_failure(
        &self,
        tx: &mut rls_guard::TenantTx,
        tenant: TenantId,
        user: ActorId,
        state: &FactorState,
        now: OffsetDateTime,
    ) -> Result<Failure, AuthError> {
        let was_hard = state.is_hard_locked(&self.config);
        // A count that cannot be read or grow is treated as past the hard limit.
        let (failures, failure) = match u32::try_from(state.failed)
            .ok()
            .and_then(|failed| failed.checked_add(1))
        {
            Some(failures) => (failures, self.config.after_failure(failures, was_hard, now)),
            None => (u32::MAX, Failure::HardLocked),
        };
        sqlx::query(
            "UPDATE auth.totp SET failed_attempts = $3, locked_until = $4, \
             hard_locked_at = CASE WHEN $5 THEN COALESCE(hard_locked_at, now()) END \
             WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .bind(i32::try_from(failures).unwrap_or(i32::MAX))
        .bind(failure.until())
        .bind(failure.is_hard())
        .execute(&mut **tx)
        .await?;
        Ok(failure)
    }

    /// Unlocks `user`'s second factor (an operator's action, after checking who asks): the
    /// consecutive-failure count, a timed lock and the hard lock are all cleared. Reported as
    /// [`AuthEventKind::MfaUnlocked`]. Guard the route that calls it (staff, step-up): this
    /// method does not know who the operator is.
    ///
    /// # Errors
    /// [`AuthError::NotEnrolled`] when `user` has no TOTP enrolment; database errors.
    pub async fn unlock(&self, tenant: TenantId, user: ActorId) -> Result<(), AuthError> {
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        let unlocked = sqlx::query(
            "UPDATE auth.totp SET failed_attempts = 0, locked_until = NULL, hard_locked_at = NULL \
             WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if unlocked != 1 {
            tx.rollback().await?;
            return Err(AuthError::NotEnrolled);
        }
        tx.commit().await?;
        self.events
            .emit(AuthEventKind::MfaUnlocked, tenant, Some(user), None);
        Ok(())
    }

    /// Replaces `session`'s user's recovery codes with [`RECOVERY_CODES`] new ones (the old
    /// ones stop working). A sensitive action: the session must be `aal2` with its last factor
    /// check at most `max_age` old — checked here too, not only by the route's guard.
    ///
    /// Reported as [`AuthEventKind::RecoveryCodesRegenerated`]; send the account a notice
    /// ([`Notice::RecoveryCodesRegenerated`](crate::mailer::Notice::RecoveryCodesRegenerated)).
    ///
    /// # Errors
    /// [`AuthError::StepUpRequired`]; [`AuthError::NotEnrolled`] without active TOTP;
    /// [`AuthError::InvalidToken`] when the session was revoked or the account disabled;
    /// database errors.
    pub async fn regenerate_recovery_codes(
        &self,
        session: &crate::Session,
        max_age: Duration,
    ) -> Result<RecoveryCodes, AuthError> {
        if !session.is_fresh(max_age) {
            return Err(AuthError::StepUpRequired);
        }
        let (tenant, user) = (session.tenant, session.user);
        let mut codes = Zeroizing::new(Vec::with_capacity(RECOVERY_CODES));
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
        // Lock order: the TOTP row, then the account row, then the session. A revoke, a
        // disable or a sign-out everywhere committed before this point refuses it; one after
        // waits for it (and ends the session, not the codes).
        if account::lock(&mut tx, tenant, user).await?.disabled
            || !account::session_is_live(&mut tx, session).await?
        {
            tx.rollback().await?;
            return Err(AuthError::InvalidToken);
        }
        sqlx::query(
            "UPDATE auth.recovery_codes SET used_at = now() \
             WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await?;
        for code in codes.iter() {
            let hash = recovery_hash(tenant, user, code);
            let sealed = self
                .keyring
                .seal(&hash, &recovery_context(tenant, user))
                .map_err(|_| AuthError::Crypto)?;
            sqlx::query(
                "INSERT INTO auth.recovery_codes (tenant_id, user_id, code_hash, created_at, \
                 sealed) VALUES ($1, $2, $3, now(), $4)",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .bind(hash.as_slice())
            .bind(sealed)
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
        Ok(RecoveryCodes(
            codes.iter().map(|code| secret_copy(code)).collect(),
        ))
    }

    /// Starts replacing `session`'s user's authenticator (a lost or changed phone): a new seed,
    /// pending until [`TotpService::complete_replacement`] sees a code from it, from this same
    /// session. Until then the active authenticator keeps working, so an abandoned replacement
    /// locks nobody out; a second start replaces the pending seed.
    ///
    /// A sensitive action, authorised here (not only by the route's guard) by `proof`: a fresh
    /// step-up of the session itself ([`ReplaceProof::StepUp`]: `aal2`, last factor check at most
    /// `max_age` old), or a recovery code ([`ReplaceProof::RecoveryCode`], used up by it, and
    /// counted towards the lockout when wrong, exactly as in [`TotpService::use_recovery_code`]).
    /// `account` is the label shown in the authenticator app. Reported as
    /// [`AuthEventKind::MfaReplacementStarted`].
    ///
    /// # Errors
    /// [`AuthError::StepUpRequired`] when `proof` does not hold (a stale or `aal1` session, a
    /// wrong, used or locked-out recovery code); [`AuthError::NotEnrolled`] without an active
    /// authenticator; [`AuthError::InvalidToken`] when the session was revoked or the account
    /// disabled; [`AuthError::Random`], [`AuthError::Crypto`]; database errors.
    pub async fn start_replacement(
        &self,
        session: &crate::Session,
        proof: ReplaceProof<'_>,
        account: &str,
        now: u64,
    ) -> Result<Enrolment, AuthError> {
        let (tenant, user) = (session.tenant, session.user);
        match proof {
            ReplaceProof::StepUp { max_age } => {
                if !session.is_fresh(max_age) {
                    return Err(AuthError::StepUpRequired);
                }
            }
            ReplaceProof::RecoveryCode(code) => {
                match self.use_recovery_code(tenant, user, code, now).await? {
                    CodeCheck::RecoveryAccepted { .. } => {}
                    _ => return Err(AuthError::StepUpRequired),
                }
            }
        }
        let mut seed = Zeroizing::new(vec![0u8; SEED_BYTES]);
        getrandom::fill(&mut seed).map_err(|_| AuthError::Random)?;
        let sealed = self
            .keyring
            .seal(&seed, &replacement_context(tenant, user))
            .map_err(|_| AuthError::Crypto)?;
        let enrolment = self.enrolment_of(&seed, account)?;
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        // Lock order: the TOTP row, then the account row, then the session.
        let stored = sqlx::query(
            "UPDATE auth.totp SET replacement_seed = $3, replacement_session = $4 \
             WHERE tenant_id = $1 AND user_id = $2 AND confirmed_at IS NOT NULL",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .bind(&sealed)
        .bind(session.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if stored != 1 {
            tx.rollback().await?;
            return Err(AuthError::NotEnrolled);
        }
        if account::lock(&mut tx, tenant, user).await?.disabled
            || !account::session_is_live(&mut tx, session).await?
        {
            tx.rollback().await?;
            return Err(AuthError::InvalidToken);
        }
        tx.commit().await?;
        self.events.emit(
            AuthEventKind::MfaReplacementStarted,
            tenant,
            Some(user),
            Some(session.id),
        );
        Ok(enrolment)
    }

    /// Completes the replacement `session` started with a code from the new authenticator (at
    /// `now`, Unix seconds; the current step ±1). Returns whether the code was accepted.
    ///
    /// On acceptance, in one transaction: the new seed becomes the active one (the old seed is
    /// overwritten: its codes stop working at once), the code's step is used up, the failure
    /// count and every lock are cleared, and every *other* session of the account is revoked
    /// and every pending link invalidated (the account's generation moves, so a sign-in
    /// confirmed before is refused). `session` itself stays; rotate it
    /// ([`SessionStore::rotate`](crate::SessionStore::rotate)) to record the fresh factor check.
    /// Recovery codes are kept. Reported as [`AuthEventKind::MfaReplaced`] (and
    /// `SessionsRevoked`/`LinksInvalidated`); a wrong code as [`AuthEventKind::CodeFailed`],
    /// and it changes nothing. Send the account a notice
    /// ([`Notice::AuthenticatorReplaced`](crate::mailer::Notice::AuthenticatorReplaced)).
    ///
    /// # Errors
    /// [`AuthError::NotEnrolled`] when no replacement was started from `session`;
    /// [`AuthError::InvalidToken`] when the session was revoked or the account disabled since;
    /// [`AuthError::Crypto`]; database errors.
    pub async fn complete_replacement(
        &self,
        session: &crate::Session,
        code: &str,
        now: u64,
    ) -> Result<bool, AuthError> {
        let (tenant, user) = (session.tenant, session.user);
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        let row: Option<(Option<Vec<u8>>, Option<uuid::Uuid>)> = sqlx::query_as(
            "SELECT replacement_seed, replacement_session FROM auth.totp \
             WHERE tenant_id = $1 AND user_id = $2 AND confirmed_at IS NOT NULL FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((Some(sealed), Some(started_by))) = row else {
            tx.rollback().await?;
            return Err(AuthError::NotEnrolled);
        };
        if started_by != session.id {
            tx.rollback().await?;
            return Err(AuthError::NotEnrolled);
        }
        if account::lock(&mut tx, tenant, user).await?.disabled
            || !account::session_is_live(&mut tx, session).await?
        {
            tx.rollback().await?;
            return Err(AuthError::InvalidToken);
        }
        let seed = self
            .keyring
            .open(&sealed, &replacement_context(tenant, user))
            .map_err(|_| AuthError::Crypto)?;
        let matched = totp(seed.as_bytes().to_vec(), &self.config.issuer, "user")?
            .check(code.trim(), now)
            .and_then(|step| i64::try_from(step).ok());
        let Some(step) = matched else {
            tx.rollback().await?;
            self.events.emit(
                AuthEventKind::CodeFailed,
                tenant,
                Some(user),
                Some(session.id),
            );
            return Ok(false);
        };
        let active = self
            .keyring
            .seal(seed.as_bytes(), &seed_context(tenant, user))
            .map_err(|_| AuthError::Crypto)?;
        sqlx::query(
            "UPDATE auth.totp SET seed = $3, last_step = GREATEST(last_step, $4), confirmed_at = now(), \
             failed_attempts = 0, locked_until = NULL, hard_locked_at = NULL, \
             replacement_seed = NULL, replacement_session = NULL \
             WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .bind(&active)
        .bind(step)
        .execute(&mut *tx)
        .await?;
        let ended =
            account::end_sign_ins(&mut tx, tenant, user, Some(session.id), Disable::Keep).await?;
        tx.commit().await?;
        self.events.emit(
            AuthEventKind::MfaReplaced,
            tenant,
            Some(user),
            Some(session.id),
        );
        report_ended(&self.events, tenant, user, ended);
        Ok(true)
    }

    /// Signs in with a recovery code instead of a TOTP code: each code works once. Wrong codes
    /// count towards the same lockout as wrong TOTP codes, and a timed lock refuses them too.
    /// A recovery code is the user's way out of the hard lock ([`CodeCheck::HardLocked`]): it
    /// is accepted there (outside a timed lock) and clears the count and every lock.
    ///
    /// # Errors
    /// [`AuthError::NotEnrolled`] without active TOTP; database errors.
    pub async fn use_recovery_code(
        &self,
        tenant: TenantId,
        user: ActorId,
        code: &SecretString,
        now: u64,
    ) -> Result<CodeCheck, AuthError> {
        let now_at = unix_time(now)?;
        let mut tx = self.pool.begin(&Self::context(tenant)?).await?;
        let state = FactorState::load(&mut tx, tenant, user).await?;
        let Some(state) = state.filter(|state| state.confirmed) else {
            tx.rollback().await?;
            return Err(AuthError::NotEnrolled);
        };
        if let Some(until) = state.locked_until.filter(|until| *until > now_at) {
            tx.rollback().await?;
            return Ok(CodeCheck::Locked { until });
        }
        // Counted as a failure first; a code that is used up below undoes it.
        let failure = self
            .record_failure(&mut tx, tenant, user, &state, now_at)
            .await?;
        let mut ended = Ended::default();
        let hash = recovery_hash(tenant, user, code.expose_secret());
        // The code counts only if its row is one this service wrote for this account: its seal
        // opens under the keyring to its hash (the hash alone is no secret, and the runtime
        // role could insert a row for a code of its choosing). A seal that does not open
        // rejects the code.
        let sealed: Option<(Option<Vec<u8>>,)> = sqlx::query_as(
            "SELECT sealed FROM auth.recovery_codes \
             WHERE tenant_id = $1 AND user_id = $2 AND code_hash = $3 AND used_at IS NULL \
             FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .bind(hash.as_slice())
        .fetch_optional(&mut *tx)
        .await?;
        let genuine = sealed
            .and_then(|(sealed,)| sealed)
            .and_then(|sealed| {
                self.keyring
                    .open(&sealed, &recovery_context(tenant, user))
                    .ok()
            })
            .is_some_and(|opened| bool::from(opened.as_bytes().ct_eq(hash.as_slice())));
        let used = if genuine {
            sqlx::query(
                "UPDATE auth.recovery_codes SET used_at = now() \
                 WHERE tenant_id = $1 AND user_id = $2 AND code_hash = $3 AND used_at IS NULL",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .bind(hash.as_slice())
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            0
        };
        let verdict = if used == 1 {
            sqlx::query(
                "UPDATE auth.totp SET failed_attempts = 0, locked_until = NULL, \
                 hard_locked_at = NULL WHERE tenant_id = $1 AND user_id = $2",
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
            ended = Self::sign_out_if_locked(&mut tx, tenant, user, failure).await?;
            failure.verdict()
        };
        tx.commit().await?;
        self.report(verdict, tenant, user, None);
        report_ended(&self.events, tenant, user, ended);
        Ok(verdict)
    }
}

/// How a replacement of the authenticator ([`TotpService::start_replacement`]) is authorised.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum ReplaceProof<'a> {
    /// The session's own fresh step-up: `aal2`, its last factor check at most `max_age` old.
    StepUp {
        /// How old the last factor check may be.
        max_age: Duration,
    },
    /// One of the account's recovery codes (for a lost authenticator); used up by the start.
    RecoveryCode(&'a SecretString),
}

impl std::fmt::Debug for ReplaceProof<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StepUp { max_age } => f.debug_struct("StepUp").field("max_age", max_age).finish(),
            Self::RecoveryCode(_) => f.write_str("RecoveryCode([redacted])"),
        }
    }
}

fn replacement_context(tenant: TenantId, user: ActorId) -> Context {
    Context::new(
        tenant.as_uuid().as_bytes(),
        "auth.totp",
        "replacement_seed",
        user.as_uuid().as_bytes(),
    )
}

/// `now` (Unix seconds) as a date, or an error (nothing is checked then).
fn unix_time(now: u64) -> Result<OffsetDateTime, AuthError> {
    i64::try_from(now)
        .ok()
        .and_then(|now| OffsetDateTime::from_unix_timestamp(now).ok())
        .ok_or(AuthError::InvalidConfig("time"))
}

/// A user's TOTP row, read under a row lock.
struct FactorState {
    sealed: Vec<u8>,
    confirmed: bool,
    last_step: Option<i64>,
    failed: i32,
    locked_until: Option<OffsetDateTime>,
    hard_locked: bool,
}

impl FactorState {
    async fn load(
        tx: &mut rls_guard::TenantTx,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<Self>, AuthError> {
        type Row = (
            Vec<u8>,
            Option<OffsetDateTime>,
            Option<i64>,
            i32,
            Option<OffsetDateTime>,
            Option<OffsetDateTime>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT seed, confirmed_at, last_step, failed_attempts, locked_until, hard_locked_at \
             FROM auth.totp WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.map(
            |(sealed, confirmed, last_step, failed, locked_until, hard_locked_at)| Self {
                sealed,
                confirmed: confirmed.is_some(),
                last_step,
                failed,
                locked_until,
                hard_locked: hard_locked_at.is_some(),
            },
        ))
    }

    /// Whether TOTP codes are refused until a recovery code or an unlock: marked so, or the
    /// count is at the (current) hard limit, or cannot be read.
    fn is_hard_locked(&self, config: &TotpConfig) -> bool {
        self.hard_locked || u32::try_from(self.failed).map_or(true, |f| f >= config.hard_limit)
    }
}

/// How many recovery codes a user gets.
pub const RECOVERY_CODES: usize = 10;
const RECOVERY_DOMAIN: &[u8] = b"magic-auth/recovery/v1\n";
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstvwxyz0123456789";

/// Fresh recovery codes, shown once. `Debug` does not print them; zeroised on drop.
pub struct RecoveryCodes(Vec<SecretString>);

impl RecoveryCodes {
    /// The codes, `xxxx-xxxx-xxxx-xxxx` (80 bits each), as [`SecretString`]s: expose them only
    /// where they are shown to the user.
    #[must_use]
    pub fn codes(&self) -> &[SecretString] {
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

/// The code an authenticator shows for `seed` at `time`: what a test, or a tool that stands in
/// for the user's authenticator, types in.
///
/// # Errors
/// [`AuthError::InvalidConfig`] for a seed shorter than 128 bits.
pub fn code_at(seed: &SecretSlice<u8>, time: u64) -> Result<SecretString, AuthError> {
    Ok(totp(seed.expose_secret().to_vec(), "x", "x")?
        .generate(time)
        .to_string()
        .into())
}
