//! The migrations: rls-guard's support schema, the crates' schemas and the app's own tables, all
//! run as the owner role. The runtime role gets only what each table needs.

/// The runtime role the app serves as.
pub(crate) const RUNTIME_ROLE: &str = testkit::RUNTIME_ROLE;

/// The app's own tables. Every tenant table goes through `rls_guard::schema::tenant_table_sql`.
fn app_sql(r: &str) -> Result<String, rls_guard::RlsError> {
    let members = rls_guard::schema::tenant_table_sql("workspace.members")?;
    let notes = rls_guard::schema::tenant_table_sql("workspace.notes")?;
    Ok(format!(
        r"
CREATE SCHEMA IF NOT EXISTS workspace;
REVOKE ALL ON SCHEMA workspace FROM PUBLIC;
GRANT USAGE ON SCHEMA workspace TO {r};

-- The tenant directory: global, read-only to the runtime role.
CREATE TABLE IF NOT EXISTS workspace.tenants (
    id           uuid PRIMARY KEY,
    slug         text NOT NULL UNIQUE CHECK (slug ~ '^[a-z][a-z0-9-]{{1,30}}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    assistant_id uuid NOT NULL UNIQUE
);
REVOKE ALL ON workspace.tenants FROM PUBLIC;
GRANT SELECT ON workspace.tenants TO {r};

CREATE TABLE IF NOT EXISTS workspace.members (
    tenant_id    uuid    NOT NULL REFERENCES workspace.tenants (id),
    user_id      uuid    NOT NULL,
    email        text    NOT NULL CHECK (length(email) <= 254),
    display_name text    NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    kind         text    NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'staff')),
    role         text    NOT NULL CHECK (role IN ('member', 'admin')),
    disabled     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, user_id),
    UNIQUE (tenant_id, email)
);
{members}
REVOKE ALL ON workspace.members FROM PUBLIC;
-- Column-level: the app adds members (always `kind = 'user'`, the default), changes a
-- member's role or disables them, and changes a member's address once magic-auth has verified
-- the confirmation from the new address; it can never make anyone staff (`kind`, set only by
-- the owner) or move a member (`tenant_id`, `user_id`).
GRANT SELECT ON workspace.members TO {r};
GRANT INSERT (tenant_id, user_id, email, display_name, role, disabled) ON workspace.members TO {r};
GRANT UPDATE (role, disabled, display_name, email) ON workspace.members TO {r};

-- Notes: the body and the customer's phone number are encrypted by field-crypto, bound to
-- (tenant, table, column, row); the phone number has a blind index for exact lookups.
CREATE TABLE IF NOT EXISTS workspace.notes (
    tenant_id     uuid        NOT NULL REFERENCES workspace.tenants (id),
    id            uuid        NOT NULL,
    author_id     uuid        NOT NULL,
    title         text        NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    body          bytea       NOT NULL,
    contact_phone bytea,
    phone_index   bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX IF NOT EXISTS notes_phone_idx ON workspace.notes (tenant_id, phone_index);
{notes}
REVOKE ALL ON workspace.notes FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON workspace.notes TO {r};
"
    ))
}

/// Every migration, in order, granting to `runtime_role` and, for audit checkpoints and the
/// audit sequencer only, to `checkpointer_role` (the one job that chains queued audit events and
/// signs checkpoints, as Trillian's sequencer does).
pub(crate) fn migrations(
    runtime_role: &str,
    checkpointer_role: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let r = runtime_role;
    let valid = r.len() <= 63
        && r.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(format!("runtime role {r:?}: use a plain lower-case SQL identifier").into());
    }
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}",
        rls_guard::schema::SUPPORT_SQL,
        audit_log::schema::schema_sql(r)?,
        audit_log::schema::checkpointer_sql(checkpointer_role)?,
        audit_log::schema::sequencer_sql(checkpointer_role)?,
        magic_auth::schema::schema_sql(r)?,
        tool_sandbox::schema_sql(r)?,
        app_sql(r)?,
    ))
}

/// Why production migrations did not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MigrateError {
    #[error(
        "the owner, runtime and checkpointer connections must use three different roles (owner {0}); the runtime role must own nothing"
    )]
    SameRole(String),
    #[error(
        "the database holds a different schema version (applied {applied}, this build {wanted}); \
         this reference app does not upgrade schemas: migrate explicitly"
    )]
    Drift { applied: String, wanted: String },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("{0}")]
    Build(String),
}

/// Production migrations over the owner role's connection: one transaction under an advisory
/// lock (two replicas starting together migrate once), recorded by the digest of the SQL so a
/// restart skips them, and refused when the database holds another version.
pub(crate) async fn migrate(
    owner: &sqlx::PgPool,
    runtime_role: &str,
    checkpointer_role: &str,
) -> Result<(), MigrateError> {
    use sha2::Digest;
    let sql = migrations(runtime_role, checkpointer_role)
        .map_err(|e| MigrateError::Build(e.to_string()))?;
    let wanted = hex::encode(sha2::Sha256::digest(sql.as_bytes()));
    let mut tx = owner.begin().await?;
    let (me,): (String,) = sqlx::query_as("SELECT current_user::text")
        .fetch_one(&mut *tx)
        .await?;
    if me == runtime_role || me == checkpointer_role || runtime_role == checkpointer_role {
        return Err(MigrateError::SameRole(me));
    }
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('reference-app migrations'))")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS reference_app_meta; \
         REVOKE ALL ON SCHEMA reference_app_meta FROM PUBLIC; \
         CREATE TABLE IF NOT EXISTS reference_app_meta.migrations (\
             digest text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Option<(String,)> = sqlx::query_as(
        "SELECT digest FROM reference_app_meta.migrations ORDER BY applied_at DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    match applied {
        Some((digest,)) if digest == wanted => {}
        Some((applied,)) => return Err(MigrateError::Drift { applied, wanted }),
        None => {
            sqlx::raw_sql(&sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO reference_app_meta.migrations (digest) VALUES ($1)")
                .bind(&wanted)
                .execute(&mut *tx)
                .await?;
            tracing::info!(digest = %wanted, "migrations applied");
        }
    }
    tx.commit().await?;
    Ok(())
}
