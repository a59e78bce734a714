//! Off Linux there is no seccomp, Landlock or `PR_SET_CHILD_SUBREAPER`, so the subprocess
//! sandbox cannot confine a tool: the attacks in `tests/process.rs` are Linux-only, and here the
//! one thing to prove is that a subprocess tool refuses to run instead of running unconfined.
#![cfg(not(target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use tool_sandbox::process::{SandboxError, SandboxedCommand, support};

#[tokio::test]
async fn subprocess_tools_refuse_to_run_unconfined() {
    println!(
        "skipping the Linux sandbox attacks: seccomp, Landlock and the subreaper are Linux-only; \
         checking that run() fails closed instead"
    );
    assert!(!support().seccomp);
    let refused = SandboxedCommand::new("/bin/echo").arg("hello").run().await;
    assert!(
        matches!(refused, Err(SandboxError::Unsupported)),
        "{refused:?}"
    );
}
