//! What runs in the child between `clone` and `execve` (including bringing up loopback and
//! sending the egress proxy's listener back), and the child stacks and signal mask around
//! the `clone`.
//!
//! No `unsafe` here: every system call goes through a wrapper of [`sys`](super::sys),
//! which documents the invariants. The one this module must keep: between
//! `clone(CLONE_VM | CLONE_VFORK)` and `execve` the child shares the parent's memory while
//! the parent thread is suspended, so the child path only reads the [`ChildSpec`] the parent
//! built (alive until `spawn_child` returns), calls `sys` wrappers and returns its exit
//! code. No allocation, no locks, no panics.
#![forbid(unsafe_code)]

use std::ffi::{CStr, c_int};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use super::PROXY_ADDR;
use super::namespaces::{MountOp, NsPlan};
use super::sys::{self, ChildStack, ExecArgs};

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
    pub(super) candidates: Vec<std::ffi::CString>,
    /// `argv` and `envp`.
    pub(super) exec: ExecArgs,
    pub(super) cwd: std::ffi::CString,
    /// Sources for fds 0, 1, 2 (all >= 3, so no dup2 clobbers another source).
    pub(super) stdio: [RawFd; 3],
    /// Write end of the CLOEXEC report pipe (stage and errno on failure).
    pub(super) report: RawFd,
    pub(super) ids: Option<(libc::c_long, libc::c_long)>,
    pub(super) drop_groups: bool,
    pub(super) rlimits: [(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6],
    /// -1 without Landlock.
    pub(super) landlock_fd: RawFd,
    /// Seccomp programs, installed in order (each at most 65535 instructions); the kernel
    /// copies each program.
    pub(super) filters: &'a [&'static [libc::sock_filter]],
    /// `Some`: the namespaced chain (this child, then the tool as pid 1); `None`: the
    /// weaker mode, this child becomes the tool.
    pub(super) ns: Option<NsSpec<'a>>,
}

/// Writes one 8-byte message (stage, value) to the report pipe (atomic on a pipe).
pub(super) fn report(fd: RawFd, stage: u32, value: c_int) {
    let s = stage.to_ne_bytes();
    let e = value.to_ne_bytes();
    let msg = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
    let _ = sys::write(fd, &msg);
}

/// Resets every caught signal to its default (see `child_exec`).
fn reset_signals() -> Result<(), (Stage, c_int)> {
    for sig in 1..=LAST_SIGNAL {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let Ok(old) = sys::signal_disposition(sig) else {
            continue; // Signals reserved by libc (EINVAL).
        };
        let keep = old == libc::SIG_DFL || (old == libc::SIG_IGN && sig != libc::SIGPIPE);
        if keep {
            continue;
        }
        sys::set_default_disposition(sig).map_err(|e| (Stage::Signals, e))?;
    }
    Ok(())
}

/// Points fds 0, 1 and 2 at the child's pipes.
fn redirect_stdio(spec: &ChildSpec<'_>) -> Result<(), (Stage, c_int)> {
    for (target, &fd) in (0..).zip(&spec.stdio) {
        // The sources are open in the child's own (copied) fd table and >= 3, so none is
        // clobbered; the duplicate has no CLOEXEC.
        sys::dup2(fd, target).map_err(|e| (Stage::Stdio, e))?;
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
        sys::setgroups_empty().map_err(|e| (Stage::Groups, e))?;
    }
    sys::setresgid(gid).map_err(|e| (Stage::Gid, e))?;
    sys::setresuid(uid).map_err(|e| (Stage::Uid, e))?;
    Ok(())
}

/// Writes `data` to a file of `/proc/self` (uid and gid maps) in one `write`.
fn write_proc(path: &CStr, data: &[u8]) -> Result<(), c_int> {
    let fd = sys::open(path, libc::O_WRONLY | libc::O_CLOEXEC, 0)?;
    let written = sys::write(fd.as_raw_fd(), data);
    drop(fd);
    match written {
        Ok(n) if n == data.len() => Ok(()),
        Ok(_) => Err(libc::EIO),
        Err(e) => Err(e),
    }
}

/// In a tool's new network namespace (this child has `CAP_NET_ADMIN` there): brings `lo` up,
/// opens a TCP listener on [`PROXY_ADDR`] and sends it to this process over `channel`
/// (`SCM_RIGHTS`), which serves the egress proxy on it from the host's network namespace.
/// The listener is closed here before the tool is started, so the tool never holds it.
pub(super) fn setup_network(channel: RawFd) -> Result<(), c_int> {
    sys::loopback_up()?;
    let listener = sys::listen_tcp(PROXY_ADDR, 128)?;
    let sent = sys::send_fd(channel, listener.as_fd());
    drop(listener);
    sent
}

/// The first child's argument: the spec and the stack the tool runs on.
struct FirstChild<'s, 'a> {
    spec: &'s ChildSpec<'a>,
    tool_stack: &'s ChildStack,
}

/// The child's code between clone and exec: raw system calls only, no panics. Namespaced:
/// enters new namespaces, starts the tool as pid 1 and returns `Stage::Started` with its
/// pid.
///
/// The uid switch and the dumpable flag live in the memory this child shares with the host
/// process (`CLONE_VM`), and so with every other run's child of that moment: one child's uid
/// switch or `set_dumpable(false)` would make another child's `/proc/self` files root's while it
/// writes its id maps (`EACCES`). The children take turns over that stretch ([`IdTurn`]).
fn child_exec(spec: &ChildSpec<'_>, tool_stack: &ChildStack) -> (Stage, c_int) {
    // Every signal arrives blocked (see `SignalsBlocked`). Handlers installed by this
    // process (tokio's SIGCHLD, std's SIGSEGV) must not run in the child: reset them to
    // the default, and SIGPIPE too (std ignores it; tools expect the default), as
    // posix_spawn does.
    if let Err(failed) = reset_signals() {
        return failed;
    }
    let Some(ns) = &spec.ns else {
        // The weaker mode: this process becomes the tool.
        if let Err(e) = sys::new_process_group() {
            return (Stage::ProcessGroup, e);
        }
        if let Err(failed) = redirect_stdio(spec) {
            return failed;
        }
        let turn = IdTurn::take();
        let switched = switch_ids(spec);
        drop(turn);
        if let Err(failed) = switched {
            return failed;
        }
        return confine_and_exec(spec);
    };
    if let Err(failed) = redirect_stdio(spec) {
        return failed;
    }
    let turn = IdTurn::take();
    if let Err(failed) = switch_ids(spec) {
        return failed;
    }
    // The new user namespace is created by the run-as identity, so it maps only that
    // identity (to itself) and owns the other namespaces.
    if let Err(e) = sys::unshare(ns.plan.flags) {
        return (Stage::Unshare, e);
    }
    // A uid switch made this process non-dumpable, which makes its /proc/self files
    // root's: dumpable just long enough to write its own maps.
    let _ = sys::set_dumpable(true);
    for (path, data) in [
        (c"/proc/self/setgroups", c"deny".to_bytes()),
        (c"/proc/self/uid_map", ns.plan.uid_map.to_bytes()),
        (c"/proc/self/gid_map", ns.plan.gid_map.to_bytes()),
    ] {
        if let Err(e) = write_proc(path, data) {
            return (Stage::IdMap, e);
        }
    }
    let _ = sys::set_dumpable(false);
    drop(turn);
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
    // as this child does) on the second stack: no copy of the host's address space, and
    // nothing of it is left in the namespace once the tool runs.
    match sys::clone_vfork(tool_stack, tool_main, spec) {
        Ok(pid) => (Stage::Started, pid),
        Err(e) => (Stage::Fork, e),
    }
}

/// A turn over the uid switch and the id maps, among the clone-to-exec children of this
/// process (see [`child_exec`]). An atomic in the memory they share: no allocation, no system
/// call but `sched_yield` while waiting. A turn never held longer than a few system calls; if
/// one is not released within about a second (its child was killed mid-turn), it is taken
/// anyway, and a map write that then fails refuses the run.
struct IdTurn;

static ID_TURN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl IdTurn {
    fn take() -> Self {
        use std::sync::atomic::Ordering;
        for _ in 0..1_000_000 {
            if ID_TURN
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Self;
            }
            std::thread::yield_now();
        }
        ID_TURN.store(true, Ordering::Release);
        Self
    }
}

impl Drop for IdTurn {
    fn drop(&mut self) {
        ID_TURN.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Runs one step of the mount plan.
fn mount_op(op: &MountOp) -> Result<(), c_int> {
    match op {
        MountOp::Mkdir(path) => match sys::mkdir(path, 0o755) {
            Err(libc::EEXIST) => Ok(()),
            other => other,
        },
        MountOp::Touch(path) => {
            // Read-only: on a read-only mount an existing file is still fine.
            sys::open(
                path,
                libc::O_RDONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o644,
            )
            .map(drop)
        }
        MountOp::Symlink { target, link } => sys::symlink(target, link),
        MountOp::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys::mount(
            source.as_deref(),
            target,
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        MountOp::Remount { target, flags } => {
            // The ST_* bits have the values of the MS_* ones.
            let locked = sys::statvfs_flags(target)?
                & (libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC
                    | libc::MS_NOATIME
                    | libc::MS_NODIRATIME
                    | libc::MS_RELATIME);
            sys::mount(
                None,
                target,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | flags | locked,
                None,
            )
        }
        MountOp::PivotRoot { new_root, put_old } => sys::pivot_root(new_root, put_old),
        MountOp::Detach(path) => sys::umount2(path, libc::MNT_DETACH),
        MountOp::Chdir(path) => sys::chdir(path),
    }
}

/// The tool's first steps as pid 1 of its namespaces: its own process group (the parent
/// kills it as a whole), the file system of the mount plan, the hostname and the Landlock
/// rules for the new `/proc`, `/dev` and `/tmp`.
fn enter_sandbox(spec: &ChildSpec<'_>, ns: &NsSpec<'_>) -> Result<(), (u32, c_int)> {
    sys::new_process_group().map_err(|e| (Stage::ProcessGroup as u32, e))?;
    for (step, op) in ns.plan.ops.iter().enumerate() {
        if let Err(e) = mount_op(op) {
            let step = u32::try_from(step).unwrap_or(0xffff) & 0xffff;
            return Err((Stage::Mount as u32 | (step << 16), e));
        }
    }
    let _ = sys::sethostname(b"tool-sandbox");
    if spec.landlock_fd < 0 {
        return Ok(());
    }
    for (path, access) in &ns.plan.landlock_rules {
        // O_PATH opens no file contents; the fd is closed when dropped.
        let fd = sys::open(path, libc::O_PATH | libc::O_CLOEXEC, 0)
            .map_err(|e| (Stage::Landlock as u32, e))?;
        sys::landlock_add_path_rule(spec.landlock_fd, fd.as_fd(), *access)
            .map_err(|e| (Stage::Landlock as u32, e))?;
    }
    Ok(())
}

/// Drops every capability the process holds in its user namespace: bounding set, ambient
/// set, then effective, permitted and inheritable.
fn drop_capabilities(last_cap: c_int) -> Result<(), c_int> {
    let _ = sys::clear_ambient_capabilities();
    for cap in 0..=last_cap {
        match sys::drop_bounding_capability(cap) {
            Ok(()) | Err(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    sys::clear_capabilities()
}

/// The tool's last steps before exec, common to both modes: working directory, rlimits,
/// (namespaced: no capabilities), `no_new_privs`, Landlock, seccomp, signal mask, exec.
fn confine_and_exec(spec: &ChildSpec<'_>) -> (Stage, c_int) {
    if let Err(e) = sys::chdir(&spec.cwd) {
        return (Stage::Chdir, e);
    }
    for &(resource, soft, hard) in &spec.rlimits {
        if let Err(e) = sys::setrlimit(resource, soft, hard) {
            return (Stage::Rlimit, e);
        }
    }
    if let Some(ns) = &spec.ns
        && let Err(e) = drop_capabilities(ns.plan.last_cap)
    {
        return (Stage::Capabilities, e);
    }
    if let Err(e) = sys::set_no_new_privs() {
        return (Stage::NoNewPrivs, e);
    }
    // The ruleset fd is open in the child (CLOEXEC only closes it at exec).
    if spec.landlock_fd >= 0
        && let Err(e) = sys::landlock_restrict_self(spec.landlock_fd)
    {
        return (Stage::Landlock, e);
    }
    for prog in spec.filters {
        if let Err(e) = sys::seccomp_set_filter(prog) {
            return (Stage::Seccomp, e);
        }
    }
    // Unblock everything (the mask survives exec), as std does for its children.
    if let Err(e) = sys::set_signal_mask(0) {
        return (Stage::SignalMask, e);
    }
    // As execvp: try each candidate, skip the ones that are not there, prefer EACCES.
    let mut failure = libc::ENOENT;
    let mut eacces = false;
    for path in &spec.candidates {
        let e = sys::execve(path, &spec.exec);
        match e {
            libc::EACCES => eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return (Stage::Exec, e),
        }
        failure = e;
    }
    (Stage::Exec, if eacces { libc::EACCES } else { failure })
}

/// The first child's entry point (run by `sys::clone_vfork`): runs `child_exec`, reports
/// and exits with 127.
fn child_main(arg: &FirstChild<'_, '_>) -> c_int {
    let (stage, code) = child_exec(arg.spec, arg.tool_stack);
    report(arg.spec.report, stage as u32, code);
    127
}

/// The tool's entry point in a namespaced run (pid 1 of its PID namespace).
fn tool_main(spec: &ChildSpec<'_>) -> c_int {
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
    127
}

/// Blocks every signal in this thread for the clone (the child starts with them blocked
/// and must not run this process's handlers); restores the mask on drop.
struct SignalsBlocked {
    old: u64,
}

impl SignalsBlocked {
    fn new() -> io::Result<Self> {
        match sys::set_signal_mask(!0) {
            Ok(old) => Ok(Self { old }),
            Err(e) => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        let _ = sys::set_signal_mask(self.old);
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
                let stacks = (
                    ChildStack::new(CHILD_STACK_BYTES)?,
                    ChildStack::new(CHILD_STACK_BYTES)?,
                );
                cell.get_or_init(|| stacks)
            }
        };
        let arg = FirstChild {
            spec,
            tool_stack: &stacks.1,
        };
        let blocked = SignalsBlocked::new()?;
        let result = sys::clone_vfork(&stacks.0, child_main, &arg);
        drop(blocked);
        result.map_err(io::Error::from_raw_os_error)
    })
}
