//! What runs in the child between `clone` and `execve` (including bringing up loopback and
//! sending the egress proxy's listener back), and the child stacks and signal mask around
//! the `clone`.
//!
//! With [`sys`](super::sys), the only modules of `process` allowed `unsafe`. The invariants
//! its `unsafe` blocks rely on (each block's `SAFETY:` comment names which):
//!
//! - Between `clone(CLONE_VM | CLONE_VFORK)` and `execve` the child shares the parent's
//!   memory while the parent thread is suspended: it only reads the [`ChildSpec`] the parent
//!   built (alive until `spawn_child` returns), makes raw system calls and `_exit`s. No
//!   allocation, no locks, no glibc `set*id` wrappers (they signal the parent's threads).
//! - Every pointer handed to the kernel points to a live local, a `CString` or a `Vec` of
//!   the spec, with the length the kernel is told.
//! - The child stacks are `mmap`ed with a guard page, unmapped only on drop, and never used
//!   by two children at once (one pair per thread).
//! - File descriptors turned into `OwnedFd` were just returned by the kernel and are owned
//!   by nothing else.
#![allow(unsafe_code)] // clone, unshare, mount, setrlimit, prctl, seccomp, landlock, execve.

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::RawFd;

use super::PROXY_ADDR;
use super::namespaces::{MountOp, NsPlan};

/// Signals are 1..=64 on Linux (`_NSIG - 1`).
const LAST_SIGNAL: c_int = 64;
/// The child's stack between clone and exec (it only makes system calls), plus a guard page.
const CHILD_STACK_BYTES: usize = 128 * 1024;

/// Where the child stopped; reported with the errno for diagnostics. In a message the low
/// 16 bits are the stage; for `Mount` the high 16 bits are the step of the mount plan.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(super) enum Stage {
    Signals,
    ProcessGroup,
    Stdio,
    Groups,
    Gid,
    Uid,
    Chdir,
    Rlimit,
    NoNewPrivs,
    Landlock,
    Seccomp,
    SignalMask,
    Exec,
    Unshare,
    IdMap,
    Fork,
    Mount,
    Capabilities,
    /// Not a failure: the namespaced tool started; the value is its pid.
    Started,
    /// Bringing up loopback or opening the egress proxy's listener (tools with network).
    Network,
}

/// Indexed by `Stage as usize`.
pub(super) const STAGE_NAMES: [&str; 20] = [
    "signal dispositions",
    "setpgid",
    "dup2",
    "setgroups",
    "setresgid",
    "setresuid",
    "chdir",
    "setrlimit",
    "no_new_privs",
    "landlock_restrict_self",
    "seccomp",
    "sigprocmask",
    "execve",
    "unshare",
    "uid/gid map",
    "fork",
    "mount",
    "capabilities",
    "started",
    "network setup",
];

/// What a namespaced run needs besides the common spec.
pub(super) struct NsSpec<'a> {
    pub(super) plan: &'a NsPlan,
    /// The tool's stack (set by `spawn_child`).
    pub(super) tool_stack: std::cell::Cell<*mut c_void>,
    /// With network: the child's end of the socket pair the proxy's listener is sent on
    /// (CLOEXEC, >= 3); -1 otherwise.
    pub(super) channel: RawFd,
}

/// Everything the child needs, prepared by the parent. Between clone and exec the child
/// shares this process's memory (`CLONE_VM`): it only reads this and makes system calls
/// (no allocation, no locks, no glibc `set*id` wrappers, which would signal this
/// process's threads). Not `Send` (raw pointers): built and dropped within `spawn`.
pub(super) struct ChildSpec<'a> {
    /// Paths to `execve`, in order (one, or the `PATH` lookup of a bare name).
    pub(super) candidates: Vec<CString>,
    /// NUL-terminated arrays pointing into `_strings`.
    pub(super) argv: Vec<*const c_char>,
    pub(super) envp: Vec<*const c_char>,
    pub(super) _strings: Vec<CString>,
    pub(super) cwd: CString,
    /// Sources for fds 0, 1, 2 (all >= 3, so no dup2 clobbers another source).
    pub(super) stdio: [RawFd; 3],
    /// Write end of the CLOEXEC report pipe (stage and errno on failure).
    pub(super) report: RawFd,
    pub(super) ids: Option<(libc::c_long, libc::c_long)>,
    pub(super) drop_groups: bool,
    pub(super) rlimits: [(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6],
    /// -1 without Landlock.
    pub(super) landlock_fd: RawFd,
    /// Installed in order; the kernel copies each program.
    pub(super) filters: Vec<libc::sock_fprog>,
    /// `Some`: the namespaced chain (this child, then the tool as pid 1); `None`: the
    /// weaker mode, this child becomes the tool.
    pub(super) ns: Option<NsSpec<'a>>,
}

pub(super) fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot (the child shares the
    // suspended parent thread's TLS, as glibc's own posix_spawn child does).
    unsafe { *libc::__errno_location() }
}

/// Writes one 8-byte message (stage, value) to the report pipe.
pub(super) fn report(fd: RawFd, stage: u32, value: c_int) {
    let s = stage.to_ne_bytes();
    let e = value.to_ne_bytes();
    let msg = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
    // SAFETY: write of a stack buffer (8 bytes: atomic on a pipe).
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
    }
}

/// Resets every caught signal to its default (see `child_exec`).
fn reset_signals() -> Result<(), (Stage, c_int)> {
    for sig in 1..=LAST_SIGNAL {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a zeroed sigaction is valid; the call only reads the disposition.
        let (rc, old) = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            (libc::sigaction(sig, std::ptr::null(), &raw mut old), old)
        };
        if rc != 0 {
            continue; // Signals reserved by libc (EINVAL).
        }
        let keep = old.sa_sigaction == libc::SIG_DFL
            || (old.sa_sigaction == libc::SIG_IGN && sig != libc::SIGPIPE);
        if keep {
            continue;
        }
        // SAFETY: a zeroed sigaction is SIG_DFL with no flags and an empty mask.
        let rc = unsafe {
            let dfl: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, &raw const dfl, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err((Stage::Signals, errno()));
        }
    }
    Ok(())
}

/// Points fds 0, 1 and 2 at the child's pipes.
fn redirect_stdio(spec: &ChildSpec<'_>) -> Result<(), (Stage, c_int)> {
    for (target, &fd) in (0..).zip(&spec.stdio) {
        // SAFETY: dup2 on descriptors open in the child's own (copied) fd table; the
        // duplicate has no CLOEXEC and the source is >= 3, so none is clobbered.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err((Stage::Stdio, errno()));
        }
    }
    Ok(())
}

/// Switches to the run-as identity with raw system calls: glibc's wrappers would
/// broadcast the change to this process's threads, which the child shares memory with.
fn switch_ids(spec: &ChildSpec<'_>) -> Result<(), (Stage, c_int)> {
    let Some((uid, gid)) = spec.ids else {
        return Ok(());
    };
    if spec.drop_groups {
        // SAFETY: setgroups with size 0 reads no memory.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                0 as libc::c_long,
                std::ptr::null::<libc::gid_t>(),
            )
        };
        if rc != 0 {
            return Err((Stage::Groups, errno()));
        }
    }
    // SAFETY: setresgid takes integers only.
    if unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } != 0 {
        return Err((Stage::Gid, errno()));
    }
    // SAFETY: setresuid takes integers only.
    if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } != 0 {
        return Err((Stage::Uid, errno()));
    }
    Ok(())
}

/// Writes `data` to a file of `/proc/self` (uid and gid maps).
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> Result<(), c_int> {
    // SAFETY: `path` is NUL-terminated; open returns a new fd or -1.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: writes `data` from a valid slice to the fd opened above.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let e = errno();
    // SAFETY: closes the fd opened above.
    unsafe {
        libc::close(fd);
    }
    if usize::try_from(n).ok() == Some(data.len()) {
        Ok(())
    } else {
        Err(e)
    }
}

/// In a tool's new network namespace (this child has `CAP_NET_ADMIN` there): brings `lo` up,
/// opens a TCP listener on [`PROXY_ADDR`] and sends it to this process over `channel`
/// (`SCM_RIGHTS`), which serves the egress proxy on it from the host's network namespace.
/// The listener is closed here before the tool is started, so the tool never holds it.
pub(super) fn setup_network(channel: RawFd) -> Result<(), c_int> {
    // SAFETY: socket takes integers only.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(errno());
    }
    // SAFETY: a zeroed ifreq is a valid empty request; the name "lo" fits with its NUL;
    // SIOCGIFFLAGS and SIOCSIFFLAGS read and write only the flags of this stack struct.
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as c_char;
        req.ifr_name[1] = b'o' as c_char;
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &raw mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &raw const req);
        }
        let e = errno();
        libc::close(sock);
        if rc == 0 { 0 } else { e }
    };
    if rc != 0 {
        return Err(rc);
    }
    // SAFETY: socket takes integers only.
    let listener =
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if listener < 0 {
        return Err(errno());
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: PROXY_ADDR.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*PROXY_ADDR.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: bind reads one sockaddr_in from a valid stack pointer with its size; listen
    // takes integers; send_fd only reads stack buffers; the listener is then closed.
    let rc = unsafe {
        let mut rc = libc::bind(
            listener,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc == 0 {
            rc = libc::listen(listener, 128);
        }
        let mut e = if rc == 0 { 0 } else { errno() };
        if e == 0
            && let Err(sent) = send_fd(channel, listener)
        {
            e = sent;
        }
        libc::close(listener);
        e
    };
    if rc == 0 { Ok(()) } else { Err(rc) }
}

/// Sends `fd` over the UNIX socket `channel` (one byte of data, one `SCM_RIGHTS` message).
fn send_fd(channel: RawFd, fd: RawFd) -> Result<(), c_int> {
    let mut byte = [0u8; 1];
    // Room for one cmsghdr and one int, 8-byte aligned.
    let mut control = [0u64; 4];
    // SAFETY: every pointer in the msghdr refers to a live stack buffer of the stated
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
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd);
        libc::sendmsg(channel, &raw const msg, libc::MSG_NOSIGNAL)
    };
    if rc == 1 { Ok(()) } else { Err(errno()) }
}

/// The child's code between clone and exec: raw system calls only, no panics. Namespaced:
/// enters new namespaces, starts the tool as pid 1 and returns `Stage::Started` with its
/// pid.
fn child_exec(spec: &ChildSpec<'_>) -> (Stage, c_int) {
    // Every signal arrives blocked (see `SignalsBlocked`). Handlers installed by this
    // process (tokio's SIGCHLD, std's SIGSEGV) must not run in the child: reset them to
    // the default, and SIGPIPE too (std ignores it; tools expect the default), as
    // posix_spawn does.
    if let Err(failed) = reset_signals() {
        return failed;
    }
    let Some(ns) = &spec.ns else {
        // The weaker mode: this process becomes the tool.
        // SAFETY: setpgid takes integers only.
        if unsafe { libc::setpgid(0, 0) } != 0 {
            return (Stage::ProcessGroup, errno());
        }
        if let Err(failed) = redirect_stdio(spec).and_then(|()| switch_ids(spec)) {
            return failed;
        }
        return confine_and_exec(spec);
    };
    if let Err(failed) = redirect_stdio(spec).and_then(|()| switch_ids(spec)) {
        return failed;
    }
    // The new user namespace is created by the run-as identity, so it maps only that
    // identity (to itself) and owns the other namespaces.
    // SAFETY: unshare takes integer flags.
    if unsafe { libc::unshare(ns.plan.flags) } != 0 {
        return (Stage::Unshare, errno());
    }
    // A uid switch made this process non-dumpable, which makes its /proc/self files
    // root's: dumpable just long enough to write its own maps.
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
    }
    for (path, data) in [
        (c"/proc/self/setgroups", c"deny".to_bytes()),
        (c"/proc/self/uid_map", ns.plan.uid_map.to_bytes()),
        (c"/proc/self/gid_map", ns.plan.gid_map.to_bytes()),
    ] {
        if let Err(e) = write_proc(path, data) {
            return (Stage::IdMap, e);
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    // This child holds every capability of the new user namespace, which owns the new
    // network namespace: the only moment loopback can be brought up and the proxy's
    // listener opened there (the tool drops its capabilities before exec).
    if ns.channel >= 0
        && let Err(e) = setup_network(ns.channel)
    {
        return (Stage::Network, e);
    }
    // The first child after unshare(CLONE_NEWPID) is pid 1 of the new namespace: the
    // tool itself. It shares this process's memory until it execs (CLONE_VM | CLONE_VFORK,
    // as this child does): no copy of the host's address space, and nothing of it is left
    // in the namespace once the tool runs.
    // SAFETY: as in `clone_on`: the tool runs `tool_main` on the second stack with a
    // pointer to the spec; this child is suspended (CLONE_VFORK) until the tool execs or
    // exits, and the thread that owns the spec is suspended until this child exits.
    let pid = unsafe {
        libc::clone(
            tool_main,
            ns.tool_stack.get(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(spec).cast_mut().cast(),
        )
    };
    if pid < 0 {
        return (Stage::Fork, errno());
    }
    (Stage::Started, c_int::try_from(pid).unwrap_or(-1))
}

/// Runs one step of the mount plan.
fn mount_op(op: &MountOp) -> Result<(), c_int> {
    let opt = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every call below takes NUL-terminated strings owned by the plan, null
    // pointers where the system call allows them, or a zeroed stack struct it writes to.
    let rc = unsafe {
        match op {
            MountOp::Mkdir(path) => {
                let rc = libc::mkdir(path.as_ptr(), 0o755);
                if rc != 0 && errno() == libc::EEXIST {
                    0
                } else {
                    rc
                }
            }
            MountOp::Touch(path) => {
                // Read-only: on a read-only mount an existing file is still fine.
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_RDONLY | libc::O_CREAT | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                    0
                } else {
                    fd
                }
            }
            MountOp::Symlink { target, link } => libc::symlink(target.as_ptr(), link.as_ptr()),
            MountOp::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => libc::mount(
                opt(source),
                target.as_ptr(),
                opt(fstype),
                *flags,
                opt(data).cast(),
            ),
            MountOp::Remount { target, flags } => {
                let mut st: libc::statvfs = std::mem::zeroed();
                if libc::statvfs(target.as_ptr(), &raw mut st) != 0 {
                    return Err(errno());
                }
                // The ST_* bits have the values of the MS_* ones.
                let locked = st.f_flag
                    & (libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC
                        | libc::MS_NOATIME
                        | libc::MS_NODIRATIME
                        | libc::MS_RELATIME);
                libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | flags | locked,
                    std::ptr::null(),
                )
            }
            MountOp::PivotRoot { new_root, put_old } => {
                let rc = libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr());
                -c_int::from(rc != 0)
            }
            MountOp::Detach(path) => libc::umount2(path.as_ptr(), libc::MNT_DETACH),
            MountOp::Chdir(path) => libc::chdir(path.as_ptr()),
        }
    };
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The tool's first steps as pid 1 of its namespaces: its own process group (the parent
/// kills it as a whole), the file system of the mount plan, the hostname and the Landlock
/// rules for the new `/proc`, `/dev` and `/tmp`.
fn enter_sandbox(spec: &ChildSpec<'_>, ns: &NsSpec<'_>) -> Result<(), (u32, c_int)> {
    // SAFETY: setpgid takes integers only.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return Err((Stage::ProcessGroup as u32, errno()));
    }
    for (step, op) in ns.plan.ops.iter().enumerate() {
        if let Err(e) = mount_op(op) {
            let step = u32::try_from(step).unwrap_or(0xffff) & 0xffff;
            return Err((Stage::Mount as u32 | (step << 16), e));
        }
    }
    let name = b"tool-sandbox";
    // SAFETY: sethostname reads `name.len()` bytes from a valid buffer (own UTS namespace).
    unsafe {
        libc::sethostname(name.as_ptr().cast(), name.len());
    }
    if spec.landlock_fd < 0 {
        return Ok(());
    }
    for (path, access) in &ns.plan.landlock_rules {
        // SAFETY: `path` is NUL-terminated; O_PATH opens no file contents.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err((Stage::Landlock as u32, errno()));
        }
        let attr = PathBeneathAttr {
            allowed_access: *access,
            parent_fd: fd,
        };
        // SAFETY: LANDLOCK_RULE_PATH_BENEATH (1) reads one packed attr from a valid
        // pointer; both fds are open; then the path fd is closed.
        let (rc, e) = unsafe {
            let rc = libc::syscall(
                libc::SYS_landlock_add_rule,
                spec.landlock_fd,
                1 as c_int,
                &raw const attr,
                0u32,
            );
            let e = errno();
            libc::close(fd);
            (rc, e)
        };
        if rc != 0 {
            return Err((Stage::Landlock as u32, e));
        }
    }
    Ok(())
}

/// Drops every capability the process holds in its user namespace: bounding set, ambient
/// set, then effective, permitted and inheritable.
fn drop_capabilities(last_cap: c_int) -> Result<(), c_int> {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0
            && errno() != libc::EINVAL
        {
            return Err(errno());
        }
    }
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
    // SAFETY: capset reads a header and two data structs from valid pointers.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// The tool's last steps before exec, common to both modes: working directory, rlimits,
/// (namespaced: no capabilities), `no_new_privs`, Landlock, seccomp, signal mask, exec.
fn confine_and_exec(spec: &ChildSpec<'_>) -> (Stage, c_int) {
    // SAFETY: `cwd` is a NUL-terminated string owned by the spec.
    if unsafe { libc::chdir(spec.cwd.as_ptr()) } != 0 {
        return (Stage::Chdir, errno());
    }
    for &(resource, soft, hard) in &spec.rlimits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads one rlimit struct from a valid stack pointer.
        if unsafe { libc::setrlimit(resource, &raw const lim) } != 0 {
            return (Stage::Rlimit, errno());
        }
    }
    if let Some(ns) = &spec.ns
        && let Err(e) = drop_capabilities(ns.plan.last_cap)
    {
        return (Stage::Capabilities, e);
    }
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return (Stage::NoNewPrivs, errno());
    }
    if spec.landlock_fd >= 0 {
        // SAFETY: the ruleset fd is open in the child (CLOEXEC only closes it at exec).
        let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, spec.landlock_fd, 0u32) };
        if rc != 0 {
            return (Stage::Landlock, errno());
        }
    }
    for fprog in &spec.filters {
        // SAFETY: `fprog` points at a live, immutable BPF program; the kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                std::ptr::from_ref(fprog),
            )
        };
        if rc != 0 {
            return (Stage::Seccomp, errno());
        }
    }
    // Unblock everything (the mask survives exec), as std does for its children.
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask reads one 8-byte kernel sigset from a valid pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const empty,
            std::ptr::null_mut::<u64>(),
            size_of::<u64>(),
        )
    };
    if rc != 0 {
        return (Stage::SignalMask, errno());
    }
    // As execvp: try each candidate, skip the ones that are not there, prefer EACCES.
    let mut failure = libc::ENOENT;
    let mut eacces = false;
    for path in &spec.candidates {
        // SAFETY: path, argv and envp are NUL-terminated strings and NULL-terminated
        // pointer arrays owned by the spec; execve only returns on failure.
        unsafe {
            libc::execve(path.as_ptr(), spec.argv.as_ptr(), spec.envp.as_ptr());
        }
        let e = errno();
        match e {
            libc::EACCES => eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return (Stage::Exec, e),
        }
        failure = e;
    }
    (Stage::Exec, if eacces { libc::EACCES } else { failure })
}

/// The clone entry point: runs `child_exec` on the child stack, reports and exits.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&ChildSpec` that `spawn_child` passed to clone; that thread is
    // suspended (CLONE_VFORK) until this process execs or exits, so the spec outlives
    // every use here.
    let spec = unsafe { &*arg.cast::<ChildSpec<'_>>() };
    let (stage, code) = child_exec(spec);
    report(spec.report, stage as u32, code);
    // SAFETY: _exit runs no atexit handlers and touches no shared state.
    unsafe { libc::_exit(127) }
}

/// The tool's clone entry point in a namespaced run (pid 1 of its PID namespace).
extern "C" fn tool_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&ChildSpec` the first child passed to clone; it and the thread
    // that owns the spec are suspended (CLONE_VFORK) until this process execs or exits.
    let spec = unsafe { &*arg.cast::<ChildSpec<'_>>() };
    let (stage, code) = match &spec.ns {
        Some(ns) => match enter_sandbox(spec, ns) {
            Ok(()) => {
                let (stage, code) = confine_and_exec(spec);
                (stage as u32, code)
            }
            Err(failed) => failed,
        },
        None => (Stage::Fork as u32, libc::EINVAL),
    };
    report(spec.report, stage, code);
    // SAFETY: _exit runs no atexit handlers and touches no shared state.
    unsafe { libc::_exit(127) }
}

/// An mmap'd stack for the child with a guard page below it.
struct ChildStack {
    base: *mut c_void,
    len: usize,
}

impl ChildStack {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: sysconf takes an integer.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = CHILD_STACK_BYTES + page;
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
    pub(super) fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the child no longer uses it
        // (it has exec'd or exited when clone returns).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Blocks every signal in this thread for the clone (the child starts with them blocked
/// and must not run this process's handlers); restores the mask on drop.
struct SignalsBlocked {
    old: u64,
}

impl SignalsBlocked {
    pub(super) fn new() -> io::Result<Self> {
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: rt_sigprocmask reads and writes one 8-byte kernel sigset each.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &raw const all,
                &raw mut old,
                size_of::<u64>(),
            )
        };
        if rc == 0 {
            Ok(Self { old })
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new` from a valid pointer.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &raw const self.old,
                std::ptr::null_mut::<u64>(),
                size_of::<u64>(),
            );
        }
    }
}

/// `clone(CLONE_VM | CLONE_VFORK)`, as glibc's posix_spawn: no copy of the address space,
/// and this thread resumes once the child has exec'd or exited.
pub(super) fn spawn_child(spec: &ChildSpec<'_>) -> io::Result<i32> {
    thread_local! {
        // Two stacks per thread, reused: this thread is suspended while a child uses the
        // first; the second is the namespaced tool's (that child is suspended meanwhile).
        static STACKS: std::cell::OnceCell<(ChildStack, ChildStack)> =
            const { std::cell::OnceCell::new() };
    }
    STACKS.with(|cell| {
        let stacks = match cell.get() {
            Some(stacks) => stacks,
            None => {
                let stacks = (ChildStack::new()?, ChildStack::new()?);
                cell.get_or_init(|| stacks)
            }
        };
        if let Some(ns) = &spec.ns {
            ns.tool_stack.set(stacks.1.top());
        }
        clone_on(&stacks.0, spec)
    })
}

fn clone_on(stack: &ChildStack, spec: &ChildSpec<'_>) -> io::Result<i32> {
    let blocked = SignalsBlocked::new()?;
    // SAFETY: the child runs `child_main` on its own stack with a pointer to `spec`, which
    // this suspended thread keeps alive; it only reads the spec and makes system calls
    // until it execs or exits (see `ChildSpec`).
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(spec).cast_mut().cast(),
        )
    };
    let result = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    drop(blocked);
    result
}
