//! A fresh database with row-level security, seen by the roles testkit creates: the owner
//! migrates, the runtime role sees only the tenant it set, and an admin sets up what an attack
//! test needs.
//!
//! `cargo run -p testkit --example runtime_role` (needs PostgreSQL's server binaries, or
//! `DATABASE_URL`).
#![allow(clippy::print_stdout)]

use testkit::{Role, Template, fresh_database};

const SCHEMA: &str = "
    CREATE TABLE notes (tenant text NOT NULL, body text NOT NULL);
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    ALTER TABLE notes FORCE ROW LEVEL SECURITY;
    CREATE POLICY by_tenant ON notes
        USING (tenant = current_setting('app.tenant', true))
        WITH CHECK (tenant = current_setting('app.tenant', true));
    GRANT SELECT, INSERT ON notes TO testkit_runtime;
";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), sqlx::Error> {
    // Migrated once per process as the owner; each call copies it into a new database.
    let db = fresh_database(&Template::new("runtime_role_example", SCHEMA)).await;
    db.as_admin("INSERT INTO notes VALUES ('acme', 'plans'), ('globex', 'secrets')")
        .await;

    let runtime = db.pool(Role::Runtime, 1).await;
    let mut tx = runtime.begin().await?;
    sqlx::query("SELECT set_config('app.tenant', 'acme', true)")
        .execute(&mut *tx)
        .await?;
    let seen: Vec<String> = sqlx::query_scalar("SELECT body FROM notes")
        .fetch_all(&mut *tx)
        .await?;
    let write = sqlx::query("INSERT INTO notes VALUES ('globex', 'planted')")
        .execute(&mut *tx)
        .await;
    tx.rollback().await?;
    println!("runtime role, tenant acme, reads        -> {seen:?}");
    println!(
        "runtime role writes into globex         -> {}",
        write.map_or_else(|e| format!("refused ({e})"), |_| "accepted".to_owned())
    );

    // The runtime role owns nothing, so it cannot switch the policy off.
    let disable = sqlx::query("ALTER TABLE notes DISABLE ROW LEVEL SECURITY")
        .execute(&runtime)
        .await;
    println!(
        "runtime role disables RLS               -> {}",
        disable.map_or_else(|e| format!("refused ({e})"), |_| "accepted".to_owned())
    );
    Ok(())
}
