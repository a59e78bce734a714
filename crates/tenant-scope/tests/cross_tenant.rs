//! The cross-tenant capability: staff only, a visible reason, audited before granting and on
//! every use, expiring, one per process.
//! The tests that need the authority share one test function, because it can be installed only
//! once per process.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tenant_scope::{
    Actor, ActorId, ActorKind, CrossTenantAudit, CrossTenantAuthority, CrossTenantEvent,
    CrossTenantRefusal, GrantLifetime, GrantOutcome, Origin, TenantContext, TenantError, TenantId,
};

#[derive(Debug, thiserror::Error)]
#[error("audit store down")]
struct StoreDown;

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<CrossTenantEvent>>,
    fail: AtomicBool,
}

impl Recorder {
    fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    fn last(&self) -> CrossTenantEvent {
        self.events.lock().unwrap().last().cloned().unwrap()
    }

    fn fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
}

impl CrossTenantAudit for &'static Recorder {
    type Error = StoreDown;

    async fn record(&self, event: &CrossTenantEvent) -> Result<(), StoreDown> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreDown);
        }
        self.events.lock().unwrap().push(event.clone());
        Ok(())
    }
}

const fn refused(refusal: CrossTenantRefusal) -> Result<(), TenantError> {
    Err(TenantError::CrossTenantRefused(refusal))
}

#[tokio::test]
async fn cross_tenant_grants_are_staff_only_reasoned_audited_expiring_and_unique() {
    let recorder: &'static Recorder = Box::leak(Box::default());
    let authority = CrossTenantAuthority::install(recorder).unwrap();
    assert_eq!(authority.grant_lifetime(), GrantLifetime::DEFAULT);

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

    not_staff_is_refused(&authority, recorder, target, [&user, &agent]).await;
    reasons_padded_with_invisible_characters_are_refused(&authority, recorder, &staff, target)
        .await;
    oversized_reasons_are_refused_and_recorded_cut(&authority, recorder, &staff, target).await;
    grant_is_refused_when_the_hook_fails(&authority, recorder, &staff, target).await;

    let ctx =
        granted_context_carries_reason_expiry_and_no_hook(&authority, recorder, &staff, target)
            .await;
    every_use_is_recorded(&ctx, recorder, &staff, target).await;
    use_is_refused_when_the_hook_fails(&ctx, recorder).await;

    let authority =
        authority.with_grant_lifetime(GrantLifetime::new(Duration::from_millis(250)).unwrap());
    use_after_expiry_is_refused_and_recorded(&authority, recorder, &staff, target).await;

    // Positive control for the expiry: the earlier grant (default lifetime) is still usable.
    let before = recorder.len();
    assert_eq!(ctx.authorize_use().await, Ok(()));
    assert_eq!(recorder.len(), before + 1);
}

async fn not_staff_is_refused(
    authority: &CrossTenantAuthority<&'static Recorder>,
    recorder: &Recorder,
    target: TenantId,
    not_staff: [&Actor; 2],
) {
    for actor in not_staff {
        let before = recorder.len();
        assert_eq!(
            authority
                .grant(actor, target, "investigating ticket 4411")
                .await,
            Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::NotStaff
            ))
        );
        assert_eq!(recorder.len(), before + 1);
        assert_eq!(
            recorder.last().outcome,
            GrantOutcome::Refused(CrossTenantRefusal::NotStaff)
        );
    }
}

async fn reasons_padded_with_invisible_characters_are_refused(
    authority: &CrossTenantAuthority<&'static Recorder>,
    recorder: &Recorder,
    staff: &Actor,
    target: TenantId,
) {
    let weak = [
        "",
        "   ",
        "because",
        // Spaces between the letters do not count: nine letters.
        "a b c d e f g h i",
        // Zero-width space, joiners, word joiner, byte-order mark: seven letters.
        "abc\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}defg",
        // Bidirectional overrides, embeddings and isolates: eight letters.
        "\u{202E}abcd\u{202A}\u{202B}efgh\u{202C}\u{2066}\u{2067}\u{2068}\u{2069}\u{200E}\u{200F}",
        // Control characters (C0, DEL, C1): eight letters.
        "abcd\u{0007}\u{0008}\u{001B}efgh\u{007F}\u{0085}\u{009B}",
        // Hangul fillers and the Mongolian vowel separator: six letters.
        "ok\u{3164}\u{3164}\u{115F}\u{1160}\u{FFA0}fine\u{180E}",
        // Variation selectors and tag characters: nine letters.
        "abcdefghi\u{FE0F}\u{FE00}\u{E0001}\u{E0041}\u{E0042}\u{E007F}",
        // Soft hyphens, the combining grapheme joiner and invisible operators: eight letters.
        "abcd\u{00AD}\u{00AD}\u{034F}efgh\u{2061}\u{2062}\u{2063}\u{2064}",
        // Combining marks stacked on one letter: one character.
        "a\u{0301}\u{0302}\u{0303}\u{0304}\u{0306}\u{0307}\u{0308}\u{030A}\u{030B}\u{030C}",
        // Exotic spaces and the braille blank: five letters.
        "\u{3000}abc\u{2003}\u{2009}\u{00A0}de\u{2800}\u{2800}\u{2800}\u{2800}\u{2800}",
        // Private-use characters render as nothing in most fonts: nine letters.
        "abcdefghi\u{E000}\u{F8FF}",
    ];
    for reason in weak {
        let before = recorder.len();
        assert_eq!(
            authority.grant(staff, target, reason).await,
            Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::ReasonRequired
            )),
            "{reason:?} accepted"
        );
        // The refusal is recorded, and produced no context.
        assert_eq!(recorder.len(), before + 1);
        assert_eq!(
            recorder.last().outcome,
            GrantOutcome::Refused(CrossTenantRefusal::ReasonRequired)
        );
    }

    // Positive controls: ten visible characters pass, with or without invisible ones around
    // them, in any script.
    for reason in [
        "ticket4411",
        "a b c d e f g h i j",
        "\u{200B}ticket\u{200D}4411\u{FEFF}",
        "顧客からの問い合わせ対応",
        "Überprüfung",
    ] {
        let before = recorder.len();
        let ctx = authority.grant(staff, target, reason).await;
        assert!(ctx.is_ok(), "{reason:?} refused: {ctx:?}");
        assert_eq!(recorder.len(), before + 1);
        assert_eq!(recorder.last().outcome, GrantOutcome::Granted);
    }
}

async fn oversized_reasons_are_refused_and_recorded_cut(
    authority: &CrossTenantAuthority<&'static Recorder>,
    recorder: &Recorder,
    staff: &Actor,
    target: TenantId,
) {
    let max = tenant_scope::cross_tenant::MAX_REASON_CHARS;
    for reason in ["x".repeat(max + 1), "\u{200B}".repeat(100_000)] {
        assert_eq!(
            authority.grant(staff, target, &reason).await,
            Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::ReasonTooLong
            ))
        );
        let last = recorder.last();
        assert_eq!(
            last.outcome,
            GrantOutcome::Refused(CrossTenantRefusal::ReasonTooLong)
        );
        assert_eq!(last.reason.chars().count(), max);
    }
    // Positive control: exactly the maximum passes.
    assert!(
        authority
            .grant(staff, target, &"x".repeat(max))
            .await
            .is_ok()
    );
    assert_eq!(recorder.last().outcome, GrantOutcome::Granted);
}

async fn grant_is_refused_when_the_hook_fails(
    authority: &CrossTenantAuthority<&'static Recorder>,
    recorder: &Recorder,
    staff: &Actor,
    target: TenantId,
) {
    let before = recorder.len();
    recorder.fail(true);
    assert_eq!(
        authority
            .grant(staff, target, "investigating ticket 4411")
            .await,
        Err(TenantError::CrossTenantRefused(
            CrossTenantRefusal::AuditFailed
        ))
    );
    recorder.fail(false);
    assert_eq!(recorder.len(), before);
}

async fn granted_context_carries_reason_expiry_and_no_hook(
    authority: &CrossTenantAuthority<&'static Recorder>,
    recorder: &Recorder,
    staff: &Actor,
    target: TenantId,
) -> TenantContext {
    let ctx = authority
        .grant(staff, target, "  investigating ticket 4411 ")
        .await
        .unwrap();
    assert_eq!(ctx.tenant(), target);
    assert_eq!(ctx.actor(), Some(staff));
    assert!(ctx.is_cross_tenant());
    assert_eq!(
        ctx.origin(),
        &Origin::CrossTenant {
            reason: "investigating ticket 4411".into()
        }
    );
    let last = recorder.last();
    assert_eq!(
        (
            last.outcome,
            last.target,
            last.actor.id(),
            last.reason.as_str()
        ),
        (
            GrantOutcome::Granted,
            target,
            staff.id(),
            "investigating ticket 4411"
        )
    );
    // The default lifetime, counted from the recorded grant.
    assert_eq!(
        ctx.expires_at(),
        Some(last.at + GrantLifetime::DEFAULT.get())
    );
    // A clone is the same grant; a second grant for the same reason is not.
    assert_eq!(ctx.clone(), ctx);
    let again = authority
        .grant(staff, target, "investigating ticket 4411")
        .await
        .unwrap();
    assert_ne!(again, ctx);

    let debug = format!("{ctx:?}");
    assert!(debug.contains("investigating ticket 4411"), "{debug}");
    assert!(debug.contains("expires_at"), "{debug}");
    assert!(
        !debug.contains("Recorder") && !debug.contains("hook"),
        "{debug}"
    );
    ctx
}

async fn every_use_is_recorded(
    ctx: &TenantContext,
    recorder: &Recorder,
    staff: &Actor,
    target: TenantId,
) {
    let before = recorder.len();
    let clone = ctx.clone();
    for use_of in [ctx, ctx, &clone, ctx] {
        assert_eq!(use_of.authorize_use().await, Ok(()));
    }
    let uses = recorder.events.lock().unwrap()[before..].to_vec();
    assert_eq!(uses.len(), 4);
    for event in &uses {
        assert_eq!(
            (
                event.outcome,
                event.target,
                event.actor.id(),
                event.reason.as_str()
            ),
            (
                GrantOutcome::Used,
                target,
                staff.id(),
                "investigating ticket 4411"
            )
        );
    }

    // Ordinary contexts are not audited.
    let own = TenantContext::for_actor(staff.clone());
    let job = TenantContext::for_job(target, None, "nightly-report").unwrap();
    for ordinary in [&own, &job] {
        assert_eq!(ordinary.authorize_use().await, Ok(()));
        assert_eq!(ordinary.expires_at(), None);
    }
    assert_eq!(recorder.len(), before + 4);
}

async fn use_is_refused_when_the_hook_fails(ctx: &TenantContext, recorder: &Recorder) {
    let before = recorder.len();
    recorder.fail(true);
    assert_eq!(
        ctx.authorize_use().await,
        refused(CrossTenantRefusal::AuditFailed)
    );
    recorder.fail(false);
    assert_eq!(recorder.len(), before);
    // Positive control: once the hook works again, so does the context.
    assert_eq!(ctx.authorize_use().await, Ok(()));
    assert_eq!(recorder.len(), before + 1);
}

async fn use_after_expiry_is_refused_and_recorded(
    authority: &CrossTenantAuthority<&'static Recorder>,
    recorder: &Recorder,
    staff: &Actor,
    target: TenantId,
) {
    let lifetime = Duration::from_millis(250);
    assert_eq!(authority.grant_lifetime().get(), lifetime);
    let ctx = authority
        .grant(staff, target, "short look at ticket 4412")
        .await
        .unwrap();
    assert_eq!(ctx.expires_at(), Some(recorder.last().at + lifetime));
    let clone = ctx.clone();

    // Positive control: usable before it expires.
    assert_eq!(ctx.authorize_use().await, Ok(()));
    assert_eq!(recorder.last().outcome, GrantOutcome::Used);

    tokio::time::sleep(lifetime + Duration::from_millis(50)).await;

    for use_of in [&ctx, &clone] {
        let before = recorder.len();
        assert_eq!(
            use_of.authorize_use().await,
            refused(CrossTenantRefusal::Expired)
        );
        // The refused use is recorded as a refusal, not as a use.
        assert_eq!(recorder.len(), before + 1);
        let last = recorder.last();
        assert_eq!(
            (last.outcome, last.target, last.actor.id()),
            (
                GrantOutcome::Refused(CrossTenantRefusal::Expired),
                target,
                staff.id()
            )
        );
    }

    // An expired use stays refused when recording the refusal fails (and is not reported as an
    // audit failure).
    let before = recorder.len();
    recorder.fail(true);
    assert_eq!(
        ctx.authorize_use().await,
        refused(CrossTenantRefusal::Expired)
    );
    recorder.fail(false);
    assert_eq!(recorder.len(), before);
}

#[test]
fn grant_lifetime_out_of_range_is_refused_at_configuration() {
    for out_of_range in [
        Duration::ZERO,
        GrantLifetime::MAX.get() + Duration::from_nanos(1),
        Duration::from_secs(24 * 60 * 60),
        Duration::MAX,
    ] {
        assert_eq!(
            GrantLifetime::new(out_of_range),
            Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::LifetimeOutOfRange
            )),
            "{out_of_range:?}"
        );
    }
    // Positive controls: the bounds themselves and values between.
    for in_range in [
        Duration::from_nanos(1),
        Duration::from_millis(50),
        Duration::from_secs(15 * 60),
        Duration::from_secs(8 * 60 * 60),
    ] {
        assert_eq!(GrantLifetime::new(in_range).unwrap().get(), in_range);
    }
    assert_eq!(GrantLifetime::DEFAULT.get(), Duration::from_secs(15 * 60));
    assert_eq!(GrantLifetime::MAX.get(), Duration::from_secs(8 * 60 * 60));
    assert_eq!(GrantLifetime::default(), GrantLifetime::DEFAULT);
}

#[test]
fn contexts_stay_clone_send_and_sync_and_authorize_use_is_send() {
    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}
    clone_send_sync::<TenantContext>();
    let ctx = TenantContext::for_actor(Actor::new(
        ActorKind::User,
        ActorId::new_random(),
        TenantId::new_random(),
    ));
    send(&ctx.authorize_use());
}
