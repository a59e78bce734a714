//! `rls-guard check --database-url URL [--runtime-role ROLE] [--json]`
//!
//! Prints the schema coverage findings. Exit status: 0 clean, 1 findings, 2 the check could not
//! run (a check that cannot be evaluated is never reported as clean).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool prints.

use std::process::ExitCode;

use rls_guard::CoverageCheck;
use sqlx::{ConnectOptions, postgres::PgConnectOptions};

const USAGE: &str = "usage: rls-guard check [--database-url URL] [--runtime-role ROLE] [--json]
  --database-url URL   PostgreSQL URL (default: $DATABASE_URL)
  --runtime-role ROLE  judge function privileges for this role (default: the connected role)
  --json               print findings as JSON";

struct Args {
    url: String,
    runtime_role: Option<String>,
    json: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    match args.next().as_deref() {
        Some("check") => {}
        Some("-h" | "--help") => return Err("help".into()),
        _ => return Err("expected the `check` command".into()),
    }
    let mut url = std::env::var("DATABASE_URL").ok();
    let mut runtime_role = None;
    let mut json = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--database-url" => url = Some(args.next().ok_or("--database-url needs a value")?),
            "--runtime-role" => {
                runtime_role = Some(args.next().ok_or("--runtime-role needs a value")?);
            }
            "--json" => json = true,
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let url = url.ok_or("no database: pass --database-url or set DATABASE_URL")?;
    Ok(Args {
        url,
        runtime_role,
        json,
    })
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
            eprintln!("rls-guard: {message}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
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
        .url
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
