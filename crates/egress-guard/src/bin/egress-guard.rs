//! `egress-guard check <url> [--policy file.json]`: prints the decision as JSON.
//! Exit status: 0 allowed, 1 denied, 2 usage or policy error.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool prints.

use std::process::ExitCode;

use egress_guard::EgressPolicy;

const USAGE: &str = "usage: egress-guard check <url> [--policy policy.json]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, policy_path) = match args.as_slice() {
        [cmd, url] if cmd == "check" => (url, None),
        [cmd, url, flag, path] if cmd == "check" && flag == "--policy" => (url, Some(path)),
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let policy = match policy_path {
        None => EgressPolicy::new("default"),
        Some(path) => match std::fs::read_to_string(path)
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
    let decision = policy.check_url(url);
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
