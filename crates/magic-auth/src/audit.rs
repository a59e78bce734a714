//! `audit-log` as the [`AuthEvents`] hook (feature `audit-log`, on by default).
//!
//! Each event becomes an audit record in the tenant's chain, written by a task of its own (the
//! hook is synchronous and must not block the sign-in): identifiers only — the account, its kind
//! when known, the session as target — never a token, a code or an address.

use audit_log::{Action, AuditActor, AuditEvent, AuditLog, Outcome, Target, actions};
use tenant_scope::Actor;

use crate::events::{AuthEvent, AuthEventKind, AuthEvents};

fn action(kind: AuthEventKind) -> (Action, Outcome) {
    let custom = |name: &str| Action::new(name).unwrap_or(actions::AUTHN_LOGIN_SUCCEEDED);
    match kind {
        AuthEventKind::LinkConfirmed => (custom("authn.link_confirmed"), Outcome::Allowed),
        AuthEventKind::SessionCreated => (actions::AUTHN_LOGIN_SUCCEEDED, Outcome::Allowed),
        AuthEventKind::SessionRotated => (actions::AUTHN_STEP_UP, Outcome::Allowed),
        AuthEventKind::MfaEnrolled => (actions::AUTHN_MFA_ENROLLED, Outcome::Allowed),
        AuthEventKind::CodeAccepted => (custom("authn.code_accepted"), Outcome::Allowed),
        AuthEventKind::CodeFailed => (actions::AUTHN_CODE_FAILED, Outcome::denied("wrong_code")),
        AuthEventKind::LockedOut => (actions::AUTHN_LOCKED_OUT, Outcome::denied("locked_out")),
        AuthEventKind::HardLockedOut => (
            actions::AUTHN_LOCKED_OUT,
            Outcome::denied("hard_locked_out"),
        ),
        AuthEventKind::MfaUnlocked => (actions::AUTHN_MFA_UNLOCKED, Outcome::Allowed),
        AuthEventKind::RecoveryCodeUsed => (actions::AUTHN_RECOVERY_CODE_USED, Outcome::Allowed),
        AuthEventKind::RecoveryCodesRegenerated => {
            (actions::AUTHN_RECOVERY_CODES_REGENERATED, Outcome::Allowed)
        }
        AuthEventKind::SessionRevoked => (actions::SESSION_REVOKED, Outcome::Allowed),
        AuthEventKind::SessionsRevoked => (actions::SESSION_REVOKED_ALL, Outcome::Allowed),
        AuthEventKind::LinksInvalidated => (actions::AUTHN_LINKS_INVALIDATED, Outcome::Allowed),
        AuthEventKind::AccountDisabled => (actions::AUTHN_ACCOUNT_DISABLED, Outcome::Allowed),
        AuthEventKind::AccountEnabled => (actions::AUTHN_ACCOUNT_ENABLED, Outcome::Allowed),
        AuthEventKind::MfaReplacementStarted => {
            (actions::AUTHN_MFA_REPLACEMENT_STARTED, Outcome::Allowed)
        }
        AuthEventKind::MfaReplaced => (actions::AUTHN_MFA_REPLACED, Outcome::Allowed),
        AuthEventKind::EmailChangeRequested => {
            (actions::AUTHN_EMAIL_CHANGE_REQUESTED, Outcome::Allowed)
        }
        AuthEventKind::EmailChanged => (actions::AUTHN_EMAIL_CHANGED, Outcome::Allowed),
    }
}

/// The audit record for `event`.
#[must_use]
pub fn audit_event(event: &AuthEvent) -> AuditEvent {
    let actor = match (event.user, event.actor_kind) {
        (Some(user), Some(kind)) => AuditActor::from_actor(&Actor::new(kind, user, event.tenant)),
        (Some(user), None) => AuditActor::account(*user.as_uuid(), event.tenant),
        (None, _) => AuditActor::system(),
    };
    let (action, outcome) = action(event.kind);
    let audit = AuditEvent::new(event.tenant, actor, action, outcome);
    match event.session {
        Some(session) => audit
            .clone()
            .with_target(Target::new("session", &session.to_string()))
            .unwrap_or(audit),
        None => audit,
    }
}

impl AuthEvents for AuditLog {
    fn record(&self, event: &AuthEvent) {
        let audit = audit_event(event);
        let log = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = log.record(audit).await {
                        tracing::error!(error = %error, "authentication event could not be audited");
                    }
                });
            }
            Err(_) => tracing::error!("authentication event not audited: no async runtime"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_link_events_have_actions_of_their_own() {
        for (kind, name) in [
            (AuthEventKind::LinksInvalidated, "authn.links_invalidated"),
            (AuthEventKind::AccountDisabled, "authn.account_disabled"),
            (AuthEventKind::AccountEnabled, "authn.account_enabled"),
            (AuthEventKind::SessionsRevoked, "session.revoked_all"),
            (
                AuthEventKind::MfaReplacementStarted,
                "authn.mfa_replacement_started",
            ),
            (AuthEventKind::MfaReplaced, "authn.mfa_replaced"),
            (
                AuthEventKind::EmailChangeRequested,
                "authn.email_change_requested",
            ),
            (AuthEventKind::EmailChanged, "authn.email_changed"),
        ] {
            let (action, outcome) = action(kind);
            assert_eq!(action.as_str(), name);
            assert_eq!(outcome.status(), Outcome::Allowed.status());
        }
    }
}
