//! The two places testkit needs a raw syscall: making the server die with the test process, and
//! stopping the shared server when the test binary exits (statics are never dropped).
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the spawned process receive SIGQUIT (PostgreSQL's immediate shutdown) when the thread
/// that spawned it dies — the test process crashing or being killed included.
pub(crate) fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec; it only calls prctl(2) through
    // nix, which is async-signal-safe, allocates nothing and touches no locks.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGQUIT)
                .map_err(std::io::Error::from)
        });
    }
}

/// Runs `hook` when the process exits normally (libtest returns from `main` or calls `exit`,
/// also after tests panicked), so the shared server is stopped and its directory removed.
pub(crate) fn run_at_exit(hook: extern "C" fn()) {
    // SAFETY: `atexit` only stores the function pointer; `hook` is a plain `extern "C" fn`
    // that catches its own panics, as unwinding out of an atexit handler would be undefined.
    let rc = unsafe { libc::atexit(hook) };
    if rc != 0 {
        tracing_free_warn(
            "testkit: could not register the exit hook; the server is still killed with the process",
        );
    }
}

fn tracing_free_warn(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}
