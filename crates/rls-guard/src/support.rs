//! The support schema, pinned: every `app` function the policies and the binding rely on, and
//! the binding-check trigger on every tenant table, exactly as this crate installs them.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::RlsError;
use crate::schema::{
    BINDING_TRIGGER, PINNED_FUNCTIONS, PinnedFunction, RECORD_TRIGGERS, SIGNED_GETTERS, Write,
};

/// The installed `app` functions: signature, body, language, volatility, return type, SECURITY
/// DEFINER, configuration (`SET ..` clauses), returns a set, owned by the owner of `app`.
const FUNCTIONS: &str = r"
SELECT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname,
                         pg_catalog.pg_get_function_identity_arguments(p.oid)),
       p.prosrc, l.lanname::text, p.provolatile::text,
       pg_catalog.format_type(p.prorettype, NULL),
       p.prosecdef, coalesce(pg_catalog.array_to_string(p.proconfig, ';'), ''), p.proretset,
       p.proowner = n.nspowner
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE n.nspname = 'app'";

/// Every table with a `tenant_id` column, with the shape of each trigger that bears the name of
/// one of the crate's triggers or runs one of its trigger functions: name, type bits,
/// constraint trigger, deferrable, initially deferred, has a `WHEN` clause, column count,
/// enabled mode, argument count, the function's signature, the old and new transition tables.
const TRIGGERS: &str = r"
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), tg.tgname::text, tg.tgtype::int4,
       tg.tgconstraint <> 0, tg.tgdeferrable, tg.tginitdeferred, tg.tgqual IS NOT NULL,
       coalesce(pg_catalog.array_length(tg.tgattr::int2[], 1), 0), tg.tgenabled::text,
       tg.tgnargs::int4,
       CASE WHEN p.oid IS NULL THEN ''
            ELSE pg_catalog.format('%I.%I(%s)', pn.nspname, p.proname,
                                   pg_catalog.pg_get_function_identity_arguments(p.oid)) END,
       coalesce(tg.tgoldtable::text, ''), coalesce(tg.tgnewtable::text, '')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a
  ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
LEFT JOIN (pg_catalog.pg_trigger tg
           JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid
           JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace)
  ON tg.tgrelid = c.oid
 AND (tg.tgname = ANY ($1::text[])
      OR tg.tgfoid IN (pg_catalog.to_regprocedure('app.check_row_binding()'),
                       pg_catalog.to_regprocedure('app.record_binding_writes()')))
WHERE c.relkind IN ('r', 'p')
  AND NOT c.relispartition  -- judged through the parent, where the triggers are made
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT pg_catalog.starts_with(n.nspname, 'pg_')
ORDER BY 1, 2";

/// Partitions (with a `tenant_id` column) that a role other than their owner, a superuser or
/// a predefined role nobody belongs to may write directly, and the first such role by name:
/// the record of writes is kept by statement triggers on the partitioned table, which
/// PostgreSQL does not run for a write made to a partition itself.
const PARTITION_WRITERS: &str = r"
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), w.rolname::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT o.rolname FROM pg_catalog.pg_roles o
    WHERE NOT o.rolsuper
      AND NOT pg_catalog.pg_has_role(o.oid, c.relowner, 'MEMBER')
      AND (NOT pg_catalog.starts_with(o.rolname, 'pg_')
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m WHERE m.roleid = o.oid))
      AND (pg_catalog.has_table_privilege(o.oid, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
           OR pg_catalog.has_any_column_privilege(o.oid, c.oid, 'INSERT, UPDATE'))
    ORDER BY 1 LIMIT 1) w
WHERE c.relispartition AND c.relkind IN ('r', 'p', 'f')
  AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
ORDER BY 1";

/// For each of `$1` (tables, as `format('%I.%I')` prints them), the first (by name) role that
/// holds the privilege to insert into it, update it and delete from it, or NULL. Every holder
/// counts, whether or not it can log in (a role that cannot still lends its privilege through
/// a view, function or rule it owns, or to whoever may `SET ROLE` to it), except superusers,
/// the table's owner and the owner's members, and predefined roles nobody belongs to. The
/// privilege counts on the table or a column, directly, inherited or through `PUBLIC`; on the
/// table, any of its partitions (a write made to a partition directly fires only the triggers
/// the table gave it) or any table it inherits from (whose `UPDATE` and `DELETE` reach it).
/// A foreign key of the table with a referential action writes it as its owner when the parent
/// is written: `ON DELETE CASCADE` deletes from it, `ON DELETE SET NULL | SET DEFAULT` and every
/// `ON UPDATE` action but `NO ACTION` and `RESTRICT` update it. So the holders of the parent's
/// privilege count too, and so on up every chain of such keys (the parent's own keys, the
/// tables the parent inherits from and its partitions, and an update of a table above a
/// partition, which can move a row out of it), named with the relation and the table's key.
/// An update of a partitioned table can move a row between its partitions, which is a delete
/// and an insert there: its holders count as writers of both.
const WRITERS: &str = r#"
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), w.inserts, w.updates, w.deletes
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    WITH RECURSIVE
    -- Each table, and the tables it inherits from (partitioned or not).
    up(base, oid) AS (
        SELECT r.oid, r.oid FROM pg_catalog.pg_class r WHERE r.relkind IN ('r', 'p')
        UNION
        SELECT u.base, i.inhparent FROM pg_catalog.pg_inherits i JOIN up u ON i.inhrelid = u.oid
    ),
    -- Each table, and its partitions.
    down(base, oid) AS (
        SELECT r.oid, r.oid FROM pg_catalog.pg_class r WHERE r.relkind IN ('r', 'p')
        UNION
        SELECT d.base, i.inhrelid
          FROM pg_catalog.pg_inherits i
          JOIN down d ON i.inhparent = d.oid
          JOIN pg_catalog.pg_class k ON k.oid = i.inhrelid AND k.relispartition
    ),
    -- The relations whose writes reach a table's rows; `above`: one it inherits from.
    fam(base, oid, above) AS (
        SELECT u.base, u.oid, u.oid <> u.base FROM up u
        UNION
        SELECT d.base, d.oid, false FROM down d
    ),
    -- (relation, a write on it, the write that makes on the table, how: the table's key it
    -- goes through: '' for the table's own writes). An update of a partitioned table that
    -- moves a row to another partition is a delete and an insert there, firing no update
    -- trigger.
    causes(rel, write, t_write, via) AS (
        SELECT c.oid, v.w, v.t, v.via
          FROM (VALUES ('i', 'i', ''), ('u', 'u', ''), ('d', 'd', ''),
                       ('u', 'i', 'moving a row between its partitions'),
                       ('u', 'd', 'moving a row between its partitions')) AS v(w, t, via)
         WHERE v.via = '' OR c.relkind = 'p'
        UNION
        SELECT f.confrelid, a.parent_write, k.t_write,
               (CASE WHEN k.via = ''
                     THEN pg_catalog.format('foreign key %I %s', f.conname::text, a.action)
                     WHEN k.via = 'moving a row between its partitions'
                     THEN pg_catalog.format('foreign key %I %s, %s', f.conname::text,
                                            a.action, k.via)
                     ELSE k.via END) COLLATE pg_catalog."default"
          FROM causes k
          JOIN pg_catalog.pg_constraint f
            ON f.contype = 'f'
           AND f.conrelid IN (SELECT m.oid FROM fam m WHERE m.base = k.rel)
         CROSS JOIN LATERAL (VALUES
               ('d', 'd', 'ON DELETE CASCADE', f.confdeltype = 'c'),
               ('d', 'u', 'ON DELETE SET NULL/DEFAULT', f.confdeltype IN ('n', 'd')),
               ('u', 'u', 'ON UPDATE CASCADE/SET NULL/DEFAULT', f.confupdtype IN ('c', 'n', 'd'))
         ) AS a(parent_write, child_write, action, applies)
         WHERE a.applies AND a.child_write = k.write
    ),
    held(write, who) AS (
        SELECT k.t_write,
               CASE WHEN k.via = '' THEN g.rolname::text
                    ELSE pg_catalog.format('%s (%s %s, %s)', g.rolname,
                             CASE WHEN k.write = 'd'
                                       AND pg_catalog.has_table_privilege(g.oid, m.oid, 'DELETE')
                                  THEN 'deleting from' ELSE 'updating' END,
                             m.oid::pg_catalog.regclass, k.via) END
          FROM causes k
          JOIN fam m ON m.base = k.rel
         CROSS JOIN pg_catalog.pg_roles g
         WHERE NOT g.rolsuper
           AND NOT pg_catalog.pg_has_role(g.oid, c.relowner, 'MEMBER')
           AND (g.oid >= 16384
                OR EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members am WHERE am.roleid = g.oid))
           AND CASE k.write
                   WHEN 'i' THEN pg_catalog.has_any_column_privilege(g.oid, m.oid, 'INSERT')
                   WHEN 'u' THEN pg_catalog.has_any_column_privilege(g.oid, m.oid, 'UPDATE')
                   ELSE pg_catalog.has_table_privilege(g.oid, m.oid, 'DELETE')
                        OR (m.above
                            AND EXISTS (SELECT 1 FROM pg_catalog.pg_class x
                                         WHERE x.oid = k.rel AND x.relispartition)
                            AND pg_catalog.has_any_column_privilege(g.oid, m.oid, 'UPDATE'))
               END
    )
    SELECT pg_catalog.min(h.who) FILTER (WHERE h.write = 'i'),
           pg_catalog.min(h.who) FILTER (WHERE h.write = 'u'),
           pg_catalog.min(h.who) FILTER (WHERE h.write = 'd')
    FROM held h
) AS w(inserts, updates, deletes)
WHERE pg_catalog.format('%I.%I', n.nspname, c.relname) = ANY ($1::text[])"#;

/// The expected shape of one of the crate's triggers: name, type bits, constraint trigger
/// deferred, function, old transition table, new transition table.
type TriggerShape = (
    &'static str,
    i32,
    bool,
    &'static str,
    &'static str,
    &'static str,
);

/// Every trigger [`tenant_table_sql`](crate::schema::tenant_table_sql) creates, in the shape it
/// creates it.
fn expected_triggers() -> Vec<TriggerShape> {
    let mut shapes = vec![(
        BINDING_TRIGGER,
        BINDING_TRIGGER_TYPE,
        true,
        "app.check_row_binding()",
        "",
        "",
    )];
    for (name, event, _) in RECORD_TRIGGERS {
        let (bits, old, new) = match event {
            "INSERT" => (4, "", "rls_guard_new"),
            "UPDATE" => (16, "rls_guard_old", "rls_guard_new"),
            _ => (8, "rls_guard_old", ""),
        };
        shapes.push((name, bits, false, "app.record_binding_writes()", old, new));
    }
    shapes
}

/// `FOR EACH ROW` (1) + `INSERT` (4) + `DELETE` (8) + `UPDATE` (16), `AFTER`, no `TRUNCATE`:
/// the binding check of [`tenant_table_sql`](crate::schema::tenant_table_sql). A check made by
/// [`tenant_table_sql_for`](crate::schema::tenant_table_sql_for) carries a part of the events.
const BINDING_TRIGGER_TYPE: i32 = 1 | 4 | 8 | 16;

/// One row of [`WRITERS`]: the table, and a role that may insert, update and delete.
type WritersRow = (String, Option<String>, Option<String>, Option<String>);

/// The event bits of `pg_trigger.tgtype`: `INSERT`, `DELETE`, `UPDATE`.
const WRITE_EVENTS: i32 = 4 | 8 | 16;

/// One way the installed support schema differs from what this crate installs: the object and
/// what is wrong with it.
pub(crate) type SupportProblem = (String, String);

/// Whether tenant bindings must be signed in this database (see
/// [`ENABLE_SIGNED_BINDINGS_SQL`](crate::schema::ENABLE_SIGNED_BINDINGS_SQL)), judged by which
/// pinned getters are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindingMode {
    /// `app.current_tenant_id()` reads the setting.
    Unsigned,
    /// `app.current_tenant_id()` counts the setting only under a proof that `app.bind` made.
    Signed,
}

/// The differences of one installed function from `pinned`.
fn function_problems(row: &PgRow, pinned: &PinnedFunction) -> Result<Vec<String>, RlsError> {
    let mut problems = Vec::new();
    let mut wrong = |what: &str| problems.push(what.to_owned());
    if row.try_get::<String, _>(1)? != pinned.body {
        wrong("its definition differs from the one this crate installs");
    }
    if row.try_get::<String, _>(2)? != pinned.language {
        wrong("its language differs");
    }
    let volatility: String = row.try_get(3)?;
    if volatility == "i" {
        wrong(
            "it is IMMUTABLE (a cached plan could carry one tenant's answer into another's transaction)",
        );
    } else if volatility != pinned.volatility {
        wrong("its volatility differs");
    }
    if row.try_get::<String, _>(4)? != pinned.returns {
        wrong("its return type differs");
    }
    if row.try_get::<bool, _>(5)? != pinned.definer {
        wrong(if pinned.definer {
            "it is not SECURITY DEFINER"
        } else {
            "it is SECURITY DEFINER (it must be SECURITY INVOKER)"
        });
    }
    if row.try_get::<String, _>(6)? != pinned.config {
        wrong("its SET clauses differ");
    }
    if row.try_get::<bool, _>(7)? {
        wrong("it returns a set");
    }
    if !row.try_get::<bool, _>(8)? {
        wrong("it is not owned by the owner of schema app");
    }
    Ok(problems)
}

/// Every difference between the installed support functions and binding triggers and what
/// [`SUPPORT_SQL`](crate::schema::SUPPORT_SQL) and
/// [`tenant_table_sql`](crate::schema::tenant_table_sql) install, and the binding mode.
pub(crate) async fn support_problems(
    conn: &mut PgConnection,
) -> Result<(Vec<SupportProblem>, BindingMode), RlsError> {
    let mut problems = Vec::new();
    let installed = sqlx::query(FUNCTIONS).fetch_all(&mut *conn).await?;
    let find = |signature: &str| {
        installed
            .iter()
            .find(|r| r.try_get::<String, _>(0).is_ok_and(|s| s == signature))
    };
    // The getters are pinned in one of two modes, the same for both.
    let mut mode = BindingMode::Unsigned;
    if let Some(row) = find(SIGNED_GETTERS[0].signature)
        && function_problems(row, &SIGNED_GETTERS[0])?.is_empty()
    {
        mode = BindingMode::Signed;
    }
    let mut enabled_pinned = false;
    for (i, unsigned) in PINNED_FUNCTIONS.iter().enumerate() {
        let pinned = match (mode, i) {
            (BindingMode::Signed, 0 | 1) => &SIGNED_GETTERS[i],
            _ => unsigned,
        };
        let Some(row) = find(pinned.signature) else {
            problems.push((pinned.signature.to_owned(), "missing".to_owned()));
            continue;
        };
        let wrong = function_problems(row, pinned)?;
        enabled_pinned |= pinned.signature == "app.signed_bindings_enabled()" && wrong.is_empty();
        problems.extend(
            wrong
                .into_iter()
                .map(|what| (pinned.signature.to_owned(), what)),
        );
    }
    // The getters must match whether a key is active: an owner-level mistake that installed
    // the reading getters while keys exist would silently turn signing off.
    if enabled_pinned {
        let enabled: bool = sqlx::query_scalar("SELECT app.signed_bindings_enabled()")
            .fetch_one(&mut *conn)
            .await?;
        if enabled != (mode == BindingMode::Signed) {
            problems.push((
                "app.current_tenant_id()".to_owned(),
                if enabled {
                    "signed bindings are enabled but the getters read the plain setting".to_owned()
                } else {
                    "the getters expect signed bindings but no key is active".to_owned()
                },
            ));
        }
    }
    if installed.is_empty() {
        return Ok((problems, mode));
    }
    let expected = expected_triggers();
    let names: Vec<&str> = expected.iter().map(|shape| shape.0).collect();
    let triggers = sqlx::query(TRIGGERS)
        .bind(&names)
        .fetch_all(&mut *conn)
        .await?;
    let mut tables: Vec<String> = Vec::new();
    let mut present: Vec<(String, String)> = Vec::new();
    // Each table's binding check and the writes it fires on.
    let mut checked: Vec<(String, i32)> = Vec::new();
    for row in &triggers {
        let table: String = row.try_get(0)?;
        if !tables.contains(&table) {
            tables.push(table.clone());
        }
        let Some(name) = row.try_get::<Option<String>, _>(1)? else {
            continue;
        };
        present.push((table.clone(), name.clone()));
        let mut wrong = |what: String| problems.push((table.clone(), what));
        let function: String = row.try_get(10)?;
        let Some(&(_, bits, deferred, runs, old, new)) =
            expected.iter().find(|shape| shape.0 == name)
        else {
            wrong(format!(
                "trigger {name} runs {function} but is not one of rls-guard's triggers"
            ));
            continue;
        };
        if function != runs {
            wrong(format!("trigger {name} runs {function}, not {runs}"));
        }
        let fired: i32 = row.try_get(2)?;
        // The binding check may fire on a part of the writes (the rest are judged below by who
        // may make them); at the same time, on nothing else.
        let shape_ok = if name == BINDING_TRIGGER {
            fired & !WRITE_EVENTS == bits & !WRITE_EVENTS && fired & WRITE_EVENTS != 0
        } else {
            fired == bits
        };
        if !shape_ok {
            wrong(format!(
                "trigger {name} fires on other events or at another time"
            ));
        }
        if name == BINDING_TRIGGER {
            checked.push((table.clone(), fired & WRITE_EVENTS));
        }
        let constraint = row.try_get::<bool, _>(3)? && row.try_get::<bool, _>(4)?;
        if deferred && !(constraint && row.try_get::<bool, _>(5)?) {
            wrong(format!(
                "trigger {name} is not a DEFERRABLE INITIALLY DEFERRED constraint trigger"
            ));
        }
        if !deferred && row.try_get::<bool, _>(4)? {
            wrong(format!("trigger {name} is deferrable"));
        }
        if row.try_get::<bool, _>(6)? {
            wrong(format!("trigger {name} has a WHEN clause"));
        }
        if row.try_get::<i32, _>(7)? != 0 {
            wrong(format!("trigger {name} has a column list"));
        }
        let enabled: String = row.try_get(8)?;
        if !matches!(enabled.as_str(), "O" | "A") {
            wrong(format!("trigger {name} is disabled (enabled = {enabled})"));
        }
        if row.try_get::<i32, _>(9)? != 0 {
            wrong(format!("trigger {name} has arguments"));
        }
        if row.try_get::<String, _>(11)? != old || row.try_get::<String, _>(12)? != new {
            wrong(format!("trigger {name} has other transition tables"));
        }
    }
    // The writes each table's binding check leaves out, and who may make them anyway.
    let partial: Vec<&str> = checked
        .iter()
        .filter(|(_, events)| *events != WRITE_EVENTS)
        .map(|(table, _)| table.as_str())
        .collect();
    let writers: Vec<WritersRow> = if partial.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(WRITERS)
            .bind(&partial)
            .fetch_all(&mut *conn)
            .await?
    };
    for table in tables {
        let Some(&(_, events)) = checked.iter().find(|(t, _)| *t == table) else {
            // No binding check at all: every trigger is missing.
            for name in &names {
                if !present.iter().any(|(t, n)| *t == table && n == name) {
                    problems.push((
                        table.clone(),
                        format!("no {name} trigger (run schema::tenant_table_sql)"),
                    ));
                }
            }
            continue;
        };
        let who = writers.iter().find(|w| w.0 == table);
        if events != WRITE_EVENTS && who.is_none() {
            // Not judged (renamed or dropped between the two queries): refused, never passed.
            problems.push((
                table.clone(),
                format!(
                    "trigger {BINDING_TRIGGER} checks a part of the writes, and who may make \
                     the others could not be read"
                ),
            ));
            continue;
        }
        for write in Write::ALL {
            if events & write.trigger_bit() != 0 {
                let record = RECORD_TRIGGERS
                    .iter()
                    .find(|(_, event, _)| *event == write.keyword())
                    .map_or("", |(name, ..)| *name);
                if !present.iter().any(|(t, n)| *t == table && n == record) {
                    problems.push((
                        table.clone(),
                        format!("no {record} trigger (run schema::tenant_table_sql)"),
                    ));
                }
                continue;
            }
            let writer = who.and_then(|w| match write {
                Write::Insert => w.1.as_ref(),
                Write::Update => w.2.as_ref(),
                Write::Delete => w.3.as_ref(),
            });
            if let Some(role) = writer {
                problems.push((
                    table.clone(),
                    format!(
                        "trigger {BINDING_TRIGGER} does not check {}, which role {role} may do \
                         (run schema::tenant_table_sql)",
                        write.keyword()
                    ),
                ));
            }
        }
    }
    // A partition written directly: its partitioned table's record of writes never sees it.
    let direct: Vec<(String, String)> = sqlx::query_as(PARTITION_WRITERS)
        .fetch_all(&mut *conn)
        .await?;
    for (partition, role) in direct {
        problems.push((
            partition,
            format!(
                "role {role} may write this partition directly, past the record of writes kept \
                 on its partitioned table (grant writes on the partitioned table only)"
            ),
        ));
    }
    Ok((problems, mode))
}

/// Checks that [`SUPPORT_SQL`](crate::schema::SUPPORT_SQL) is installed exactly as this
/// version of the crate installs it (each function's definition, language, volatility, return
/// type, SECURITY INVOKER, no `SET` clauses, owned by the owner of schema `app`), and that
/// every table with a `tenant_id` column has the binding-check trigger in exactly the shape
/// [`tenant_table_sql`](crate::schema::tenant_table_sql) creates (a deferred constraint trigger
/// for INSERT, UPDATE and DELETE, no `WHEN` clause, no column list, enabled), with its recording
/// triggers. A check made by
/// [`tenant_table_sql_for`](crate::schema::tenant_table_sql_for) for a part of the writes
/// passes only while no role other than the table's owner, a member of it or a superuser holds
/// the privilege to make one of the others (by any grant, membership or `PUBLIC`, or through a
/// foreign key whose referential action writes the table when the parent is written).
///
/// # Errors
/// [`RlsError::SupportSchemaMissing`] when the functions are absent,
/// [`RlsError::SupportSchemaMismatch`] naming every difference, or [`RlsError::Database`] when
/// the check cannot run.
pub async fn verify_support_schema(conn: &mut PgConnection) -> Result<(), RlsError> {
    verify_support_schema_mode(conn).await.map(drop)
}

/// [`verify_support_schema`], returning the binding mode it found.
pub(crate) async fn verify_support_schema_mode(
    conn: &mut PgConnection,
) -> Result<BindingMode, RlsError> {
    let (problems, mode) = support_problems(conn).await?;
    if problems.is_empty() {
        return Ok(mode);
    }
    if problems.len() >= PINNED_FUNCTIONS.len()
        && problems[..PINNED_FUNCTIONS.len()]
            .iter()
            .all(|(_, what)| what == "missing")
    {
        return Err(RlsError::SupportSchemaMissing);
    }
    Err(RlsError::SupportSchemaMismatch(
        problems
            .into_iter()
            .map(|(object, what)| format!("{object}: {what}"))
            .collect(),
    ))
}
