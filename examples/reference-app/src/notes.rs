//! Notes: every query is bound to the acting tenant (rls-guard: a transaction for writes, a
//! one-statement bound read for reads), and the body and phone number are sealed by
//! field-crypto to their row.

use field_crypto::CryptoError;
use tenant_scope::{TenantContext, TenantId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::state::{Services, normalize_phone};

#[derive(Debug, thiserror::Error)]
pub(crate) enum NoteError {
    #[error("database: {0}")]
    Database(#[from] rls_guard::RlsError),
    #[error("a stored value does not decrypt")]
    Crypto(#[from] CryptoError),
    #[error("invalid input: {0}")]
    Invalid(&'static str),
}

impl From<sqlx::Error> for NoteError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.into())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub(crate) id: Uuid,
    pub(crate) title: String,
    pub(crate) body: String,
    pub(crate) phone: Option<String>,
    pub(crate) updated_at: OffsetDateTime,
}

impl Note {
    /// When it was last changed, as pages show times.
    pub(crate) fn updated(&self) -> crate::web::When {
        crate::web::when(self.updated_at)
    }
}

type Row = (Uuid, String, Vec<u8>, Option<Vec<u8>>, OffsetDateTime);

fn open(s: &Services, tenant: TenantId, row: Row) -> Result<Note, NoteError> {
    let (id, title, body, phone, updated_at) = row;
    let body = s
        .keyring
        .open(&body, &Services::note_context(tenant, id, "body"))?;
    let phone = match phone {
        Some(sealed) => {
            let p = s.keyring.open(
                &sealed,
                &Services::note_context(tenant, id, "contact_phone"),
            )?;
            Some(String::from_utf8_lossy(p.as_bytes()).into_owned())
        }
        None => None,
    };
    Ok(Note {
        id,
        title,
        body: String::from_utf8_lossy(body.as_bytes()).into_owned(),
        phone,
        updated_at,
    })
}

/// A `SELECT` of a note's columns from the acting tenant's notes, then `$tail`: static SQL, as
/// [`rls_guard::TenantPool::read`] requires.
macro_rules! select_notes {
    ($tail:literal) => {
        concat!(
            "SELECT id, title, body, contact_phone, updated_at FROM workspace.notes \
             WHERE tenant_id = $1",
            $tail
        )
    };
}
const LIST: &str = select_notes!(" ORDER BY updated_at DESC");
const GET: &str = select_notes!(" AND id = $2");
const BY_PHONE: &str = select_notes!(" AND phone_index = $2 ORDER BY updated_at DESC");

/// Every note of the context's tenant, newest first. The query has no tenant filter of its own
/// beyond the key: row-level security is what keeps other tenants' rows out. One round trip: a
/// bound read (the binding and the `SELECT` in one statement), the hot path of the app.
pub(crate) async fn list(s: &Services, context: &TenantContext) -> Result<Vec<Note>, NoteError> {
    let rows: Vec<Row> = s
        .pool
        .read(context, LIST)
        .bind(context.tenant().as_uuid())
        .fetch_all()
        .await?;
    rows.into_iter()
        .map(|r| open(s, context.tenant(), r))
        .collect()
}

/// The same read as [`list`] with no guard at all: a plain pool (a superuser's, which row-level
/// security does not apply to), no transaction, no binding. Only the load benchmark's
/// baseline uses it, to measure what the guards cost; nothing in the app serves it.
pub(crate) async fn list_unguarded(
    s: &Services,
    pool: &sqlx::PgPool,
    tenant: TenantId,
) -> Result<Vec<Note>, NoteError> {
    let rows: Vec<Row> = sqlx::query_as(LIST)
        .bind(tenant.as_uuid())
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(|r| open(s, tenant, r)).collect()
}

/// One note, or `None` (also for another tenant's id: the same answer as a missing one).
pub(crate) async fn get(
    s: &Services,
    context: &TenantContext,
    id: Uuid,
) -> Result<Option<Note>, NoteError> {
    let row: Option<Row> = s
        .pool
        .read(context, GET)
        .bind(context.tenant().as_uuid())
        .bind(id)
        .fetch_optional()
        .await?;
    row.map(|r| open(s, context.tenant(), r)).transpose()
}

/// Notes whose contact phone equals `phone`, found through the blind index.
pub(crate) async fn by_phone(
    s: &Services,
    context: &TenantContext,
    phone: &str,
) -> Result<Vec<Note>, NoteError> {
    let index = s
        .phone_indexer(context.tenant())?
        .compute(&normalize_phone(phone));
    let rows: Vec<Row> = s
        .pool
        .read(context, BY_PHONE)
        .bind(context.tenant().as_uuid())
        .bind(index)
        .fetch_all()
        .await?;
    rows.into_iter()
        .map(|r| open(s, context.tenant(), r))
        .collect()
}

/// Creates a note (or replaces one with `id`); returns its id.
pub(crate) async fn save(
    s: &Services,
    context: &TenantContext,
    id: Option<Uuid>,
    title: &str,
    body: &str,
    phone: Option<&str>,
) -> Result<Uuid, NoteError> {
    let title = title.trim();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(NoteError::Invalid(
            "a title of 1 to 200 characters is required",
        ));
    }
    if body.len() > 20_000 {
        return Err(NoteError::Invalid("the body is limited to 20000 bytes"));
    }
    let author = context.actor().ok_or(NoteError::Invalid("no author"))?.id();
    let tenant = context.tenant();
    let note = id.unwrap_or_else(Uuid::new_v4);
    let sealed_body = s.keyring.seal(
        body.as_bytes(),
        &Services::note_context(tenant, note, "body"),
    )?;
    let phone = phone.map(normalize_phone).filter(|p| !p.is_empty());
    let (sealed_phone, index) = match &phone {
        Some(p) => (
            Some(s.keyring.seal(
                p.as_bytes(),
                &Services::note_context(tenant, note, "contact_phone"),
            )?),
            Some(s.phone_indexer(tenant)?.compute(p)),
        ),
        None => (None, None),
    };
    let mut tx = s.pool.begin(context).await?;
    let written = sqlx::query(
        "INSERT INTO workspace.notes (tenant_id, id, author_id, title, body, contact_phone, phone_index) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (tenant_id, id) DO UPDATE SET title = EXCLUDED.title, body = EXCLUDED.body, \
         contact_phone = EXCLUDED.contact_phone, phone_index = EXCLUDED.phone_index, updated_at = now()",
    )
    .bind(tenant.as_uuid())
    .bind(note)
    .bind(author.as_uuid())
    .bind(title)
    .bind(sealed_body)
    .bind(sealed_phone)
    .bind(index)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if written.rows_affected() == 1 {
        Ok(note)
    } else {
        Err(NoteError::Invalid("not saved"))
    }
}

/// Deletes a note; `false` when there is none (in this tenant).
pub(crate) async fn delete(
    s: &Services,
    context: &TenantContext,
    id: Uuid,
) -> Result<bool, NoteError> {
    let mut tx = s.pool.begin(context).await?;
    let n = sqlx::query("DELETE FROM workspace.notes WHERE tenant_id = $1 AND id = $2")
        .bind(context.tenant().as_uuid())
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n == 1)
}
