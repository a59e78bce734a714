//! Row-level security as the second layer: a tenant table made safe, signed bindings, and what a
//! tenant-bound transaction can and cannot see or write. Starts a throwaway PostgreSQL through
//! `testkit` (local PostgreSQL binaries, or `DATABASE_URL`).
//!
//! ```sh
//! cargo run -p rls-guard --example isolation
//! ```
#![allow(clippy::print_stdout)]

use rls_guard::{RlsError, TenantPool, schema};
use tenant_scope::{Actor, ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, Template, fresh_database};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = fresh_database(&Template::new("rls_guard_example", "SELECT 1")).await;

    // Migration, as the owner role: support functions, a tenant table, signed bindings.
    let mut owner = db.pool(Role::Owner, 1).await.acquire().await?;
    sqlx::raw_sql(schema::SUPPORT_SQL)
        .execute(&mut *owner)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE projects (tenant_id uuid NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(),
                                name text NOT NULL, PRIMARY KEY (tenant_id, id));
         GRANT SELECT, INSERT, UPDATE, DELETE ON projects TO testkit_runtime;",
    )
    .execute(&mut *owner)
    .await?;
    schema::make_tenant_safe(&mut owner, "projects").await?;
    sqlx::raw_sql(schema::ENABLE_SIGNED_BINDINGS_SQL)
        .execute(&mut *owner)
        .await?;
    let key = schema::binding_key(&mut owner).await?;
    drop(owner);

    // A role that could bypass row-level security is refused at start-up, with every reason.
    match TenantPool::new(db.pool(Role::Admin, 1).await).await {
        Err(RlsError::UnsafeRuntimeRole { role, problems }) => {
            println!(
                "pool as `{role}` -> refused, {} problems, first: {}",
                problems.len(),
                problems[0]
            );
        }
        other => return Err(format!("expected a refusal, got {:?}", other.err()).into()),
    }

    // Start-up, as the runtime role.
    let raw = db.pool(Role::Runtime, 4).await;
    let pool = TenantPool::with_binding_key(raw.clone(), key).await?;
    let context = |tenant| {
        TenantContext::for_actor(Actor::new(ActorKind::User, ActorId::new_random(), tenant))
    };
    let (acme, globex) = (
        context(TenantId::new_random()),
        context(TenantId::new_random()),
    );

    for (ctx, name) in [(&acme, "acme roadmap"), (&globex, "globex secrets")] {
        let mut tx = pool.begin(ctx).await?;
        sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, $2)")
            .bind(ctx.tenant().as_uuid())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }

    // No WHERE clause: the database still returns only the bound tenant's rows.
    let mut tx = pool.begin(&acme).await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
        .fetch_all(&mut *tx)
        .await?;
    println!("acme reads every project  -> {names:?}");

    // Writing a row into another tenant is refused.
    let planted = sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted')")
        .bind(globex.tenant().as_uuid())
        .execute(&mut *tx)
        .await;
    println!("acme writes into globex   -> refused: {}", planted.is_err());
    tx.rollback().await?;

    // Setting the tenant by hand binds nothing under signed bindings.
    let mut conn = raw.acquire().await?;
    let forged: Vec<String> = sqlx::raw_sql(&format!(
        "BEGIN; SET LOCAL app.tenant_id = '{}'; SELECT name FROM projects; ROLLBACK;",
        globex.tenant()
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| sqlx::Row::get(row, 0))
    .collect();
    println!("hand-set tenant reads     -> {forged:?}");
    Ok(())
}
