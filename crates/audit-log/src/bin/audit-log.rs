//! `audit-log verify | export | verify-export`
//!
//! Exit status: 0 success (for `verify`/`verify-export`: the chain is intact), 1 the chain is
//! broken, 2 the command could not run (a chain that cannot be read is never reported intact).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool prints.

use std::io::{BufReader, Write};
use std::process::ExitCode;

use audit_log::{
    Action, AuditQuery, Checkpoint, CheckpointKey, TrustedKeys, VerifyReport, export_csv,
    export_jsonl, verify, verify_export,
};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tenant_scope::TenantId;

const USAGE: &str = "usage:
  audit-log verify --tenant UUID [--database-url URL] [--key ID=HEX]... [--checkpoints FILE] [--json]
  audit-log export --tenant UUID [--database-url URL] [--format jsonl|csv] [--output FILE]
                   [--actor UUID] [--action NAME] [--since RFC3339] [--until RFC3339]
  audit-log verify-export FILE [--key ID=HEX]... [--checkpoints FILE] [--json]

  --database-url URL  PostgreSQL URL (default: $DATABASE_URL); a role with SELECT on audit.*
  --key ID=HEX        trust checkpoints signed by this Ed25519 public key (repeatable)
  --checkpoints FILE  JSON lines of checkpoints kept outside the database
exit status: 0 intact / done, 1 chain broken, 2 could not run";

#[derive(Default)]
struct Args {
    command: String,
    file: Option<String>,
    url: Option<String>,
    tenant: Option<TenantId>,
    keys: TrustedKeys,
    checkpoints: Vec<Checkpoint>,
    json: bool,
    format: Option<String>,
    output: Option<String>,
    actor: Option<uuid::Uuid>,
    action: Option<Action>,
    since: Option<time::OffsetDateTime>,
    until: Option<time::OffsetDateTime>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        url: std::env::var("DATABASE_URL").ok(),
        ..Args::default()
    };
    match args.next().as_deref() {
        Some(c @ ("verify" | "export")) => parsed.command = c.to_owned(),
        Some("verify-export") => {
            parsed.command = "verify-export".to_owned();
            parsed.file = Some(args.next().ok_or("verify-export needs a FILE")?);
        }
        Some("-h" | "--help") => return Err("help".into()),
        _ => return Err("expected `verify`, `export` or `verify-export`".into()),
    }
    let time = |v: String| {
        time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339)
            .map_err(|_| format!("`{v}` is not an RFC 3339 time"))
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--database-url" => parsed.url = Some(value()?),
            "--tenant" => {
                parsed.tenant = Some(value()?.parse().map_err(|_| "--tenant must be a UUID")?);
            }
            "--key" => {
                let v = value()?;
                let (id, hex) = v.split_once('=').ok_or("--key takes ID=HEX")?;
                let key = CheckpointKey::from_hex(id, hex).map_err(|e| format!("--key: {e}"))?;
                parsed.keys = std::mem::take(&mut parsed.keys).with(key);
            }
            "--checkpoints" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let cp: Checkpoint = serde_json::from_str(line)
                        .map_err(|_| format!("{path}: not a checkpoint line"))?;
                    parsed.checkpoints.push(cp);
                }
            }
            "--json" => parsed.json = true,
            "--format" => parsed.format = Some(value()?),
            "--output" => parsed.output = Some(value()?),
            "--actor" => {
                parsed.actor = Some(value()?.parse().map_err(|_| "--actor must be a UUID")?);
            }
            "--action" => {
                parsed.action = Some(value()?.parse().map_err(|_| "--action: invalid name")?);
            }
            "--since" => parsed.since = Some(time(value()?)?),
            "--until" => parsed.until = Some(time(value()?)?),
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if parsed.command != "verify-export" && parsed.tenant.is_none() {
        return Err("--tenant is required".into());
    }
    Ok(parsed)
}

fn print_report(report: &VerifyReport, json: bool) {
    if json {
        let value = serde_json::json!({
            "tenant": report.tenant.to_string(),
            "intact": report.is_intact(),
            "base_seq": report.base_seq,
            "last_seq": report.last_seq,
            "events": report.events,
            "checkpoints": report.checkpoints,
            "unanchored": report.unanchored(),
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
        let unanchored = report.unanchored();
        if unanchored > 0 {
            println!(
                "audit-log: warning: the last {unanchored} events are after the newest trusted \
                 checkpoint: an owner could rewrite them unnoticed (checkpoint and export more often)"
            );
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    if args.command == "verify-export" {
        let path = args.file.as_deref().unwrap_or_default();
        let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let report = verify_export(BufReader::new(file), &args.keys, &args.checkpoints)
            .map_err(|e| e.to_string())?;
        print_report(&report, args.json);
        return Ok(report.is_intact());
    }
    let url = args
        .url
        .ok_or("no database: pass --database-url or set DATABASE_URL")?;
    let options: PgConnectOptions = url.parse().map_err(|_| "invalid database URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options.disable_statement_logging())
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let tenant = args.tenant.ok_or("--tenant is required")?;
    if args.command == "verify" {
        let report = verify(&pool, tenant, &args.keys, &args.checkpoints)
            .await
            .map_err(|e| e.to_string())?;
        print_report(&report, args.json);
        return Ok(report.is_intact());
    }
    let mut query = AuditQuery::new(tenant);
    if let Some(actor) = args.actor {
        query = query.with_actor(actor);
    }
    if let Some(action) = &args.action {
        query = query.with_action(action);
    }
    if let Some(since) = args.since {
        query = query.since(since);
    }
    if let Some(until) = args.until {
        query = query.until(until);
    }
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let summary = match args.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => export_jsonl(&pool, &query, out).await,
        "csv" => export_csv(&pool, &query, out).await,
        other => return Err(format!("unknown format `{other}` (jsonl or csv)")),
    }
    .map_err(|e| e.to_string())?;
    eprintln!(
        "audit-log: exported {} events, {} checkpoints",
        summary.events, summary.checkpoints
    );
    Ok(true)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) if message == "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("audit-log: {message}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("audit-log: could not run: {message}");
            ExitCode::from(2)
        }
    }
}
