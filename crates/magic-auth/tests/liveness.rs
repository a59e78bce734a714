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

/// The plan of `rls-guard`'s liveness check as the runtime role, as `EXPLAIN` prints it.
async fn check_plan(db: &TestDb) -> String {
    let runtime = db.pool(Role::Runtime, 1).await;
    let lines: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (VERBOSE) SELECT (SELECT pg_catalog.bool_and(l.live) \
         FROM auth.session_is_live($1::uuid, $2::uuid) AS l(live))",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(uuid::Uuid::new_v4())
    .fetch_all(&runtime)
    .await
    .unwrap();
    lines.join("\n")
}

/// The check runs in every statement made for a session, so it must cost no parsing or planning
/// of its own: PostgreSQL inlines the installed function into the statement that asks (its
/// plan reads `auth.sessions` by primary key; there is no call of the function left). Re-running
/// the schema on a database with the older scalar check replaces it, and the check still
/// refuses an ended session there.
#[tokio::test]
async fn the_check_is_inlined_into_the_statement_and_replaces_an_older_scalar_one() {
    let db = fresh_database(&template()).await;
    let plan = check_plan(&db).await;
    assert!(plan.contains("auth.sessions"), "{plan}");
    assert!(!plan.contains("Function Scan"), "{plan}");

    // The older version: a scalar function, which PostgreSQL cannot inline (its body holds a
    // subquery), so every call parsed and planned it again.
    let owner = db.pool(Role::Owner, 1).await;
    sqlx::raw_sql(
        "DROP FUNCTION auth.session_is_live(uuid, uuid);
         CREATE FUNCTION auth.session_is_live(tenant uuid, session uuid) RETURNS boolean
             LANGUAGE sql STABLE AS $$ SELECT EXISTS (SELECT 1 FROM auth.sessions s
                 WHERE s.tenant_id = tenant AND s.id = session AND s.revoked_at IS NULL) $$;
         GRANT EXECUTE ON FUNCTION auth.session_is_live(uuid, uuid) TO testkit_runtime;",
    )
    .execute(&owner)
    .await
    .unwrap();
    assert!(check_plan(&db).await.contains("Function Scan"), "control");
    sqlx::raw_sql(&magic_auth::schema::schema_sql("testkit_runtime").unwrap())
        .execute(&owner)
        .await
        .unwrap();
    let plan = check_plan(&db).await;
    assert!(!plan.contains("Function Scan"), "{plan}");

    let (pool, store) = instance(&db).await;
    let tenant = TenantId::new_random();
    let (session, _) = store.create(tenant, &new_user()).await.unwrap();
    let context = TenantContext::for_actor(session.actor());
    assert_eq!(read(&pool, &context).await.unwrap(), 1, "live control");
    assert!(store.revoke(tenant, session.id).await.unwrap());
    assert!(matches!(
        read(&pool, &context).await,
        Err(RlsError::SessionEnded)
    ));
}
