//! What runs in the child between `clone` and `execve` (including bringing up loopback and
//! sending the egress proxy's listener back), and the child stacks and signal mask around
//! the `clone`.
//!
//! No `unsafe` here: system calls go through `rustix` (direct system calls: no allocation,
//! no locks, no `errno`; paths are always given as `&CStr`, which `rustix` passes through
//! without copying) or, where no safe API exists, through [`sys`](super::sys), which
//! documents the invariants. The one this module must keep: between
//! `clone(CLONE_VM | CLONE_VFORK)` and `execve` the child shares the parent's memory while
//! the parent thread is suspended, so the child path only reads the [`ChildSpec`] the parent
//! built (alive until `spawn_child` returns), makes those system calls and returns its exit
//! code. No allocation, no locks, no panics.
#![forbid(unsafe_code)]

use std::ffi::{CStr, c_int};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{Mode, OFlags, StatVfsMountFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Resource, Rlimit};
use rustix::thread::{CapabilitySet, CapabilitySets};

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
    /// (CLOEXEC, >= 3).
    pub(super) channel: Option<BorrowedFd<'a>>,
}

/// Everything the child needs, prepared by the parent. Between clone and exec the child
/// shares this process's memory (`CLONE_VM`): it only reads this and makes system calls
/// (no allocation, no locks, no glibc `set*id` wrappers, which would signal this
/// process's threads). Not `Send` (raw pointers): built and dropped within `spawn`, and the
/// descriptors it borrows outlive it.
pub(super) struct ChildSpec<'a> {
    /// Paths to `execve`, in order (one, or the `PATH` lookup of a bare name).
    pub(super) candidates: Vec<std::ffi::CString>,
    /// `argv` and `envp`.
    pub(super) exec: ExecArgs,
    pub(super) cwd: std::ffi::CString,
    /// Sources for fds 0, 1, 2 (all >= 3, so no dup2 clobbers another source).
    pub(super) stdio: [BorrowedFd<'a>; 3],
    /// Write end of the CLOEXEC report pipe (stage and errno on failure).
    pub(super) report: BorrowedFd<'a>,
    /// The run-as uid and gid.
    pub(super) ids: Option<(rustix::process::Uid, rustix::process::Gid)>,
    pub(super) drop_groups: bool,
    /// (resource, soft, hard).
    pub(super) rlimits: [(Resource, u64, u64); 6],
    /// The Landlock ruleset (>= 3), if any.
    pub(super) landlock_fd: Option<BorrowedFd<'a>>,
    /// Seccomp programs, installed in order (each at most 65535 instructions); the kernel
    /// copies each program.
    pub(super) filters: &'a [&'static [libc::sock_filter]],
    /// `Some`: the namespaced chain (this child, then the tool as pid 1); `None`: the
    /// weaker mode, this child becomes the tool.
    pub(super) ns: Option<NsSpec<'a>>,
}

/// A failure of the child: where it stopped and the errno.
type Failed = (Stage, c_int);

/// `map_err` for a step of `stage`.
fn at(stage: Stage) -> impl Fn(Errno) -> Failed {
    move |e| (stage, e.raw_os_error())
}

/// Writes one 8-byte message (stage, value) to the report pipe (atomic on a pipe).
pub(super) fn report(fd: BorrowedFd<'_>, stage: u32, value: c_int) {
    let s = stage.to_ne_bytes();
    let e = value.to_ne_bytes();
    let msg = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
    let _ = rustix::io::write(fd, &msg);
}

/// Resets every caught signal to its default (see `child_exec`).
fn reset_signals() -> Result<(), Failed> {
    for sig in 1..=LAST_SIGNAL {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let Ok(old) = sys::sigaction(sig, false) else {
            continue; // Signals reserved by libc (EINVAL).
        };
        let keep = old == libc::SIG_DFL || (old == libc::SIG_IGN && sig != libc::SIGPIPE);
        if keep {
            continue;
        }
        sys::sigaction(sig, true).map_err(at(Stage::Signals))?;
    }
    Ok(())
}

/// Points fds 0, 1 and 2 at the child's pipes.
fn redirect_stdio(spec: &ChildSpec<'_>) -> Result<(), Failed> {
    // The sources are open in the child's own (copied) fd table and >= 3, so none is
    // clobbered; `dup2` (the duplicate has no CLOEXEC).
    let [stdin, stdout, stderr] = spec.stdio;
    rustix::stdio::dup2_stdin(stdin).map_err(at(Stage::Stdio))?;
    rustix::stdio::dup2_stdout(stdout).map_err(at(Stage::Stdio))?;
    rustix::stdio::dup2_stderr(stderr).map_err(at(Stage::Stdio))?;
    Ok(())
}

/// Switches to the run-as identity with raw, per-thread system calls: glibc's wrappers
/// would broadcast the change to this process's threads, which the child shares memory with.
fn switch_ids(spec: &ChildSpec<'_>) -> Result<(), Failed> {
    let Some((uid, gid)) = spec.ids else {
        return Ok(());
    };
    if spec.drop_groups {
        rustix::thread::set_thread_groups(&[]).map_err(at(Stage::Groups))?;
    }
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(at(Stage::Gid))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(at(Stage::Uid))?;
    Ok(())
}

/// Writes `data` to a file of `/proc/self` (uid and gid maps) in one `write`.
fn write_proc(path: &CStr, data: &[u8]) -> Result<(), Errno> {
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    let written = rustix::io::write(&fd, data);
    drop(fd);
    match written {
        Ok(n) if n == data.len() => Ok(()),
        Ok(_) => Err(Errno::IO),
        Err(e) => Err(e),
    }
}

/// In a tool's new network namespace (this child has `CAP_NET_ADMIN` there): brings `lo` up,
/// opens a TCP listener on [`PROXY_ADDR`] and sends it to this process over `channel`
/// (`SCM_RIGHTS`), which serves the egress proxy on it from the host's network namespace.
/// The listener is closed here before the tool is started, so the tool never holds it.
pub(super) fn setup_network(channel: BorrowedFd<'_>) -> Result<(), Errno> {
    use rustix::net::{
        AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
        SocketType,
    };
    sys::loopback_up()?;
    let listener = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&listener, &PROXY_ADDR)?;
    rustix::net::listen(&listener, 128)?;
    // One byte of data and one SCM_RIGHTS message; the buffers are on this stack.
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [listener.as_fd()];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Errno::NOBUFS);
    }
    let sent = rustix::net::sendmsg(
        channel,
        &[io::IoSlice::new(&[0])],
        &mut control,
        SendFlags::NOSIGNAL,
    );
    drop(listener);
    match sent {
        Ok(1) => Ok(()),
        Ok(_) => Err(Errno::IO),
        Err(e) => Err(e),
    }
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
fn child_exec(spec: &ChildSpec<'_>, tool_stack: &ChildStack) -> Failed {
    use rustix::process::DumpableBehavior;
    // Every signal arrives blocked (see `SignalsBlocked`). Handlers installed by this
    // process (tokio's SIGCHLD, std's SIGSEGV) must not run in the child: reset them to
    // the default, and SIGPIPE too (std ignores it; tools expect the default), as
    // posix_spawn does.
    if let Err(failed) = reset_signals() {
        return failed;
    }
    let Some(ns) = &spec.ns else {
        // The weaker mode: this process becomes the tool.
        if let Err(failed) = rustix::process::setpgid(None, None).map_err(at(Stage::ProcessGroup)) {
            return failed;
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
    if let Err(e) = sys::unshare_namespaces(ns.plan.flags) {
        return at(Stage::Unshare)(e);
    }
    // A uid switch made this process non-dumpable, which makes its /proc/self files
    // root's: dumpable just long enough to write its own maps.
    let _ = rustix::process::set_dumpable_behavior(DumpableBehavior::Dumpable);
    for (path, data) in [
        (c"/proc/self/setgroups", c"deny".to_bytes()),
        (c"/proc/self/uid_map", ns.plan.uid_map.to_bytes()),
        (c"/proc/self/gid_map", ns.plan.gid_map.to_bytes()),
    ] {
        if let Err(e) = write_proc(path, data) {
            return at(Stage::IdMap)(e);
        }
    }
    let _ = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable);
    drop(turn);
    // This child holds every capability of the new user namespace, which owns the new
    // network namespace: the only moment loopback can be brought up and the proxy's
    // listener opened there (the tool drops its capabilities before exec).
    if let Some(channel) = ns.channel
        && let Err(e) = setup_network(channel)
    {
        return at(Stage::Network)(e);
    }
    // The first child after unshare(CLONE_NEWPID) is pid 1 of the new namespace: the
    // tool itself. It shares this process's memory until it execs (CLONE_VM | CLONE_VFORK,
    // as this child does) on the second stack: no copy of the host's address space, and
    // nothing of it is left in the namespace once the tool runs.
    match sys::clone_vfork(tool_stack, tool_main, spec) {
        Ok(pid) => (Stage::Started, pid),
        Err(e) => at(Stage::Fork)(e),
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
fn mount_op(op: &MountOp) -> Result<(), Errno> {
    use rustix::{fs, mount, process};
    let mount_flags = |flags: libc::c_ulong| {
        u32::try_from(flags)
            .map(MountFlags::from_bits_retain)
            .map_err(|_| Errno::INVAL)
    };
    match op {
        MountOp::Mkdir(path) => match fs::mkdir(path, Mode::from_raw_mode(0o755)) {
            Err(Errno::EXIST) => Ok(()),
            other => other,
        },
        MountOp::Touch(path) => {
            // Read-only: on a read-only mount an existing file is still fine.
            fs::open(
                path,
                OFlags::RDONLY | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        }
        MountOp::Symlink { target, link } => fs::symlink(target, link),
        MountOp::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => match (source, fstype, data) {
            // A file system (tmpfs, proc).
            (Some(source), Some(fstype), data) => mount::mount(
                source,
                target,
                fstype,
                mount_flags(*flags)?,
                data.as_deref(),
            ),
            // A recursive bind mount: `mount(source, target, NULL, MS_BIND | MS_REC, NULL)`.
            (Some(source), None, None) if *flags == libc::MS_BIND | libc::MS_REC => {
                mount::mount_bind_recursive(source, target)
            }
            // A propagation change: `mount(NULL, target, NULL, flags, NULL)`.
            (None, None, None) => mount::mount_change(
                target,
                MountPropagationFlags::from_bits_retain(mount_flags(*flags)?.bits()),
            ),
            // Not a shape the plan makes.
            _ => Err(Errno::INVAL),
        },
        MountOp::Remount { target, flags } => {
            // The flags the kernel locks, as statfs reports them (the ST_* bits have the
            // values of the MS_* ones).
            let locked = fs::statvfs(target.as_c_str())?.f_flag
                & (StatVfsMountFlags::NOSUID
                    | StatVfsMountFlags::NODEV
                    | StatVfsMountFlags::NOEXEC
                    | StatVfsMountFlags::NOATIME
                    | StatVfsMountFlags::NODIRATIME
                    | StatVfsMountFlags::RELATIME);
            let locked = u32::try_from(locked.bits()).map_err(|_| Errno::INVAL)?;
            // `mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | flags | locked, "")`: a bind
            // remount ignores the data argument.
            mount::mount_remount(
                target,
                MountFlags::BIND | mount_flags(*flags)? | MountFlags::from_bits_retain(locked),
                c"",
            )
        }
        MountOp::PivotRoot { new_root, put_old } => process::pivot_root(new_root, put_old),
        MountOp::Detach(path) => mount::unmount(path, UnmountFlags::DETACH),
        MountOp::Chdir(path) => process::chdir(path),
    }
}

/// The tool's first steps as pid 1 of its namespaces: its own process group (the parent
/// kills it as a whole), the file system of the mount plan, the hostname and the Landlock
/// rules for the new `/proc`, `/dev` and `/tmp`.
fn enter_sandbox(spec: &ChildSpec<'_>, ns: &NsSpec<'_>) -> Result<(), (u32, c_int)> {
    let failed = |stage: Stage| move |e: Errno| (stage as u32, e.raw_os_error());
    rustix::process::setpgid(None, None).map_err(failed(Stage::ProcessGroup))?;
    for (step, op) in ns.plan.ops.iter().enumerate() {
        if let Err(e) = mount_op(op) {
            let step = u32::try_from(step).unwrap_or(0xffff) & 0xffff;
            return Err((Stage::Mount as u32 | (step << 16), e.raw_os_error()));
        }
    }
    let _ = rustix::system::sethostname(b"tool-sandbox");
    let Some(ruleset) = spec.landlock_fd else {
        return Ok(());
    };
    for (path, access) in &ns.plan.landlock_rules {
        // O_PATH opens no file contents; the fd is closed when dropped.
        let fd = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(failed(Stage::Landlock))?;
        sys::landlock_add_path_rule(ruleset, fd.as_fd(), *access)
            .map_err(failed(Stage::Landlock))?;
    }
    Ok(())
}

/// Drops every capability the process holds in its user namespace: bounding set, ambient
/// set, then effective, permitted and inheritable.
fn drop_capabilities(last_cap: c_int) -> Result<(), Errno> {
    let _ = rustix::thread::clear_ambient_capability_set();
    for cap in 0..=last_cap {
        // `last_cap` is at most 63 (see `last_capability`).
        let Some(bit) = u32::try_from(cap).ok().and_then(|c| 1u64.checked_shl(c)) else {
            continue;
        };
        match rustix::thread::remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(
            bit,
        )) {
            Ok(()) | Err(Errno::INVAL) => {}
            Err(e) => return Err(e),
        }
    }
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )
}

/// The tool's last steps before exec, common to both modes: working directory, rlimits,
/// (namespaced: no capabilities), `no_new_privs`, Landlock, seccomp, signal mask, exec.
fn confine_and_exec(spec: &ChildSpec<'_>) -> Failed {
    if let Err(e) = rustix::process::chdir(&spec.cwd) {
        return at(Stage::Chdir)(e);
    }
    for &(resource, soft, hard) in &spec.rlimits {
        let limit = Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        };
        if let Err(e) = rustix::process::setrlimit(resource, limit) {
            return at(Stage::Rlimit)(e);
        }
    }
    if let Some(ns) = &spec.ns
        && let Err(e) = drop_capabilities(ns.plan.last_cap)
    {
        return at(Stage::Capabilities)(e);
    }
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        return at(Stage::NoNewPrivs)(e);
    }
    // The ruleset fd is open in the child (CLOEXEC only closes it at exec).
    if let Some(ruleset) = spec.landlock_fd
        && let Err(e) = sys::landlock_restrict_self(ruleset)
    {
        return at(Stage::Landlock)(e);
    }
    for prog in spec.filters {
        if let Err(e) = sys::seccomp_set_filter(prog) {
            return at(Stage::Seccomp)(e);
        }
    }
    // Unblock everything (the mask survives exec), as std does for its children.
    if let Err(e) = sys::set_signal_mask(0) {
        return at(Stage::SignalMask)(e);
    }
    // As execvp: try each candidate, skip the ones that are not there, prefer EACCES.
    let mut failure = Errno::NOENT;
    let mut eacces = false;
    for path in &spec.candidates {
        let e = sys::execve(path, &spec.exec);
        match e {
            Errno::ACCESS => eacces = true,
            Errno::NOENT | Errno::NOTDIR | Errno::STALE | Errno::NODEV | Errno::TIMEDOUT => {}
            _ => return at(Stage::Exec)(e),
        }
        failure = e;
    }
    at(Stage::Exec)(if eacces { Errno::ACCESS } else { failure })
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
        let old = sys::set_signal_mask(!0)?;
        Ok(Self { old })
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
        result.map_err(io::Error::from)
    })
}
