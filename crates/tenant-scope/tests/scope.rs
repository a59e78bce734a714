//! Task-local tenant scope: carried into explicitly spawned work, absent everywhere else.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tenant_scope::{TenantContext, TenantError, TenantId, scope};

fn job(tenant: TenantId) -> TenantContext {
    TenantContext::for_job(tenant, None, "test-job").unwrap()
}

#[tokio::test]
async fn scope_is_carried_into_spawned_work() {
    let a = TenantId::new_random();
    let seen = scope::scope(job(a), async {
        let handle = scope::spawn(async { scope::current_tenant() }).unwrap();
        handle.await.unwrap()
    })
    .await;
    assert_eq!(seen, Ok(a));
}

#[tokio::test]
async fn plain_tokio_spawn_does_not_inherit_a_scope() {
    let a = TenantId::new_random();
    let seen = scope::scope(job(a), async {
        tokio::spawn(async { scope::current_tenant() })
            .await
            .unwrap()
    })
    .await;
    assert_eq!(seen, Err(TenantError::NoScope));
}

#[tokio::test]
async fn unrelated_concurrent_tasks_see_no_tenant() {
    let a = TenantId::new_random();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let scoped = tokio::spawn(scope::scope(job(a), async move {
        rx.await.unwrap();
        scope::current_tenant()
    }));
    let unrelated = tokio::spawn(async { scope::current() });
    assert_eq!(unrelated.await.unwrap(), Err(TenantError::NoScope));
    tx.send(()).unwrap();
    assert_eq!(scoped.await.unwrap(), Ok(a));
}

#[tokio::test]
async fn spawning_background_work_without_a_tenant_fails() {
    let result = scope::spawn(async { 42 });
    assert_eq!(result.err(), Some(TenantError::NoScope));
}

#[tokio::test]
async fn nested_scopes_restore_the_outer_tenant() {
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let seen = scope::scope(job(a), async move {
        let inner = scope::scope(job(b), async { scope::current_tenant() }).await;
        (inner, scope::current_tenant())
    })
    .await;
    assert_eq!(seen, (Ok(b), Ok(a)));
}

#[tokio::test]
async fn job_context_refuses_an_actor_of_another_tenant() {
    use tenant_scope::{Actor, ActorId, ActorKind};
    let actor = Actor::new(
        ActorKind::User,
        ActorId::new_random(),
        TenantId::new_random(),
    );
    assert_eq!(
        TenantContext::for_job(TenantId::new_random(), Some(actor), "x"),
        Err(TenantError::Conflict)
    );
}
