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
#![allow(unsafe_code)] // clone(CLONE_VM|CLONE_VFORK), setrlimit, prctl, seccomp, landlock and waitid need raw syscalls.

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

/// System paths a tool may read by default: enough for the system's interpreters and
/// command-line tools (`/usr` and the merged-`/usr` links, the dynamic loader's configuration,
/// `/etc/alternatives`, time zone, CA certificates, resolver files). Paths missing on the host
/// are skipped. Replace the list with [`SandboxedCommand::read_only_paths`].
pub const DEFAULT_READ_ONLY_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/ssl/certs",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
];

/// How a run is isolated from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// Own user, mount, PID, IPC, UTS and cgroup namespaces, and a network namespace with no
    /// interface for tools without network. Refused with [`SandboxError::NamespacesUnavailable`]
    /// when the kernel or the host's policy does not allow unprivileged user namespaces.
    #[default]
    Namespaces,
    /// As [`Isolation::Namespaces`] when available; otherwise the documented **weaker mode**:
    /// one confined process in the host's namespaces (uid switch, rlimits, process group,
    /// `no_new_privs`, seccomp, Landlock limiting reads to the read-only paths and writes to
    /// the scratch directory). The tool then shares the host's `/proc`, network namespace
    /// (seccomp still denies inet sockets without network) and abstract UNIX socket space
    /// (Landlock ABI 6 scopes it), and without Landlock it can read whatever its uid can.
    /// [`Confinement::namespaces`] says which mode ran.
    NamespacesOrWeaker,
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
    /// The run had its own namespaces ([`Isolation::Namespaces`]); false in the weaker mode.
    /// From [`support`]: this host lets this process create them.
    pub namespaces: bool,
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
    /// The run needs its own namespaces and this host does not allow them (no unprivileged
    /// user namespaces, or a policy denies them); nothing ran. Opt into the weaker mode with
    /// [`Isolation::NamespacesOrWeaker`].
    #[error("namespaces are unavailable: {reason}")]
    NamespacesUnavailable {
        /// What failed.
        reason: String,
    },
    /// A read-only path is not absolute, contains `..`, or lies under `/proc`, `/dev` or
    /// `/tmp` (which the sandbox provides itself).
    #[error("invalid read-only path: {0}")]
    InvalidReadOnlyPath(PathBuf),
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
    isolation: Isolation,
    read_only: Vec<PathBuf>,
    namespaces_unavailable: bool,
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
            .field("isolation", &self.isolation)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
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
            isolation: Isolation::default(),
            read_only: DEFAULT_READ_ONLY_PATHS.iter().map(PathBuf::from).collect(),
            namespaces_unavailable: false,
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
    /// created, re-owned nor removed. Default: a fresh `0700` directory, owned by the run-as
    /// uid and removed after the run, under the system temp dir (`TMPDIR`); see
    /// [`SandboxedCommand::scratch_parent`]. [`ProcessLimits::file_size_bytes`] bounds each file a
    /// tool writes; bound the directory as a whole with the filesystem it lives on.
    #[must_use]
    pub fn scratch_dir(mut self, path: impl AsRef<Path>) -> Self {
        self.scratch_dir = Some(path.as_ref().to_path_buf());
        self
    }

    /// Where the fresh scratch directory is created (default: see
    /// [`SandboxedCommand::scratch_dir`]). A tmpfs such as `/dev/shm` makes the per-run
    /// directory cheaper than a journalled disk, at the price of tool files using memory.
    /// Ignored when
    /// [`SandboxedCommand::scratch_dir`] is given.
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

    /// How the run is isolated (default: [`Isolation::Namespaces`], refused when unavailable).
    #[must_use]
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// The host paths the tool may read (and execute), replacing
    /// [`DEFAULT_READ_ONLY_PATHS`]. Each is mounted read-only at the same place in the tool's
    /// file system (a symbolic link is recreated as a link) and is the only thing Landlock
    /// lets it read besides its scratch directory, its private `/tmp`, `/proc` and a few
    /// device nodes. Paths missing on the host are skipped.
    #[must_use]
    pub fn read_only_paths<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        self.read_only = paths
            .into_iter()
            .map(|p| p.as_ref().to_path_buf())
            .collect();
        self
    }

    /// Test hook: behave as if this host did not allow namespaces, to exercise the refusal
    /// and [`Isolation::NamespacesOrWeaker`] without changing the machine.
    #[doc(hidden)]
    #[must_use]
    pub fn simulate_namespaces_unavailable(mut self, unavailable: bool) -> Self {
        self.namespaces_unavailable = unavailable;
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
    /// [`SandboxError::NamespacesUnavailable`] when namespaces are required and unavailable,
    /// [`SandboxError::InvalidReadOnlyPath`] for an unusable read-only path,
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
    use std::ffi::{CString, OsStr, c_char, c_int, c_void};
    use std::io::{self, Read};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::ExitStatus;
    use std::sync::OnceLock;
    use std::time::Instant;

    use landlock::{
        ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, Scope,
    };
    #[cfg(test)]
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

    /// The compiled seccomp programs (one per network setting), built once before any spawn.
    struct Filters {
        policy_no_network: Vec<libc::sock_filter>,
        policy_network: Vec<libc::sock_filter>,
    }

    static FILTERS: OnceLock<Result<Filters, String>> = OnceLock::new();
    static SUPPORT: OnceLock<Confinement> = OnceLock::new();
    static SUBREAPER: OnceLock<io::Result<()>> = OnceLock::new();

    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;
    #[cfg(target_arch = "riscv64")]
    const AUDIT_ARCH: u32 = 243 | 0x8000_0000 | 0x4000_0000;
    /// x86_64: system call numbers with this bit are x32 calls.
    #[cfg(target_arch = "x86_64")]
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    /// `offsetof(struct seccomp_data, ...)`: nr, arch, and the low 32 bits of args[0].
    const DATA_NR: u32 = 0;
    const DATA_ARCH: u32 = 4;
    #[cfg(target_endian = "little")]
    const DATA_ARG0_LOW: u32 = 16;
    #[cfg(target_endian = "big")]
    const DATA_ARG0_LOW: u32 = 20;

    /// What the filter does with one system call.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Act {
        /// `clone`: `EPERM` with a namespace flag, else allowed.
        Clone,
        /// `socket`: `EPERM` unless the domain is `AF_UNIX`.
        Socket,
        Allow,
        Deny,
        NoSys,
        Kill,
    }

    /// Action blocks in program order (jumps only go forward).
    const ACT_ORDER: [Act; 6] = [
        Act::Clone,
        Act::Socket,
        Act::Allow,
        Act::Deny,
        Act::NoSys,
        Act::Kill,
    ];

    /// A jump target during layout: `n` instructions ahead, or an action block.
    #[derive(Debug, Clone, Copy)]
    enum Jump {
        Skip(usize),
        To(Act),
    }

    #[derive(Debug, Clone, Copy)]
    struct Ins {
        code: u32,
        k: u32,
        jt: Jump,
        jf: Jump,
    }

    fn stmt(code: u32, k: u32) -> Ins {
        Ins {
            code,
            k,
            jt: Jump::Skip(0),
            jf: Jump::Skip(0),
        }
    }

    fn jump(code: u32, k: u32, jt: Jump, jf: Jump) -> Ins {
        Ins { code, k, jt, jf }
    }

    const LD_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    const JGE: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
    const JSET: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
    const RET: u32 = libc::BPF_RET | libc::BPF_K;

    fn ret(k: u32) -> Ins {
        stmt(RET, k)
    }

    /// A binary search over the sorted special system calls, so that every number is decided
    /// in a few comparisons (the kernel emulates the filter for every number when it is
    /// installed, to cache the always-allowed ones: a linear chain makes that slow).
    fn search_tree(entries: &[(u32, Act)]) -> Vec<Ins> {
        if entries.len() <= 3 {
            let mut code: Vec<Ins> = entries
                .iter()
                .map(|&(nr, act)| jump(JEQ, nr, Jump::To(act), Jump::Skip(0)))
                .collect();
            code.push(ret(libc::SECCOMP_RET_ALLOW));
            return code;
        }
        let (left, right) = entries.split_at(entries.len() / 2);
        let (left, right_first) = (search_tree(left), right.first().map_or(0, |e| e.0));
        let right = search_tree(right);
        let mut code = Vec::with_capacity(1 + left.len() + right.len());
        code.push(jump(
            JGE,
            right_first,
            Jump::Skip(left.len()),
            Jump::Skip(0),
        ));
        code.extend(left);
        code.extend(right);
        code
    }

    fn ns_clone_mask() -> u32 {
        [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
        ]
        .iter()
        .fold(0, |mask, flag| mask | flag.unsigned_abs())
    }

    /// The whole policy as one classic BPF program (see the module docs).
    fn compile_policy(network: bool) -> Result<Vec<libc::sock_filter>, String> {
        let nr = |n: i64| u32::try_from(n).map_err(|_| format!("system call {n} out of range"));
        let mut entries = Vec::new();
        for n in always_denied() {
            entries.push((nr(n)?, Act::Deny));
        }
        entries.push((nr(libc::SYS_clone)?, Act::Clone));
        entries.push((nr(libc::SYS_clone3)?, Act::NoSys));
        if !network {
            entries.push((nr(libc::SYS_socket)?, Act::Socket));
        }
        entries.sort_unstable_by_key(|e| e.0);
        if entries.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err("a system call has two rules".to_owned());
        }

        let errno =
            |e: c_int| libc::SECCOMP_RET_ERRNO | (e.unsigned_abs() & libc::SECCOMP_RET_DATA);
        let mut code = vec![
            stmt(LD_ABS, DATA_ARCH),
            // Another architecture's numbers mean other calls: kill.
            jump(JEQ, AUDIT_ARCH, Jump::Skip(1), Jump::Skip(0)),
            ret(libc::SECCOMP_RET_KILL_PROCESS),
            stmt(LD_ABS, DATA_NR),
        ];
        // x32 numbers would slip past the number checks: kill.
        #[cfg(target_arch = "x86_64")]
        code.push(jump(
            JSET,
            X32_SYSCALL_BIT,
            Jump::To(Act::Kill),
            Jump::Skip(0),
        ));
        code.extend(search_tree(&entries));
        let mut blocks = Vec::new();
        for act in ACT_ORDER {
            blocks.push((act, code.len()));
            match act {
                Act::Clone => code.extend([
                    stmt(LD_ABS, DATA_ARG0_LOW),
                    jump(JSET, ns_clone_mask(), Jump::To(Act::Deny), Jump::Skip(0)),
                    ret(libc::SECCOMP_RET_ALLOW),
                ]),
                Act::Socket => code.extend([
                    stmt(LD_ABS, DATA_ARG0_LOW),
                    jump(
                        JEQ,
                        libc::AF_UNIX.unsigned_abs(),
                        Jump::To(Act::Allow),
                        Jump::To(Act::Deny),
                    ),
                ]),
                Act::Allow => code.push(ret(libc::SECCOMP_RET_ALLOW)),
                Act::Deny => code.push(ret(errno(libc::EPERM))),
                Act::NoSys => code.push(ret(errno(libc::ENOSYS))),
                Act::Kill => code.push(ret(libc::SECCOMP_RET_KILL_PROCESS)),
            }
        }

        let offset = |at: usize, target: Jump| -> Result<u8, String> {
            let skip = match target {
                Jump::Skip(n) => n,
                Jump::To(act) => {
                    let pos = blocks
                        .iter()
                        .find(|(a, _)| *a == act)
                        .map(|&(_, pos)| pos)
                        .ok_or("missing action block")?;
                    pos.checked_sub(at + 1).ok_or("backward jump")?
                }
            };
            u8::try_from(skip).map_err(|_| "jump too far".to_owned())
        };
        let mut prog = Vec::with_capacity(code.len());
        for (at, ins) in code.iter().enumerate() {
            prog.push(libc::sock_filter {
                code: u16::try_from(ins.code).map_err(|_| "bad opcode")?,
                jt: offset(at, ins.jt)?,
                jf: offset(at, ins.jf)?,
                k: ins.k,
            });
        }
        if prog.len() > usize::from(libc::BPF_MAXINSNS as u16) {
            return Err("program too long".to_owned());
        }
        Ok(prog)
    }

    #[cfg(test)]
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

    #[cfg(test)]
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

    #[cfg(test)]
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
    #[cfg(all(test, target_arch = "x86_64"))]
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
            Ok(Filters {
                policy_no_network: compile_policy(false)?,
                policy_network: compile_policy(true)?,
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
        read_only: &[PathBuf],
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
        let mut created = ruleset.create().map_err(err)?;
        // Reads only beneath the read-only paths (host inodes, also what is mounted inside);
        // the fresh /proc, /dev and /tmp of a namespaced run are added by its init.
        for path in read_only {
            match PathFd::new(path) {
                Ok(fd) => {
                    created = created
                        .add_rule(PathBeneath::new(fd, AccessFs::from_read(abi)))
                        .map_err(err)?;
                }
                Err(_) if !path.exists() => {}
                Err(e) => return Err(path_err(e)),
            }
        }
        for device in DEVICES {
            if let Ok(fd) = PathFd::new(format!("/dev/{device}")) {
                created = created
                    .add_rule(PathBeneath::new(
                        fd,
                        AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate,
                    ))
                    .map_err(err)?;
            }
        }
        let created = created
            .add_rule(PathBeneath::new(
                PathFd::new(scratch).map_err(path_err)?,
                AccessFs::from_all(abi),
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
        Given(PathBuf),
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

    /// Signals are 1..=64 on Linux (`_NSIG - 1`).
    const LAST_SIGNAL: c_int = 64;
    /// The child's stack between clone and exec (it only makes system calls), plus a guard page.
    const CHILD_STACK_BYTES: usize = 128 * 1024;

    /// Where the child stopped; reported with the errno for diagnostics.
    #[derive(Debug, Clone, Copy)]
    #[repr(u32)]
    enum Stage {
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
    }

    /// Indexed by `Stage as usize`.
    const STAGE_NAMES: [&str; 13] = [
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
    ];

    /// Everything the child needs, prepared by the parent. Between clone and exec the child
    /// shares this process's memory (`CLONE_VM`): it only reads this and makes system calls
    /// (no allocation, no locks, no glibc `set*id` wrappers, which would signal this
    /// process's threads). Not `Send` (raw pointers): built and dropped within `spawn`.
    struct ChildSpec {
        /// Paths to `execve`, in order (one, or the `PATH` lookup of a bare name).
        candidates: Vec<CString>,
        /// NUL-terminated arrays pointing into `_strings`.
        argv: Vec<*const c_char>,
        envp: Vec<*const c_char>,
        _strings: Vec<CString>,
        cwd: CString,
        /// Sources for fds 0, 1, 2 (all >= 3, so no dup2 clobbers another source).
        stdio: [RawFd; 3],
        /// Write end of the CLOEXEC report pipe (stage and errno on failure).
        report: RawFd,
        ids: Option<(libc::c_long, libc::c_long)>,
        drop_groups: bool,
        rlimits: [(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6],
        /// -1 without Landlock.
        landlock_fd: RawFd,
        /// Installed in order; the kernel copies each program.
        filters: Vec<libc::sock_fprog>,
    }

    fn errno() -> c_int {
        // SAFETY: __errno_location returns this thread's errno slot (the child shares the
        // suspended parent thread's TLS, as glibc's own posix_spawn child does).
        unsafe { *libc::__errno_location() }
    }

    /// The child's code between clone and exec: raw system calls only, no panics.
    fn child_exec(spec: &ChildSpec) -> (Stage, c_int) {
        // Every signal arrives blocked (see `SignalsBlocked`). Handlers installed by this
        // process (tokio's SIGCHLD, std's SIGSEGV) must not run in the child: reset them to
        // the default, and SIGPIPE too (std ignores it; tools expect the default), as
        // posix_spawn does.
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
                return (Stage::Signals, errno());
            }
        }
        // SAFETY: setpgid takes integers only.
        if unsafe { libc::setpgid(0, 0) } != 0 {
            return (Stage::ProcessGroup, errno());
        }
        for (target, &fd) in (0..).zip(&spec.stdio) {
            // SAFETY: dup2 on descriptors open in the child's own (copied) fd table; the
            // duplicate has no CLOEXEC and the source is >= 3, so none is clobbered.
            if unsafe { libc::dup2(fd, target) } < 0 {
                return (Stage::Stdio, errno());
            }
        }
        if let Some((uid, gid)) = spec.ids {
            // Raw system calls: glibc's wrappers would broadcast the change to this
            // process's threads, which the child shares memory with.
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
                    return (Stage::Groups, errno());
                }
            }
            // SAFETY: setresgid takes integers only.
            if unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } != 0 {
                return (Stage::Gid, errno());
            }
            // SAFETY: setresuid takes integers only.
            if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } != 0 {
                return (Stage::Uid, errno());
            }
        }
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
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return (Stage::NoNewPrivs, errno());
        }
        if spec.landlock_fd >= 0 {
            // SAFETY: the ruleset fd is open in the child (CLOEXEC only closes it at exec).
            let rc =
                unsafe { libc::syscall(libc::SYS_landlock_restrict_self, spec.landlock_fd, 0u32) };
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
        let spec = unsafe { &*arg.cast::<ChildSpec>() };
        let (stage, code) = child_exec(spec);
        let s = (stage as u32).to_ne_bytes();
        let e = code.to_ne_bytes();
        let msg = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
        // SAFETY: write of a stack buffer to the report pipe (8 bytes: atomic), then _exit,
        // which runs no atexit handlers and touches no shared state.
        unsafe {
            libc::write(spec.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    }

    /// An mmap'd stack for the child with a guard page below it.
    struct ChildStack {
        base: *mut c_void,
        len: usize,
    }

    impl ChildStack {
        fn new() -> io::Result<Self> {
            // SAFETY: sysconf takes an integer.
            let page =
                usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
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
        fn top(&self) -> *mut c_void {
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
        fn new() -> io::Result<Self> {
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
    fn spawn_child(spec: &ChildSpec) -> io::Result<i32> {
        thread_local! {
            // One stack per thread, reused: this thread is suspended while a child uses it.
            static STACK: std::cell::OnceCell<ChildStack> = const { std::cell::OnceCell::new() };
        }
        STACK.with(|cell| {
            let stack = match cell.get() {
                Some(stack) => stack,
                None => {
                    let stack = ChildStack::new()?;
                    cell.get_or_init(|| stack)
                }
            };
            clone_on(stack, spec)
        })
    }

    fn clone_on(stack: &ChildStack, spec: &ChildSpec) -> io::Result<i32> {
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

    fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0 as c_int; 2];
        // SAFETY: pipe2 writes two fds into a valid array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// A descriptor the child dup2s or uses must not be 0, 1 or 2 (a dup2 would clobber it).
    fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
        if fd.as_raw_fd() > 2 {
            Ok(fd)
        } else {
            fd.try_clone() // F_DUPFD_CLOEXEC from 3.
        }
    }

    fn invalid(what: &str) -> SandboxError {
        SandboxError::Spawn(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte or is malformed"),
        ))
    }

    fn cstring(bytes: &[u8], what: &str) -> Result<CString, SandboxError> {
        CString::new(bytes).map_err(|_| invalid(what))
    }

    /// The paths to try for `program`: itself when it has a `/`, else each `PATH` entry
    /// (an empty entry is the working directory), as execvp.
    fn candidates(program: &OsStr, path: &OsStr) -> Result<Vec<CString>, SandboxError> {
        let program = program.as_bytes();
        if program.is_empty() {
            return Err(SandboxError::Spawn(io::Error::from_raw_os_error(
                libc::ENOENT,
            )));
        }
        if program.contains(&b'/') {
            return Ok(vec![cstring(program, "the program")?]);
        }
        path.as_bytes()
            .split(|&b| b == b':')
            .map(|dir| {
                if dir.is_empty() {
                    cstring(program, "the program")
                } else {
                    let mut full = Vec::with_capacity(dir.len() + 1 + program.len());
                    full.extend_from_slice(dir);
                    full.push(b'/');
                    full.extend_from_slice(program);
                    cstring(&full, "PATH")
                }
            })
            .collect()
    }

    /// The parent's ends of the child's pipes.
    struct Spawned {
        pid: i32,
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    }

    /// Settings for `spawn` that come from the run, not the command.
    struct SpawnConfig<'a> {
        cwd: &'a Path,
        ids: Option<(u32, u32)>,
        drop_groups: bool,
        rlimits: [(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t); 6],
        landlock_fd: Option<&'a OwnedFd>,
        filters: &'a [&'static [libc::sock_filter]],
    }

    /// Starts the confined child. Returns once it has exec'd; any failure before that (uid,
    /// rlimits, no_new_privs, Landlock, seccomp, exec) is an error and the child is reaped.
    fn spawn(cmd: &SandboxedCommand, config: &SpawnConfig<'_>) -> Result<Spawned, SandboxError> {
        let spawn_err = SandboxError::Spawn;
        // Program, argv and a sorted environment (PATH defaults to /usr/bin:/bin).
        let default_path = OsStr::new("/usr/bin:/bin");
        let mut env: Vec<(&OsStr, &OsStr)> = cmd
            .env
            .iter()
            .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
            .collect();
        if !env.iter().any(|(k, _)| *k == "PATH") {
            env.push((OsStr::new("PATH"), default_path));
        }
        env.sort_by(|a, b| a.0.cmp(b.0));
        let path = env
            .iter()
            .find(|(k, _)| *k == "PATH")
            .map_or(default_path, |(_, v)| *v);
        let candidates = candidates(cmd.program.as_os_str(), path)?;
        let mut strings = Vec::with_capacity(1 + cmd.args.len() + env.len());
        strings.push(cstring(cmd.program.as_os_str().as_bytes(), "the program")?);
        for arg in &cmd.args {
            strings.push(cstring(arg.as_bytes(), "an argument")?);
        }
        let argc = strings.len();
        for (k, v) in &env {
            let (k, v) = (k.as_bytes(), v.as_bytes());
            if k.is_empty() || k.contains(&b'=') {
                return Err(invalid("an environment variable name"));
            }
            let mut kv = Vec::with_capacity(k.len() + 1 + v.len());
            kv.extend_from_slice(k);
            kv.push(b'=');
            kv.extend_from_slice(v);
            strings.push(cstring(&kv, "an environment variable")?);
        }
        let pointers = |s: &[CString]| -> Vec<*const c_char> {
            s.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let argv = pointers(&strings[..argc]);
        let envp = pointers(&strings[argc..]);

        // Pipes: the child's ends are CLOEXEC (dup2 clears it on 0, 1, 2).
        let (stdin_child, stdin_parent) = if cmd.stdin.is_some() {
            let (r, w) = pipe().map_err(SandboxError::Io)?;
            (r, Some(w))
        } else {
            let null = std::fs::File::open("/dev/null").map_err(SandboxError::Io)?;
            (OwnedFd::from(null), None)
        };
        let (stdout_parent, stdout_child) = pipe().map_err(SandboxError::Io)?;
        let (stderr_parent, stderr_child) = pipe().map_err(SandboxError::Io)?;
        let (report_read, report_write) = pipe().map_err(SandboxError::Io)?;
        let stdin_child = above_stdio(stdin_child).map_err(SandboxError::Io)?;
        let stdout_child = above_stdio(stdout_child).map_err(SandboxError::Io)?;
        let stderr_child = above_stdio(stderr_child).map_err(SandboxError::Io)?;
        let report_write = above_stdio(report_write).map_err(SandboxError::Io)?;
        let landlock_dup = match config.landlock_fd {
            Some(fd) if fd.as_raw_fd() <= 2 => Some(fd.try_clone().map_err(SandboxError::Io)?),
            _ => None,
        };
        let landlock_raw = landlock_dup
            .as_ref()
            .or(config.landlock_fd)
            .map_or(-1, AsRawFd::as_raw_fd);
        let mut filters = Vec::with_capacity(config.filters.len());
        for prog in config.filters {
            let len = u16::try_from(prog.len())
                .map_err(|_| spawn_err(io::Error::from_raw_os_error(libc::E2BIG)))?;
            filters.push(libc::sock_fprog {
                len,
                filter: prog.as_ptr().cast_mut(),
            });
        }
        let spec = ChildSpec {
            candidates,
            argv,
            envp,
            _strings: strings,
            cwd: cstring(config.cwd.as_os_str().as_bytes(), "the scratch dir")?,
            stdio: [
                stdin_child.as_raw_fd(),
                stdout_child.as_raw_fd(),
                stderr_child.as_raw_fd(),
            ],
            report: report_write.as_raw_fd(),
            ids: config
                .ids
                .map(|(uid, gid)| (libc::c_long::from(uid), libc::c_long::from(gid))),
            drop_groups: config.drop_groups,
            rlimits: config.rlimits,
            landlock_fd: landlock_raw,
            filters,
        };

        let pid = spawn_child(&spec).map_err(spawn_err)?;
        drop(spec);
        drop((
            stdin_child,
            stdout_child,
            stderr_child,
            report_write,
            landlock_dup,
        ));

        // EOF: the child exec'd (CLOEXEC closed the report pipe). 8 bytes: it failed.
        let mut report = std::fs::File::from(report_read);
        let mut msg = [0u8; 8];
        let mut got = 0;
        let read_err = loop {
            match report.read(&mut msg[got..]) {
                Ok(0) => break None,
                Ok(n) => {
                    got += n;
                    if got == msg.len() {
                        break None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = read_err {
            // Unknown outcome: fail closed.
            // SAFETY: kill(2) on our own unreaped child; no memory involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = reap_pid(pid);
            return Err(SandboxError::Io(e));
        }
        if got > 0 {
            let _ = reap_pid(pid);
            if got < msg.len() {
                return Err(spawn_err(io::Error::other(
                    "truncated report from the child",
                )));
            }
            let stage = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
            let code = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
            let err = io::Error::from_raw_os_error(code);
            let stage = usize::try_from(stage)
                .ok()
                .and_then(|i| STAGE_NAMES.get(i).copied())
                .unwrap_or("unknown");
            tracing::debug!(stage, error = %err, "sandboxed child failed before exec");
            return Err(spawn_err(err));
        }
        Ok(Spawned {
            pid,
            stdin: stdin_parent,
            stdout: stdout_parent,
            stderr: stderr_parent,
        })
    }

    /// Reaps our child `pid` (blocking until it has exited) and returns its status.
    fn reap_pid(pid: i32) -> io::Result<ExitStatus> {
        loop {
            let mut status: c_int = 0;
            // SAFETY: waitpid writes one int to a valid pointer.
            let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
            if rc == pid {
                return Ok(ExitStatus::from_raw(status));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
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
        let policy: &'static [libc::sock_filter] = if cmd.network {
            &filters.policy_network
        } else {
            &filters.policy_no_network
        };
        let config = SpawnConfig {
            cwd: scratch.path(),
            ids,
            // As std: a root parent drops its supplementary groups for an explicit identity.
            drop_groups: euid == 0,
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
            landlock_fd: landlock_fd.as_ref(),
            filters: &[policy],
        };
        let child = spawn(&cmd, &config)?;
        drop(landlock_fd);
        let pgid = child.pid;
        let pid = pgid.unsigned_abs();
        // From here the group is killed and reaped however `run` ends.
        let mut group = Group {
            pgid,
            killed: false,
            done: false,
        };
        let stdout =
            tokio::process::ChildStdout::from_std(std::process::ChildStdout::from(child.stdout))
                .map_err(SandboxError::Io)?;
        let stderr =
            tokio::process::ChildStderr::from_std(std::process::ChildStderr::from(child.stderr))
                .map_err(SandboxError::Io)?;
        let mut stdin = match child.stdin {
            Some(fd) => Some(
                tokio::process::ChildStdin::from_std(std::process::ChildStdin::from(fd))
                    .map_err(SandboxError::Io)?,
            ),
            None => None,
        };

        let cap = l.output_bytes;
        let mut out = Stream::new(Some(stdout), cap);
        let mut err = Stream::new(Some(stderr), cap);
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
        let mut leader_exited = false;
        loop {
            tokio::select! {
                _ = &mut exited => {
                    leader_exited = true;
                    break;
                }
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
        if !leader_exited {
            // The watcher returns once the killed leader is a zombie.
            let _ = (&mut exited).await;
        }
        let status = reap_pid(pgid).map_err(SandboxError::Io)?;
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

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A classic BPF interpreter for the instructions the programs use.
        fn eval(prog: &[libc::sock_filter], nr: u32, arch: u32, arg0: u64) -> u32 {
            let load = |k: u32| -> u32 {
                match k {
                    DATA_NR => nr,
                    DATA_ARCH => arch,
                    16 => arg0 as u32,
                    20 => (arg0 >> 32) as u32,
                    _ => panic!("load at {k}"),
                }
            };
            let (mut acc, mut pc) = (0u32, 0usize);
            loop {
                let ins = prog[pc];
                pc += 1;
                let code = u32::from(ins.code);
                let cond = match code {
                    LD_ABS => {
                        acc = load(ins.k);
                        continue;
                    }
                    c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => {
                        acc &= ins.k;
                        continue;
                    }
                    c if c == libc::BPF_JMP | libc::BPF_JA => {
                        pc += ins.k as usize;
                        continue;
                    }
                    RET => return ins.k,
                    JEQ => acc == ins.k,
                    JGE => acc >= ins.k,
                    c if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => acc > ins.k,
                    JSET => acc & ins.k != 0,
                    _ => panic!("opcode {code:#x}"),
                };
                pc += usize::from(if cond { ins.jt } else { ins.jf });
            }
        }

        /// What the kernel returns for a stack of filters (newest first, lowest action wins).
        fn stacked(progs: &[&[libc::sock_filter]], nr: u32, arch: u32, arg0: u64) -> u32 {
            let mut best: Option<u32> = None;
            for prog in progs.iter().rev() {
                let ret = eval(prog, nr, arch, arg0);
                let rank = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
                if best.is_none_or(|b| rank(ret) < rank(b)) {
                    best = Some(ret);
                }
            }
            best.unwrap()
        }

        fn as_libc(prog: &[sock_filter]) -> &[libc::sock_filter] {
            // SAFETY: `seccompiler::sock_filter` is `#[repr(C)]` with the same fields, size
            // and alignment as `libc::sock_filter` (the kernel's layout).
            unsafe { std::slice::from_raw_parts(prog.as_ptr().cast(), prog.len()) }
        }

        /// The single hand-built program decides every system call exactly as the three
        /// seccompiler-built filters it replaces.
        #[test]
        fn compiled_policy_matches_the_seccompiler_filters() {
            let arch = target_arch().unwrap();
            let clone3 = build_clone3(arch).unwrap();
            let mut numbers: Vec<u32> = (0..=600).collect();
            numbers.extend([u32::MAX, 0x8000_0000, 0x4000_0000, 0x4000_0029, 0x4000_0038]);
            let mut args: Vec<u64> = vec![0, 1, 2, 10, 17, u64::MAX, 1 << 32, (1 << 32) | 1];
            for flag in [
                libc::CLONE_NEWNS,
                libc::CLONE_NEWCGROUP,
                libc::CLONE_NEWUTS,
                libc::CLONE_NEWIPC,
                libc::CLONE_NEWUSER,
                libc::CLONE_NEWPID,
                libc::CLONE_NEWNET,
                libc::CLONE_NEWTIME,
                libc::CLONE_VM | libc::CLONE_VFORK,
            ] {
                let flag = u64::from(flag.unsigned_abs());
                args.extend([flag, flag | 17, flag | (1 << 40)]);
            }
            for network in [false, true] {
                let policy = build_policy(network, arch).unwrap();
                #[cfg(target_arch = "x86_64")]
                let x32 = build_x32_guard();
                #[cfg(target_arch = "x86_64")]
                let reference = [as_libc(&x32), as_libc(&clone3), as_libc(&policy)];
                #[cfg(not(target_arch = "x86_64"))]
                let reference = [as_libc(&clone3), as_libc(&policy)];
                let ours = compile_policy(network).unwrap();
                assert!(ours.len() < 120, "{} instructions", ours.len());
                let setsid = u32::try_from(libc::SYS_setsid).unwrap();
                let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM.unsigned_abs();
                assert_eq!(eval(&ours, setsid, AUDIT_ARCH, 0), eperm);
                for audit_arch in [AUDIT_ARCH, 0x4000_0003] {
                    for &nr in &numbers {
                        for &arg0 in &args {
                            assert_eq!(
                                eval(&ours, nr, audit_arch, arg0),
                                stacked(&reference, nr, audit_arch, arg0),
                                "network {network} arch {audit_arch:#x} nr {nr} arg0 {arg0:#x}"
                            );
                        }
                    }
                }
            }
        }
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

    #[test]
    fn run_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let run = SandboxedCommand::new("/bin/true").run();
        assert_send(&run);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn seccomp_programs_build() {
        assert!(support().seccomp, "seccomp filters must build on linux");
    }
}
