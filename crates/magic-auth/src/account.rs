//! Per-account sign-in state (`auth.accounts`): the row every change to an account's sessions
//! and links locks first, the sign-in generation, and whether the account is disabled.
//!
//! Why a row of its own: a revocation is an `UPDATE .. WHERE revoked_at IS NULL` over the
//! sessions that exist when its statement starts. A rotation or a sign-in committing at that
//! moment would add a session the revocation never saw. Every operation that creates, rotates
//! or ends sessions or links of an account therefore locks the account's row *first*, in a
//! statement of its own, and does its work in later statements of the same transaction: under
//! `READ COMMITTED` each later statement sees everything the previous lock holder committed.
//! The operations take turns, and whichever goes second sees the first one's result.
//!
//! The generation counts "sign out everywhere" events (`revoke_all`, disabling, a lockout,
//! `invalidate_links`). A confirmed link carries the generation it was confirmed under, and
//! the session for it is created only if the generation has not moved since — in the same
//! transaction that holds the lock and inserts the session.
//!
//! Lock order, everywhere: the TOTP row (when involved), then the account row, then session
//! and link rows. Nothing takes them in another order, so the turns cannot deadlock.

use rls_guard::TenantTx;
use tenant_scope::{ActorId, TenantId};
use uuid::Uuid;

use crate::AuthError;

/// The account's state, read under its row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountState {
    /// Moves at every "sign out everywhere".
    pub(crate) generation: i64,
    /// Disabled through `SessionStore::disable_account`.
    pub(crate) disabled: bool,
}

/// Locks the account's row (creating it when missing) and reads it.
pub(crate) async fn lock(
    tx: &mut TenantTx,
    tenant: TenantId,
    user: ActorId,
) -> Result<AccountState, AuthError> {
    sqlx::query(
        "INSERT INTO auth.accounts (tenant_id, user_id) VALUES ($1, $2) \
         ON CONFLICT (tenant_id, user_id) DO NOTHING",
    )
    .bind(tenant.as_uuid())
    .bind(user.as_uuid())
    .execute(&mut **tx)
    .await?;
    let (generation, disabled): (i64, bool) = sqlx::query_as(
        "SELECT generation, disabled_at IS NOT NULL FROM auth.accounts \
         WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE",
    )
    .bind(tenant.as_uuid())
    .bind(user.as_uuid())
    .fetch_one(&mut **tx)
    .await?;
    Ok(AccountState {
        generation,
        disabled,
    })
}

/// How much a "sign out everywhere" ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ended {
    /// Sessions revoked.
    pub(crate) sessions: u64,
    /// Pending links invalidated.
    pub(crate) links: u64,
}

/// What else [`end_sign_ins`] does to the account row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disable {
    /// Leave `disabled_at` as it is.
    Keep,
    /// Set it (disable the account).
    Set,
}

/// Moves the generation (locking the row; sign-ins confirmed before are refused), then revokes
/// every live session of the account but `keep` and invalidates every pending link — in `tx`,
/// seen by every transaction that takes the account's lock after this one commits.
pub(crate) async fn end_sign_ins(
    tx: &mut TenantTx,
    tenant: TenantId,
    user: ActorId,
    keep: Option<Uuid>,
    disable: Disable,
) -> Result<Ended, AuthError> {
    bump(tx, tenant, user, disable).await?;
    let sessions = sqlx::query(
        "UPDATE auth.sessions SET revoked_at = now() \
         WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL \
           AND ($3::uuid IS NULL OR id <> $3)",
    )
    .bind(tenant.as_uuid())
    .bind(user.as_uuid())
    .bind(keep)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let links = invalidate_pending_links(tx, tenant, user).await?;
    Ok(Ended { sessions, links })
}

/// Moves the generation (and sets `disabled_at` for [`Disable::Set`]), locking the row.
pub(crate) async fn bump(
    tx: &mut TenantTx,
    tenant: TenantId,
    user: ActorId,
    disable: Disable,
) -> Result<(), AuthError> {
    sqlx::query(
        "INSERT INTO auth.accounts AS a (tenant_id, user_id, generation, disabled_at) \
         VALUES ($1, $2, 1, CASE WHEN $3 THEN now() END) \
         ON CONFLICT (tenant_id, user_id) DO UPDATE \
           SET generation = a.generation + 1, \
               disabled_at = CASE WHEN $3 THEN COALESCE(a.disabled_at, now()) \
                                  ELSE a.disabled_at END",
    )
    .bind(tenant.as_uuid())
    .bind(user.as_uuid())
    .bind(disable == Disable::Set)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Invalidates every pending (unconsumed, not yet invalidated) link of the account. Call with
/// the account's lock held.
pub(crate) async fn invalidate_pending_links(
    tx: &mut TenantTx,
    tenant: TenantId,
    user: ActorId,
) -> Result<u64, AuthError> {
    Ok(sqlx::query(
        "UPDATE auth.login_links SET invalidated_at = now() \
         WHERE tenant_id = $1 AND user_id = $2 AND consumed_at IS NULL AND invalidated_at IS NULL",
    )
    .bind(tenant.as_uuid())
    .bind(user.as_uuid())
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Whether `session` is still stored live (unrevoked, unexpired) and at least as strong and as
/// fresh as the value says: a step-up check made on the value (`Session::is_fresh`) then holds
/// for the stored session too, so a `Session` built or kept with a higher assurance or a later
/// factor check than the database records is refused. Call with the account's lock held: a
/// revocation is then either seen here or waits for the caller's transaction.
pub(crate) async fn session_is_live(
    tx: &mut TenantTx,
    session: &crate::Session,
) -> Result<bool, AuthError> {
    // The stored time is to the microsecond; the value's may carry the rounding.
    let live: Option<(i32,)> = sqlx::query_as(
        "SELECT 1 FROM auth.sessions WHERE tenant_id = $1 AND id = $2 AND user_id = $3 \
         AND revoked_at IS NULL AND idle_expires_at > now() AND absolute_expires_at > now() \
         AND aal >= $4 AND authenticated_at >= $5 - interval '1 microsecond'",
    )
    .bind(session.tenant.as_uuid())
    .bind(session.id)
    .bind(session.user.as_uuid())
    .bind(session.assurance as i16)
    .bind(session.authenticated_at)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(live.is_some())
}
