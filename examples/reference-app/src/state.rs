//! The application's services, shared by every handler.

use secrecy::ExposeSecret;
use std::sync::Arc;

use audit_log::{AuditLog, CheckpointSigner};
use axum::extract::FromRef;
use field_crypto::{BlindIndexKey, BlindIndexer, Context, Keyring, Normalize};
use magic_auth::mailer::{DevOutbox, Mailer, Message, OutboxError, SmtpError, SmtpMailer};
use magic_auth::totp::TotpService;
use magic_auth::{Account, AccountDirectory, EmailAddress, EmailChange, MagicLinks, SessionStore};
use rls_guard::TenantPool;
use sqlx::PgPool;
use tenant_scope::{ActorId, ActorKind, CrossTenantAuthority, TenantContext, TenantId};
use tool_sandbox::Gate;
use tool_sandbox::model::Model;
use uuid::Uuid;

/// Finds accounts in `workspace.members`, inside the tenant's own RLS-bound transaction.
pub(crate) struct Directory {
    pub(crate) pool: TenantPool,
}

#[derive(Debug, thiserror::Error)]
#[error("account lookup failed")]
pub(crate) struct DirectoryError;

impl Directory {
    /// The member of `tenant` that `sql` finds by `key` (its `$2`).
    async fn member<T>(
        &self,
        tenant: TenantId,
        sql: &'static str,
        key: T,
    ) -> Result<Option<Account>, DirectoryError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    {
        let context =
            TenantContext::for_job(tenant, None, "account-lookup").map_err(|_| DirectoryError)?;
        let mut tx = self
            .pool
            .begin(&context)
            .await
            .map_err(|_| DirectoryError)?;
        let row: Option<(Uuid, String, bool)> = sqlx::query_as(sql)
            .bind(tenant.as_uuid())
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|_| DirectoryError)?;
        tx.commit().await.map_err(|_| DirectoryError)?;
        let Some((user, kind, disabled)) = row else {
            return Ok(None);
        };
        Ok(Some(Account::new(
            ActorId::from_uuid(user).map_err(|_| DirectoryError)?,
            if kind == "staff" {
                ActorKind::Staff
            } else {
                ActorKind::User
            },
            disabled,
        )))
    }
}

impl AccountDirectory for Directory {
    type Error = DirectoryError;

    async fn find(
        &self,
        tenant: TenantId,
        email: &EmailAddress,
    ) -> Result<Option<Account>, DirectoryError> {
        self.member(
            tenant,
            "SELECT user_id, kind, disabled FROM workspace.members WHERE tenant_id = $1 AND email = $2",
            email.as_str().to_owned(),
        )
        .await
    }

    async fn find_by_user(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<Account>, DirectoryError> {
        self.member(
            tenant,
            "SELECT user_id, kind, disabled FROM workspace.members WHERE tenant_id = $1 AND user_id = $2",
            *user.as_uuid(),
        )
        .await
    }

    async fn address_of(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<EmailAddress>, DirectoryError> {
        let context =
            TenantContext::for_job(tenant, None, "account-lookup").map_err(|_| DirectoryError)?;
        let email: Option<(String,)> = self
            .pool
            .read(
                &context,
                "SELECT email FROM workspace.members WHERE tenant_id = $1 AND user_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(user.as_uuid())
            .fetch_optional()
            .await
            .map_err(|_| DirectoryError)?;
        email
            .map(|(e,)| EmailAddress::parse(&e).map_err(|_| DirectoryError))
            .transpose()
    }

    /// One `UPDATE` in the tenant's own transaction: the unique `(tenant_id, email)` constraint
    /// decides `Taken`, a disabled or missing member matches no row.
    async fn change_email(
        &self,
        tenant: TenantId,
        user: ActorId,
        new: &EmailAddress,
    ) -> Result<EmailChange, DirectoryError> {
        let context =
            TenantContext::for_job(tenant, None, "account-email").map_err(|_| DirectoryError)?;
        let mut tx = self
            .pool
            .begin(&context)
            .await
            .map_err(|_| DirectoryError)?;
        let changed = sqlx::query(
            "UPDATE workspace.members SET email = $3 \
             WHERE tenant_id = $1 AND user_id = $2 AND NOT disabled",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .bind(new.as_str())
        .execute(&mut *tx)
        .await;
        let changed = match changed {
            Ok(done) => done.rows_affected(),
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_unique_violation()) =>
            {
                tx.rollback().await.map_err(|_| DirectoryError)?;
                return Ok(EmailChange::Taken);
            }
            Err(_) => return Err(DirectoryError),
        };
        if changed != 1 {
            tx.rollback().await.map_err(|_| DirectoryError)?;
            return Ok(EmailChange::NoAccount);
        }
        tx.commit().await.map_err(|_| DirectoryError)?;
        Ok(EmailChange::Changed)
    }

    /// The member's `disabled` flag, which the admin pages and [`Directory::find`] read (magic-auth
    /// already refuses every sign-in of the account).
    async fn account_disabled(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<(), DirectoryError> {
        let context =
            TenantContext::for_job(tenant, None, "account-disable").map_err(|_| DirectoryError)?;
        let mut tx = self
            .pool
            .begin(&context)
            .await
            .map_err(|_| DirectoryError)?;
        sqlx::query(
            "UPDATE workspace.members SET disabled = true WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(|_| DirectoryError)?;
        tx.commit().await.map_err(|_| DirectoryError)
    }
}

/// The development mailer: keeps messages for the outbox page and, in development only, prints
/// the link to the console so the person running the app can sign in.
#[derive(Default)]
pub(crate) struct ConsoleOutbox {
    pub(crate) outbox: DevOutbox,
}

impl Mailer for ConsoleOutbox {
    type Error = OutboxError;

    async fn send(&self, message: Message) -> Result<(), OutboxError> {
        let link = message
            .body
            .expose_secret()
            .lines()
            .find(|l| l.starts_with("https://"))
            .unwrap_or_default()
            .to_owned();
        // Development only: the console is the mailbox. (Production uses magic-auth's
        // SmtpMailer, and links never reach a log.)
        #[allow(clippy::print_stdout)]
        {
            println!(
                "\n  [dev mailer] {} — for {}:\n  {link}\n",
                message.subject,
                message.to.as_str()
            );
        }
        self.outbox.send(message).await
    }
}

/// The app's mailer: the development outbox, or (production) an SMTP relay over TLS.
pub(crate) enum AppMailer {
    Development(ConsoleOutbox),
    Smtp(Box<SmtpMailer>),
}

/// A message was not sent (the requester is never told; the app logs that it failed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppMailError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Smtp(#[from] SmtpError),
}

impl AppMailer {
    /// The development outbox (none in production).
    pub(crate) const fn outbox(&self) -> Option<&DevOutbox> {
        match self {
            Self::Development(console) => Some(&console.outbox),
            Self::Smtp(_) => None,
        }
    }
}

impl Mailer for AppMailer {
    type Error = AppMailError;

    async fn send(&self, message: Message) -> Result<(), AppMailError> {
        match self {
            Self::Development(console) => Ok(console.send(message).await?),
            Self::Smtp(smtp) => Ok(smtp.send(message).await?),
        }
    }
}

/// One tenant in the directory.
#[derive(Debug, Clone)]
pub(crate) struct TenantInfo {
    pub(crate) id: TenantId,
    pub(crate) slug: String,
    pub(crate) name: String,
    pub(crate) assistant: ActorId,
}

/// The staff console's open visits, by session: one audited cross-tenant grant each, used by
/// every console page and decision until the grant expires or the member closes the visit.
/// Held in this instance's memory (a visit opened on another instance is opened again here,
/// with its own audited grant).
#[derive(Default)]
pub(crate) struct Visits(std::sync::Mutex<std::collections::HashMap<Uuid, Visit>>);

/// One open visit: the workspace and the granted context.
#[derive(Clone)]
pub(crate) struct Visit {
    pub(crate) tenant: TenantInfo,
    pub(crate) context: TenantContext,
}

impl Visit {
    fn is_live(&self) -> bool {
        self.context
            .expires_at()
            .is_some_and(|at| at > std::time::SystemTime::now())
    }
}

impl Visits {
    /// The session's live visit, if any (an expired one is forgotten).
    pub(crate) fn get(&self, session: Uuid) -> Option<Visit> {
        let mut visits = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match visits.get(&session) {
            Some(visit) if visit.is_live() => Some(visit.clone()),
            Some(_) => {
                visits.remove(&session);
                None
            }
            None => None,
        }
    }

    /// Opens `visit` for the session (replacing any other), forgetting expired ones.
    pub(crate) fn open(&self, session: Uuid, visit: Visit) {
        let mut visits = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        visits.retain(|_, v| v.is_live());
        visits.insert(session, visit);
    }

    /// Closes the session's visit.
    pub(crate) fn close(&self, session: Uuid) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&session);
    }
}

pub(crate) struct Services {
    pub(crate) visits: Visits,
    pub(crate) pool: TenantPool,
    pub(crate) raw: PgPool,
    pub(crate) sessions: SessionStore,
    pub(crate) links: Arc<MagicLinks<Directory, AppMailer>>,
    pub(crate) totp: Arc<TotpService>,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) blind: BlindIndexKey,
    pub(crate) audit: AuditLog,
    pub(crate) checkpoints: CheckpointSigner,
    /// The checkpointer role's pool: the only runtime identity that writes audit checkpoints.
    pub(crate) checkpointer: TenantPool,
    /// Where signed checkpoints are kept outside the database (see `checkpoints`).
    pub(crate) checkpoint_file: std::path::PathBuf,
    pub(crate) gate: Gate,
    pub(crate) mailer: Arc<AppMailer>,
    pub(crate) cross_tenant: Arc<CrossTenantAuthority<AuditLog>>,
    pub(crate) model: Arc<dyn Model>,
    pub(crate) base_url: String,
    pub(crate) development: bool,
}

/// The router's state.
#[derive(Clone)]
pub(crate) struct AppState(pub(crate) Arc<Services>);

/// The workspaces, for magic-auth's sign-in routes: a link request names one by its slug.
pub(crate) struct Workspaces(pub(crate) AppState);

impl tenant_scope::TenantDirectory for Workspaces {
    type Error = sqlx::Error;

    async fn by_slug(&self, slug: &str) -> Result<Option<TenantId>, sqlx::Error> {
        Ok(self.0.tenant_by_slug(slug).await?.map(|t| t.id))
    }

    async fn contains(&self, tenant: TenantId) -> Result<bool, sqlx::Error> {
        Ok(self.0.tenant(tenant).await?.is_some())
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

impl FromRef<AppState> for TenantPool {
    fn from_ref(state: &AppState) -> Self {
        state.pool.clone()
    }
}

impl Services {
    /// The tenant directory (global, read-only), or the entries matching `filter` (`slug = $1`
    /// or `id = $1::uuid`): one indexed query, never the whole directory for one lookup.
    async fn directory(
        &self,
        filter: Option<(&str, String)>,
    ) -> Result<Vec<TenantInfo>, sqlx::Error> {
        let condition = filter.as_ref().map_or("", |(c, _)| c);
        let sql = format!(
            "SELECT id, slug, name, assistant_id FROM workspace.tenants {condition} ORDER BY slug"
        );
        let mut query = sqlx::query_as::<_, (Uuid, String, String, Uuid)>(&sql);
        if let Some((_, value)) = filter {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.raw).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, slug, name, assistant)| {
                Some(TenantInfo {
                    id: TenantId::from_uuid(id).ok()?,
                    slug,
                    name,
                    assistant: ActorId::from_uuid(assistant).ok()?,
                })
            })
            .collect())
    }

    /// Every tenant.
    pub(crate) async fn tenants(&self) -> Result<Vec<TenantInfo>, sqlx::Error> {
        self.directory(None).await
    }

    pub(crate) async fn tenant_by_slug(
        &self,
        slug: &str,
    ) -> Result<Option<TenantInfo>, sqlx::Error> {
        Ok(self
            .directory(Some(("WHERE slug = $1", slug.to_owned())))
            .await?
            .pop())
    }

    pub(crate) async fn tenant(&self, id: TenantId) -> Result<Option<TenantInfo>, sqlx::Error> {
        Ok(self
            .directory(Some(("WHERE id = $1::uuid", id.to_string())))
            .await?
            .pop())
    }

    /// The field-crypto context of a note column.
    pub(crate) fn note_context(tenant: TenantId, note: Uuid, column: &str) -> Context {
        Context::new(
            tenant.as_uuid().as_bytes(),
            "workspace.notes",
            column,
            note.as_bytes(),
        )
    }

    /// The blind indexer for a tenant's phone numbers.
    pub(crate) fn phone_indexer(
        &self,
        tenant: TenantId,
    ) -> Result<BlindIndexer, field_crypto::CryptoError> {
        self.blind.indexer(
            tenant.as_uuid().as_bytes(),
            "workspace.notes",
            "contact_phone",
            "phone_index",
            Normalize::Exact,
            16,
        )
    }
}

/// Digits only (a leading `+` kept): the form phone numbers are indexed and stored in.
pub(crate) fn normalize_phone(raw: &str) -> String {
    let trimmed = raw.trim();
    let plus = trimmed.starts_with('+');
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    if plus { format!("+{digits}") } else { digits }
}
