//! Tools that run as subprocesses, confined and under resource limits.
//!
//! [`SandboxedCommand`] starts a program with:
//!
//! - a **cleared environment** (only the variables given with [`SandboxedCommand::env`]; `PATH`
//!   defaults to `/usr/bin:/bin`);
//! - its own **process group**, killed with `SIGKILL` (all descendants) on the wall-clock timeout,
//!   when its output goes past the cap, when the call is cancelled, and after a normal exit, so no
//!   background descendant outlives the call. Descendants cannot leave the group (`setsid` and
//!   `setpgid` are denied by seccomp). On Linux this process becomes a *child subreaper*
//!   (`PR_SET_CHILD_SUBREAPER`) on the first run, so killed descendants are re-parented to it and
//!   reaped here instead of being left to an init that may not reap them;
//! - **rlimits**: CPU seconds, address space, open files, file size, processes (`RLIMIT_NPROC`,
//!   which counts every process of the run-as uid and does not bind root: as root the tool runs
//!   as `nobody` by default) and no core dumps;
//! - `no_new_privs`, and on Linux a **seccomp** filter (fail closed: no filter, no run) and
//!   **Landlock** (best effort, reported in [`ProcessOutput::confinement`]; see
//!   [`SandboxedCommand::require_landlock`]): read and execute everywhere, write only inside the
//!   scratch directory and `/dev/null`;
//! - an **output cap** per stream: the process group is killed as soon as either stream goes
//!   past it and the result says [`Exit::OutputCapped`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), tool_sandbox::process::SandboxError> {
//! use std::time::Duration;
//! use tool_sandbox::process::{Exit, ProcessLimits, SandboxedCommand};
//!
//! let out = SandboxedCommand::new("/usr/bin/wc")
//!     .arg("-c")
//!     .stdin(b"hello".to_vec())
//!     .limits(ProcessLimits::default().with_wall_clock(Duration::from_secs(2)))
//!     .run()
//!     .await?;
//! assert_eq!(out.exit, Exit::Code(0));
//! assert_eq!(out.stdout, b"5\n");
//! # Ok(())
//! # }
//! ```
//!
//! # Seccomp policy
//!
//! Default action allow; the calls below fail with `EPERM`. Always: `io_uring_*` (io_uring can
//! open sockets behind seccomp's back), `setsid`, `setpgid`, `ptrace`, `process_vm_readv/writev`,
//! `unshare`, `setns`, `clone` with a namespace flag, `mount` and the new mount API, `umount2`,
//! `pivot_root`, `bpf`, `perf_event_open`, `userfaultfd`, `keyctl`, `add_key`, `request_key`,
//! `kexec_*`, `*_module`, `reboot`, `swapon`, `swapoff`. Without network: `socket` with a domain
//! other than `AF_UNIX`. `clone3` fails with `ENOSYS` (its flags cannot be inspected; libc falls
//! back to `clone`). The filter checks the architecture (another one kills the process) and, on
//! x86_64, x32 system calls kill the process.
#![allow(unsafe_code)] // pre_exec, setrlimit, prctl, seccomp, landlock and waitid need raw syscalls.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The uid and gid of `nobody`, the default identity when this process is root.
pub const NOBODY: u32 = 65_534;

/// How long the output pipes are drained after the process group was killed.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long `run` waits for killed descendants to be reaped before leaving it to a thread.
const REAP_LIMIT: Duration = Duration::from_secs(5);
/// Read buffer size per stream.
const CHUNK: usize = 64 * 1024;

/// Resource limits for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessLimits {
    /// Wall-clock time before the process group is killed ([`Exit::TimedOut`]).
    pub wall_clock: Duration,
    /// `RLIMIT_CPU`: CPU seconds (soft; the hard limit is one second more). `SIGXCPU`, then
    /// `SIGKILL`.
    pub cpu_seconds: u64,
    /// `RLIMIT_AS`: address space in bytes.
    pub address_space_bytes: u64,
    /// `RLIMIT_NOFILE`: open file descriptors.
    pub open_files: u64,
    /// `RLIMIT_FSIZE`: largest file the tool may write, in bytes (`SIGXFSZ` / `EFBIG` past it).
    pub file_size_bytes: u64,
    /// `RLIMIT_NPROC`: processes of the run-as uid, counted system wide. Does not bind root.
    pub processes: u64,
    /// Bytes kept per output stream; going past it kills the process group.
    pub output_bytes: usize,
}

impl Default for ProcessLimits {
    /// 10 s wall clock, 5 CPU seconds, 1 GiB address space, 64 files, 16 MiB files,
    /// 32 processes, 1 MiB of output per stream.
    fn default() -> Self {
        Self {
            wall_clock: Duration::from_secs(10),
            cpu_seconds: 5,
            address_space_bytes: 1 << 30,
            open_files: 64,
            file_size_bytes: 16 << 20,
            processes: 32,
            output_bytes: 1 << 20,
        }
    }
}

impl ProcessLimits {
    /// Sets [`ProcessLimits::wall_clock`].
    #[must_use]
    pub fn with_wall_clock(mut self, wall_clock: Duration) -> Self {
        self.wall_clock = wall_clock;
        self
    }

    /// Sets [`ProcessLimits::cpu_seconds`].
    #[must_use]
    pub fn with_cpu_seconds(mut self, cpu_seconds: u64) -> Self {
        self.cpu_seconds = cpu_seconds;
        self
    }

    /// Sets [`ProcessLimits::address_space_bytes`].
    #[must_use]
    pub fn with_address_space_bytes(mut self, bytes: u64) -> Self {
        self.address_space_bytes = bytes;
        self
    }

    /// Sets [`ProcessLimits::open_files`].
    #[must_use]
    pub fn with_open_files(mut self, open_files: u64) -> Self {
        self.open_files = open_files;
        self
    }

    /// Sets [`ProcessLimits::file_size_bytes`].
    #[must_use]
    pub fn with_file_size_bytes(mut self, bytes: u64) -> Self {
        self.file_size_bytes = bytes;
        self
    }

    /// Sets [`ProcessLimits::processes`].
    #[must_use]
    pub fn with_processes(mut self, processes: u64) -> Self {
        self.processes = processes;
        self
    }

    /// Sets [`ProcessLimits::output_bytes`].
    #[must_use]
    pub fn with_output_bytes(mut self, bytes: usize) -> Self {
        self.output_bytes = bytes;
        self
    }
}

/// The identity the tool runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunAs {
    /// The uid and gid of this process.
    Invoker,
    /// Explicit ids (this process must be root unless they are its own). Supplementary groups
    /// are dropped.
    Ids {
        /// User id.
        uid: u32,
        /// Group id.
        gid: u32,
    },
}

impl Default for RunAs {
    /// [`RunAs::Invoker`] when this process is not root; as root `nobody` (65534), because
    /// `RLIMIT_NPROC` does not bind root.
    fn default() -> Self {
        if nix::unistd::geteuid().is_root() {
            Self::Ids {
                uid: NOBODY,
                gid: NOBODY,
            }
        } else {
            Self::Invoker
        }
    }
}

/// Landlock enforcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LandlockStatus {
    /// Every restriction this module relies on is enforced (Landlock ABI 6 or later: writes
    /// including truncation and device ioctls, TCP for tools without network, signals and
    /// abstract UNIX sockets scoped to the sandbox). Newer rights are added when offered.
    Enforced,
    /// Landlock is active but the kernel lacks some of those rights (ABI 1 to 5).
    PartiallyEnforced,
    /// No Landlock (not built, not enabled, or not Linux).
    NotSupported,
}

/// The confinement applied to a run (or, from [`support`], offered by this kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Confinement {
    /// `PR_SET_NO_NEW_PRIVS` was set.
    pub no_new_privs: bool,
    /// The seccomp filter was installed.
    pub seccomp: bool,
    /// What Landlock enforced.
    pub landlock: LandlockStatus,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// The process exited with this code.
    Code(i32),
    /// The process was killed by this signal (e.g. `SIGXCPU` on the CPU limit).
    Signal(i32),
    /// The wall clock ran out and the process group was killed.
    TimedOut,
    /// The output went past the cap and the process group was killed.
    OutputCapped,
}

/// The result of [`SandboxedCommand::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessOutput {
    /// How the run ended.
    pub exit: Exit,
    /// Standard output, at most [`ProcessLimits::output_bytes`].
    pub stdout: Vec<u8>,
    /// Standard error, at most [`ProcessLimits::output_bytes`].
    pub stderr: Vec<u8>,
    /// Standard output went past the cap.
    pub stdout_truncated: bool,
    /// Standard error went past the cap.
    pub stderr_truncated: bool,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// The confinement that was applied.
    pub confinement: Confinement,
    /// Process id of the tool, also its process group id (gone when `run` returns).
    pub pid: u32,
}

/// Why a sandboxed run could not be performed. The tool never runs unconfined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The process could not be started, or failed to apply its confinement (uid, rlimits,
    /// `no_new_privs`, Landlock, seccomp) between fork and exec.
    #[error("failed to start the sandboxed process")]
    Spawn(#[source] io::Error),
    /// The seccomp filter cannot be built or the kernel lacks seccomp filtering.
    #[error("seccomp is unavailable: {reason}")]
    Seccomp {
        /// What failed.
        reason: String,
    },
    /// The Landlock ruleset could not be built, or Landlock is required and not supported.
    #[error("landlock is unavailable: {reason}")]
    Landlock {
        /// What failed.
        reason: String,
    },
    /// This process cannot switch to the requested identity (it is not root).
    #[error("cannot run as uid {uid} gid {gid} without root")]
    RunAs {
        /// Requested user id.
        uid: u32,
        /// Requested group id.
        gid: u32,
    },
    /// The sandbox is not implemented for this platform.
    #[error("process sandboxing is not supported on this platform")]
    Unsupported,
    /// Preparing the scratch directory or handling the child failed.
    #[error("sandbox i/o failed")]
    Io(#[source] io::Error),
}

/// A command to run under the sandbox. Built with [`SandboxedCommand::new`] and the builder
/// methods, consumed by [`SandboxedCommand::run`].
pub struct SandboxedCommand {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    limits: ProcessLimits,
    network: bool,
    run_as: Option<RunAs>,
    scratch_dir: Option<PathBuf>,
    scratch_parent: Option<PathBuf>,
    require_landlock: bool,
}

impl fmt::Debug for SandboxedCommand {
    // Environment values and stdin may hold secrets: names and sizes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_names: Vec<&OsStr> = self.env.iter().map(|(k, _)| k.as_os_str()).collect();
        f.debug_struct("SandboxedCommand")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env_names", &env_names)
            .field("stdin_bytes", &self.stdin.as_ref().map(Vec::len))
            .field("limits", &self.limits)
            .field("network", &self.network)
            .field("run_as", &self.run_as)
            .field("scratch_dir", &self.scratch_dir)
            .field("scratch_parent", &self.scratch_parent)
            .field("require_landlock", &self.require_landlock)
            .finish()
    }
}

impl SandboxedCommand {
    /// A command for `program` (a path, or a name looked up in the command's `PATH`), with no
    /// arguments, an empty environment, no stdin, default limits, no network, the default
    /// [`RunAs`] and a fresh private scratch directory.
    pub fn new(program: impl AsRef<Path>) -> Self {
        Self {
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            limits: ProcessLimits::default(),
            network: false,
            run_as: None,
            scratch_dir: None,
            scratch_parent: None,
            require_landlock: false,
        }
    }

    /// Adds an argument.
    #[must_use]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable. Nothing else is inherited; `PATH` is `/usr/bin:/bin`
    /// unless set here.
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().to_os_string();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.as_ref().to_os_string()));
        self
    }

    /// Bytes written to the tool's stdin (default: no stdin, `/dev/null`).
    #[must_use]
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Resource limits (default: [`ProcessLimits::default`]).
    #[must_use]
    pub fn limits(mut self, limits: ProcessLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Allows sockets other than `AF_UNIX` (default: denied).
    #[must_use]
    pub fn network(mut self, network: bool) -> Self {
        self.network = network;
        self
    }

    /// The identity of the tool (default: [`RunAs::default`]).
    #[must_use]
    pub fn run_as(mut self, run_as: RunAs) -> Self {
        self.run_as = Some(run_as);
        self
    }

    /// Uses an existing directory as the working and only writable directory. It is neither
    /// created, re-owned nor removed. Default: a fresh `0700` directory under the system temp
    /// dir, owned by the run-as uid and removed after the run.
    #[must_use]
    pub fn scratch_dir(mut self, path: impl AsRef<Path>) -> Self {
        self.scratch_dir = Some(path.as_ref().to_path_buf());
        self
    }

    /// Where the fresh scratch directory is created (default: [`std::env::temp_dir`]). A
    /// tmpfs such as `/dev/shm` makes the per-run directory much cheaper than a journalled
    /// disk. Ignored when [`SandboxedCommand::scratch_dir`] is given.
    #[must_use]
    pub fn scratch_parent(mut self, dir: impl AsRef<Path>) -> Self {
        self.scratch_parent = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Fails the run with [`SandboxError::Landlock`] when Landlock is not supported
    /// (default: false, Landlock is best effort and reported).
    #[must_use]
    pub fn require_landlock(mut self, require: bool) -> Self {
        self.require_landlock = require;
        self
    }

    /// Runs the command and collects its output. Cancelling the returned future kills the
    /// process group.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Seccomp`] when the filter cannot be built or seccomp is missing,
    /// [`SandboxError::Landlock`] when the ruleset cannot be built (or is required and not
    /// supported), [`SandboxError::RunAs`] when the identity cannot be switched,
    /// [`SandboxError::Spawn`] when the process cannot start or confine itself,
    /// [`SandboxError::Io`] for the scratch directory and pipes.
    pub async fn run(self) -> Result<ProcessOutput, SandboxError> {
        imp::run(self).await
    }
}

/// What this kernel and platform offer (probed once, then cached).
pub fn support() -> Confinement {
    imp::support()
}

/// Keeps at most `cap` bytes; remembers whether more arrived.
struct CappedBuf {
    data: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl CappedBuf {
    fn new(cap: usize) -> Self {
        Self {
            data: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Appends; returns true when this chunk went past the cap.
    fn push(&mut self, chunk: &[u8]) -> bool {
        let room = self.cap.saturating_sub(self.data.len());
        if chunk.len() > room {
            self.data.extend_from_slice(&chunk[..room]);
            self.truncated = true;
            true
        } else {
            self.data.extend_from_slice(chunk);
            false
        }
    }
}

/// One output pipe and its buffer.
struct Stream<R> {
    pipe: Option<R>,
    buf: CappedBuf,
    chunk: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Stream<R> {
    fn new(pipe: Option<R>, cap: usize) -> Self {
        Self {
            pipe,
            buf: CappedBuf::new(cap),
            chunk: vec![0; CHUNK],
        }
    }

    /// Reads one chunk. `Ok(true)` when the cap was passed; EOF and errors close the pipe.
    async fn read_once(&mut self) -> bool {
        let Some(pipe) = self.pipe.as_mut() else {
            return std::future::pending().await;
        };
        match pipe.read(&mut self.chunk).await {
            Ok(0) | Err(_) => {
                self.pipe = None;
                false
            }
            Ok(n) => self.buf.push(&self.chunk[..n]),
        }
    }

    /// Reads to EOF, keeping at most the cap.
    async fn drain(&mut self) {
        while self.pipe.is_some() {
            self.read_once().await;
        }
    }
}

fn exit_of(status: ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(sig)) => Exit::Signal(sig),
        (None, None) => Exit::Code(-1),
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd, RawFd};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Stdio;
    use std::sync::OnceLock;
    use std::time::Instant;

    use landlock::{
        ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, Scope,
    };
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch, sock_filter,
    };

    use super::{
        AsyncWriteExt, Confinement, DRAIN_LIMIT, Exit, LandlockStatus, ProcessOutput, REAP_LIMIT,
        RunAs, SandboxError, SandboxedCommand, Stream, exit_of,
    };

    /// The newest Landlock ABI this crate knows; `BestEffort` drops what the kernel lacks.
    const LANDLOCK_ABI: ABI = ABI::V10;
    /// The ABI from which every restriction this module relies on is enforced.
    const LANDLOCK_FULL_ABI: i64 = 6;

    /// The compiled seccomp programs, built once before any fork.
    struct Filters {
        policy_no_network: BpfProgram,
        policy_network: BpfProgram,
        clone3_enosys: BpfProgram,
        #[cfg(target_arch = "x86_64")]
        x32_kill: [sock_filter; 6],
    }

    static FILTERS: OnceLock<Result<Filters, String>> = OnceLock::new();
    static SUPPORT: OnceLock<Confinement> = OnceLock::new();
    static SUBREAPER: OnceLock<io::Result<()>> = OnceLock::new();

    fn target_arch() -> Result<TargetArch, String> {
        TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())
    }

    /// Syscalls denied for every tool.
    fn always_denied() -> Vec<i64> {
        let mut calls = vec![
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_setsid,
            libc::SYS_setpgid,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
            libc::SYS_fsopen,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_fspick,
            libc::SYS_mount_setattr,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_swapoff,
        ];
        calls.sort_unstable();
        calls.dedup();
        calls
    }

    fn build_policy(network: bool, arch: TargetArch) -> Result<BpfProgram, String> {
        let err = |e: seccompiler::BackendError| e.to_string();
        let mut rules = std::collections::BTreeMap::new();
        for nr in always_denied() {
            rules.insert(nr, Vec::new());
        }
        // clone(2) with any namespace flag (flags are the first argument on x86_64 and aarch64).
        let namespace_flags = [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ];
        let mut clone_rules = Vec::new();
        for flag in namespace_flags {
            let flag = u64::from(flag.unsigned_abs());
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .map_err(err)?;
            clone_rules.push(SeccompRule::new(vec![cond]).map_err(err)?);
        }
        rules.insert(libc::SYS_clone, clone_rules);
        if !network {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                u64::from(libc::AF_UNIX.unsigned_abs()),
            )
            .map_err(err)?;
            rules.insert(
                libc::SYS_socket,
                vec![SeccompRule::new(vec![cond]).map_err(err)?],
            );
        }
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM.unsigned_abs()),
            arch,
        )
        .map_err(err)?;
        BpfProgram::try_from(filter).map_err(err)
    }

    fn build_clone3(arch: TargetArch) -> Result<BpfProgram, String> {
        let err = |e: seccompiler::BackendError| e.to_string();
        let mut rules = std::collections::BTreeMap::new();
        rules.insert(libc::SYS_clone3, Vec::new());
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS.unsigned_abs()),
            arch,
        )
        .map_err(err)?;
        BpfProgram::try_from(filter).map_err(err)
    }

    /// x86_64: a system call number with the x32 bit set kills the process (the policy filter
    /// matches numbers, and x32 numbers would slip past it).
    #[cfg(target_arch = "x86_64")]
    fn build_x32_guard() -> [sock_filter; 6] {
        const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        // offsetof(struct seccomp_data, nr) == 0, arch == 4.
        let stmt = |code: u32, k: u32| sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jump = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        [
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
            // Other architectures are killed by the policy filter.
            jump(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                AUDIT_ARCH_X86_64,
                0,
                3,
            ),
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            jump(
                libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
                X32_SYSCALL_BIT,
                0,
                1,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ]
    }

    fn filters() -> Result<&'static Filters, SandboxError> {
        let built = FILTERS.get_or_init(|| {
            let arch = target_arch()?;
            Ok(Filters {
                policy_no_network: build_policy(false, arch)?,
                policy_network: build_policy(true, arch)?,
                clone3_enosys: build_clone3(arch)?,
                #[cfg(target_arch = "x86_64")]
                x32_kill: build_x32_guard(),
            })
        });
        built.as_ref().map_err(|reason| SandboxError::Seccomp {
            reason: reason.clone(),
        })
    }

    fn landlock_abi() -> i64 {
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

    fn landlock_status(abi: i64) -> LandlockStatus {
        if abi >= LANDLOCK_FULL_ABI {
            LandlockStatus::Enforced
        } else if abi >= 1 {
            LandlockStatus::PartiallyEnforced
        } else {
            LandlockStatus::NotSupported
        }
    }

    fn seccomp_filter_available() -> bool {
        // SAFETY: PR_GET_SECCOMP takes no pointers; it returns the mode or fails with EINVAL
        // when the kernel lacks seccomp.
        let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
        if mode < 0 {
            return false;
        }
        let action: u32 = libc::SECCOMP_RET_ERRNO;
        // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from a valid pointer.
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

    pub(super) fn support() -> Confinement {
        *SUPPORT.get_or_init(|| {
            let seccomp = seccomp_filter_available() && filters().is_ok();
            Confinement {
                no_new_privs: true,
                seccomp,
                landlock: landlock_status(landlock_abi()),
            }
        })
    }

    /// Reparents orphaned descendants to this process so that killed ones are reaped here.
    fn become_subreaper() -> Result<(), SandboxError> {
        let res = SUBREAPER.get_or_init(|| {
            // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag, no pointers.
            let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
        match res {
            Ok(()) => Ok(()),
            Err(e) => Err(SandboxError::Io(io::Error::new(e.kind(), e.to_string()))),
        }
    }

    /// Builds the Landlock ruleset (in the parent: the child only calls restrict_self).
    fn landlock_ruleset(
        scratch: &Path,
        network: bool,
    ) -> Result<(Option<OwnedFd>, LandlockStatus), SandboxError> {
        let abi = LANDLOCK_ABI;
        let err = |e: landlock::RulesetError| SandboxError::Landlock {
            reason: e.to_string(),
        };
        let path_err = |e: landlock::PathFdError| SandboxError::Landlock {
            reason: e.to_string(),
        };
        let status = support().landlock;
        if status == LandlockStatus::NotSupported {
            return Ok((None, status));
        }
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(abi))
            .map_err(err)?
            .scope(Scope::from_all(abi))
            .map_err(err)?;
        if !network {
            ruleset = ruleset
                .handle_access(AccessNet::from_all(abi))
                .map_err(err)?;
        }
        let created = ruleset
            .create()
            .map_err(err)?
            .add_rule(PathBeneath::new(
                PathFd::new("/").map_err(path_err)?,
                AccessFs::from_read(abi),
            ))
            .map_err(err)?
            .add_rule(PathBeneath::new(
                PathFd::new(scratch).map_err(path_err)?,
                AccessFs::from_all(abi),
            ))
            .map_err(err)?
            .add_rule(PathBeneath::new(
                PathFd::new("/dev/null").map_err(path_err)?,
                AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate,
            ))
            .map_err(err)?;
        let fd: Option<OwnedFd> = created.into();
        match fd {
            Some(fd) => Ok((Some(fd), status)),
            None => Ok((None, LandlockStatus::NotSupported)),
        }
    }

    /// The scratch directory: the caller's, or a fresh private one owned by the run-as ids.
    enum Scratch {
        Given(std::path::PathBuf),
        Temp(tempfile::TempDir),
    }

    impl Scratch {
        fn path(&self) -> &Path {
            match self {
                Self::Given(p) => p,
                Self::Temp(t) => t.path(),
            }
        }
    }

    fn make_scratch(
        parent: Option<&Path>,
        ids: Option<(u32, u32)>,
    ) -> Result<Scratch, SandboxError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("tool-sandbox-");
        let dir = match parent {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .map_err(SandboxError::Io)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(SandboxError::Io)?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(SandboxError::Io)?;
        }
        Ok(Scratch::Temp(dir))
    }

    /// Raw values captured by the pre_exec closure: no allocation happens after fork.
    #[derive(Clone, Copy)]
    struct ChildSetup {
        rlimits: [(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6],
        landlock_fd: RawFd,
        policy: &'static [sock_filter],
        clone3: &'static [sock_filter],
        #[cfg(target_arch = "x86_64")]
        x32: &'static [sock_filter],
    }

    fn install_filter(prog: &[sock_filter]) -> io::Result<()> {
        let len =
            u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        let fprog = libc::sock_fprog {
            len,
            // `seccompiler::sock_filter` is `#[repr(C)]` with the kernel's layout.
            filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: `fprog` points at a live, immutable BPF program; the kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &raw const fprog,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Runs in the child between fork and exec: raw syscalls only (async-signal-safe).
    fn confine_child(setup: &ChildSetup) -> io::Result<()> {
        for &(resource, soft, hard) in &setup.rlimits {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit reads one rlimit struct from a valid stack pointer.
            if unsafe { libc::setrlimit(resource, &raw const lim) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if setup.landlock_fd >= 0 {
            // SAFETY: the ruleset fd is open in the child (CLOEXEC only closes it at exec).
            let rc =
                unsafe { libc::syscall(libc::SYS_landlock_restrict_self, setup.landlock_fd, 0u32) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        #[cfg(target_arch = "x86_64")]
        install_filter(setup.x32)?;
        install_filter(setup.clone3)?;
        install_filter(setup.policy)?;
        Ok(())
    }

    fn killpg(pgid: i32) {
        // SAFETY: kill(2) with a negative pid signals the process group; no memory involved.
        // The group id cannot have been reused: the leader is not reaped yet (or the group
        // was already killed, see `Group`).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }

    /// Blocks until the leader has exited, without reaping it (the pid stays reserved).
    fn wait_exit_nowait(pid: i32) {
        loop {
            // SAFETY: `info` is a zeroed siginfo_t the kernel writes to.
            let rc = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(
                    libc::P_PID,
                    pid.unsigned_abs(),
                    &raw mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
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
        // SAFETY: `info` is a zeroed siginfo_t the kernel writes to.
        let (rc, reaped) = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(libc::P_PGID, pgid.unsigned_abs(), &raw mut info, flags);
            (rc, info.si_pid() != 0)
        };
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
    async fn reap_group(pgid: i32) {
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
    struct Group {
        pgid: i32,
        killed: bool,
        done: bool,
    }

    impl Group {
        fn kill(&mut self) {
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

    pub(super) async fn run(cmd: SandboxedCommand) -> Result<ProcessOutput, SandboxError> {
        let start = Instant::now();
        let offered = support();
        if !offered.seccomp {
            return Err(SandboxError::Seccomp {
                reason: "the kernel does not offer seccomp filtering".to_owned(),
            });
        }
        if cmd.require_landlock && offered.landlock == LandlockStatus::NotSupported {
            return Err(SandboxError::Landlock {
                reason: "required but not supported by this kernel".to_owned(),
            });
        }
        let filters = filters()?;
        let run_as = cmd.run_as.unwrap_or_default();
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        let ids = match run_as {
            RunAs::Invoker => None,
            RunAs::Ids { uid, gid } => {
                if euid != 0 && (uid != euid || gid != egid) {
                    return Err(SandboxError::RunAs { uid, gid });
                }
                Some((uid, gid))
            }
        };
        become_subreaper()?;
        let scratch = match &cmd.scratch_dir {
            Some(dir) => Scratch::Given(dir.clone()),
            None => make_scratch(
                cmd.scratch_parent.as_deref(),
                ids.filter(|&(uid, gid)| uid != euid || gid != egid),
            )?,
        };
        let (landlock_fd, landlock) = landlock_ruleset(scratch.path(), cmd.network)?;
        if cmd.require_landlock && landlock == LandlockStatus::NotSupported {
            return Err(SandboxError::Landlock {
                reason: "required but not supported by this kernel".to_owned(),
            });
        }

        let l = cmd.limits;
        let setup = ChildSetup {
            rlimits: [
                (
                    libc::RLIMIT_CPU,
                    l.cpu_seconds,
                    l.cpu_seconds.saturating_add(1),
                ),
                (
                    libc::RLIMIT_AS,
                    l.address_space_bytes,
                    l.address_space_bytes,
                ),
                (libc::RLIMIT_NOFILE, l.open_files, l.open_files),
                (libc::RLIMIT_FSIZE, l.file_size_bytes, l.file_size_bytes),
                (libc::RLIMIT_NPROC, l.processes, l.processes),
                (libc::RLIMIT_CORE, 0, 0),
            ],
            landlock_fd: landlock_fd.as_ref().map_or(-1, AsRawFd::as_raw_fd),
            policy: if cmd.network {
                &filters.policy_network
            } else {
                &filters.policy_no_network
            },
            clone3: &filters.clone3_enosys,
            #[cfg(target_arch = "x86_64")]
            x32: &filters.x32_kill,
        };

        let mut command = tokio::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .env_clear()
            .current_dir(scratch.path())
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if !cmd.env.iter().any(|(k, _)| k == "PATH") {
            command.env("PATH", "/usr/bin:/bin");
        }
        command.envs(cmd.env.iter().map(|(k, v)| (k, v)));
        if let Some((uid, gid)) = ids {
            command.uid(uid).gid(gid);
        }
        // SAFETY: the closure only reads the captured `Copy` data and makes raw syscalls
        // (setrlimit, prctl, landlock_restrict_self, seccomp): no allocation, no locks, which
        // is what may run between fork and exec of a multi-threaded process.
        unsafe {
            command.pre_exec(move || confine_child(&setup));
        }
        let mut child = command.spawn().map_err(SandboxError::Spawn)?;
        drop(landlock_fd);
        let pid = child.id().ok_or_else(|| {
            SandboxError::Io(io::Error::other("the child has no pid after spawn"))
        })?;
        let pgid = i32::try_from(pid)
            .map_err(|_| SandboxError::Io(io::Error::other("pid out of range")))?;
        let mut group = Group {
            pgid,
            killed: false,
            done: false,
        };

        let cap = l.output_bytes;
        let mut out = Stream::new(child.stdout.take(), cap);
        let mut err = Stream::new(child.stderr.take(), cap);
        let mut stdin = child.stdin.take();
        let input = cmd.stdin.unwrap_or_default();
        let feed = async {
            if let Some(pipe) = stdin.as_mut() {
                // A tool that does not read its stdin closes the pipe: not an error.
                let _ = pipe.write_all(&input).await;
            }
            drop(stdin.take());
            std::future::pending::<()>().await;
        };
        tokio::pin!(feed);
        let exited = tokio::task::spawn_blocking(move || wait_exit_nowait(pgid));
        tokio::pin!(exited);
        let deadline = tokio::time::sleep(l.wall_clock);
        tokio::pin!(deadline);

        let mut forced: Option<Exit> = None;
        loop {
            tokio::select! {
                _ = &mut exited => break,
                () = &mut deadline => {
                    forced = Some(Exit::TimedOut);
                    break;
                }
                capped = out.read_once() => if capped {
                    forced = Some(Exit::OutputCapped);
                    break;
                },
                capped = err.read_once() => if capped {
                    forced = Some(Exit::OutputCapped);
                    break;
                },
                () = &mut feed => {}
            }
        }
        // The leader has exited (zombie, pid reserved) or is being killed: kill the group.
        group.kill();
        let status = child.wait().await.map_err(SandboxError::Io)?;
        let drained = tokio::time::timeout(DRAIN_LIMIT, async {
            tokio::join!(out.drain(), err.drain());
        })
        .await;
        if drained.is_err() {
            tracing::warn!(pid, "sandboxed process output not closed after kill");
        }
        reap_group(pgid).await;
        group.done = true;
        drop(scratch);

        Ok(ProcessOutput {
            exit: forced.unwrap_or_else(|| exit_of(status)),
            stdout_truncated: out.buf.truncated,
            stderr_truncated: err.buf.truncated,
            stdout: out.buf.data,
            stderr: err.buf.data,
            elapsed: start.elapsed(),
            confinement: Confinement {
                no_new_privs: true,
                seccomp: true,
                landlock,
            },
            pid,
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::{Confinement, LandlockStatus, ProcessOutput, SandboxError, SandboxedCommand};

    pub(super) fn support() -> Confinement {
        Confinement {
            no_new_privs: false,
            seccomp: false,
            landlock: LandlockStatus::NotSupported,
        }
    }

    /// Fails closed: without seccomp the tool would run unconfined.
    pub(super) async fn run(_cmd: SandboxedCommand) -> Result<ProcessOutput, SandboxError> {
        Err(SandboxError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_buf_keeps_the_cap_and_flags_the_excess() {
        let mut buf = CappedBuf::new(4);
        assert!(!buf.push(b"ab"));
        assert!(!buf.push(b"cd"));
        assert!(!buf.truncated);
        assert!(buf.push(b"e"));
        assert!(buf.truncated);
        assert_eq!(buf.data, b"abcd");
    }

    #[test]
    fn debug_prints_env_names_not_values() {
        let cmd = SandboxedCommand::new("/bin/true")
            .env("API_KEY", "hunter2")
            .stdin(b"secret-input".to_vec());
        let text = format!("{cmd:?}");
        assert!(text.contains("API_KEY"));
        assert!(!text.contains("hunter2"));
        assert!(!text.contains("secret-input"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn seccomp_programs_build() {
        assert!(support().seccomp, "seccomp filters must build on linux");
    }
}
