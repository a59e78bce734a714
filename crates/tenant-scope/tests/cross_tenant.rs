//! The cross-tenant capability: staff only, a reason, audited before granting, one per process.
//! One test function, because the authority can be installed only once per process.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;

use tenant_scope::{
    Actor, ActorId, ActorKind, CrossTenantAudit, CrossTenantAuthority, CrossTenantEvent,
    CrossTenantRefusal, GrantOutcome, Origin, TenantError, TenantId,
};

#[derive(Debug, thiserror::Error)]
#[error("audit store down")]
struct StoreDown;

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<CrossTenantEvent>>,
    fail: std::sync::atomic::AtomicBool,
}

impl CrossTenantAudit for &'static Recorder {
    type Error = StoreDown;

    async fn record(&self, event: &CrossTenantEvent) -> Result<(), StoreDown> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreDown);
        }
        self.events.lock().unwrap().push(event.clone());
        Ok(())
    }
}

#[tokio::test]
async fn cross_tenant_grants_are_staff_only_reasoned_audited_and_unique() {
    let recorder: &'static Recorder = Box::leak(Box::default());
    let authority = CrossTenantAuthority::install(recorder).unwrap();

    // A second authority cannot be minted by code that did not receive the first.
    assert_eq!(
        CrossTenantAuthority::install(recorder).err(),
        Some(TenantError::CrossTenantRefused(
            CrossTenantRefusal::AlreadyInstalled
        ))
    );

    let home = TenantId::new_random();
    let target = TenantId::new_random();
    let staff = Actor::new(ActorKind::Staff, ActorId::new_random(), home);
    let user = Actor::new(ActorKind::User, ActorId::new_random(), home);
    let agent = Actor::new(ActorKind::Agent, ActorId::new_random(), home);

    for not_staff in [&user, &agent] {
        assert_eq!(
            authority
                .grant(not_staff, target, "investigating ticket 4411")
                .await,
            Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::NotStaff
            ))
        );
    }
    for weak_reason in ["", "   ", "because"] {
        assert_eq!(
            authority.grant(&staff, target, weak_reason).await,
            Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::ReasonRequired
            ))
        );
    }
    // Refusals are recorded as refusals; none produced a context.
    {
        let events = recorder.events.lock().unwrap();
        assert_eq!(events.len(), 5);
        assert!(
            events
                .iter()
                .all(|e| matches!(e.outcome, GrantOutcome::Refused(_)))
        );
    }

    // When the audit hook fails, no grant is given.
    recorder
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        authority
            .grant(&staff, target, "investigating ticket 4411")
            .await,
        Err(TenantError::CrossTenantRefused(
            CrossTenantRefusal::AuditFailed
        ))
    );
    recorder
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(recorder.events.lock().unwrap().len(), 5);

    let ctx = authority
        .grant(&staff, target, "  investigating ticket 4411 ")
        .await
        .unwrap();
    assert_eq!(ctx.tenant(), target);
    assert_eq!(ctx.actor(), Some(&staff));
    assert!(ctx.is_cross_tenant());
    assert_eq!(
        ctx.origin(),
        &Origin::CrossTenant {
            reason: "investigating ticket 4411".into()
        }
    );
    let events = recorder.events.lock().unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.outcome, last.target, last.actor.id()),
        (GrantOutcome::Granted, target, staff.id())
    );
}
