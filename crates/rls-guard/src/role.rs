//! Refuse to run as a role that row-level security would not bind.

use sqlx::PgConnection;

use crate::RlsError;

/// Why a role is unfit to be the runtime role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoleProblem {
    /// Superusers bypass row-level security.
    #[error("it is a superuser")]
    Superuser,
    /// BYPASSRLS roles bypass row-level security.
    #[error("it has BYPASSRLS")]
    BypassRls,
    /// CREATEROLE roles can grant themselves membership in other roles (the table owner's, on
    /// PostgreSQL 15 and older).
    #[error("it has CREATEROLE")]
    CreateRole,
    /// It is a member of a superuser, BYPASSRLS or CREATEROLE role and could `SET ROLE` to it.
    #[error("it is a member of privileged role `{0}`")]
    MemberOfPrivileged(String),
    /// It owns (directly or through membership) a protected table, so it could disable the
    /// policies.
    #[error("it owns protected table `{0}`")]
    OwnsProtectedTable(String),
}

const ROLE_QUERY: &str = "
SELECT r.rolname::text,
       r.rolsuper,
       r.rolbypassrls,
       r.rolcreaterole,
       ARRAY(SELECT o.rolname::text FROM pg_catalog.pg_roles o
             WHERE (o.rolsuper OR o.rolbypassrls OR o.rolcreaterole) AND o.oid <> r.oid
               AND pg_catalog.pg_has_role(r.oid, o.oid, 'MEMBER')
             ORDER BY 1),
       ARRAY(SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg\\_toast%'
               AND (c.relrowsecurity OR EXISTS (
                     SELECT 1 FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
               AND pg_catalog.pg_has_role(r.oid, c.relowner, 'MEMBER')
             ORDER BY 1)
FROM pg_catalog.pg_roles r
WHERE r.rolname = current_user";

/// role, superuser, bypassrls, createrole, privileged memberships, owned protected tables.
type RoleRow = (String, bool, bool, bool, Vec<String>, Vec<String>);

/// Checks that the connected role is bound by row-level security: not a superuser, no
/// BYPASSRLS, no CREATEROLE, not a member of a role that is either, and owner of no protected table (a table
/// with row-level security enabled or a `tenant_id` column).
///
/// # Errors
/// [`RlsError::UnsafeRuntimeRole`] listing every problem; [`RlsError::Database`] when the
/// check cannot run (which also refuses).
pub async fn verify_runtime_role(conn: &mut PgConnection) -> Result<(), RlsError> {
    let (role, superuser, bypass, createrole, privileged, owned): RoleRow =
        sqlx::query_as(ROLE_QUERY).fetch_one(&mut *conn).await?;
    let mut problems = Vec::new();
    if superuser {
        problems.push(RoleProblem::Superuser);
    }
    if bypass {
        problems.push(RoleProblem::BypassRls);
    }
    if createrole {
        problems.push(RoleProblem::CreateRole);
    }
    problems.extend(privileged.into_iter().map(RoleProblem::MemberOfPrivileged));
    problems.extend(owned.into_iter().map(RoleProblem::OwnsProtectedTable));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RlsError::UnsafeRuntimeRole { role, problems })
    }
}

/// Checks that [`SUPPORT_SQL`](crate::schema::SUPPORT_SQL) has been installed.
///
/// # Errors
/// [`RlsError::SupportSchemaMissing`], or [`RlsError::Database`] when the check cannot run.
pub async fn verify_support_schema(conn: &mut PgConnection) -> Result<(), RlsError> {
    let present: bool = sqlx::query_scalar(
        "SELECT pg_catalog.to_regprocedure('app.current_tenant_id()') IS NOT NULL
            AND pg_catalog.to_regprocedure('app.check_row_binding()') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    if present {
        Ok(())
    } else {
        Err(RlsError::SupportSchemaMissing)
    }
}
