//! A cross-tenant grant reaches the database only while it lasts, and every use is audited:
//! `TenantPool::begin` and `TenantPool::read` ask the context before sending anything.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Mutex;
use std::time::Duration;

use rls_guard::RlsError;
use tenant_scope::{
    Actor, ActorId, ActorKind, CrossTenantAudit, CrossTenantAuthority, CrossTenantEvent,
    GrantLifetime, GrantOutcome, TenantId,
};

use common::Never;

#[derive(Default)]
struct Recorder(Mutex<Vec<GrantOutcome>>);

impl CrossTenantAudit for &'static Recorder {
    type Error = Never;

    async fn record(&self, event: &CrossTenantEvent) -> Result<(), Never> {
        self.0.lock().unwrap().push(event.outcome);
        Ok(())
    }
}

#[tokio::test]
async fn an_expired_grant_is_refused_and_every_use_is_recorded() {
    let f = common::fixture(1).await;
    let target = TenantId::new_random();
    common::add_project(&f.pool, target, "target-project").await;
    let recorder: &'static Recorder = Box::leak(Box::default());
    let authority = CrossTenantAuthority::install(recorder)
        .unwrap()
        .with_grant_lifetime(GrantLifetime::new(Duration::from_millis(400)).unwrap());
    let staff = Actor::new(
        ActorKind::Staff,
        ActorId::new_random(),
        TenantId::new_random(),
    );
    let context = authority
        .grant(&staff, target, "investigating ticket 4411")
        .await
        .unwrap();
    let used = || {
        recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|o| matches!(o, GrantOutcome::Used))
            .count()
    };
    assert_eq!(used(), 0);

    // The positive control: while the grant lasts, both paths work and each use is recorded.
    let mut tx = f.pool.begin(&context).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 1);
    let rows: Vec<(String,)> = f
        .pool
        .read(&context, "SELECT name FROM projects")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows, vec![("target-project".to_owned(),)]);
    assert_eq!(used(), 2);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        f.pool.begin(&context).await,
        Err(RlsError::ContextRefused(_))
    ));
    assert!(matches!(
        f.pool
            .read(&context, "SELECT name FROM projects")
            .fetch_all::<(String,)>()
            .await,
        Err(RlsError::ContextRefused(_))
    ));
    assert_eq!(used(), 2, "a refused use is not a use");
}
