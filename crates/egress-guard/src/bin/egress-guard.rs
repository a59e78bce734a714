//! `egress-guard check <url> [--policy file.json]`: prints the decision as JSON.
//! Exit status: 0 allowed, 1 denied, 2 usage or policy error.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool prints.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use egress_guard::EgressPolicy;

/// Egress decisions: what a guarded client would do with a URL.
#[derive(Parser)]
#[command(
    name = "egress-guard",
    version,
    after_help = "Exit status: 0 allowed, 1 denied, 2 usage or policy error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the decision for URL as JSON.
    Check {
        /// The URL to judge.
        url: String,
        /// The policy (JSON); without one, the default policy (the floor only).
        #[arg(long, value_name = "FILE")]
        policy: Option<String>,
    },
}

fn main() -> ExitCode {
    // A usage error exits with 2, `--help` and `--version` with 0 (clap's own exit codes).
    let Command::Check { url, policy } = Cli::parse().command;
    let policy = match policy {
        None => EgressPolicy::new("default"),
        Some(path) => match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|s| s.parse::<EgressPolicy>().map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("egress-guard: cannot load policy {path}: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let decision = policy.check_url(&url);
    match serde_json::to_string_pretty(&decision) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("egress-guard: {e}");
            return ExitCode::from(2);
        }
    }
    if decision.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
