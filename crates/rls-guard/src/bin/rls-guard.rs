//! `rls-guard check --database-url URL [--runtime-role ROLE] [--json]`
//!
//! Prints the schema coverage findings. Exit status: 0 clean, 1 findings, 2 the check could not
//! run (a check that cannot be evaluated is never reported as clean).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool prints.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rls_guard::CoverageCheck;
use sqlx::{ConnectOptions, postgres::PgConnectOptions};

/// Row-level security coverage for a PostgreSQL schema.
#[derive(Parser)]
#[command(
    name = "rls-guard",
    version,
    after_help = "Exit status: 0 no findings, 1 findings, 2 the check could not run (or a usage error)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the schema coverage findings.
    Check(Args),
}

#[derive(clap::Args)]
struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Judge function privileges for this role (default: the connected role).
    #[arg(long)]
    runtime_role: Option<String>,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // A usage error exits with 2, `--help` and `--version` with 0 (clap's own exit codes).
    let Command::Check(args) = Cli::parse().command;
    match run(&args).await {
        Ok(0) => {
            if !args.json {
                println!("rls-guard: no findings");
            }
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::from(1),
        Err(message) => {
            eprintln!("rls-guard: check could not run: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> Result<usize, String> {
    let options: PgConnectOptions = args
        .database_url
        .parse()
        .map_err(|e| format!("bad database URL: {e}"))?;
    let mut conn = options
        .disable_statement_logging()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut check = CoverageCheck::new();
    if let Some(role) = &args.runtime_role {
        check = check.runtime_role(role);
    }
    let findings = check.run(&mut conn).await.map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&findings).map_err(|e| e.to_string())?
        );
    } else {
        for finding in &findings {
            println!("{finding}");
        }
    }
    Ok(findings.len())
}
