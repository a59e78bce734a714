//! Moving stored values to the primary key, in batches, while the application keeps reading.

use sqlx::PgConnection;

use crate::{Context, CryptoError, Keyring, Sealed};

/// Why a re-encryption batch stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReencryptError {
    /// A value did not open or could not be sealed.
    #[error("re-encryption of row {row}: {source}")]
    Crypto {
        /// The row id.
        row: i64,
        /// What failed.
        #[source]
        source: CryptoError,
    },
    /// The database refused or could not be reached.
    #[error("re-encryption: database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A table or column name is not a plain identifier.
    #[error("not a plain SQL identifier: {0:?}")]
    InvalidIdentifier(String),
    /// A batch size of zero or less: such a batch would scan nothing and report `done`.
    #[error("the re-encryption batch size must be at least 1")]
    InvalidBatchSize,
}

/// How far a job got. Persist `cursor` to resume after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Rows examined in this batch.
    pub scanned: u64,
    /// Rows moved to the primary key in this batch.
    pub resealed: u64,
    /// Rows skipped because the application changed them while the batch ran.
    pub raced: u64,
    /// The last id examined: pass it to the next batch.
    pub cursor: Option<i64>,
    /// This batch found no row after the cursor: every row the connection can see, from the
    /// smallest id on, has been scanned by this or an earlier batch, and the job is complete.
    /// A batch that scanned any row never reports `done`.
    pub done: bool,
}

/// Re-encrypts one encrypted column of a table (with a `bigint` id and a tenant column) under
/// the keyring's primary key, in id order.
///
/// The first batch (cursor `None`) starts at the smallest id there is, `i64::MIN` included;
/// each later batch starts after the last id the previous one examined. A job is `done` only
/// when a batch finds no row after its cursor, so it has scanned every row (with a value) that
/// existed when it started, up to `i64::MAX`.
///
/// **Run it where it can see the rows.** On a table with row-level security, a connection with
/// no tenant bound sees no rows, and the job reports `done` after scanning nothing: run it per
/// tenant inside a tenant-bound transaction (rls-guard's `TenantTx`), and before retiring the
/// old key, confirm with an operator query that no value still carries the old key id (the
/// header's bytes 2..6). Values without a ciphertext header (legacy plaintext) stop the batch
/// with an error: convert them first with [`Keyring::open_migrating`]. Reads keep working throughout, because the old key
/// stays decrypt-only until the job reports `done`; a row the application rewrites meanwhile is
/// left alone (compare-and-swap on the old ciphertext).
#[derive(Debug, Clone)]
pub struct ReencryptJob {
    /// The first batch: no lower bound, so the smallest id (even `i64::MIN`) is included.
    select_first: String,
    /// Later batches: strictly after the cursor.
    select: String,
    update: String,
    batch_size: i64,
}

fn plain(name: &str) -> Result<&str, ReencryptError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(ReencryptError::InvalidIdentifier(name.to_owned()))
    }
}

impl ReencryptJob {
    /// A job over `table`, identified by `id_column`, with tenants in `tenant_column` and
    /// ciphertexts in `value_column`. Batches of 500 rows.
    ///
    /// # Errors
    /// [`ReencryptError::InvalidIdentifier`] unless every name is a plain lowercase identifier.
    pub fn new(
        table: &str,
        id_column: &str,
        tenant_column: &str,
        value_column: &str,
    ) -> Result<Self, ReencryptError> {
        let (t, id, tenant, value) = (
            plain(table)?,
            plain(id_column)?,
            plain(tenant_column)?,
            plain(value_column)?,
        );
        Ok(Self {
            select_first: format!(
                "SELECT {id}, {tenant}::text, {value} FROM {t} \
                 WHERE {value} IS NOT NULL ORDER BY {id} LIMIT $1"
            ),
            select: format!(
                "SELECT {id}, {tenant}::text, {value} FROM {t} \
                 WHERE {id} > $1 AND {value} IS NOT NULL ORDER BY {id} LIMIT $2"
            ),
            update: format!("UPDATE {t} SET {value} = $1 WHERE {id} = $2 AND {value} = $3"),
            batch_size: 500,
        })
    }

    /// Rows per batch (at least 1).
    ///
    /// # Errors
    /// [`ReencryptError::InvalidBatchSize`] for zero or a negative number: a batch of no rows
    /// would report `done` without scanning anything.
    pub fn batch_size(mut self, rows: i64) -> Result<Self, ReencryptError> {
        if rows < 1 {
            return Err(ReencryptError::InvalidBatchSize);
        }
        self.batch_size = rows;
        Ok(self)
    }

    /// Runs one batch after `cursor` (`None` to start at the smallest id). `context` rebuilds each row's
    /// [`Context`] from its tenant (as text) and id, exactly as the application sealed it.
    ///
    /// # Errors
    /// [`ReencryptError`]; a value that does not open stops the batch (it is never skipped
    /// silently).
    pub async fn run_batch(
        &self,
        conn: &mut PgConnection,
        keyring: &Keyring,
        context: impl Fn(&str, i64) -> Context,
        cursor: Option<i64>,
    ) -> Result<Progress, ReencryptError> {
        let rows: Vec<(i64, String, Sealed)> = match cursor {
            None => {
                sqlx::query_as(&self.select_first)
                    .bind(self.batch_size)
                    .fetch_all(&mut *conn)
                    .await?
            }
            Some(after) => {
                sqlx::query_as(&self.select)
                    .bind(after)
                    .bind(self.batch_size)
                    .fetch_all(&mut *conn)
                    .await?
            }
        };
        let mut progress = Progress {
            cursor,
            done: rows.is_empty(),
            ..Progress::default()
        };
        for (id, tenant, sealed) in rows {
            progress.scanned += 1;
            progress.cursor = Some(id);
            let ctx = context(&tenant, id);
            let fresh = keyring
                .reseal(sealed.as_bytes(), &ctx)
                .map_err(|source| ReencryptError::Crypto { row: id, source })?;
            if let Some(fresh) = fresh {
                let updated = sqlx::query(&self.update)
                    .bind(fresh)
                    .bind(id)
                    .bind(sealed.as_bytes())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if updated == 1 {
                    progress.resealed += 1;
                } else {
                    progress.raced += 1;
                }
            }
        }
        Ok(progress)
    }
}
