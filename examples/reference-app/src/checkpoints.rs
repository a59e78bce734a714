//! Signed audit checkpoints, kept outside the database as well as in it.
//!
//! Every few minutes the app signs a checkpoint of each tenant's audit chain (Ed25519, the
//! checkpoint key) and appends it to `audit-checkpoints.jsonl` in the data directory (0600).
//! The audit viewer verifies each chain against the checkpoints in that file too, so someone
//! who can rewrite the database — delete the newest events *and* the checkpoints stored beside
//! them — is still caught: the chain no longer reaches a head the file vouches for. Ship the
//! file somewhere the database's owners cannot write for the full guarantee.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use audit_log::Checkpoint;
use tenant_scope::TenantId;

use crate::state::Services;

/// The file, under the data directory.
pub(crate) const FILE: &str = "audit-checkpoints.jsonl";

/// How often the serving app signs.
pub(crate) const EVERY: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckpointError {
    #[error("audit: {0}")]
    Audit(#[from] audit_log::AuditError),
    #[error("directory: {0}")]
    Directory(#[from] sqlx::Error),
    #[error("{0}")]
    File(#[from] std::io::Error),
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Signs a checkpoint of every tenant's chain that grew since its last one, stores it in the
/// database (by `AuditLog::checkpoint`) and appends it to the file. Returns how many were
/// signed.
///
/// One tenant's failure (a chain that does not verify, a write that fails) does not stop the
/// others: it is logged, and the first failure is returned after the round.
pub(crate) async fn sign_all(s: &Services) -> Result<usize, CheckpointError> {
    // The file is read once per round: the newest checkpoint each tenant already has there.
    let mut newest: std::collections::HashMap<String, Checkpoint> =
        std::collections::HashMap::new();
    for checkpoint in read(&s.checkpoint_file)? {
        newest.insert(checkpoint.tenant.clone(), checkpoint);
    }
    let mut signed = 0;
    let mut first_error = None;
    for tenant in s.tenants().await? {
        let outcome = async {
            let Some(checkpoint) = s
                .audit
                .checkpoint(&s.checkpointer, tenant.id, &s.checkpoints)
                .await?
            else {
                return Ok(false);
            };
            // A chain that has not grown gets its previous checkpoint back: record it once.
            if newest.get(&checkpoint.tenant) == Some(&checkpoint) {
                return Ok(false);
            }
            append(&s.checkpoint_file, &checkpoint)?;
            Ok::<_, CheckpointError>(true)
        };
        match outcome.await {
            Ok(true) => signed += 1,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(tenant = %tenant.slug, %error, "audit checkpoint failed");
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(signed), Err)
}

fn append(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let mut line = serde_json::to_vec(checkpoint)?;
    line.push(b'\n');
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // Created 0600; an existing file others can read is made private again.
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(&line)?;
    Ok(())
}

/// Every checkpoint in the file, oldest first (none when there is no file yet). A line that
/// does not parse is an error, not skipped: a damaged record of the chain is worth a look.
fn read(path: &Path) -> Result<Vec<Checkpoint>, CheckpointError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// The file's checkpoints of `tenant`.
pub(crate) fn load(path: &Path, tenant: TenantId) -> Result<Vec<Checkpoint>, CheckpointError> {
    let tenant = tenant.to_string();
    Ok(read(path)?
        .into_iter()
        .filter(|c| c.tenant == tenant)
        .collect())
}
