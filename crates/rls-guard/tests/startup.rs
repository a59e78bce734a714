//! The pool refuses to start as a role that row-level security would not bind.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rls_guard::{RlsError, RoleProblem, TenantPool};
use sqlx::postgres::PgPoolOptions;
use testkit::Role;

async fn try_pool(options: sqlx::postgres::PgConnectOptions) -> Result<TenantPool, RlsError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    TenantPool::new(pool).await
}

fn problems(result: Result<TenantPool, RlsError>) -> Vec<RoleProblem> {
    match result {
        Err(RlsError::UnsafeRuntimeRole { problems, .. }) => problems,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn runtime_role_is_accepted() {
    let f = common::fixture(1).await;
    TenantPool::new(f.raw.clone()).await.unwrap();
}

#[tokio::test]
async fn superuser_is_refused() {
    let db = testkit::fresh_database(&common::template()).await;
    let got = problems(try_pool(db.options(Role::Admin)).await);
    assert!(got.contains(&RoleProblem::Superuser), "{got:?}");
}

#[tokio::test]
async fn bypassrls_role_is_refused() {
    let db = testkit::fresh_database(&common::template()).await;
    let options = db
        .create_login_role("bypasser", "NOSUPERUSER BYPASSRLS")
        .await;
    assert_eq!(
        problems(try_pool(options).await),
        vec![RoleProblem::BypassRls]
    );
}

#[tokio::test]
async fn createrole_role_is_refused() {
    let db = testkit::fresh_database(&common::template()).await;
    let options = db
        .create_login_role("roler", "NOSUPERUSER NOBYPASSRLS CREATEROLE")
        .await;
    assert_eq!(
        problems(try_pool(options).await),
        vec![RoleProblem::CreateRole]
    );
}

#[tokio::test]
async fn member_of_a_bypassrls_role_is_refused() {
    let db = testkit::fresh_database(&common::template()).await;
    let options = db
        .create_login_role("sneaky", "NOSUPERUSER NOBYPASSRLS")
        .await;
    let user = options.get_username().to_owned();
    db.as_admin(&format!(
        "CREATE ROLE {user}_priv NOLOGIN BYPASSRLS; GRANT {user}_priv TO {user};"
    ))
    .await;
    assert_eq!(
        problems(try_pool(options).await),
        vec![RoleProblem::MemberOfPrivileged(format!("{user}_priv"))]
    );
}

#[tokio::test]
async fn table_owner_is_refused() {
    let db = testkit::fresh_database(&common::template()).await;
    let got = problems(try_pool(db.options(Role::Owner)).await);
    for owned in [
        RoleProblem::OwnsProtectedTable("public.projects".into()),
        RoleProblem::OwnsProtectedTable("public.tasks".into()),
        RoleProblem::OwnsSupportObject("schema app".into()),
        RoleProblem::OwnsDatabase(db.name().to_owned()),
    ] {
        assert!(got.contains(&owned), "{owned:?} not in {got:?}");
    }
}

#[tokio::test]
async fn member_of_the_owner_role_is_refused() {
    let db = testkit::fresh_database(&common::template()).await;
    let options = db
        .create_login_role("ownerish", "NOSUPERUSER NOBYPASSRLS")
        .await;
    let user = options.get_username().to_owned();
    db.as_admin(&format!("GRANT {} TO {user};", testkit::OWNER_ROLE))
        .await;
    let got = problems(try_pool(options).await);
    assert!(
        got.contains(&RoleProblem::OwnsProtectedTable("public.projects".into()))
            && got.contains(&RoleProblem::OwnsSupportObject("schema app".into())),
        "{got:?}"
    );
}

#[tokio::test]
async fn missing_support_schema_is_refused() {
    let db = testkit::fresh_database(&testkit::Template::new(
        "rls_guard_no_support",
        "CREATE TABLE notes (id int);",
    ))
    .await;
    let pool = db.pool(Role::Runtime, 1).await;
    assert!(matches!(
        TenantPool::new(pool).await,
        Err(RlsError::SupportSchemaMissing)
    ));
}

#[tokio::test]
async fn unreachable_database_at_startup_is_refused() {
    let db = testkit::fresh_database(&common::template()).await;
    let pool = db.pool(Role::Runtime, 1).await;
    pool.close().await;
    let err = TenantPool::new(pool).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}
