//! Attacks on `TenantPool::read`, the one-round-trip bound read: it must see only the bound
//! tenant's rows, leave nothing bound on the connection, and refuse every kind of write.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

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
         CREATE TABLE side_log (what text); \
         CREATE SEQUENCE side_seq; \
         GRANT INSERT ON side_log TO testkit_runtime; \
         GRANT USAGE ON SEQUENCE side_seq TO testkit_runtime; \
         CREATE FUNCTION log_view(n text) RETURNS bigint LANGUAGE sql AS \
           'INSERT INTO side_log VALUES (n); SELECT 1::bigint'; \
         GRANT EXECUTE ON FUNCTION plant(uuid, text), rename_all(text), log_view(text) \
           TO testkit_runtime",
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
    let statements = statements.map(|sql| (sql, sql.contains("$1")));
    for (sql, takes_a_value) in statements {
        let mut read = f.pool.read(&ctx(a), sql);
        if takes_a_value {
            read = read.bind(a.as_uuid());
        }
        let err = read.fetch_all::<(Uuid,)>().await.unwrap_err();
        assert!(matches!(err, RlsError::Database(_)), "{sql}: {err}");
    }
    // A write hidden in a function call, to a tenant table (the reader's own rows or another
    // tenant's) or to a table with no tenant at all, and a sequence: the statement runs
    // read-only, so each is refused with SQLSTATE 25006 and nothing is written.
    for (sql, bind_tenant) in [
        ("SELECT plant($1, 'planted-own')", Some(a)),
        (
            "SELECT plant($1, 'planted-other')",
            Some(TenantId::new_random()),
        ),
        ("SELECT rename_all('pwned')", None),
        ("SELECT name, log_view(name) FROM projects", None),
        ("SELECT nextval('side_seq')", None),
    ] {
        let mut read = f.pool.read(&ctx(a), sql);
        if let Some(t) = bind_tenant {
            read = read.bind(t.as_uuid());
        }
        let err = read.fetch_all::<(i64,)>().await.unwrap_err();
        let RlsError::Database(e) = &err else {
            panic!("{sql}: {err}");
        };
        assert_eq!(
            e.as_database_error().and_then(|d| d.code()).as_deref(),
            Some("25006"),
            "{sql}: {err}"
        );
    }
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM side_log")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(logged, 0);
    let (sequence_called,): (bool,) = sqlx::query_as("SELECT is_called FROM side_seq")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(!sequence_called);
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
    let (tenants, expected) = seed_ladder(&f.pool, 8).await;
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

#[tokio::test]
async fn a_placeholder_count_that_does_not_match_the_values_is_refused_before_sending() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    let mine = add_project(&f.pool, a, "a-row").await;
    // Too few values (`$2` would otherwise read the binding's tenant text), too many, and
    // none where the statement takes one.
    for (sql, values, statement_uses) in [
        (
            "SELECT name FROM projects WHERE id = $1 AND $2::text IS NOT NULL",
            1,
            2,
        ),
        ("SELECT name FROM projects WHERE id = $1", 2, 1),
        ("SELECT name FROM projects WHERE tenant_id = $1::uuid", 0, 1),
    ] {
        let mut read = f.pool.read(&ctx(a), sql);
        for _ in 0..values {
            read = read.bind(mine);
        }
        let err = read.fetch_all::<(String,)>().await.unwrap_err();
        assert!(
            matches!(err, RlsError::ParameterCount { used, bound }
                if used == statement_uses && bound == values),
            "{sql}: {err}"
        );
    }
    // An unclosed literal is refused as unreadable rather than guessed at.
    let err = f
        .pool
        .read(&ctx(a), "SELECT 'unclosed FROM projects")
        .fetch_all::<(String,)>()
        .await
        .unwrap_err();
    assert!(matches!(err, RlsError::UnreadableStatement), "{err}");
    // `$n` inside literals and comments is not a placeholder, and a trailing `;` is fine.
    let rows: Vec<(String, String)> = f
        .pool
        .read(
            &ctx(a),
            "SELECT name, '$2 is text' FROM projects /* $3 */ WHERE id = $1 -- $4\n;",
        )
        .bind(mine)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows, vec![("a-row".to_owned(), "$2 is text".to_owned())]);
}

#[tokio::test]
async fn a_session_level_tenant_left_by_other_code_is_overridden_and_cleared() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, a, "a-row").await;
    add_project(&f.pool, b, "b-secret").await;
    // A bug elsewhere leaves tenant B bound for the session on the one pooled connection.
    sqlx::raw_sql(&format!("SET app.tenant_id = '{b}'"))
        .execute(&f.raw)
        .await
        .unwrap();
    let rows: Vec<(String,)> = f
        .pool
        .read(&ctx(a), "SELECT name FROM projects")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows, vec![("a-row".to_owned(),)]);
    // The read cleared it: the connection is unbound again.
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
}

#[tokio::test]
async fn a_read_that_calls_set_config_is_refused_before_sending() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    for sql in [
        "SELECT pg_catalog.set_config('app.tenant_id', 'x', false)",
        "SELECT \"set_config\"('app.tenant_id', 'x', false)",
        "SELECT name FROM projects WHERE Set_Config('search_path', 'x', false) IS NOT NULL",
    ] {
        let result = f.pool.read(&ctx(a), sql).fetch_all::<(String,)>().await;
        assert!(
            matches!(result, Err(RlsError::SetConfigInRead)),
            "{sql}: {result:?}"
        );
    }
    // The positive control: a read that only mentions the word in a literal runs.
    let rows: Vec<(String,)> = f
        .pool
        .read(&ctx(a), "SELECT 'set_config'::text")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows, vec![("set_config".to_owned(),)]);
}

#[tokio::test]
async fn a_signed_read_sees_only_its_tenant_and_leaves_nothing_bound() {
    let f = signed_fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, a, "a-project").await;
    add_project(&f.pool, b, "b-project").await;
    let rows: Vec<(String,)> = f
        .pool
        .read(&ctx(a), "SELECT name FROM projects ORDER BY name")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows, vec![("a-project".to_owned(),)]);
    // The same connection afterwards: no tenant, no proof, no rows.
    let mut conn = f.raw.acquire().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let proof: Option<String> =
        sqlx::query_scalar("SELECT current_setting('app.binding_proof', true)")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert!(proof.unwrap_or_default().is_empty());
}
