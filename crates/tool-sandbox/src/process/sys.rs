//! Thin safe wrappers around the raw system calls the parent side of a run makes (probing
//! support, the subreaper flag, signalling and waiting for children).
//!
//! With [`child`](super::child), the only modules of `process` allowed `unsafe`; every other
//! submodule forbids it. Each wrapper takes and returns plain integers or owned values, so
//! callers cannot pass a dangling pointer: the pointers given to the kernel here point to
//! locals of the wrapper that outlive the call.
#![allow(unsafe_code)] // Raw system calls: prctl, seccomp, landlock_create_ruleset, clone, kill, waitpid, waitid.

use std::ffi::c_int;
use std::io;

/// The kernel's Landlock ABI version (`landlock_create_ruleset` with
/// `LANDLOCK_CREATE_RULESET_VERSION`); negative when Landlock is unsupported or disabled.
pub(super) fn landlock_abi() -> i64 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attr and size 0 only queries the
    // ABI version; no memory is read or written.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    }
}

/// Whether the kernel has seccomp filters and the `SECCOMP_RET_ERRNO` action.
pub(super) fn seccomp_filter_available() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointers; it returns the mode or fails with EINVAL
    // when the kernel lacks seccomp.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    if mode < 0 {
        return false;
    }
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from a valid pointer (a local that
    // outlives the call).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0u32,
            &raw const action,
        )
    };
    rc == 0
}

/// Forks (raw `clone(SIGCHLD)`, no atfork handlers) a child that switches to `ids` (uid,
/// gid; groups dropped) when given, then exits 0 if `unshare(flags)` succeeds, 1 otherwise.
/// Returns the child's pid (to reap), or a negative value when the fork failed.
pub(super) fn probe_unshare(ids: Option<(u32, u32)>, flags: c_int) -> libc::c_long {
    // SAFETY: fork(2) without glibc's atfork handlers; the child only makes raw system
    // calls on its own copy of memory and exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_long::from(libc::SIGCHLD),
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if pid == 0 {
        // SAFETY: integer-only system calls, then _exit.
        unsafe {
            if let Some((uid, gid)) = ids {
                let dropped = libc::syscall(
                    libc::SYS_setgroups,
                    0 as libc::c_long,
                    std::ptr::null::<libc::gid_t>(),
                ) == 0
                    && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
                    && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
                if !dropped {
                    libc::_exit(1);
                }
            }
            libc::_exit(i32::from(libc::unshare(flags) != 0));
        }
    }
    pid
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
pub(super) fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag, no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `kill(pid, SIGKILL)`; a negative `pid` is a process group. The caller makes sure the
/// (group) id is still its own: an unreaped child, or a group whose leader is unreaped.
pub(super) fn kill_now(pid: i32) {
    // SAFETY: kill(2) takes integers only; no memory involved.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// `waitpid(pid, &status, 0)`: the return value and the status.
pub(super) fn waitpid(pid: i32) -> (i32, c_int) {
    let mut status: c_int = 0;
    // SAFETY: waitpid writes one int to a valid pointer (a local that outlives the call).
    let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    (rc, status)
}

/// `waitid(idtype, id, flags)`: the return value and whether a child was reported
/// (`si_pid != 0`).
pub(super) fn waitid(idtype: libc::idtype_t, id: i32, flags: c_int) -> (c_int, bool) {
    // SAFETY: `info` is a zeroed siginfo_t (all-zero is a valid value) the kernel writes
    // to; it is a local that outlives the call, and `si_pid` reads a field of it.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(idtype, id.unsigned_abs(), &raw mut info, flags);
        (rc, info.si_pid() != 0)
    }
}

/// Views seccompiler's filter instructions as libc's.
#[cfg(test)]
pub(super) fn as_libc(prog: &[seccompiler::sock_filter]) -> &[libc::sock_filter] {
    // SAFETY: `seccompiler::sock_filter` is `#[repr(C)]` with the same fields, size
    // and alignment as `libc::sock_filter` (the kernel's layout).
    unsafe { std::slice::from_raw_parts(prog.as_ptr().cast(), prog.len()) }
}
