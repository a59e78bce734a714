//! Thin safe wrappers around the raw system calls the parent side of a run makes: probing
//! support, the subreaper flag, pipes and the socket pair to the child, receiving the egress
//! proxy's listener from the child's network namespace, signalling and waiting for children.
//!
//! With [`child`](super::child), the only modules of `process` allowed `unsafe`; every other
//! submodule forbids it. Each wrapper takes and returns plain integers or owned values, so
//! callers cannot pass a dangling pointer: the pointers given to the kernel here point to
//! locals of the wrapper that outlive the call, and file descriptors wrapped in `OwnedFd`
//! were just returned by the kernel and are owned by nothing else.
#![allow(unsafe_code)] // Raw system calls: prctl, seccomp, landlock_create_ruleset, clone, pipe2, socketpair, recvmsg, kill, waitpid, waitid.

use std::ffi::c_int;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::PROXY_ADDR;

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

/// Receives the proxy's listener the namespaced child sent with `send_fd` (already queued:
/// the child has exited or exec'd the tool), and checks it is a listener on [`PROXY_ADDR`].
pub(super) fn receive_listener(channel: &OwnedFd) -> io::Result<std::net::TcpListener> {
    let mut byte = [0u8; 1];
    let mut control = [0u64; 4];
    // SAFETY: as in `send_fd`, every pointer refers to a live stack buffer of the stated
    // size; recvmsg writes within them; MSG_CMSG_CLOEXEC marks the received fd CLOEXEC.
    let (rc, msg) = unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        let rc = libc::recvmsg(
            channel.as_raw_fd(),
            &raw mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        );
        (rc, msg)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `msg` was filled in by recvmsg and its control pointer still refers to
    // `control`; CMSG_FIRSTHDR checks the length before returning a header.
    let fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            || (*cmsg).cmsg_len as usize != libc::CMSG_LEN(size_of::<c_int>() as u32) as usize
            || msg.msg_flags & libc::MSG_CTRUNC != 0
        {
            return Err(io::Error::other("no listener received from the sandbox"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>());
        // SAFETY (nested): the kernel installed this fd for us in this call; nobody else
        // owns it.
        OwnedFd::from_raw_fd(fd)
    };
    let listener = std::net::TcpListener::from(fd);
    match listener.local_addr() {
        Ok(std::net::SocketAddr::V4(addr)) if addr == PROXY_ADDR => Ok(listener),
        _ => Err(io::Error::other("the sandbox sent an unexpected socket")),
    }
}

/// A connected pair of datagram UNIX sockets (CLOEXEC).
pub(super) fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: socketpair writes two fds into a valid array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two fds into a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Views seccompiler's filter instructions as libc's.
#[cfg(test)]
pub(super) fn as_libc(prog: &[seccompiler::sock_filter]) -> &[libc::sock_filter] {
    // SAFETY: `seccompiler::sock_filter` is `#[repr(C)]` with the same fields, size
    // and alignment as `libc::sock_filter` (the kernel's layout).
    unsafe { std::slice::from_raw_parts(prog.as_ptr().cast(), prog.len()) }
}
