//! Process groups: the subreaper flag, killing a run's group and reaping its members.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;

use super::sys;
use super::{REAP_LIMIT, SandboxError};

static SUBREAPER: OnceLock<io::Result<()>> = OnceLock::new();

/// Reparents orphaned descendants to this process so that killed ones are reaped here.
pub(super) fn become_subreaper() -> Result<(), SandboxError> {
    let res = SUBREAPER.get_or_init(sys::set_child_subreaper);
    match res {
        Ok(()) => Ok(()),
        Err(e) => Err(SandboxError::Io(io::Error::new(e.kind(), e.to_string()))),
    }
}

/// Reaps our child `pid` (blocking until it has exited) and returns its status.
pub(super) fn reap_pid(pid: i32) -> io::Result<ExitStatus> {
    loop {
        let (rc, status) = sys::waitpid(pid);
        if rc == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub(super) fn killpg(pgid: i32) {
    // The group id cannot have been reused: the leader is not reaped yet (or the group
    // was already killed, see `Group`).
    sys::kill_now(-pgid);
}

/// Blocks until the leader has exited, without reaping it (the pid stays reserved).
pub(super) fn wait_exit_nowait(pid: i32) {
    loop {
        let (rc, _) = sys::waitid(libc::P_PID, pid, libc::WEXITED | libc::WNOWAIT);
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Reaps one exited member of group `pgid`. `Some(true)`: reaped or none exited yet but
/// some remain (see `block`); `None`: no child left in the group.
fn reap_group_once(pgid: i32, block: bool) -> Option<bool> {
    let flags = if block {
        libc::WEXITED
    } else {
        libc::WEXITED | libc::WNOHANG
    };
    let (rc, reaped) = sys::waitid(libc::P_PGID, pgid, flags);
    if rc == 0 {
        Some(reaped)
    } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
        Some(false)
    } else {
        None
    }
}

/// Reaps every member of the (killed) group that was re-parented to this process.
/// Every live member has a chain of live-or-zombie ancestors ending in a child of this
/// subreaper, so "no child in the group" means the group is gone.
pub(super) async fn reap_group(pgid: i32) {
    loop {
        match reap_group_once(pgid, false) {
            None => return,
            Some(true) => {}
            Some(false) => break,
        }
    }
    let blocking =
        tokio::task::spawn_blocking(move || while reap_group_once(pgid, true).is_some() {});
    if tokio::time::timeout(REAP_LIMIT, blocking).await.is_err() {
        tracing::warn!(
            pgid,
            "sandboxed process group not reaped in time; left to a thread"
        );
    }
}

/// Kills the group when `run` ends early (cancelled) and reaps it in the background.
pub(super) struct Group {
    pub(super) pgid: i32,
    pub(super) killed: bool,
    pub(super) done: bool,
}

impl Group {
    pub(super) fn kill(&mut self) {
        if !self.killed {
            killpg(self.pgid);
            self.killed = true;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.kill();
        let pgid = self.pgid;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            drop(handle.spawn_blocking(move || while reap_group_once(pgid, true).is_some() {}));
        }
    }
}
