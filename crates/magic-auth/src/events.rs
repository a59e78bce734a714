//! Authentication events, for an audit log (`audit_log::AuditLog` implements the hook, see
//! `crate::audit`) and metrics.

use std::sync::Arc;

use tenant_scope::{ActorId, TenantId};
use uuid::Uuid;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthEventKind {
    /// A magic link was confirmed (the email step of a sign-in).
    LinkConfirmed,
    /// A session was created.
    SessionCreated,
    /// A session was replaced by a stronger or fresher one (second factor, step-up).
    SessionRotated,
    /// A TOTP enrolment was confirmed.
    MfaEnrolled,
    /// A TOTP code was accepted.
    CodeAccepted,
    /// A TOTP or recovery code was wrong, replayed or malformed.
    CodeFailed,
    /// The second factor was locked for a while after repeated failures.
    LockedOut,
    /// The hard limit of consecutive failures was reached: TOTP codes are refused until a
    /// recovery code is used or an operator unlocks the factor.
    HardLockedOut,
    /// An operator unlocked the second factor (`TotpService::unlock`).
    MfaUnlocked,
    /// A recovery code was used.
    RecoveryCodeUsed,
    /// Recovery codes were regenerated.
    RecoveryCodesRegenerated,
    /// One session was revoked.
    SessionRevoked,
    /// Several sessions of a user were revoked.
    SessionsRevoked,
    /// Every pending sign-in link of a user was invalidated (`MagicLinks::invalidate_links`,
    /// or as part of `revoke_all`, disabling or a lockout).
    LinksInvalidated,
    /// An account was disabled for sign-in (`SessionStore::disable_account`).
    AccountDisabled,
    /// A disabled account was enabled again (`SessionStore::enable_account`).
    AccountEnabled,
    /// A replacement of the authenticator was started
    /// (`TotpService::start_replacement`, after a fresh step-up or a recovery code).
    MfaReplacementStarted,
    /// The authenticator was replaced (`TotpService::complete_replacement`): the old seed is
    /// gone and the account's other sessions and pending links were ended.
    MfaReplaced,
    /// A change of the account's e-mail address was requested
    /// (`MagicLinks::request_email_change`: confirmation sent to the new address, notice to the
    /// old one).
    EmailChangeRequested,
    /// The account's e-mail address was changed (`MagicLinks::confirm_email_change`); its other
    /// sessions and pending links were ended.
    EmailChanged,
}

/// One event. It carries identifiers only: never a token, a code, a secret or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthEvent {
    /// What happened.
    pub kind: AuthEventKind,
    /// In which tenant.
    pub tenant: TenantId,
    /// To whom, when known.
    pub user: Option<ActorId>,
    /// The account's kind (`User` or `Staff`), when the reporter knows it.
    pub actor_kind: Option<tenant_scope::ActorKind>,
    /// Which session, when one is involved.
    pub session: Option<Uuid>,
}

/// Receives authentication events. Called synchronously after the change is committed: keep it
/// cheap (send to a channel, spawn a task).
pub trait AuthEvents: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: &AuthEvent);
}

/// The hooks a service reports to (none by default).
#[derive(Clone, Default)]
pub(crate) struct EventSink(Option<Arc<dyn AuthEvents>>);

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "EventSink(set)"
        } else {
            "EventSink(none)"
        })
    }
}

impl EventSink {
    pub(crate) fn new(hook: Arc<dyn AuthEvents>) -> Self {
        Self(Some(hook))
    }

    pub(crate) fn emit(
        &self,
        kind: AuthEventKind,
        tenant: TenantId,
        user: Option<ActorId>,
        session: Option<Uuid>,
    ) {
        self.emit_as(kind, tenant, user, None, session);
    }

    pub(crate) fn emit_as(
        &self,
        kind: AuthEventKind,
        tenant: TenantId,
        user: Option<ActorId>,
        actor_kind: Option<tenant_scope::ActorKind>,
        session: Option<Uuid>,
    ) {
        if let Some(hook) = &self.0 {
            hook.record(&AuthEvent {
                kind,
                tenant,
                user,
                actor_kind,
                session,
            });
        }
    }
}
