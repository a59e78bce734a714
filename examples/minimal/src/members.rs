//! What the service has of its own: its accounts (`minimal.members`, read inside each
//! workspace's row-level security) and its workspaces (a fixed list here; a table in a real
//! service).

use std::collections::HashMap;

use magic_auth::{Account, AccountDirectory, EmailAddress, EmailChange};
use rls_guard::TenantPool;
use tenant_scope::{ActorId, ActorKind, TenantContext, TenantDirectory, TenantId};

/// The service's own tables: members (who may sign in) and notes. Made tenant-safe by
/// `rls_guard::schema::tenant_table_sql` in [`migrations`](crate::migrations).
pub(crate) fn schema_sql(runtime: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS minimal;
GRANT USAGE ON SCHEMA minimal TO {runtime};
CREATE TABLE IF NOT EXISTS minimal.members (
    tenant_id uuid NOT NULL,
    user_id   uuid NOT NULL,
    email     text NOT NULL,
    disabled  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, user_id),
    UNIQUE (tenant_id, email)
);
CREATE TABLE IF NOT EXISTS minimal.notes (
    tenant_id uuid NOT NULL,
    id        uuid NOT NULL DEFAULT gen_random_uuid(),
    body      text NOT NULL CHECK (length(body) <= 10000),
    PRIMARY KEY (tenant_id, id)
);
GRANT SELECT, UPDATE (email) ON minimal.members TO {runtime};
GRANT SELECT, INSERT, DELETE ON minimal.notes TO {runtime};"
    )
}

/// The workspaces, by name.
#[derive(Debug, Clone, Default)]
pub struct Workspaces(HashMap<String, TenantId>);

impl Workspaces {
    /// These workspaces: (name, tenant).
    #[must_use]
    pub fn new<'a>(all: impl IntoIterator<Item = (&'a str, TenantId)>) -> Self {
        Self(
            all.into_iter()
                .map(|(name, id)| (name.to_owned(), id))
                .collect(),
        )
    }
}

/// The directory never fails: it is in memory.
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub enum Never {}

impl TenantDirectory for Workspaces {
    type Error = Never;

    async fn by_slug(&self, slug: &str) -> Result<Option<TenantId>, Never> {
        Ok(self.0.get(slug).copied())
    }

    async fn contains(&self, tenant: TenantId) -> Result<bool, Never> {
        Ok(self.0.values().any(|t| *t == tenant))
    }
}

/// The accounts, looked up inside the workspace's own row-level security.
pub struct Members {
    pool: TenantPool,
}

/// A lookup failed (the cause stays in the server).
#[derive(Debug, thiserror::Error)]
#[error("the member directory failed")]
pub struct DirectoryError(#[from] rls_guard::RlsError);

impl From<sqlx::Error> for DirectoryError {
    fn from(error: sqlx::Error) -> Self {
        Self(error.into())
    }
}

impl Members {
    /// Reads through `pool`.
    #[must_use]
    pub const fn new(pool: TenantPool) -> Self {
        Self { pool }
    }

    async fn one(
        &self,
        tenant: TenantId,
        filter: &'static str,
        key: String,
    ) -> Result<Option<(ActorId, String, bool)>, DirectoryError> {
        let context = TenantContext::for_job(tenant, None, "member-lookup")
            .map_err(rls_guard::RlsError::from)?;
        let sql = format!(
            "SELECT user_id::text, email, disabled FROM minimal.members WHERE {filter} = $1"
        );
        let mut tx = self.pool.begin(&context).await?;
        let row: Option<(String, String, bool)> = sqlx::query_as(&sql)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row.and_then(|(id, email, disabled)| {
            let user = ActorId::from_uuid(id.parse().ok()?).ok()?;
            Some((user, email, disabled))
        }))
    }
}

impl AccountDirectory for Members {
    type Error = DirectoryError;

    async fn find(
        &self,
        tenant: TenantId,
        email: &EmailAddress,
    ) -> Result<Option<Account>, DirectoryError> {
        let found = self.one(tenant, "email", email.as_str().to_owned()).await?;
        Ok(found.map(|(user, _, disabled)| account(user, disabled)))
    }

    async fn find_by_user(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<Account>, DirectoryError> {
        let found = self.one(tenant, "user_id::text", user.to_string()).await?;
        Ok(found.map(|(user, _, disabled)| account(user, disabled)))
    }

    async fn address_of(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<EmailAddress>, DirectoryError> {
        let found = self.one(tenant, "user_id::text", user.to_string()).await?;
        Ok(found.and_then(|(_, email, _)| EmailAddress::parse(&email).ok()))
    }

    async fn change_email(
        &self,
        tenant: TenantId,
        user: ActorId,
        new: &EmailAddress,
    ) -> Result<EmailChange, DirectoryError> {
        let context = TenantContext::for_job(tenant, None, "member-email")
            .map_err(rls_guard::RlsError::from)?;
        let mut tx = self.pool.begin(&context).await?;
        let changed = sqlx::query(
            "UPDATE minimal.members SET email = $2 WHERE user_id = $1 AND NOT disabled",
        )
        .bind(user.as_uuid())
        .bind(new.as_str())
        .execute(&mut *tx)
        .await;
        let outcome = match changed {
            Ok(done) if done.rows_affected() == 1 => EmailChange::Changed,
            Ok(_) => EmailChange::NoAccount,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await?;
                return Ok(EmailChange::Taken);
            }
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        Ok(outcome)
    }
}

const fn account(user: ActorId, disabled: bool) -> Account {
    Account::new(user, ActorKind::User, disabled)
}
