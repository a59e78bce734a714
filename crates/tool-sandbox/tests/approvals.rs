//! Approvals only an authenticated human can grant, against a real PostgreSQL: the requester of a
//! turn never approves it, and an attacker who runs SQL as the runtime role can neither forge an
//! approval nor stretch one. Each attack test has a positive control in the same setup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tenant_scope::{Actor, ActorId, ActorKind, TenantContext, TenantId};
use time::OffsetDateTime;
use tool_sandbox::model::ToolCallRequest;
use tool_sandbox::{
    ApprovalKey, ApprovalPolicy, ApprovalRefusal, DenyReason, Gate, MAX_APPROVAL_TTL,
    MAX_ARGUMENT_BYTES, Proposal, SandboxError, Submission, Turn, secrecy,
};
use uuid::Uuid;

fn refused(result: Result<impl std::fmt::Debug, SandboxError>) -> ApprovalRefusal {
    match result {
        Err(SandboxError::ApprovalRefused(r)) => r,
        other => panic!("expected an approval refusal, got {other:?}"),
    }
}

async fn held(f: &Fixture, turn: &mut Turn, c: ToolCallRequest) -> Proposal {
    match f.gate.submit(turn, c).await.unwrap() {
        Submission::Held(p) => p,
        other => panic!("expected a held call, got {other:?}"),
    }
}

fn pay(amount: i64) -> Value {
    json!({"amount": amount, "to": "acct-1234"})
}

/// The agent's own executor context.
fn executor(f: &Fixture, policy: &tool_sandbox::AgentPolicy) -> TenantContext {
    TenantContext::for_job(f.tenant, Some(policy.agent().clone()), "executor").unwrap()
}

/// Runs `sql` (with `$1` bound to `id`, `$2` to `other`) as the runtime role, in the tenant.
async fn as_runtime_role(
    f: &Fixture,
    policy: &tool_sandbox::AgentPolicy,
    sql: &str,
    id: Uuid,
    other: Uuid,
) -> Result<u64, sqlx::Error> {
    let mut tx = f.pool.begin(&executor(f, policy)).await.unwrap();
    let mut query = sqlx::query(sql).bind(id);
    if sql.contains("$2") {
        query = query.bind(other);
    }
    match query.execute(&mut *tx).await {
        Ok(done) => {
            tx.commit().await.unwrap();
            Ok(done.rows_affected())
        }
        Err(e) => {
            tx.rollback().await.unwrap();
            Err(e)
        }
    }
}

/// `(decided_at, approval_expires_at, now())` of `id`, read as the admin.
async fn decision_times(
    f: &Fixture,
    id: Uuid,
) -> (
    Option<OffsetDateTime>,
    Option<OffsetDateTime>,
    OffsetDateTime,
) {
    let admin = f.db.pool(testkit::Role::Admin, 1).await;
    sqlx::query_as(
        "SELECT decided_at, approval_expires_at, now() FROM tool_sandbox.proposals WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&admin)
    .await
    .unwrap()
}

fn refusals(events: &[(String, String, Value)], code: &str) -> usize {
    events
        .iter()
        .filter(|(a, _, e)| a == "authz.denied" && e["outcome"]["reason"] == code)
        .count()
}

#[tokio::test]
async fn the_requester_cannot_approve_from_a_second_session_but_another_approver_can() {
    let f = fixture().await;
    let policy = agent_policy(f.tenant);
    // A staff member asks the agent: otherwise fully authorised to approve.
    let requester = Human::staff(f.tenant);
    let mut t = Turn::new(
        policy.clone(),
        requester.session,
        &requester.actor,
        "pay acct-1234 10",
    )
    .unwrap();
    assert_eq!(t.requester(), requester.actor.id());
    let p = held(&f, &mut t, call("c1", "send_payment", pay(10))).await;
    assert_eq!(p.on_behalf_of, requester.actor.id());

    // The same person from a second, freshly stepped-up session; and as a tenant admin.
    let second_session = Human {
        session: Uuid::new_v4(),
        factor: Some(OffsetDateTime::now_utc()),
        ..requester.clone()
    };
    assert_eq!(
        refused(
            f.gate
                .approve(&second_session.context(), &second_session, p.id, &p.digest)
                .await
        ),
        ApprovalRefusal::SelfApproval
    );
    let as_admin = tool_sandbox::AsTenantAdmin(&second_session);
    assert_eq!(
        refused(
            f.gate
                .approve(&second_session.context(), &as_admin, p.id, &p.digest)
                .await
        ),
        ApprovalRefusal::SelfApproval
    );
    assert_eq!(
        stored_status(&f.db, p.id).await,
        ("pending".to_owned(), None)
    );
    // Nor can the runtime role record the requester as the approver by hand.
    let forged = as_runtime_role(
        &f,
        &policy,
        "UPDATE tool_sandbox.proposals SET status = 'approved', decided_by = on_behalf_of, \
         decided_by_kind = 'staff', decided_session = gen_random_uuid(), \
         approval_expires_at = now() + interval '5 minutes' WHERE id = $1",
        p.id,
        p.id,
    )
    .await;
    assert!(forged.is_err(), "the database must refuse a self-approval");
    assert_eq!(
        stored_status(&f.db, p.id).await,
        ("pending".to_owned(), None)
    );
    assert_eq!(
        refusals(&audit_events(&f.db, f.tenant).await, "self_approval"),
        2
    );

    // Positive control: another staff member approves, and the call runs once.
    let colleague = Human::staff(f.tenant);
    f.gate
        .approve(&colleague.context(), &colleague, p.id, &p.digest)
        .await
        .unwrap();
    let ctx = executor(&f, &policy);
    let approved = f.gate.consume(&ctx, &policy, p.id, &pay(10)).await.unwrap();
    assert!(f.gate.execute(approved).await.unwrap().result.is_ok());
    assert_eq!(f.ledger.runs(), 1);
    assert_eq!(
        stored_status(&f.db, p.id).await,
        ("executed".to_owned(), Some(*colleague.actor.id().as_uuid()))
    );
}

#[tokio::test]
async fn a_turn_needs_a_requester_of_the_agents_tenant_other_than_the_agent() {
    let f = fixture().await;
    let policy = agent_policy(f.tenant);
    let stranger = Actor::new(
        ActorKind::User,
        ActorId::new_random(),
        TenantId::new_random(),
    );
    assert!(matches!(
        Turn::new(policy.clone(), Uuid::new_v4(), &stranger, "x"),
        Err(SandboxError::InvalidRequester)
    ));
    assert!(matches!(
        Turn::new(policy.clone(), Uuid::new_v4(), policy.agent(), "x"),
        Err(SandboxError::InvalidRequester)
    ));
    let user = Actor::new(ActorKind::User, ActorId::new_random(), f.tenant);
    assert!(Turn::new(policy, Uuid::new_v4(), &user, "x").is_ok());
}

#[tokio::test]
async fn an_approval_forged_by_update_as_the_runtime_role_never_executes() {
    let f = fixture().await;
    let policy = agent_policy(f.tenant);
    let mut t = turn(&policy, "pay acct-1234 10, 20 and 30");
    let forged = held(&f, &mut t, call("c1", "send_payment", pay(10))).await;
    let garbage = held(&f, &mut t, call("c2", "send_payment", pay(20))).await;
    let legit = held(&f, &mut t, call("c3", "send_payment", pay(30))).await;

    // The attacker writes a complete, plausible approval: a staff id, a session, an expiry...
    let set_approved = "UPDATE tool_sandbox.proposals SET status = 'approved', \
         decided_by = gen_random_uuid(), decided_by_kind = 'staff', \
         decided_session = gen_random_uuid(), approval_expires_at = now() + interval '10 minutes'";
    let written = as_runtime_role(
        &f,
        &policy,
        &format!("{set_approved} WHERE id = $1"),
        forged.id,
        forged.id,
    )
    .await
    .unwrap();
    assert_eq!(
        written, 1,
        "the state machine itself accepts the forged row"
    );
    // ...and, for the second, a tag of the right length that no key produced.
    as_runtime_role(
        &f,
        &policy,
        &format!("{set_approved}, approval_mac = decode(repeat('ab', 32), 'hex') WHERE id = $1"),
        garbage.id,
        garbage.id,
    )
    .await
    .unwrap();

    let ctx = executor(&f, &policy);
    for (p, args) in [(&forged, pay(10)), (&garbage, pay(20))] {
        assert_eq!(
            refused(f.gate.consume(&ctx, &policy, p.id, &args).await),
            ApprovalRefusal::ForgedApproval
        );
        assert_eq!(stored_status(&f.db, p.id).await.0, "invalidated");
        // Invalidated for good: a second attempt finds nothing approved.
        assert_eq!(
            refused(f.gate.consume(&ctx, &policy, p.id, &args).await),
            ApprovalRefusal::NotApproved
        );
    }
    assert_eq!(f.ledger.runs(), 0);
    assert_eq!(
        refusals(&audit_events(&f.db, f.tenant).await, "forged_approval"),
        2
    );

    // Positive control: the legitimate approval of the same turn executes.
    let staff = Human::staff(f.tenant);
    f.gate
        .approve(&staff.context(), &staff, legit.id, &legit.digest)
        .await
        .unwrap();
    let approved = f
        .gate
        .consume(&ctx, &policy, legit.id, &pay(30))
        .await
        .unwrap();
    assert!(f.gate.execute(approved).await.unwrap().result.is_ok());
    assert_eq!(f.ledger.runs(), 1);
    assert_eq!(f.ledger.last().unwrap().1, pay(30));
}

#[tokio::test]
async fn a_tag_copied_from_another_proposal_or_made_under_another_key_is_refused() {
    let f = fixture().await;
    let policy = agent_policy(f.tenant);
    // The same turn and arguments: both proposals have the same digest.
    let mut t = turn(&policy, "pay acct-1234 10");
    let original = held(&f, &mut t, call("c1", "send_payment", pay(10))).await;
    let copy = held(&f, &mut t, call("c2", "send_payment", pay(10))).await;
    assert_eq!(original.digest, copy.digest);
    let staff = Human::staff(f.tenant);
    f.gate
        .approve(&staff.context(), &staff, original.id, &original.digest)
        .await
        .unwrap();
    // Every decision column of the genuine approval, copied onto the other proposal.
    let copied = as_runtime_role(
        &f,
        &policy,
        "UPDATE tool_sandbox.proposals AS c SET status = 'approved', \
         decided_by = o.decided_by, decided_by_kind = o.decided_by_kind, \
         decided_session = o.decided_session, decided_at = o.decided_at, \
         approval_expires_at = o.approval_expires_at, approval_mac = o.approval_mac \
         FROM tool_sandbox.proposals AS o \
         WHERE o.tenant_id = c.tenant_id AND o.id = $1 AND c.id = $2",
        original.id,
        copy.id,
    )
    .await
    .unwrap();
    assert_eq!(copied, 1);
    let ctx = executor(&f, &policy);
    assert_eq!(
        refused(f.gate.consume(&ctx, &policy, copy.id, &pay(10)).await),
        ApprovalRefusal::ForgedApproval
    );
    assert_eq!(f.ledger.runs(), 0);

    // A gate holding another key does not accept this gate's genuine approval...
    let other_key = Gate::builder(
        std::sync::Arc::new(registry_with(&f.ledger, 1)),
        f.pool.clone(),
        f.log.clone(),
        ApprovalKey::from_bytes(Box::new(approval_secret())).unwrap(),
    )
    .build()
    .unwrap();
    let third = held(&f, &mut t, call("c3", "send_payment", pay(10))).await;
    f.gate
        .approve(&staff.context(), &staff, third.id, &third.digest)
        .await
        .unwrap();
    assert_eq!(
        refused(other_key.consume(&ctx, &policy, third.id, &pay(10)).await),
        ApprovalRefusal::ForgedApproval
    );
    assert_eq!(f.ledger.runs(), 0);
    // ...while a gate with the same key (another instance of the application) does.
    let same_key = Gate::builder(
        std::sync::Arc::new(registry_with(&f.ledger, 1)),
        f.pool.clone(),
        f.log.clone(),
        f.approval_key(),
    )
    .build()
    .unwrap();
    let approved = same_key
        .consume(&ctx, &policy, original.id, &pay(10))
        .await
        .unwrap();
    assert!(same_key.execute(approved).await.unwrap().result.is_ok());
    assert_eq!(f.ledger.runs(), 1);
}

#[tokio::test]
async fn the_runtime_role_cannot_backdate_a_decision_or_stretch_an_approval() {
    let f = fixture().await;
    let policy = agent_policy(f.tenant);
    let mut t = turn(&policy, "pay acct-1234 10");
    let p = held(&f, &mut t, call("c1", "send_payment", pay(10))).await;
    let approve_by_hand = |expiry: &str, decided: &str| {
        format!(
            "UPDATE tool_sandbox.proposals SET status = 'approved', \
             decided_by = gen_random_uuid(), decided_by_kind = 'staff', \
             decided_session = gen_random_uuid(), decided_at = {decided}, \
             approval_expires_at = {expiry} WHERE id = $1"
        )
    };
    // An approval window past the database's maximum, or already over, is refused.
    for expiry in [
        "now() + interval '1 year'",
        "now() + interval '61 minutes'",
        "now()",
        "now() - interval '1 minute'",
    ] {
        let r = as_runtime_role(&f, &policy, &approve_by_hand(expiry, "now()"), p.id, p.id).await;
        assert!(
            r.is_err(),
            "an approval window ending at {expiry} must be refused"
        );
    }
    assert_eq!(
        stored_status(&f.db, p.id).await,
        ("pending".to_owned(), None)
    );
    // A decision time written by hand is replaced with the database's own clock.
    as_runtime_role(
        &f,
        &policy,
        &approve_by_hand("now() + interval '5 minutes'", "now() + interval '30 days'"),
        p.id,
        p.id,
    )
    .await
    .unwrap();
    let (decided_at, _, now) = decision_times(&f, p.id).await;
    let decided_at = decided_at.unwrap();
    assert!(decided_at <= now && now - decided_at < time::Duration::minutes(1));

    // Positive control: a genuine approval is stamped by the database, within the maximum,
    // and once decided neither its time nor its expiry can move.
    let legit = held(&f, &mut t, call("c2", "send_payment", pay(10))).await;
    let staff = Human::staff(f.tenant);
    let approved = f
        .gate
        .approve(&staff.context(), &staff, legit.id, &legit.digest)
        .await
        .unwrap();
    let (decided_at, expires_at, _) = decision_times(&f, legit.id).await;
    let (decided_at, expires_at) = (decided_at.unwrap(), expires_at.unwrap());
    assert_eq!(approved.approval_expires_at, Some(expires_at));
    assert_eq!(expires_at - decided_at, time::Duration::minutes(15));
    for sql in [
        "UPDATE tool_sandbox.proposals SET approval_expires_at = approval_expires_at + \
         interval '1 minute' WHERE id = $1",
        "UPDATE tool_sandbox.proposals SET decided_at = decided_at + interval '1 minute' \
         WHERE id = $1",
        "UPDATE tool_sandbox.proposals SET approval_mac = NULL WHERE id = $1",
    ] {
        assert!(
            as_runtime_role(&f, &policy, sql, legit.id, legit.id)
                .await
                .is_err(),
            "{sql}"
        );
    }
    assert_eq!(decision_times(&f, legit.id).await.1, Some(expires_at));
    let ctx = executor(&f, &policy);
    let call = f
        .gate
        .consume(&ctx, &policy, legit.id, &pay(10))
        .await
        .unwrap();
    assert!(f.gate.execute(call).await.unwrap().result.is_ok());
    assert_eq!(f.ledger.runs(), 1);
}

#[tokio::test]
async fn an_approval_window_beyond_the_databases_maximum_is_refused_at_construction() {
    let too_long = fixture_with_result(
        ApprovalPolicy::default().with_approval_ttl(MAX_APPROVAL_TTL + Duration::from_secs(1)),
    )
    .await;
    assert!(matches!(too_long, Err(SandboxError::InvalidConfig(_))));
    let zero =
        fixture_with_result(ApprovalPolicy::default().with_approval_ttl(Duration::ZERO)).await;
    assert!(matches!(zero, Err(SandboxError::InvalidConfig(_))));
    // Positive control: the maximum itself builds, and the database accepts its approvals.
    let f = fixture_with(|b| {
        b.approvals(ApprovalPolicy::default().with_approval_ttl(MAX_APPROVAL_TTL))
    })
    .await;
    let policy = agent_policy(f.tenant);
    let mut t = turn(&policy, "pay acct-1234 10");
    let p = held(&f, &mut t, call("c1", "send_payment", pay(10))).await;
    let staff = Human::staff(f.tenant);
    f.gate
        .approve(&staff.context(), &staff, p.id, &p.digest)
        .await
        .unwrap();
    let approved = f
        .gate
        .consume(&executor(&f, &policy), &policy, p.id, &pay(10))
        .await
        .unwrap();
    assert!(f.gate.execute(approved).await.unwrap().result.is_ok());
}

/// Builds a gate with `approvals` over a throwaway registry, returning the builder's verdict.
async fn fixture_with_result(approvals: ApprovalPolicy) -> Result<Gate, SandboxError> {
    let f = fixture().await;
    Gate::builder(
        std::sync::Arc::new(registry_with(&f.ledger, 1)),
        f.pool.clone(),
        f.log.clone(),
        f.approval_key(),
    )
    .approvals(approvals)
    .build()
}

#[test]
fn the_approval_key_never_shows_in_debug_output_and_an_unset_key_is_refused() {
    let input = secrecy::SecretBox::new(Box::new([0x5a; 32]));
    let shown = format!("{input:?} {input:#?}");
    assert!(!shown.contains("5a") && !shown.contains("90"), "{shown}");
    let key = ApprovalKey::from_bytes(input).unwrap();
    let shown = format!("{key:?} {key:#?}");
    assert!(!shown.contains("5a") && !shown.contains("90"), "{shown}");
    assert!(shown.contains("redacted"));
    assert!(matches!(
        ApprovalKey::from_bytes(Box::new([0; 32])),
        Err(SandboxError::InvalidConfig(_))
    ));
    assert!(ApprovalKey::generate().is_ok());
}

#[tokio::test]
async fn oversized_arguments_are_denied_and_audited_never_a_store_error() {
    let f = fixture().await;
    let policy = agent_policy(f.tenant);
    let mut t = turn(&policy, "pay acct-1234 10");
    // `memo` has no length limit of its own: only the gate's cap stands between it and the
    // store. The canonical arguments are {"amount":10,"memo":"…","to":"acct-1234"}.
    let overhead = r#"{"amount":10,"memo":"","to":"acct-1234"}"#.len();
    let with_memo = |len: usize| json!({"amount": 10, "to": "acct-1234", "memo": "m".repeat(len)});
    let before = proposal_count(&f.db).await;
    let over = f
        .gate
        .submit(
            &mut t,
            call(
                "big",
                "send_payment",
                with_memo(MAX_ARGUMENT_BYTES - overhead + 1),
            ),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            over,
            Submission::Denied(DenyReason::ArgumentsTooLarge { size, limit })
                if size == MAX_ARGUMENT_BYTES + 1 && limit == MAX_ARGUMENT_BYTES
        ),
        "{over:?}"
    );
    assert_eq!(proposal_count(&f.db).await, before);
    let events = audit_events(&f.db, f.tenant).await;
    let denial = events
        .iter()
        .find(|(a, _, e)| {
            a == "agent.tool_denied" && e["outcome"]["reason"] == "arguments_too_large"
        })
        .expect("the oversized call is audited");
    assert_eq!(denial.2["metadata"]["size"], json!(MAX_ARGUMENT_BYTES + 1));

    // Positive control: exactly at the cap, the call is held and stored.
    let at_cap = held(
        &f,
        &mut t,
        call(
            "fits",
            "send_payment",
            with_memo(MAX_ARGUMENT_BYTES - overhead),
        ),
    )
    .await;
    assert_eq!(at_cap.arguments.len(), MAX_ARGUMENT_BYTES);
    assert_eq!(proposal_count(&f.db).await, before + 1);

    // A smaller cap applies to calls that run without approval too.
    let small = fixture_with(|b| b.max_argument_bytes(64)).await;
    let policy = agent_policy(small.tenant);
    let mut t = turn(&policy, "note");
    let body = |len: usize| json!({"body": "b".repeat(len)});
    let overhead = r#"{"body":""}"#.len();
    let denied = small
        .gate
        .submit(&mut t, call("w1", "write_note", body(64 - overhead + 1)))
        .await
        .unwrap();
    assert!(matches!(
        denied,
        Submission::Denied(DenyReason::ArgumentsTooLarge { .. })
    ));
    assert_eq!(small.ledger.runs(), 0);
    let ran = small
        .gate
        .submit(&mut t, call("w2", "write_note", body(64 - overhead)))
        .await
        .unwrap();
    assert!(matches!(ran, Submission::Ran { .. }), "{ran:?}");
    assert_eq!(small.ledger.runs(), 1);
}

#[tokio::test]
async fn an_argument_cap_of_zero_or_above_the_store_limit_is_refused_at_construction() {
    let f = fixture().await;
    let build = |cap: usize| {
        Gate::builder(
            std::sync::Arc::new(registry_with(&f.ledger, 1)),
            f.pool.clone(),
            f.log.clone(),
            f.approval_key(),
        )
        .max_argument_bytes(cap)
        .build()
    };
    for bad in [0, MAX_ARGUMENT_BYTES + 1, usize::MAX] {
        assert!(
            matches!(build(bad), Err(SandboxError::InvalidConfig(_))),
            "{bad}"
        );
    }
    assert!(build(1).is_ok());
    assert!(build(MAX_ARGUMENT_BYTES).is_ok());
    // The gate's Debug output does not carry its approval key, in hex or as bytes.
    let shown = format!("{:?} {:#?}", f.gate, f.gate);
    let bytes = format!("{:?}", &f.approval_secret[..4]);
    assert!(!shown.contains(&hex::encode(f.approval_secret)));
    assert!(!shown.contains(bytes.trim_start_matches('[').trim_end_matches(']')));
}
