//! Refuse to run as a role that row-level security would not bind, or that could switch the
//! controls around it off.

use sqlx::PgConnection;

use crate::RlsError;

/// Why a role is unfit to be the runtime role. Each names the attribute or object and how to
/// fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoleProblem {
    /// Superusers bypass row-level security.
    #[error("it is a superuser (ALTER ROLE .. NOSUPERUSER)")]
    Superuser,
    /// BYPASSRLS roles bypass row-level security.
    #[error("it has BYPASSRLS (ALTER ROLE .. NOBYPASSRLS)")]
    BypassRls,
    /// CREATEROLE roles can grant themselves membership in other roles (the table owner's, on
    /// PostgreSQL 15 and older).
    #[error("it has CREATEROLE (ALTER ROLE .. NOCREATEROLE)")]
    CreateRole,
    /// REPLICATION roles can take a base backup or stream the WAL: every tenant's rows.
    #[error("it has REPLICATION (ALTER ROLE .. NOREPLICATION)")]
    Replication,
    /// It is a member (through any path, inheriting or not) of a superuser, BYPASSRLS,
    /// CREATEROLE or REPLICATION role and could `SET ROLE` to it.
    #[error("it is a member of privileged role `{0}` (REVOKE {0} FROM ..)")]
    MemberOfPrivileged(String),
    /// It is a member (through any path) of a predefined role that reads or writes data outside
    /// row-level security: `pg_execute_server_program`, `pg_read_server_files`,
    /// `pg_write_server_files`, `pg_read_all_data` or `pg_write_all_data`.
    #[error(
        "it is a member of predefined role `{0}`, which reaches data outside row-level security (REVOKE {0} FROM ..)"
    )]
    MemberOfServerRole(String),
    /// It owns (directly or through membership) a protected table, so it could disable the
    /// policies.
    #[error("it owns protected table `{0}` (ALTER TABLE .. OWNER TO the migration role)")]
    OwnsProtectedTable(String),
    /// It owns (directly or through membership) the support schema `app`, one of its
    /// functions, or a binding-check trigger function, so it could replace what every policy
    /// calls.
    #[error("it owns support object `{0}` (ALTER .. OWNER TO the migration role)")]
    OwnsSupportObject(String),
    /// It owns (directly or through membership) the database, and with it the `public` schema
    /// (through `pg_database_owner`).
    #[error("it owns the database `{0}` (ALTER DATABASE .. OWNER TO the migration role)")]
    OwnsDatabase(String),
    /// It (or a role it is a member of, or PUBLIC) holds `TRUNCATE`, `TRIGGER` or
    /// `REFERENCES` on a protected table: TRUNCATE ignores row-level security, a trigger runs
    /// in every tenant's transaction, a foreign key probes every tenant's rows.
    #[error("it holds {privilege} on protected table `{table}` (REVOKE {privilege} ON .. FROM ..)")]
    TablePrivilege {
        /// The protected table.
        table: String,
        /// `TRUNCATE`, `TRIGGER` or `REFERENCES`.
        privilege: String,
    },
    /// It (or a role it is a member of, or PUBLIC) holds a privilege on a table of the support
    /// schema `app` (the binding keys, the record of writes), which only the owner's functions
    /// may touch: with one it could read the key and sign any binding, or erase the record of
    /// what a transaction wrote. A default privilege of the migration role (`ALTER DEFAULT
    /// PRIVILEGES .. GRANT .. ON TABLES TO ..` without `IN SCHEMA`) grants exactly this.
    #[error("it holds privileges on support table `{0}` (REVOKE ALL ON {0} FROM ..)")]
    SupportTablePrivilege(String),
    /// It (or a role it is a member of, or PUBLIC) may create objects in a schema, where they
    /// can shadow the names that policies and support functions resolve.
    #[error("it holds CREATE on schema `{0}` (REVOKE CREATE ON SCHEMA {0} FROM ..)")]
    CreateOnSchema(String),
    /// It (or a role it is a member of, or PUBLIC) may create schemas in the database: a
    /// schema named after the role comes first on the default `search_path` of its later
    /// sessions, where a view or function can shadow a tenant table for every request.
    #[error("it holds CREATE on database `{0}` (REVOKE CREATE ON DATABASE {0} FROM ..)")]
    CreateOnDatabase(String),
    /// It (or a role it is a member of, or PUBLIC) may create temporary objects, which outlive
    /// a transaction on a pooled connection and are searched before every other schema.
    #[error(
        "it holds TEMPORARY on database `{0}` (REVOKE TEMPORARY ON DATABASE {0} FROM PUBLIC, ..)"
    )]
    Temporary(String),
    /// It (or a role it is a member of, or PUBLIC) may set a parameter that switches triggers
    /// off (`session_replication_role`).
    #[error(
        "it may SET `{0}`, which turns the binding-check trigger off (REVOKE SET ON PARAMETER {0} FROM ..)"
    )]
    SetParameter(String),
    /// The role carries a session default of its own (`ALTER ROLE .. SET`, for every database or
    /// this one) for a parameter outside the timeouts and labels listed in
    /// [`ALLOWED_SESSION_DEFAULTS`]. A role may set such defaults for itself, so an attacker
    /// holding it could make every later session start with, say, `search_path` or
    /// `standard_conforming_strings` changed under the code that runs there.
    #[error("it has the session default `{0}` (ALTER ROLE .. RESET {0})")]
    SessionDefault(String),
}

/// Session defaults the runtime role may carry (`ALTER ROLE .. SET`): timeouts and labels, which
/// change no query's meaning. Any other is a [`RoleProblem::SessionDefault`].
pub const ALLOWED_SESSION_DEFAULTS: &[&str] = &[
    "application_name",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "lock_timeout",
    "statement_timeout",
    "work_mem",
];

impl RoleProblem {
    /// Whether this is an attribute or membership of the role itself (superuser, BYPASSRLS,
    /// CREATEROLE, REPLICATION, a privileged or predefined role), which no migration of the
    /// database changes; the other problems are about objects and privileges in the database,
    /// which the migrations may still fix. Check these before migrating, and everything (as
    /// [`TenantPool::new`](crate::TenantPool::new) does) after.
    #[must_use]
    pub const fn is_attribute(&self) -> bool {
        matches!(
            self,
            Self::Superuser
                | Self::BypassRls
                | Self::CreateRole
                | Self::Replication
                | Self::MemberOfPrivileged(_)
                | Self::MemberOfServerRole(_)
                | Self::SessionDefault(_)
        )
    }
}

/// Role attributes, memberships, ownerships and privileges of `$1` (NULL: the connected role),
/// judged over every role it is a member of (directly or not, inheriting or not): what it could
/// `SET ROLE` to, it holds. For the connected role, the session's login role counts as well
/// (with its memberships and its session defaults): a session started as another role (a
/// `role` default or connection option) may `SET ROLE` back to the login role or any of its
/// roles, since `SET ROLE` is judged by the login role.
const ROLE_QUERY: &str = r"
WITH target AS (
    SELECT r.oid, r.rolname::text AS name, r.rolsuper, r.rolbypassrls, r.rolcreaterole,
           r.rolreplication
    FROM pg_catalog.pg_roles r
    WHERE r.rolname = coalesce($1::text, current_user::text)
), login AS (
    SELECT r.oid FROM pg_catalog.pg_roles r
    WHERE $1::text IS NULL AND r.rolname = session_user::text
), members AS (
    SELECT o.oid, o.rolname
    FROM pg_catalog.pg_roles o, target t
    WHERE pg_catalog.pg_has_role(t.oid, o.oid, 'MEMBER')
       OR EXISTS (SELECT 1 FROM login l WHERE pg_catalog.pg_has_role(l.oid, o.oid, 'MEMBER'))
), protected AS (
    SELECT c.oid, c.relowner, pg_catalog.format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND NOT pg_catalog.starts_with(n.nspname, 'pg_toast')
      AND (c.relrowsecurity OR EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
)
SELECT t.name, t.rolsuper, t.rolbypassrls, t.rolcreaterole, t.rolreplication,
       ARRAY(SELECT m.rolname::text FROM members m JOIN pg_catalog.pg_roles o ON o.oid = m.oid
             WHERE (o.rolsuper OR o.rolbypassrls OR o.rolcreaterole OR o.rolreplication)
               AND m.oid <> t.oid
             ORDER BY 1),
       ARRAY(SELECT m.rolname::text FROM members m
             WHERE m.rolname IN ('pg_execute_server_program', 'pg_read_server_files',
                                 'pg_write_server_files', 'pg_read_all_data',
                                 'pg_write_all_data')
             ORDER BY 1),
       ARRAY(SELECT p.name FROM protected p
             WHERE EXISTS (SELECT 1 FROM members m WHERE m.oid = p.relowner)
             ORDER BY 1),
       ARRAY(SELECT x.name FROM (
                SELECT 'schema app' AS name, n.nspowner AS owner
                FROM pg_catalog.pg_namespace n WHERE n.nspname = 'app'
                UNION ALL
                SELECT pg_catalog.format('table %s', c.oid::regclass), c.relowner
                FROM pg_catalog.pg_class c
                WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'app')
                UNION ALL
                SELECT pg_catalog.format('function %s', p.oid::regprocedure), p.proowner
                FROM pg_catalog.pg_proc p
                WHERE p.pronamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'app')
                   OR p.oid IN (SELECT tg.tgfoid FROM pg_catalog.pg_trigger tg
                                WHERE tg.tgname = 'tenant_binding_check')
             ) x
             WHERE EXISTS (SELECT 1 FROM members m WHERE m.oid = x.owner)
             ORDER BY 1),
       EXISTS (SELECT 1 FROM members m WHERE m.rolname = 'pg_database_owner'
               OR m.oid = (SELECT d.datdba FROM pg_catalog.pg_database d
                           WHERE d.datname = pg_catalog.current_database())),
       ARRAY(SELECT pg_catalog.format('%s|%s', p.name, v.privilege)
             FROM protected p
             CROSS JOIN (VALUES ('TRUNCATE'), ('TRIGGER'), ('REFERENCES')) AS v(privilege)
             WHERE EXISTS (SELECT 1 FROM members m
                           WHERE pg_catalog.has_table_privilege(m.oid, p.oid, v.privilege)
                              OR (v.privilege = 'REFERENCES' AND
                                  pg_catalog.has_any_column_privilege(m.oid, p.oid, 'REFERENCES')))
             ORDER BY 1),
       ARRAY(SELECT n.nspname::text FROM pg_catalog.pg_namespace n
             WHERE NOT pg_catalog.starts_with(n.nspname, 'pg_toast')
               AND NOT pg_catalog.starts_with(n.nspname, 'pg_temp_')
               AND EXISTS (SELECT 1 FROM members m
                           WHERE pg_catalog.has_schema_privilege(m.oid, n.oid, 'CREATE'))
             ORDER BY 1),
       EXISTS (SELECT 1 FROM members m
               WHERE pg_catalog.has_database_privilege(m.oid, pg_catalog.current_database(),
                                                       'TEMPORARY')),
       pg_catalog.current_database()::text,
       EXISTS (SELECT 1 FROM members m
               WHERE pg_catalog.has_parameter_privilege(m.oid, 'session_replication_role', 'SET')),
       EXISTS (SELECT 1 FROM members m
               WHERE pg_catalog.has_database_privilege(m.oid, pg_catalog.current_database(),
                                                       'CREATE')),
       ARRAY(SELECT DISTINCT pg_catalog.split_part(c.setting, '=', 1)
             FROM pg_catalog.pg_db_role_setting s
             CROSS JOIN LATERAL pg_catalog.unnest(s.setconfig) AS c(setting)
             WHERE (s.setrole = t.oid OR s.setrole IN (SELECT l.oid FROM login l))
               AND s.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database d
                                         WHERE d.datname = pg_catalog.current_database()))
               AND pg_catalog.lower(pg_catalog.split_part(c.setting, '=', 1)) <> ALL ($2::text[])
             ORDER BY 1),
       ARRAY(SELECT c.oid::regclass::text FROM pg_catalog.pg_class c
             WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'app')
               AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND EXISTS (SELECT 1 FROM members m
                           WHERE pg_catalog.has_table_privilege(m.oid, c.oid,
                                   'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                              OR pg_catalog.has_any_column_privilege(m.oid, c.oid,
                                   'SELECT, INSERT, UPDATE, REFERENCES'))
             ORDER BY 1)
FROM target t";

/// Every reason `role` (the connected role when `None`) is unfit to be the runtime role, and
/// the role's name.
///
/// # Errors
/// [`RlsError::UnknownRole`] when there is no such role; [`RlsError::Database`] when the
/// catalog cannot be read.
pub(crate) async fn role_problems(
    conn: &mut PgConnection,
    role: Option<&str>,
) -> Result<(String, Vec<RoleProblem>), RlsError> {
    use sqlx::Row;
    let Some(row) = sqlx::query(ROLE_QUERY)
        .bind(role)
        .bind(ALLOWED_SESSION_DEFAULTS)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Err(RlsError::UnknownRole(role.unwrap_or_default().to_owned()));
    };
    let name: String = row.try_get(0)?;
    let flag = |i: usize| row.try_get::<bool, _>(i);
    let list = |i: usize| row.try_get::<Vec<String>, _>(i);
    let database: String = row.try_get(13)?;
    let mut problems = Vec::new();
    let flags = [
        (flag(1)?, RoleProblem::Superuser),
        (flag(2)?, RoleProblem::BypassRls),
        (flag(3)?, RoleProblem::CreateRole),
        (flag(4)?, RoleProblem::Replication),
    ];
    problems.extend(flags.into_iter().filter(|(set, _)| *set).map(|(_, p)| p));
    problems.extend(list(5)?.into_iter().map(RoleProblem::MemberOfPrivileged));
    problems.extend(list(6)?.into_iter().map(RoleProblem::MemberOfServerRole));
    problems.extend(list(7)?.into_iter().map(RoleProblem::OwnsProtectedTable));
    problems.extend(list(8)?.into_iter().map(RoleProblem::OwnsSupportObject));
    if flag(9)? {
        problems.push(RoleProblem::OwnsDatabase(database.clone()));
    }
    problems.extend(list(10)?.into_iter().filter_map(|entry| {
        let (table, privilege) = entry.rsplit_once('|')?;
        Some(RoleProblem::TablePrivilege {
            table: table.to_owned(),
            privilege: privilege.to_owned(),
        })
    }));
    problems.extend(list(11)?.into_iter().map(RoleProblem::CreateOnSchema));
    if flag(12)? {
        problems.push(RoleProblem::Temporary(database.clone()));
    }
    if flag(14)? {
        problems.push(RoleProblem::SetParameter("session_replication_role".into()));
    }
    if flag(15)? {
        problems.push(RoleProblem::CreateOnDatabase(database));
    }
    problems.extend(list(16)?.into_iter().map(RoleProblem::SessionDefault));
    problems.extend(
        list(17)?
            .into_iter()
            .map(RoleProblem::SupportTablePrivilege),
    );
    Ok((name, problems))
}

/// Checks that the connected role is bound by row-level security and cannot switch the
/// controls around it off: not a superuser, no BYPASSRLS, CREATEROLE or REPLICATION, not a
/// member (through any path) of a role that has one of those or of a predefined role that
/// reaches data outside row-level security, owner of no protected table, support object or the
/// database, no TRUNCATE, TRIGGER or REFERENCES on a protected table, no privilege on a support
/// table, no CREATE on any schema,
/// no TEMPORARY on the database, no right to set `session_replication_role`, and no session
/// default of its own but the timeouts and labels in [`ALLOWED_SESSION_DEFAULTS`]. See
/// [`RoleProblem`].
///
/// # Errors
/// [`RlsError::UnsafeRuntimeRole`] listing every problem; [`RlsError::Database`] when the
/// check cannot run (which also refuses).
pub async fn verify_runtime_role(conn: &mut PgConnection) -> Result<(), RlsError> {
    let (role, problems) = role_problems(conn, None).await?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RlsError::UnsafeRuntimeRole { role, problems })
    }
}
