//! The database refuses data statements made for a session that has ended, on every instance:
//! `Session::actor` carries the session, and a pool built with `session_liveness()` asks
//! `auth.session_is_live` in the statement that binds the tenant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use magic_auth::secrecy::ExposeSecret;
use magic_auth::{Assurance, NewSession, SessionConfig, SessionStore, session_liveness};
use rls_guard::schema::SUPPORT_SQL;
use rls_guard::{RlsError, TenantPool};
use tenant_scope::{ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};

fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    Template::new("magic_auth_sessions", sql)
}

/// One "instance": its own pool (with the liveness check) and session store.
async fn instance(db: &TestDb) -> (TenantPool, SessionStore) {
    let pool = TenantPool::new(db.pool(Role::Runtime, 2).await)
        .await
        .unwrap()
        .with_session_liveness(session_liveness())
        .await
        .unwrap();
    let store =
        SessionStore::new(pool.clone(), SessionConfig::default(), Box::new([7; 32])).unwrap();
    (pool, store)
}

fn new_user() -> NewSession {
    NewSession::new(ActorId::new_random(), ActorKind::User, Assurance::Aal1)
}

/// A read of the tenant's sessions made for `context`: `Ok` while its session is live.
async fn read(pool: &TenantPool, context: &TenantContext) -> Result<usize, RlsError> {
    let mut tx = pool.begin_read_only(context).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM auth.sessions")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let rows: Vec<(uuid::Uuid,)> = pool
        .read(context, "SELECT id FROM auth.sessions")
        .fetch_all()
        .await?;
    assert_eq!(rows.len(), usize::try_from(n).unwrap());
    Ok(rows.len())
}

#[tokio::test]
async fn an_ended_session_reads_nothing_on_any_instance() {
    let db = fresh_database(&template()).await;
    let (pool_a, store_a) = instance(&db).await;
    let (pool_b, store_b) = instance(&db).await;
    let tenant = TenantId::new_random();

    // Revoked on A: B's next data statement is refused, though B validated the cookie before.
    let (_, token) = store_a.create(tenant, &new_user()).await.unwrap();
    let on_b = store_b
        .validate(token.to_cookie_value().expose_secret())
        .await
        .unwrap()
        .unwrap();
    let context = TenantContext::for_actor(on_b.actor());
    assert_eq!(read(&pool_b, &context).await.unwrap(), 1, "live control");
    assert!(store_a.revoke(tenant, on_b.id).await.unwrap());
    assert!(matches!(
        read(&pool_b, &context).await,
        Err(RlsError::SessionEnded)
    ));
    assert!(matches!(
        read(&pool_a, &context).await,
        Err(RlsError::SessionEnded)
    ));

    // Signed out everywhere, and a disabled account: the same.
    let (kept, kept_token) = store_a.create(tenant, &new_user()).await.unwrap();
    let (_, token) = store_a.create(tenant, &new_user()).await.unwrap();
    let everywhere = store_b
        .validate(token.to_cookie_value().expose_secret())
        .await
        .unwrap()
        .unwrap();
    let (_, token) = store_a.create(tenant, &new_user()).await.unwrap();
    let disabled = store_b
        .validate(token.to_cookie_value().expose_secret())
        .await
        .unwrap()
        .unwrap();
    for session in [&everywhere, &disabled] {
        read(&pool_b, &TenantContext::for_actor(session.actor()))
            .await
            .unwrap();
    }
    store_a
        .revoke_all(tenant, everywhere.user, None)
        .await
        .unwrap();
    store_a
        .disable_account(tenant, disabled.user)
        .await
        .unwrap();
    for session in [&everywhere, &disabled] {
        assert!(matches!(
            read(&pool_b, &TenantContext::for_actor(session.actor())).await,
            Err(RlsError::SessionEnded)
        ));
    }

    // Expired (idle): refused without any revocation.
    let admin = db.pool(Role::Admin, 1).await;
    // As the owner would fix data: bound to the tenant, the binding restated for the commit.
    let fix = format!(
        "BEGIN; SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.commit_binding = '{tenant}:'; \
         UPDATE auth.sessions SET idle_expires_at = now() - interval '1 second' WHERE id = '{}'; \
         COMMIT",
        kept.id
    );
    sqlx::raw_sql(&fix).execute(&admin).await.unwrap();
    assert!(matches!(
        read(&pool_b, &TenantContext::for_actor(kept.actor())).await,
        Err(RlsError::SessionEnded)
    ));
    assert!(
        store_b
            .validate(kept_token.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_none()
    );

    // Control: a live session of the same tenant still reads, as does work without a session.
    let (_, token) = store_a.create(tenant, &new_user()).await.unwrap();
    let live = store_b
        .validate(token.to_cookie_value().expose_secret())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read(&pool_b, &TenantContext::for_actor(live.actor()))
            .await
            .unwrap(),
        5
    );
    let job = TenantContext::for_job(tenant, None, "count").unwrap();
    assert_eq!(read(&pool_b, &job).await.unwrap(), 5);
}
