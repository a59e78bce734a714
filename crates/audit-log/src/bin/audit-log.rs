//! `audit-log verify | export | sequence | verify-export`
//!
//! Exit status: 0 success (for `verify`/`verify-export`: the chain is intact), 1 the chain is
//! broken, 2 the command could not run (a chain that cannot be read is never reported intact).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool prints.

use std::io::{BufReader, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use audit_log::{
    Action, AuditQuery, Checkpoint, CheckpointKey, Sequencer, TrustedKeys, VerifyReport,
    export_csv, export_jsonl, verify, verify_export,
};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tenant_scope::TenantId;

/// Verify and export tenants' audit chains.
#[derive(Parser)]
#[command(
    name = "audit-log",
    version,
    after_help = "Exit status: 0 intact / done, 1 chain broken, 2 could not run (or a usage error)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verifies a tenant's chain in the database.
    Verify {
        #[command(flatten)]
        db: Database,
        #[command(flatten)]
        trust: Trust,
    },
    /// Exports a tenant's chain (or a filtered part of it).
    Export {
        #[command(flatten)]
        db: Database,
        /// The output format.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Write to FILE instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<String>,
        /// Only events by this actor.
        #[arg(long, value_name = "UUID")]
        actor: Option<uuid::Uuid>,
        /// Only events with this action.
        #[arg(long, value_name = "NAME", value_parser = parse_action)]
        action: Option<Action>,
        /// Only events at or after this time.
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        since: Option<time::OffsetDateTime>,
        /// Only events before this time.
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        until: Option<time::OffsetDateTime>,
    },
    /// Chains queued events: one pass over the queue with `--once`, else runs until
    /// interrupted (woken by notifications, polling besides).
    Sequence {
        /// PostgreSQL URL of the sequencer role (EXECUTE on audit.sequence only).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The most events one transaction chains.
        #[arg(long, default_value_t = 5_000)]
        batch: u32,
        /// Drain the queue once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Verifies an exported chain offline.
    VerifyExport {
        /// The export (JSON lines).
        file: String,
        #[command(flatten)]
        trust: Trust,
    },
}

#[derive(clap::Args)]
struct Database {
    /// PostgreSQL URL; a role with SELECT on audit.*.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The tenant whose chain to read.
    #[arg(long, value_name = "UUID")]
    tenant: TenantId,
}

#[derive(clap::Args)]
struct Trust {
    /// Trust checkpoints signed by this Ed25519 public key (repeatable).
    #[arg(long = "key", value_name = "ID=HEX", value_parser = parse_key)]
    keys: Vec<CheckpointKey>,
    /// JSON lines of checkpoints kept outside the database.
    #[arg(long, value_name = "FILE")]
    checkpoints: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl Trust {
    fn keys(&self) -> TrustedKeys {
        self.keys
            .iter()
            .cloned()
            .fold(TrustedKeys::default(), TrustedKeys::with)
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>, String> {
        let Some(path) = &self.checkpoints else {
            return Ok(Vec::new());
        };
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|_| format!("{path}: not a checkpoint line"))
            })
            .collect()
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Jsonl,
    Csv,
}

fn parse_key(value: &str) -> Result<CheckpointKey, String> {
    let (id, hex) = value.split_once('=').ok_or("takes ID=HEX")?;
    CheckpointKey::from_hex(id, hex).map_err(|e| e.to_string())
}

fn parse_action(value: &str) -> Result<Action, String> {
    value.parse().map_err(|_| "invalid action name".to_owned())
}

fn parse_time(value: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("`{value}` is not an RFC 3339 time"))
}

/// Events waiting this long for the sequencer are reported as a finding.
const STALE_PENDING: std::time::Duration = std::time::Duration::from_secs(60);

fn print_report(report: &VerifyReport, json: bool) {
    let pending_age = report.pending_age(time::OffsetDateTime::now_utc());
    if json {
        let value = serde_json::json!({
            "tenant": report.tenant.to_string(),
            "intact": report.is_intact(),
            "base_seq": report.base_seq,
            "last_seq": report.last_seq,
            "events": report.events,
            "checkpoints": report.checkpoints,
            "unanchored": report.unanchored(),
            "pending": report.pending,
            "oldest_pending_age_secs": report.oldest_pending.map(|_| pending_age.as_secs_f64()),
            "rejected_checkpoints": report.rejected_checkpoints.iter().map(|c| c.seq).collect::<Vec<_>>(),
            "break": report.result.as_ref().err().map(|b| serde_json::json!({
                "seq": b.seq, "kind": format!("{:?}", b.kind), "message": b.to_string(),
            })),
        });
        println!("{value}");
    } else {
        match &report.result {
            Ok(()) => println!(
                "audit-log: tenant {} {}: events {}..={} ({} checked, {} trusted checkpoints)",
                report.tenant,
                if report.is_intact() {
                    "intact"
                } else {
                    "chain verifies"
                },
                report.base_seq + 1,
                report.last_seq,
                report.events,
                report.checkpoints
            ),
            Err(b) => println!("audit-log: tenant {}: {b}", report.tenant),
        }
        for c in &report.rejected_checkpoints {
            println!(
                "audit-log: checkpoint at seq {} (key `{}`) is not signed by a trusted key: not intact",
                c.seq, c.key_id
            );
        }
        if report.pending > 0 {
            let stale = if pending_age >= STALE_PENDING {
                ": the sequencer is not running or cannot chain them (finding)"
            } else {
                ""
            };
            println!(
                "audit-log: {} {} not yet chained, the oldest queued {:.1} s ago{stale}",
                report.pending,
                if report.pending == 1 {
                    "event"
                } else {
                    "events"
                },
                pending_age.as_secs_f64(),
            );
        }
        let unanchored = report.unanchored();
        if unanchored > 0 {
            println!(
                "audit-log: warning: the last {unanchored} events are after the newest trusted \
                 checkpoint: an owner could rewrite them unnoticed (checkpoint and export more often)"
            );
        }
    }
}

async fn connect(db: &Database) -> Result<sqlx::PgPool, String> {
    connect_url(&db.database_url, 1).await
}

async fn connect_url(url: &str, connections: u32) -> Result<sqlx::PgPool, String> {
    let options: PgConnectOptions = url.parse().map_err(|_| "invalid database URL")?;
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options.disable_statement_logging())
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

async fn run(command: Command) -> Result<bool, String> {
    match command {
        Command::Sequence {
            database_url,
            batch,
            once,
        } => {
            let pool = connect_url(&database_url, 2).await?;
            let sequencer = Sequencer::new(pool).with_batch_size(batch);
            if once {
                let chained = sequencer.drain().await.map_err(|e| e.to_string())?;
                eprintln!("audit-log: chained {chained} events");
                return Ok(true);
            }
            let running = sequencer.spawn();
            tokio::signal::ctrl_c()
                .await
                .map_err(|e| format!("cannot wait for the interrupt: {e}"))?;
            running.stop().await.map_err(|e| e.to_string())?;
            Ok(true)
        }
        Command::VerifyExport { file, trust } => {
            let reader = std::fs::File::open(&file).map_err(|e| format!("{file}: {e}"))?;
            let report =
                verify_export(BufReader::new(reader), &trust.keys(), &trust.checkpoints()?)
                    .map_err(|e| e.to_string())?;
            print_report(&report, trust.json);
            Ok(report.is_intact())
        }
        Command::Verify { db, trust } => {
            let checkpoints = trust.checkpoints()?;
            let pool = connect(&db).await?;
            let report = verify(&pool, db.tenant, &trust.keys(), &checkpoints)
                .await
                .map_err(|e| e.to_string())?;
            print_report(&report, trust.json);
            Ok(report.is_intact())
        }
        Command::Export {
            db,
            format,
            output,
            actor,
            action,
            since,
            until,
        } => {
            let pool = connect(&db).await?;
            let mut query = AuditQuery::new(db.tenant);
            if let Some(actor) = actor {
                query = query.with_actor(actor);
            }
            if let Some(action) = &action {
                query = query.with_action(action);
            }
            if let Some(since) = since {
                query = query.since(since);
            }
            if let Some(until) = until {
                query = query.until(until);
            }
            let out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let summary = match format {
                Format::Jsonl => export_jsonl(&pool, &query, out).await,
                Format::Csv => export_csv(&pool, &query, out).await,
            }
            .map_err(|e| e.to_string())?;
            eprintln!(
                "audit-log: exported {} events, {} checkpoints",
                summary.events, summary.checkpoints
            );
            Ok(true)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // A usage error exits with 2, `--help` and `--version` with 0 (clap's own exit codes).
    match run(Cli::parse().command).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("audit-log: could not run: {message}");
            ExitCode::from(2)
        }
    }
}
