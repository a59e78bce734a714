//! Thin safe wrappers around the raw system calls of `process`: the only module of
//! `process` allowed `unsafe`; every other submodule `#![forbid(unsafe_code)]`. Each
//! `unsafe` block has a `SAFETY:` comment naming what it relies on.
//!
//! Grouped by topic:
//!
//! - **Probing and the parent side**: support probes, the subreaper flag, pipes and the
//!   socket pair to the child, receiving the egress proxy's listener, signalling and
//!   waiting for children.
//! - **The child, between `clone` and `execve`** ([`child`](super::child)): errno and
//!   plain file operations, identities and namespaces, the mount plan, loopback and the
//!   listener hand-over, confinement (rlimits, capabilities, `no_new_privs`, Landlock,
//!   seccomp), signals, `execve`, and the child stacks and `clone` itself.
//!
//! Invariants every wrapper keeps:
//!
//! - Pointers given to the kernel come from references (`&CStr`, slices, locals of the
//!   wrapper) that outlive the call, with the length the kernel is told; callers cannot
//!   pass a dangling pointer. Raw pointer arrays (`argv`, `envp`) are only built by
//!   [`ExecArgs`], which owns the strings they point into.
//! - File descriptors wrapped in `OwnedFd` were just returned by the kernel and are owned
//!   by nothing else.
//! - The child-side wrappers are async-signal-safe: the child of `clone(CLONE_VM |
//!   CLONE_VFORK)` shares this process's memory while the parent thread is suspended, so
//!   they do not allocate, take no locks, cannot panic, make raw system calls (no glibc
//!   `set*id` wrappers: they signal the parent's threads) and report failures as
//!   `Err(errno)`.
//! - The child stacks are `mmap`ed with a guard page, unmapped only on drop, and a stack is
//!   never used by two children at once: [`ChildStack`] is neither `Send` nor `Sync`, and
//!   the thread that calls [`clone_vfork`] is suspended until the child execs or exits.
#![allow(unsafe_code)] // Raw system calls; see the invariants above.

use std::ffi::{CStr, CString, c_char, c_int, c_long, c_ulong, c_void};
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::PROXY_ADDR;

// ---------------------------------------------------------------------------------------
// Probing and the parent side.
// ---------------------------------------------------------------------------------------

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
pub(super) fn probe_unshare(ids: Option<(u32, u32)>, flags: c_int) -> c_long {
    // SAFETY: fork(2) without glibc's atfork handlers; the child only makes raw system
    // calls on its own copy of memory and exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            c_long::from(libc::SIGCHLD),
            0 as c_long,
            0 as c_long,
            0 as c_long,
            0 as c_long,
        )
    };
    if pid == 0 {
        // SAFETY: integer-only system calls, then _exit.
        unsafe {
            if let Some((uid, gid)) = ids {
                let dropped = libc::syscall(
                    libc::SYS_setgroups,
                    0 as c_long,
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

// ---------------------------------------------------------------------------------------
// The child, between clone and execve: errno and plain file operations.
// ---------------------------------------------------------------------------------------

/// This thread's `errno`.
pub(super) fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's
    // life (the child shares the suspended parent thread's TLS, as glibc's own
    // posix_spawn child does).
    unsafe { *libc::__errno_location() }
}

/// `Ok` for a system call's 0, `Err(errno)` otherwise.
fn check(rc: c_int) -> Result<(), c_int> {
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// As [`check`], for `syscall(2)`'s `long`.
fn check_long(rc: c_long) -> Result<(), c_int> {
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// One `write(2)` of `data`: the number of bytes written.
pub(super) fn write(fd: RawFd, data: &[u8]) -> Result<usize, c_int> {
    // SAFETY: write reads `data.len()` bytes from a valid slice; no memory is written.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    usize::try_from(n).map_err(|_| errno())
}

/// `open(path, flags, mode)`; the fd is closed when dropped.
pub(super) fn open(path: &CStr, flags: c_int, mode: libc::mode_t) -> Result<OwnedFd, c_int> {
    // SAFETY: `path` is NUL-terminated; open returns a new fd or -1.
    let fd = unsafe { libc::open(path.as_ptr(), flags, libc::c_uint::from(mode)) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: the fd was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `dup2(fd, target)` (the duplicate has no CLOEXEC).
pub(super) fn dup2(fd: RawFd, target: RawFd) -> Result<(), c_int> {
    // SAFETY: dup2 takes integers only; no memory involved.
    let rc = unsafe { libc::dup2(fd, target) };
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

/// `chdir(path)`.
pub(super) fn chdir(path: &CStr) -> Result<(), c_int> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::chdir(path.as_ptr()) })
}

// ---------------------------------------------------------------------------------------
// The child: identities, process group, namespaces.
// ---------------------------------------------------------------------------------------

/// `setgroups(0, NULL)`: no supplementary groups (raw system call).
pub(super) fn setgroups_empty() -> Result<(), c_int> {
    // SAFETY: setgroups with size 0 reads no memory.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            0 as c_long,
            std::ptr::null::<libc::gid_t>(),
        )
    })
}

/// `setresgid(gid, gid, gid)` (raw system call: this thread only).
pub(super) fn setresgid(gid: c_long) -> Result<(), c_int> {
    // SAFETY: setresgid takes integers only.
    check_long(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })
}

/// `setresuid(uid, uid, uid)` (raw system call: this thread only).
pub(super) fn setresuid(uid: c_long) -> Result<(), c_int> {
    // SAFETY: setresuid takes integers only.
    check_long(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
}

/// `setpgid(0, 0)`: a new process group led by this process.
pub(super) fn new_process_group() -> Result<(), c_int> {
    // SAFETY: setpgid takes integers only.
    check(unsafe { libc::setpgid(0, 0) })
}

/// `unshare(flags)`.
pub(super) fn unshare(flags: c_int) -> Result<(), c_int> {
    // SAFETY: unshare takes integer flags.
    check(unsafe { libc::unshare(flags) })
}

/// `prctl(PR_SET_DUMPABLE, dumpable)`.
pub(super) fn set_dumpable(dumpable: bool) -> Result<(), c_int> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, c_ulong::from(dumpable), 0, 0, 0) })
}

/// `sethostname(name)` (in the process's own UTS namespace).
pub(super) fn sethostname(name: &[u8]) -> Result<(), c_int> {
    // SAFETY: sethostname reads `name.len()` bytes from a valid slice.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

// ---------------------------------------------------------------------------------------
// The child: the mount plan.
// ---------------------------------------------------------------------------------------

/// `mkdir(path, mode)`.
pub(super) fn mkdir(path: &CStr, mode: libc::mode_t) -> Result<(), c_int> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::mkdir(path.as_ptr(), mode) })
}

/// `symlink(target, link)`.
pub(super) fn symlink(target: &CStr, link: &CStr) -> Result<(), c_int> {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
}

/// `mount(source, target, fstype, flags, data)`; `None` is a null pointer.
pub(super) fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> Result<(), c_int> {
    let opt = |c: Option<&CStr>| c.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every string is NUL-terminated and outlives the call, or null where mount
    // allows it (source, fstype and data of a remount or bind mount).
    check(unsafe {
        libc::mount(
            opt(source),
            target.as_ptr(),
            opt(fstype),
            flags,
            opt(data).cast::<c_void>(),
        )
    })
}

/// The mount flags `statvfs(path)` reports (`f_flag`; the `ST_*` bits have the values of
/// the `MS_*` ones).
pub(super) fn statvfs_flags(path: &CStr) -> Result<c_ulong, c_int> {
    // SAFETY: `path` is NUL-terminated; `st` is a zeroed statvfs (all-zero is a valid
    // value), a local the kernel writes to that outlives the call.
    let (rc, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &raw mut st), st)
    };
    check(rc).map(|()| st.f_flag)
}

/// `pivot_root(new_root, put_old)` (raw system call).
pub(super) fn pivot_root(new_root: &CStr, put_old: &CStr) -> Result<(), c_int> {
    // SAFETY: both strings are NUL-terminated and outlive the call.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
}

/// `umount2(path, flags)`.
pub(super) fn umount2(path: &CStr, flags: c_int) -> Result<(), c_int> {
    // SAFETY: `path` is NUL-terminated and outlives the call.
    check(unsafe { libc::umount2(path.as_ptr(), flags) })
}

// ---------------------------------------------------------------------------------------
// The child: loopback and the egress proxy's listener.
// ---------------------------------------------------------------------------------------

/// Brings the loopback interface `lo` up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with
/// `IFF_UP | IFF_RUNNING`) through a throw-away datagram socket.
pub(super) fn loopback_up() -> Result<(), c_int> {
    // SAFETY: socket takes integers only.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(errno());
    }
    // SAFETY: the fd was just returned by the kernel and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: a zeroed ifreq is a valid empty request; the name "lo" fits with its NUL;
    // SIOCGIFFLAGS and SIOCSIFFLAGS read and write only this local struct.
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as c_char;
        req.ifr_name[1] = b'o' as c_char;
        let mut rc = libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &raw mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &raw const req);
        }
        rc
    };
    check(rc)
}

/// A CLOEXEC TCP socket bound to `addr` and listening with `backlog`.
pub(super) fn listen_tcp(addr: SocketAddrV4, backlog: c_int) -> Result<OwnedFd, c_int> {
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: the fd was just returned by the kernel and is owned by nothing else.
    let listener = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: bind reads one sockaddr_in from a valid local pointer with its size.
    check(unsafe {
        libc::bind(
            listener.as_raw_fd(),
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    // SAFETY: listen takes integers only.
    check(unsafe { libc::listen(listener.as_raw_fd(), backlog) })?;
    Ok(listener)
}

/// Sends `fd` over the UNIX socket `channel` (one byte of data, one `SCM_RIGHTS` message).
pub(super) fn send_fd(channel: RawFd, fd: BorrowedFd<'_>) -> Result<(), c_int> {
    let mut byte = [0u8; 1];
    // Room for one cmsghdr and one int, 8-byte aligned.
    let mut control = [0u64; 4];
    // SAFETY: every pointer in the msghdr refers to a live local buffer of the stated
    // size; CMSG_FIRSTHDR is non-null since the control buffer holds a header; sendmsg
    // only reads them (the kernel takes its own reference to `fd`).
    let rc = unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd.as_raw_fd());
        libc::sendmsg(channel, &raw const msg, libc::MSG_NOSIGNAL)
    };
    if rc == 1 { Ok(()) } else { Err(errno()) }
}

// ---------------------------------------------------------------------------------------
// The child: confinement (rlimits, capabilities, no_new_privs, Landlock, seccomp).
// ---------------------------------------------------------------------------------------

/// `setrlimit(resource, { soft, hard })`.
pub(super) fn setrlimit(
    resource: libc::__rlimit_resource_t,
    soft: libc::rlim_t,
    hard: libc::rlim_t,
) -> Result<(), c_int> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit struct from a valid local pointer.
    check(unsafe { libc::setrlimit(resource, &raw const lim) })
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
pub(super) fn clear_ambient_capabilities() -> Result<(), c_int> {
    // SAFETY: prctl with integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })
}

/// `prctl(PR_CAPBSET_DROP, cap)` (`EINVAL` past the last capability).
pub(super) fn drop_bounding_capability(cap: c_int) -> Result<(), c_int> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) })
}

/// `capset` with empty effective, permitted and inheritable sets (version 3).
pub(super) fn clear_capabilities() -> Result<(), c_int> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [0u32; 6]; // two { effective, permitted, inheritable }
    // SAFETY: capset reads a header and two data structs from valid local pointers.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) })
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub(super) fn set_no_new_privs() -> Result<(), c_int> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `landlock_add_rule(ruleset, LANDLOCK_RULE_PATH_BENEATH, { access, parent })`.
pub(super) fn landlock_add_path_rule(
    ruleset: RawFd,
    parent: BorrowedFd<'_>,
    access: u64,
) -> Result<(), c_int> {
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: parent.as_raw_fd(),
    };
    // SAFETY: LANDLOCK_RULE_PATH_BENEATH (1) reads one packed attr from a valid local
    // pointer.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            1 as c_int,
            &raw const attr,
            0u32,
        )
    })
}

/// `landlock_restrict_self(ruleset, 0)`.
pub(super) fn landlock_restrict_self(ruleset: RawFd) -> Result<(), c_int> {
    // SAFETY: takes integers only.
    check_long(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) })
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)`; `E2BIG` past 65535 instructions.
pub(super) fn seccomp_set_filter(prog: &[libc::sock_filter]) -> Result<(), c_int> {
    let Ok(len) = u16::try_from(prog.len()) else {
        return Err(libc::E2BIG);
    };
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` is a local pointing at `len` instructions of a live slice; the
    // kernel only reads and copies them.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &raw const fprog,
        )
    })
}

// ---------------------------------------------------------------------------------------
// The child: signals.
// ---------------------------------------------------------------------------------------

/// The current disposition of `sig` (`sa_sigaction`: `SIG_DFL`, `SIG_IGN` or a handler).
pub(super) fn signal_disposition(sig: c_int) -> Result<libc::sighandler_t, c_int> {
    // SAFETY: a zeroed sigaction is a valid value; the call only writes it (a local).
    let (rc, old) = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(sig, std::ptr::null(), &raw mut old), old)
    };
    check(rc).map(|()| old.sa_sigaction)
}

/// Resets `sig` to `SIG_DFL` (no flags, empty mask).
pub(super) fn set_default_disposition(sig: c_int) -> Result<(), c_int> {
    // SAFETY: a zeroed sigaction is SIG_DFL with no flags and an empty mask; the call only
    // reads it (a local).
    check(unsafe {
        let dfl: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, &raw const dfl, std::ptr::null_mut())
    })
}

/// `rt_sigprocmask(SIG_SETMASK, mask)` (the kernel's 64-bit sigset): the previous mask.
pub(super) fn set_signal_mask(mask: u64) -> Result<u64, c_int> {
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask reads and writes one 8-byte kernel sigset each, from and to
    // valid locals.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const mask,
            &raw mut old,
            size_of::<u64>(),
        )
    };
    check_long(rc).map(|()| old)
}

// ---------------------------------------------------------------------------------------
// The child: execve.
// ---------------------------------------------------------------------------------------

/// `argv` and `envp` for [`execve`]: NULL-terminated pointer arrays into strings owned by
/// this value (moving it does not move the strings' bytes). Built by the parent before
/// `clone`. Not `Send` (raw pointers).
pub(super) struct ExecArgs {
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    _strings: Vec<CString>,
}

impl ExecArgs {
    /// The first `argc` strings are the arguments, the rest the environment.
    pub(super) fn new(strings: Vec<CString>, argc: usize) -> Self {
        let argc = argc.min(strings.len());
        let pointers = |s: &[CString]| -> Vec<*const c_char> {
            s.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Self {
            argv: pointers(&strings[..argc]),
            envp: pointers(&strings[argc..]),
            _strings: strings,
        }
    }
}

/// `execve(path, argv, envp)`: returns only on failure, with the errno.
pub(super) fn execve(path: &CStr, args: &ExecArgs) -> c_int {
    // SAFETY: `path` is NUL-terminated; argv and envp are NULL-terminated arrays of
    // NUL-terminated strings owned by `args` (see `ExecArgs`), alive for the call.
    unsafe {
        libc::execve(path.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
    }
    errno()
}

// ---------------------------------------------------------------------------------------
// The child: stacks and clone.
// ---------------------------------------------------------------------------------------

/// An mmap'd stack for a `clone` child with a guard page below it. Neither `Send` nor
/// `Sync` (raw pointer): only the thread that made it runs children on it.
pub(super) struct ChildStack {
    base: *mut c_void,
    len: usize,
}

impl ChildStack {
    /// `bytes` of stack plus one guard page.
    pub(super) fn new(bytes: usize) -> io::Result<Self> {
        // SAFETY: sysconf takes an integer.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = bytes + page;
        // SAFETY: an anonymous private mapping at an address of the kernel's choice.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the lowest page of the mapping made above becomes the guard.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer (the stack grows down; page aligned).
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no child uses it any more
        // (each has exec'd or exited when its `clone_vfork` returned).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// What [`trampoline`] runs: `entry(arg)`.
struct Entry<'a, T> {
    entry: fn(&T) -> c_int,
    arg: &'a T,
}

/// The clone entry point: runs `entry(arg)` on the child stack, then `_exit`s with its
/// value.
extern "C" fn trampoline<T>(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&Entry<T>` that `clone_vfork` passed to clone, on the stack of
    // the thread that called it; that thread is suspended (CLONE_VFORK) until this child
    // execs or exits, so the entry and its argument outlive every use here.
    let call = unsafe { &*arg.cast::<Entry<'_, T>>() };
    let code = (call.entry)(call.arg);
    // SAFETY: _exit runs no atexit handlers and touches no shared state.
    unsafe { libc::_exit(code) }
}

/// `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)`, as glibc's posix_spawn: the child runs
/// `entry(arg)` on `stack` sharing this process's memory, then `_exit`s with its value
/// unless it exec'd; this thread resumes once the child has exec'd or exited. Returns the
/// child's pid.
///
/// `entry` must keep to what the module's invariants allow the child: the wrappers of this
/// module, no allocation, no locks, no panics. `stack` must not be the one the caller runs
/// on (the namespaced chain uses one stack per level).
pub(super) fn clone_vfork<T>(
    stack: &ChildStack,
    entry: fn(&T) -> c_int,
    arg: &T,
) -> Result<i32, c_int> {
    let call = Entry { entry, arg };
    // SAFETY: the child runs `trampoline::<T>` on its own mapped stack with a pointer to
    // `call`, which this suspended thread keeps alive; `ChildStack` is not `Sync`, so no
    // other thread runs a child on it meanwhile.
    let pid = unsafe {
        libc::clone(
            trampoline::<T>,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw const call).cast_mut().cast(),
        )
    };
    if pid < 0 { Err(errno()) } else { Ok(pid) }
}
