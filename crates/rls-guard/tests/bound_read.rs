//! Attacks on `TenantPool::read`, the one-round-trip bound read: it must see only the bound
//! tenant's rows, leave nothing bound on the connection, and refuse every kind of write.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rand::Rng;
use rls_guard::RlsError;
use tenant_scope::{TenantContext, TenantId};
use testkit::Role;
use uuid::Uuid;

#[tokio::test]
async fn a_read_without_a_tenant_filter_sees_only_the_bound_tenants_rows() {
    let f = fixture(2).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    for name in ["a1", "a2"] {
        add_project(&f.pool, a, name).await;
    }
    let b_secret = add_project(&f.pool, b, "b-secret").await;

    // No WHERE tenant_id: row-level security is the only filter.
    let rows: Vec<(Uuid, String)> = f
        .pool
        .read(
            &ctx(a),
            "SELECT tenant_id, name FROM projects ORDER BY name",
        )
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (*a.as_uuid(), "a1".to_owned()),
            (*a.as_uuid(), "a2".to_owned())
        ]
    );

    // B's row by primary key, as A, looks exactly like a row that does not exist.
    for id in [b_secret, Uuid::new_v4()] {
        let row: Option<(String,)> = f
            .pool
            .read(&ctx(a), "SELECT name FROM projects WHERE id = $1")
            .bind(id)
            .fetch_optional()
            .await
            .unwrap();
        assert_eq!(row, None);
    }
    // Aggregates see only the tenant too.
    let (n,): (i64,) = f
        .pool
        .read(&ctx(a), "SELECT count(*) FROM projects")
        .fetch_optional()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 2);
    // And B, bound, sees its own row.
    let row: Option<(String,)> = f
        .pool
        .read(&ctx(b), "SELECT name FROM projects WHERE id = $1")
        .bind(b_secret)
        .fetch_optional()
        .await
        .unwrap();
    assert_eq!(row, Some(("b-secret".to_owned(),)));
}

#[tokio::test]
async fn order_limit_parameters_and_a_trailing_comment_are_kept() {
    let f = fixture(2).await;
    let a = TenantId::new_random();
    for name in ["c", "a", "e", "b", "d", "x-other"] {
        add_project(&f.pool, a, name).await;
    }
    let rows: Vec<(String,)> = f
        .pool
        .read(
            &ctx(a),
            "SELECT name FROM projects WHERE name < $1 ORDER BY name DESC LIMIT $2 -- newest first",
        )
        .bind("x")
        .bind(4_i64)
        .fetch_all()
        .await
        .unwrap();
    let names: Vec<String> = rows.into_iter().map(|(n,)| n).collect();
    assert_eq!(names, ["e", "d", "c", "b"]);
}

#[tokio::test]
async fn nothing_stays_bound_on_the_connection_after_a_read() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    for _ in 0..3 {
        let rows: Vec<(String,)> = f
            .pool
            .read(&ctx(a), "SELECT name FROM projects")
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    }
    // The single pooled connection just served A three times; unbound, it has forgotten A.
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
    drop(conn);
    // And a failed read (a runtime error after the binding) leaves nothing either.
    let err = f
        .pool
        .read(&ctx(a), "SELECT 1 / (count(*) - 1) FROM projects")
        .fetch_all::<(i64,)>()
        .await
        .unwrap_err();
    assert!(matches!(err, RlsError::Database(_)), "{err}");
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
}

#[tokio::test]
async fn writes_are_refused_and_change_nothing() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    let mine = add_project(&f.pool, a, "mine").await;
    let admin = f.db.pool(Role::Admin, 1).await;
    // A function that writes, callable by the runtime role: the way a write could hide in a read.
    sqlx::raw_sql(
        "CREATE FUNCTION plant(t uuid, n text) RETURNS bigint LANGUAGE sql AS \
           'INSERT INTO projects (tenant_id, name) VALUES (t, n); SELECT 1::bigint'; \
         CREATE FUNCTION rename_all(n text) RETURNS bigint LANGUAGE sql AS \
           'UPDATE projects SET name = n; SELECT 1::bigint'; \
         GRANT EXECUTE ON FUNCTION plant(uuid, text), rename_all(text) TO testkit_runtime",
    )
    .execute(&admin)
    .await
    .unwrap();

    let statements: [&'static str; 6] = [
        "INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted') RETURNING id",
        "UPDATE projects SET name = 'pwned' RETURNING id",
        "DELETE FROM projects RETURNING id",
        "WITH d AS (DELETE FROM projects RETURNING id) SELECT id FROM d",
        "SELECT 1::bigint; DELETE FROM projects",
        "SELECT 1::bigint) x, LATERAL (DELETE FROM projects RETURNING 1",
    ];
    for sql in statements {
        let mut read = f.pool.read(&ctx(a), sql);
        if sql.contains("$1") {
            read = read.bind(a.as_uuid());
        }
        let err = read.fetch_all::<(Uuid,)>().await.unwrap_err();
        assert!(matches!(err, RlsError::Database(_)), "{sql}: {err}");
    }
    // A write hidden in a function call: refused at the end of the statement, for another
    // tenant's row and for the reader's own alike.
    for (sql, bind_tenant) in [
        ("SELECT plant($1, 'planted-own')", Some(a)),
        (
            "SELECT plant($1, 'planted-other')",
            Some(TenantId::new_random()),
        ),
        ("SELECT rename_all('pwned')", None),
    ] {
        let mut read = f.pool.read(&ctx(a), sql);
        if let Some(t) = bind_tenant {
            read = read.bind(t.as_uuid());
        }
        let err = read.fetch_all::<(i64,)>().await.unwrap_err();
        assert!(
            matches!(err, RlsError::BindingChanged | RlsError::Database(_)),
            "{sql}: {err}"
        );
        if bind_tenant == Some(a) || bind_tenant.is_none() {
            assert!(matches!(err, RlsError::BindingChanged), "{sql}: {err}");
        }
    }
    // Nothing changed: the one row, still named "mine".
    let rows: Vec<(Uuid, Uuid, String)> =
        sqlx::query_as("SELECT tenant_id, id, name FROM projects")
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(rows, vec![(*a.as_uuid(), mine, "mine".to_owned())]);
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
}

#[tokio::test]
async fn a_job_context_without_an_actor_reads_its_tenant() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    add_project(&f.pool, TenantId::new_random(), "other").await;
    let job = TenantContext::for_job(a, None, "nightly").unwrap();
    let rows: Vec<(String,)> = f
        .pool
        .read(&job, "SELECT name FROM projects")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows, vec![("a-row".to_owned(),)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_reads_with_random_tenants_see_only_their_rows() {
    let f = fixture(4).await;
    let tenants: Vec<TenantId> = (0..8).map(|_| TenantId::new_random()).collect();
    let mut expected: HashMap<TenantId, usize> = HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        for j in 0..=i {
            add_project(&f.pool, *t, &format!("p{j}")).await;
        }
        expected.insert(*t, i + 1);
    }
    let mut handles = Vec::new();
    for _ in 0..300 {
        let t = tenants[rand::rng().random_range(0..tenants.len())];
        let pool = f.pool.clone();
        handles.push(tokio::spawn(async move {
            let rows: Vec<(Uuid,)> = pool
                .read(&ctx(t), "SELECT tenant_id FROM projects")
                .fetch_all()
                .await
                .unwrap();
            (t, rows)
        }));
    }
    for handle in handles {
        let (t, rows) = handle.await.unwrap();
        assert_eq!(rows.len(), expected[&t]);
        assert!(
            rows.iter().all(|(r,)| r == t.as_uuid()),
            "tenant {t} saw another tenant's row"
        );
    }
}

#[tokio::test]
async fn reads_cancelled_in_flight_leave_nothing_bound() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    for i in 0..200u64 {
        let context = ctx(a);
        let read = f
            .pool
            .read(&context, "SELECT name FROM projects")
            .fetch_all::<(String,)>();
        let _ = tokio::time::timeout(Duration::from_micros(i * 5), read).await;
    }
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
}

#[tokio::test]
async fn a_value_that_cannot_be_encoded_and_an_unreachable_database_are_errors() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    // A value whose encoding fails: refused before anything is sent, and the error says so.
    let err = f
        .pool
        .read(&ctx(a), "SELECT name FROM projects WHERE name = $1")
        .bind(Unencodable)
        .fetch_all::<(String,)>()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RlsError::Database(sqlx::Error::Encode(_))),
        "{err}"
    );
    assert!(!err.is_unavailable());
    f.raw.close().await;
    let err = f
        .pool
        .read(&ctx(a), "SELECT name FROM projects")
        .fetch_all::<(String,)>()
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

/// A parameter whose encoding always fails.
struct Unencodable;

impl sqlx::Type<sqlx::Postgres> for Unencodable {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for Unencodable {
    fn encode_by_ref(
        &self,
        _: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Err("this value cannot be encoded".into())
    }
}
