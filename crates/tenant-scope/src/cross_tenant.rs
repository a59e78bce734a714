//! The one way to act in another tenant: a staff-only, reasoned, audited, expiring grant.
//!
//! Ordinary request handling cannot produce a cross-tenant context: no resolver does, the layer
//! refuses a request that names a tenant other than the signed-in actor's, and the
//! [`CrossTenantAuthority`] that grants one can be installed once per process — by the
//! application at start-up, which hands it only to its staff console. Each grant needs a staff
//! actor and a reason of at least [`MIN_REASON_CHARS`] visible characters, and is recorded
//! through a [`CrossTenantAudit`] hook before it is given; if the hook fails, the grant is
//! refused.
//!
//! A granted context expires after the authority's [`GrantLifetime`] (15 minutes unless
//! configured). Data-access code calls [`TenantContext::authorize_use`] before each use: for a
//! granted context that records a [`GrantOutcome::Used`] event through the same hook, and refuses
//! the use once the grant has expired or when the record cannot be written.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::error::CrossTenantRefusal;
use crate::{Actor, TenantContext, TenantError, TenantId};

/// The fewest visible characters a reason must have.
///
/// Whitespace, control characters (`Cc`), format characters (`Cf`: zero-width spaces and
/// joiners, bidirectional controls, the soft hyphen, the byte-order mark, tag characters, …),
/// other default-ignorable characters (Hangul fillers, variation selectors, the combining
/// grapheme joiner, …), combining marks (they belong to the character before them), the braille
/// blank, and unassigned or private-use code points are not counted.
pub const MIN_REASON_CHARS: usize = 10;

/// The most characters (of any kind, after trimming surrounding whitespace) a reason may have,
/// so a reason cannot flood the audit log.
pub const MAX_REASON_CHARS: usize = 500;

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// How long a granted context may be used: more than zero and at most [`GrantLifetime::MAX`].
///
/// Validated when it is built, so a misconfigured lifetime is an error at start-up rather than at
/// the first grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantLifetime(Duration);

impl GrantLifetime {
    /// The lifetime of a grant unless configured otherwise: 15 minutes.
    pub const DEFAULT: Self = Self(Duration::from_secs(15 * 60));
    /// The longest lifetime accepted: 8 hours.
    pub const MAX: Self = Self(Duration::from_secs(8 * 60 * 60));

    /// A lifetime of `lifetime`.
    ///
    /// # Errors
    /// [`CrossTenantRefusal::LifetimeOutOfRange`] when `lifetime` is zero or longer than
    /// [`GrantLifetime::MAX`].
    pub fn new(lifetime: Duration) -> Result<Self, TenantError> {
        if lifetime.is_zero() || lifetime > Self::MAX.0 {
            return Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::LifetimeOutOfRange,
            ));
        }
        Ok(Self(lifetime))
    }

    /// The duration.
    #[must_use]
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl Default for GrantLifetime {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What happened to a cross-tenant request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantOutcome {
    /// The grant was given.
    Granted,
    /// A granted context is about to be used (recorded by
    /// [`TenantContext::authorize_use`] before each use).
    Used,
    /// The grant was refused, or a use of a granted context was refused
    /// ([`CrossTenantRefusal::Expired`]).
    Refused(CrossTenantRefusal),
}

/// A cross-tenant request, as handed to the audit hook.
///
/// The authority builds these; [`CrossTenantEvent::new`] is for code that stands in for it,
/// such as a hook's tests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CrossTenantEvent {
    /// Who asked.
    pub actor: Actor,
    /// The tenant they asked to act in.
    pub target: TenantId,
    /// Their reason, trimmed (cut to [`MAX_REASON_CHARS`] characters when it was refused for
    /// being longer).
    pub reason: String,
    /// When, by the server's clock.
    pub at: SystemTime,
    /// Granted, used or refused.
    pub outcome: GrantOutcome,
}

impl CrossTenantEvent {
    /// `actor` asking, at `at`, to act in `target` for `reason`, with `outcome`. The reason is
    /// kept as given.
    #[must_use]
    pub fn new(
        actor: Actor,
        target: TenantId,
        reason: impl Into<String>,
        at: SystemTime,
        outcome: GrantOutcome,
    ) -> Self {
        Self {
            actor,
            target,
            reason: reason.into(),
            at,
            outcome,
        }
    }
}

/// Records cross-tenant grants, uses and refusals. `audit-log` implements this; tests use an
/// in-memory one.
pub trait CrossTenantAudit: Send + Sync + 'static {
    /// Why recording failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Records `event` durably. A grant is given, and a granted context used, only after this
    /// succeeds.
    fn record(
        &self,
        event: &CrossTenantEvent,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
type RecordFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// [`CrossTenantAudit`] in a form a granted context can hold behind an `Arc<dyn _>`.
trait ErasedAudit: Send + Sync {
    fn record_erased<'a>(&'a self, event: &'a CrossTenantEvent) -> RecordFuture<'a>;
}

impl<H: CrossTenantAudit> ErasedAudit for H {
    fn record_erased<'a>(&'a self, event: &'a CrossTenantEvent) -> RecordFuture<'a> {
        Box::pin(async move {
            CrossTenantAudit::record(self, event)
                .await
                .map_err(|error| Box::new(error) as BoxError)
        })
    }
}

/// The capability to grant staff a [`TenantContext`] in another tenant.
///
/// Not `Clone`, and only one can be installed per process.
pub struct CrossTenantAuthority<H> {
    hook: Arc<H>,
    lifetime: GrantLifetime,
}

impl<H> fmt::Debug for CrossTenantAuthority<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrossTenantAuthority")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl<H: CrossTenantAudit> CrossTenantAuthority<H> {
    /// Installs the process's authority, recording through `hook`. Grants last
    /// [`GrantLifetime::DEFAULT`] unless [`with_grant_lifetime`](Self::with_grant_lifetime) says
    /// otherwise.
    ///
    /// # Errors
    /// [`CrossTenantRefusal::AlreadyInstalled`] on every call after the first, so code that
    /// did not receive the authority at start-up cannot mint its own.
    pub fn install(hook: H) -> Result<Self, TenantError> {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::AlreadyInstalled,
            ));
        }
        Ok(Self {
            hook: Arc::new(hook),
            lifetime: GrantLifetime::DEFAULT,
        })
    }

    /// Sets how long the contexts granted from now on may be used.
    #[must_use]
    pub const fn with_grant_lifetime(mut self, lifetime: GrantLifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// How long the contexts this authority grants may be used.
    #[must_use]
    pub const fn grant_lifetime(&self) -> GrantLifetime {
        self.lifetime
    }

    /// Grants `staff` a context in `target` for `reason`, usable for the authority's
    /// [`GrantLifetime`], counted from before the grant is recorded.
    ///
    /// # Errors
    /// [`TenantError::CrossTenantRefused`] when the actor is not staff
    /// ([`NotStaff`](CrossTenantRefusal::NotStaff)), the reason has fewer than
    /// [`MIN_REASON_CHARS`] visible characters ([`ReasonRequired`](CrossTenantRefusal::ReasonRequired))
    /// or more than [`MAX_REASON_CHARS`] characters ([`ReasonTooLong`](CrossTenantRefusal::ReasonTooLong)),
    /// the expiry cannot be represented ([`Expired`](CrossTenantRefusal::Expired)), or the hook
    /// cannot record the grant ([`AuditFailed`](CrossTenantRefusal::AuditFailed)). Refusals are
    /// recorded too (best effort: a refusal stands even if recording it fails).
    pub async fn grant(
        &self,
        staff: &Actor,
        target: TenantId,
        reason: &str,
    ) -> Result<TenantContext, TenantError> {
        let reason = reason.trim();
        let too_long = reason.chars().nth(MAX_REASON_CHARS).is_some();
        let at = SystemTime::now();
        let lifetime = self.lifetime.get();
        let expiry = Instant::now()
            .checked_add(lifetime)
            .zip(at.checked_add(lifetime));
        let refusal = if !staff.is_staff() {
            Some(CrossTenantRefusal::NotStaff)
        } else if too_long {
            Some(CrossTenantRefusal::ReasonTooLong)
        } else if visible_chars(reason) < MIN_REASON_CHARS {
            Some(CrossTenantRefusal::ReasonRequired)
        } else if expiry.is_none() {
            Some(CrossTenantRefusal::Expired)
        } else {
            None
        };
        let event = CrossTenantEvent {
            actor: staff.clone(),
            target,
            reason: if too_long {
                reason.chars().take(MAX_REASON_CHARS).collect()
            } else {
                reason.to_owned()
            },
            at,
            outcome: refusal.map_or(GrantOutcome::Granted, GrantOutcome::Refused),
        };
        let (deadline, expires_at) = match (refusal, expiry) {
            (None, Some(expiry)) => expiry,
            (refusal, _) => {
                if let Err(error) = self.hook.record(&event).await {
                    tracing::warn!(%error, "could not record a refused cross-tenant grant");
                }
                return Err(TenantError::CrossTenantRefused(
                    refusal.unwrap_or(CrossTenantRefusal::Expired),
                ));
            }
        };
        if let Err(error) = self.hook.record(&event).await {
            tracing::error!(%error, "cross-tenant grant refused: audit hook failed");
            return Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::AuditFailed,
            ));
        }
        let hook: Arc<dyn ErasedAudit> = self.hook.clone();
        Ok(TenantContext::granted(
            target,
            staff.clone(),
            reason.into(),
            Grant {
                hook,
                deadline,
                expires_at,
            },
        ))
    }
}

/// What a granted context carries besides its tenant, actor and reason: when it expires and the
/// hook that records its uses.
pub(crate) struct Grant {
    hook: Arc<dyn ErasedAudit>,
    /// The expiry decision is taken on the monotonic clock, so setting the wall clock back
    /// does not extend a grant.
    deadline: Instant,
    /// The same moment on the wall clock, for display and records.
    expires_at: SystemTime,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Grant {
    pub(crate) const fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Records a use by `actor` in `target` for `reason`, or refuses it once expired.
    pub(crate) async fn authorize_use(
        &self,
        actor: &Actor,
        target: TenantId,
        reason: &str,
    ) -> Result<(), TenantError> {
        let expired = Instant::now() >= self.deadline;
        let event = CrossTenantEvent {
            actor: actor.clone(),
            target,
            reason: reason.to_owned(),
            at: SystemTime::now(),
            outcome: if expired {
                GrantOutcome::Refused(CrossTenantRefusal::Expired)
            } else {
                GrantOutcome::Used
            },
        };
        let recorded = self.hook.record_erased(&event).await;
        if expired {
            if let Err(error) = recorded {
                tracing::warn!(%error, "could not record a refused use of an expired cross-tenant grant");
            }
            return Err(TenantError::CrossTenantRefused(CrossTenantRefusal::Expired));
        }
        if let Err(error) = recorded {
            tracing::error!(%error, "cross-tenant use refused: audit hook failed");
            return Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::AuditFailed,
            ));
        }
        Ok(())
    }
}

/// The number of characters in `text` a reader can see (see [`MIN_REASON_CHARS`]).
fn visible_chars(text: &str) -> usize {
    text.chars().filter(|&c| is_visible(c)).count()
}

fn is_visible(c: char) -> bool {
    use unicode_normalization::char::{is_combining_mark, is_public_assigned};
    !(c.is_control()
        || c.is_whitespace()
        || is_invisible(c)
        || is_combining_mark(c)
        || !is_public_assigned(c))
}

/// Characters that render as nothing (or nothing on their own) and are neither `Cc` nor
/// `White_Space`. Sources: Unicode `DerivedCoreProperties.txt` (`Default_Ignorable_Code_Point`)
/// and `UnicodeData.txt` (general category `Cf`).
const fn is_invisible(c: char) -> bool {
    matches!(c,
        // Default_Ignorable_Code_Point
        '\u{00AD}'                      // soft hyphen (Cf)
        | '\u{034F}'                    // combining grapheme joiner
        | '\u{061C}'                    // Arabic letter mark (Cf)
        | '\u{115F}'..='\u{1160}'       // Hangul choseong / jungseong fillers
        | '\u{17B4}'..='\u{17B5}'       // Khmer inherent vowels
        | '\u{180B}'..='\u{180F}'       // Mongolian free variation selectors, vowel separator
        | '\u{200B}'..='\u{200F}'       // zero-width space, ZWNJ, ZWJ, LRM, RLM (Cf)
        | '\u{202A}'..='\u{202E}'       // bidi embeddings and overrides (Cf)
        | '\u{2060}'..='\u{206F}'       // word joiner, invisible operators, bidi isolates (Cf)
        | '\u{3164}'                    // Hangul filler
        | '\u{FE00}'..='\u{FE0F}'       // variation selectors
        | '\u{FEFF}'                    // zero-width no-break space, byte-order mark (Cf)
        | '\u{FFA0}'                    // halfwidth Hangul filler
        | '\u{FFF0}'..='\u{FFF8}'       // reserved default-ignorable
        | '\u{1BCA0}'..='\u{1BCA3}'     // shorthand format controls (Cf)
        | '\u{1D173}'..='\u{1D17A}'     // musical symbol format controls (Cf)
        | '\u{E0000}'..='\u{E0FFF}'     // tags (Cf), variation selectors supplement
        // Other format characters (Cf)
        | '\u{0600}'..='\u{0605}'       // Arabic number signs
        | '\u{06DD}'                    // Arabic end of ayah
        | '\u{070F}'                    // Syriac abbreviation mark
        | '\u{0890}'..='\u{0891}'       // Arabic pound and piastre marks above
        | '\u{08E2}'                    // Arabic disputed end of ayah
        | '\u{FFF9}'..='\u{FFFB}'       // interlinear annotation controls
        | '\u{110BD}' | '\u{110CD}'     // Kaithi number signs
        | '\u{13430}'..='\u{1343F}'     // Egyptian hieroglyph format controls
        // A blank that is not White_Space
        | '\u{2800}'                    // braille pattern blank
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_do_not_count() {
        for c in [
            '\u{00AD}',
            '\u{034F}',
            '\u{061C}',
            '\u{115F}',
            '\u{1160}',
            '\u{180E}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202E}',
            '\u{2060}',
            '\u{2064}',
            '\u{2066}',
            '\u{2069}',
            '\u{3164}',
            '\u{FE00}',
            '\u{FE0F}',
            '\u{FEFF}',
            '\u{FFA0}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{E007F}',
            '\u{E0100}',
            '\u{0000}',
            '\u{001B}',
            '\u{007F}',
            '\u{0085}',
            '\u{009F}',
            ' ',
            '\t',
            '\n',
            '\u{00A0}',
            '\u{2000}',
            '\u{2028}',
            '\u{3000}',
            '\u{0301}',
            '\u{20DD}',
            '\u{2800}',
            '\u{E000}',
            '\u{F8FF}',
            '\u{FFFF}',
            '\u{10FFFD}',
            '\u{0378}',
        ] {
            assert!(!is_visible(c), "U+{:04X} counted as visible", u32::from(c));
        }
    }

    #[test]
    fn ordinary_text_counts() {
        assert_eq!(visible_chars("ticket 4411"), 10);
        assert_eq!(visible_chars("Überprüfung"), 11);
        assert_eq!(visible_chars("顧客からの問い合わせ対応"), 12);
        assert_eq!(visible_chars("проверка счёта"), 13);
        // A decomposed accent belongs to its letter.
        assert_eq!(visible_chars("e\u{0301}"), 1);
        assert_eq!(visible_chars("a.b-c/d_e#"), 10);
    }

    #[test]
    fn lifetime_bounds() {
        assert_eq!(
            GrantLifetime::new(Duration::ZERO),
            Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::LifetimeOutOfRange
            ))
        );
        assert!(GrantLifetime::new(GrantLifetime::MAX.get() + Duration::from_nanos(1)).is_err());
        assert_eq!(
            GrantLifetime::new(GrantLifetime::MAX.get()),
            Ok(GrantLifetime::MAX)
        );
        assert_eq!(GrantLifetime::default().get(), Duration::from_secs(900));
    }
}
