//! Process groups: the subreaper flag, killing a run's group and reaping its members.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::OnceLock;

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions};

use super::{REAP_LIMIT, SandboxError};

static SUBREAPER: OnceLock<io::Result<()>> = OnceLock::new();

/// Reparents orphaned descendants to this process so that killed ones are reaped here.
pub(super) fn become_subreaper() -> Result<(), SandboxError> {
    // `prctl(PR_SET_CHILD_SUBREAPER, 1)`: rustix takes the flag as a pid, any non-zero one.
    let res = SUBREAPER.get_or_init(|| {
        rustix::process::set_child_subreaper(Pid::from_raw(1)).map_err(io::Error::from)
    });
    match res {
        Ok(()) => Ok(()),
        Err(e) => Err(SandboxError::Io(io::Error::new(e.kind(), e.to_string()))),
    }
}

/// A pid or process group id this process got from the kernel (positive).
fn pid(raw: i32) -> io::Result<Pid> {
    if raw > 0 {
        Pid::from_raw(raw).ok_or_else(|| io::Error::from(Errno::SRCH))
    } else {
        Err(io::Error::from(Errno::SRCH))
    }
}

/// Reaps our child `pid` (blocking until it has exited) and returns its status.
pub(super) fn reap_pid(raw: i32) -> io::Result<ExitStatus> {
    let child = pid(raw)?;
    loop {
        match rustix::process::waitpid(Some(child), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(ExitStatus::from_raw(status.as_raw())),
            Ok(None) => return Err(io::Error::from(Errno::CHILD)),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `kill(pid, SIGKILL)`. The caller makes sure the pid is still its own: an unreaped child.
pub(super) fn kill(raw: i32) {
    if let Ok(child) = pid(raw) {
        let _ = rustix::process::kill_process(child, Signal::KILL);
    }
}

/// `kill(-pgid, SIGKILL)`.
pub(super) fn killpg(pgid: i32) {
    // The group id cannot have been reused: the leader is not reaped yet (or the group
    // was already killed, see `Group`).
    if let Ok(group) = pid(pgid) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
}

/// Blocks until the leader has exited, without reaping it (the pid stays reserved).
pub(super) fn wait_exit_nowait(raw: i32) {
    let Ok(leader) = pid(raw) else {
        return;
    };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    while let Err(Errno::INTR) = rustix::process::waitid(WaitId::Pid(leader), options) {}
}

/// Reaps one exited member of group `pgid`. `Some(true)`: reaped or none exited yet but
/// some remain (see `block`); `None`: no child left in the group.
fn reap_group_once(pgid: i32, block: bool) -> Option<bool> {
    let group = pid(pgid).ok()?;
    let options = if block {
        WaitIdOptions::EXITED
    } else {
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG
    };
    match rustix::process::waitid(WaitId::Pgid(Some(group)), options) {
        Ok(reaped) => Some(reaped.is_some()),
        Err(Errno::INTR) => Some(false),
        Err(_) => None,
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
