//! Tools that run as subprocesses, confined and under resource limits.
//!
//! [`SandboxedCommand`] starts a program with:
//!
//! - its own **namespaces** ([`Isolation::Namespaces`], the default): user (one id mapped to
//!   itself: the run-as identity as root, the invoker otherwise; no capabilities), mount (an
//!   empty read-only root with the [read-only paths](DEFAULT_READ_ONLY_PATHS), the scratch
//!   directory read-write at its own path, a private `/tmp`, a fresh `/proc` and a minimal
//!   `/dev`; nothing else of the host), PID (the tool is pid 1; when it exits, everything left
//!   in the namespace is killed), network (no interface; a tool with network gets loopback
//!   and, on [`PROXY_ADDR`], the egress proxy this process serves with the tool's
//!   [`EgressProxy`](egress_guard::EgressProxy) — its only way out), IPC, UTS and cgroup.
//!   Refused with [`SandboxError::NamespacesUnavailable`] where the host does not allow them,
//!   unless the operator chose [`Isolation::NamespacesOrWeaker`] (never for a tool with
//!   network);
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
//!   [`SandboxedCommand::require_landlock`]): read and execute only beneath the read-only paths,
//!   the scratch directory, `/proc`, `/dev` and `/tmp`, write only inside the scratch
//!   directory, the private `/tmp` and the device nodes;
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
//! The process tree of a namespaced run: this process → a short-lived child (sharing this
//! process's memory until it exits, as `posix_spawn`'s does) that switches to the run-as
//! identity, enters the namespaces and writes its uid and gid maps → the tool, pid 1 of the new
//! PID namespace (also sharing memory until it execs; re-parented to this subreaper when the
//! first child exits), which makes its own process group, mounts its file system, adds the
//! Landlock rules for it, sets rlimits, drops its capabilities, sets `no_new_privs`, Landlock
//! and seccomp, and execs. Nothing of this process's memory stays in the namespace.
//!
//! As pid 1, the tool does not receive signals it has no handler for when they come from
//! inside its namespace or from the kernel's limits (`SIGPIPE`, `SIGXCPU`, `SIGXFSZ`): a write
//! to a closed pipe fails with `EPIPE`, the file-size limit with `EFBIG`, and the CPU limit
//! ends in `SIGKILL` at the hard limit, one second after the soft one. Faults (`SIGSEGV`, ...)
//! and this process's `SIGKILL` end it as usual; its orphaned descendants become its children.
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
#![allow(unsafe_code)] // clone(CLONE_VM|CLONE_VFORK), unshare, mount, setrlimit, prctl, seccomp, landlock and waitid need raw syscalls.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The uid and gid of `nobody`, the default identity when this process is root.
pub const NOBODY: u32 = 65_534;

/// Where a tool with network finds its egress proxy, in its own network namespace (a fresh
/// namespace: nothing else listens there, so the port is fixed and the environment can name
/// it before the tool starts).
pub const PROXY_ADDR: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 3128);

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
    /// Own user, mount, PID, IPC, UTS, cgroup and network namespaces (no interface; for a tool
    /// with network, loopback and the egress proxy). Refused with [`SandboxError::NamespacesUnavailable`]
    /// when the kernel or the host's policy does not allow unprivileged user namespaces.
    #[default]
    Namespaces,
    /// As [`Isolation::Namespaces`] when available; otherwise the documented **weaker mode**:
    /// one confined process in the host's namespaces (uid switch, rlimits, process group,
    /// `no_new_privs`, seccomp, Landlock limiting reads to the read-only paths and writes to
    /// the scratch directory). The tool then shares the host's `/proc`, network namespace
    /// (seccomp still denies inet sockets without network) and abstract UNIX socket space
    /// (Landlock ABI 6 scopes it), and without Landlock it can read whatever its uid can.
    /// [`Confinement::namespaces`] says which mode ran. Never for a tool with network, which
    /// is refused where namespaces are unavailable.
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
    /// A tool with network needs an egress proxy ([`SandboxedCommand::egress`]); nothing ran.
    #[error("a tool with network needs an egress proxy")]
    NetworkWithoutEgress,
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
    egress: Option<egress_guard::EgressProxy>,
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
            .field("egress", &self.egress)
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
            egress: None,
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

    /// Allows sockets other than `AF_UNIX` (default: denied). Every tool gets its own network
    /// namespace; a tool with network finds in it only a loopback interface and, on
    /// [`PROXY_ADDR`], the egress proxy given with [`egress`](Self::egress), which this process
    /// serves from the host's network for the duration of the run. Its environment names the
    /// proxy (`http_proxy`, `https_proxy`, `HTTP_PROXY`, `HTTPS_PROXY`; `no_proxy` and
    /// `NO_PROXY` empty). A tool with network and no egress proxy is refused
    /// ([`SandboxError::NetworkWithoutEgress`]), and so is a tool with network where namespaces
    /// are unavailable, whatever the [`Isolation`].
    #[must_use]
    pub fn network(mut self, network: bool) -> Self {
        self.network = network;
        self
    }

    /// The egress proxy through which a tool with network reaches the network: its policy
    /// decides every destination (see [`egress_guard::EgressProxy`]). Ignored without network.
    #[must_use]
    pub fn egress(mut self, proxy: egress_guard::EgressProxy) -> Self {
        self.egress = Some(proxy);
        self
    }

    /// The identity of the tool (default: [`RunAs::default`]).
    #[must_use]
    pub fn run_as(mut self, run_as: RunAs) -> Self {
        self.run_as = Some(run_as);
        self
    }

    /// Uses an existing directory as the working directory and the only writable host
    /// directory (bound at its own path inside the tool's namespaces). It is neither created,
    /// re-owned nor removed. Default: a fresh `0700` directory, owned by the run-as
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
        AsyncWriteExt, Confinement, DRAIN_LIMIT, Exit, Isolation, LandlockStatus, OsString,
        PROXY_ADDR, ProcessOutput, REAP_LIMIT, RunAs, SandboxError, SandboxedCommand, Stream,
        exit_of,
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
                namespaces: namespaces_available(),
            }
        })
    }

    /// Whether a child switched to the default run-as identity can create the namespaces a
    /// run needs (probed with a short-lived child).
    fn namespaces_available() -> bool {
        let euid = nix::unistd::geteuid().as_raw();
        let ids = match RunAs::default() {
            RunAs::Ids { uid, gid } if euid == 0 => Some((uid, gid)),
            _ => None,
        };
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET;
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
        let Ok(pid) = i32::try_from(pid) else {
            return false;
        };
        pid > 0 && reap_pid(pid).is_ok_and(|status| status.code() == Some(0))
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
        // the fresh /proc, /dev and /tmp of a namespaced run are added by the tool itself.
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

    /// Device nodes bound into the tool's `/dev` (and, in the weaker mode, allowed by Landlock).
    const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];
    /// Where the new root is assembled (in the run's own mount namespace: the host's `/tmp`
    /// stays untouched and visible to the setup under `/oldroot/tmp`).
    const BASE: &str = "/tmp";
    const NEW_ROOT: &str = "/newroot";
    const OLD_ROOT: &str = "/oldroot";

    fn path_cstring(parts: &[&[u8]]) -> Result<CString, SandboxError> {
        cstring(&parts.concat(), "a path")
    }

    /// `/newroot` + `path` (absolute).
    fn new(path: &Path) -> Result<CString, SandboxError> {
        path_cstring(&[NEW_ROOT.as_bytes(), path.as_os_str().as_bytes()])
    }

    /// `/oldroot` + `path` (absolute).
    fn old(path: &Path) -> Result<CString, SandboxError> {
        path_cstring(&[OLD_ROOT.as_bytes(), path.as_os_str().as_bytes()])
    }

    /// Checks a read-only path: absolute, no `..`, not `/` and not under what the sandbox
    /// provides itself.
    fn check_read_only(path: &Path) -> Result<(), SandboxError> {
        use std::path::Component;
        let bad = || SandboxError::InvalidReadOnlyPath(path.to_path_buf());
        if !path.is_absolute()
            || path.components().any(|c| c == Component::ParentDir)
            || path.parent().is_none()
        {
            return Err(bad());
        }
        if ["/proc", "/dev", "/tmp"]
            .iter()
            .any(|reserved| path.starts_with(reserved))
        {
            return Err(bad());
        }
        Ok(())
    }

    /// Plans the tool's file system: an empty read-only root holding the read-only paths
    /// (bound read-only, at the same places), the scratch directory (bound read-write at its
    /// own path), a private `/tmp`, a fresh `/proc` and a minimal `/dev`; nothing else.
    fn namespace_plan(
        read_only: &[PathBuf],
        scratch: &Path,
        network: bool,
        ids: (u32, u32),
        tmp_bytes: u64,
    ) -> Result<NsPlan, SandboxError> {
        use std::collections::BTreeSet;
        let c = |s: &str| cstring(s.as_bytes(), "a path");
        let mut ops = Vec::new();
        let mut made: BTreeSet<PathBuf> = BTreeSet::new();
        let mkdirs = |ops: &mut Vec<MountOp>,
                      made: &mut BTreeSet<PathBuf>,
                      dir: &Path|
         -> Result<(), SandboxError> {
            let mut chain: Vec<&Path> = dir.ancestors().filter(|a| a.parent().is_some()).collect();
            chain.reverse();
            for a in chain {
                if made.insert(a.to_path_buf()) {
                    ops.push(MountOp::Mkdir(new(a)?));
                }
            }
            Ok(())
        };
        let bind = |ops: &mut Vec<MountOp>, source: CString, target: CString, flags| {
            ops.push(MountOp::Mount {
                source: Some(source),
                target: target.clone(),
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            });
            ops.push(MountOp::Remount { target, flags });
        };
        let tmpfs = |target: CString, flags, data: String| -> Result<MountOp, SandboxError> {
            Ok(MountOp::Mount {
                source: Some(c("tmpfs")?),
                target,
                fstype: Some(c("tmpfs")?),
                flags,
                data: Some(cstring(data.as_bytes(), "tmpfs options")?),
            })
        };

        // 1. Stop propagation to the host, put the base tmpfs on /tmp and pivot into it: the
        //    host's tree is now /oldroot, the tool's root is assembled in /newroot.
        ops.push(MountOp::Mount {
            source: None,
            target: c("/")?,
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        });
        ops.push(tmpfs(
            c(BASE)?,
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755,size=1m".to_owned(),
        )?);
        ops.push(MountOp::Chdir(c(BASE)?));
        ops.push(MountOp::Mkdir(c("newroot")?));
        ops.push(MountOp::Mkdir(c("oldroot")?));
        ops.push(MountOp::Mount {
            source: Some(c("newroot")?),
            target: c("newroot")?,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        });
        ops.push(MountOp::PivotRoot {
            new_root: c(".")?,
            put_old: c("oldroot")?,
        });
        ops.push(MountOp::Chdir(c("/")?));

        // 2. The read-only paths, parents first.
        let mut sorted: Vec<&PathBuf> = read_only.iter().collect();
        sorted.sort();
        sorted.dedup();
        for path in sorted {
            check_read_only(path)?;
            let Ok(meta) = std::fs::symlink_metadata(path) else {
                continue; // Not on this host.
            };
            if let Some(parent) = path.parent() {
                mkdirs(&mut ops, &mut made, parent)?;
            }
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(path).map_err(SandboxError::Io)?;
                ops.push(MountOp::Symlink {
                    target: cstring(target.as_os_str().as_bytes(), "a link")?,
                    link: new(path)?,
                });
                continue;
            }
            // Bind the resolved host path (a link among its parents could point anywhere).
            let source = std::fs::canonicalize(path).map_err(SandboxError::Io)?;
            if meta.is_dir() {
                mkdirs(&mut ops, &mut made, path)?;
            } else {
                ops.push(MountOp::Touch(new(path)?));
            }
            bind(
                &mut ops,
                old(&source)?,
                new(path)?,
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            );
        }

        // 3. /dev: a tmpfs with a few device nodes bound from the host and the usual links.
        let dev = Path::new("/dev");
        mkdirs(&mut ops, &mut made, dev)?;
        ops.push(tmpfs(
            new(dev)?,
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0755,size=64k".to_owned(),
        )?);
        for device in DEVICES {
            let node = dev.join(device);
            if node.exists() {
                ops.push(MountOp::Touch(new(&node)?));
                bind(
                    &mut ops,
                    old(&node)?,
                    new(&node)?,
                    libc::MS_NOSUID | libc::MS_NOEXEC,
                );
            }
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            ops.push(MountOp::Symlink {
                target: c(target)?,
                link: new(&dev.join(link))?,
            });
        }

        // 4. A private /tmp and a fresh /proc (of the tool's PID namespace).
        let tmp = Path::new("/tmp");
        mkdirs(&mut ops, &mut made, tmp)?;
        ops.push(tmpfs(
            new(tmp)?,
            libc::MS_NOSUID | libc::MS_NODEV,
            format!("mode=1777,size={tmp_bytes},nr_inodes=4096"),
        )?);
        let proc = Path::new("/proc");
        mkdirs(&mut ops, &mut made, proc)?;
        ops.push(MountOp::Mount {
            source: Some(c("proc")?),
            target: new(proc)?,
            fstype: Some(c("proc")?),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: None,
        });

        // 5. The scratch directory, read-write at its own path.
        mkdirs(&mut ops, &mut made, scratch)?;
        bind(
            &mut ops,
            old(scratch)?,
            new(scratch)?,
            libc::MS_NOSUID | libc::MS_NODEV,
        );

        // 6. Freeze /dev and the root, drop the host's tree and make /newroot the root.
        ops.push(MountOp::Remount {
            target: new(dev)?,
            flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        });
        ops.push(MountOp::Remount {
            target: c(NEW_ROOT)?,
            flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        });
        ops.push(MountOp::Detach(c(OLD_ROOT)?));
        ops.push(MountOp::Chdir(c(NEW_ROOT)?));
        ops.push(MountOp::PivotRoot {
            new_root: c(".")?,
            put_old: c(".")?,
        });
        ops.push(MountOp::Detach(c(".")?));
        ops.push(MountOp::Chdir(c("/")?));

        let abi = ABI::from(i32::try_from(landlock_abi()).unwrap_or(0));
        let read = AccessFs::from_read(abi).bits();
        let all = AccessFs::from_all(abi).bits();
        let landlock_rules = vec![(c("/proc")?, read), (c("/dev")?, read), (c("/tmp")?, all)];

        // Every tool gets its own network namespace; with network, the egress proxy's listener
        // is its only way out (see `setup_network`).
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWNET;
        let (uid, gid) = ids;
        Ok(NsPlan {
            flags,
            network,
            uid_map: cstring(format!("{uid} {uid} 1\n").as_bytes(), "uid map")?,
            gid_map: cstring(format!("{gid} {gid} 1\n").as_bytes(), "gid map")?,
            ops,
            landlock_rules,
            last_cap: last_capability(),
        })
    }

    /// `/proc/sys/kernel/cap_last_cap` (read once; 63 when unreadable, which drops every
    /// possible capability).
    fn last_capability() -> c_int {
        static LAST: OnceLock<c_int> = OnceLock::new();
        *LAST.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .filter(|&n| (0..64).contains(&n))
                .unwrap_or(63)
        })
    }

    /// Signals are 1..=64 on Linux (`_NSIG - 1`).
    const LAST_SIGNAL: c_int = 64;
    /// The child's stack between clone and exec (it only makes system calls), plus a guard page.
    const CHILD_STACK_BYTES: usize = 128 * 1024;

    /// Where the child stopped; reported with the errno for diagnostics. In a message the low
    /// 16 bits are the stage; for `Mount` the high 16 bits are the step of the mount plan.
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
    const STAGE_NAMES: [&str; 20] = [
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

    /// One step of the mount plan, run by the tool in its own mount namespace before exec.
    enum MountOp {
        /// `mkdir(path, 0755)`; an existing directory is fine.
        Mkdir(CString),
        /// Creates an empty file to bind a file onto.
        Touch(CString),
        Symlink {
            target: CString,
            link: CString,
        },
        Mount {
            source: Option<CString>,
            target: CString,
            fstype: Option<CString>,
            flags: libc::c_ulong,
            data: Option<CString>,
        },
        /// A bind remount adding `flags` and keeping the flags the kernel locks (nosuid,
        /// nodev, noexec, atime) as `statfs` reports them.
        Remount {
            target: CString,
            flags: libc::c_ulong,
        },
        PivotRoot {
            new_root: CString,
            put_old: CString,
        },
        /// `umount2(path, MNT_DETACH)`.
        Detach(CString),
        Chdir(CString),
    }

    /// A namespaced run's plan, built by the parent before the spawn.
    struct NsPlan {
        /// `unshare` flags.
        flags: c_int,
        /// A tool with network: loopback up and the proxy's listener passed back.
        network: bool,
        uid_map: CString,
        gid_map: CString,
        ops: Vec<MountOp>,
        /// Landlock rules added for the new `/proc`, `/dev` and `/tmp` (path, access).
        landlock_rules: Vec<(CString, u64)>,
        /// The highest capability number of this kernel.
        last_cap: c_int,
    }

    /// What a namespaced run needs besides the common spec.
    struct NsSpec<'a> {
        plan: &'a NsPlan,
        /// The tool's stack (set by `spawn_child`).
        tool_stack: std::cell::Cell<*mut c_void>,
        /// With network: the child's end of the socket pair the proxy's listener is sent on
        /// (CLOEXEC, >= 3); -1 otherwise.
        channel: RawFd,
    }

    /// Everything the child needs, prepared by the parent. Between clone and exec the child
    /// shares this process's memory (`CLONE_VM`): it only reads this and makes system calls
    /// (no allocation, no locks, no glibc `set*id` wrappers, which would signal this
    /// process's threads). Not `Send` (raw pointers): built and dropped within `spawn`.
    struct ChildSpec<'a> {
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
        /// `Some`: the namespaced chain (this child, then the tool as pid 1); `None`: the
        /// weaker mode, this child becomes the tool.
        ns: Option<NsSpec<'a>>,
    }

    fn errno() -> c_int {
        // SAFETY: __errno_location returns this thread's errno slot (the child shares the
        // suspended parent thread's TLS, as glibc's own posix_spawn child does).
        unsafe { *libc::__errno_location() }
    }

    /// Writes one 8-byte message (stage, value) to the report pipe.
    fn report(fd: RawFd, stage: u32, value: c_int) {
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
    fn setup_network(channel: RawFd) -> Result<(), c_int> {
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

    /// Receives the proxy's listener the namespaced child sent with `send_fd` (already queued:
    /// the child has exited or exec'd the tool), and checks it is a listener on [`PROXY_ADDR`].
    fn receive_listener(channel: &OwnedFd) -> io::Result<std::net::TcpListener> {
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
    fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
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
                    let rc =
                        libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr());
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
    fn spawn_child(spec: &ChildSpec<'_>) -> io::Result<i32> {
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
        /// With network: the listener on [`PROXY_ADDR`] in the tool's network namespace.
        proxy_listener: Option<std::net::TcpListener>,
    }

    /// Settings for `spawn` that come from the run, not the command.
    struct SpawnConfig<'a> {
        /// `Some`: a namespaced run.
        ns: Option<&'a NsPlan>,
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
        // With network: the listener comes back over this pair (see `setup_network`).
        let channel = match config.ns {
            Some(plan) if plan.network => {
                let (host, child) = socket_pair().map_err(SandboxError::Io)?;
                Some((host, above_stdio(child).map_err(SandboxError::Io)?))
            }
            _ => None,
        };
        let mut filters = Vec::with_capacity(config.filters.len());
        for prog in config.filters {
            let len = u16::try_from(prog.len())
                .map_err(|_| spawn_err(io::Error::from_raw_os_error(libc::E2BIG)))?;
            filters.push(libc::sock_fprog {
                len,
                filter: prog.as_ptr().cast_mut(),
            });
        }
        let mut spec = ChildSpec {
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
            ns: None,
        };
        if let Some(plan) = config.ns {
            spec.ns = Some(NsSpec {
                plan,
                tool_stack: std::cell::Cell::new(std::ptr::null_mut()),
                channel: channel.as_ref().map_or(-1, |(_, child)| child.as_raw_fd()),
            });
        }

        let first = spawn_child(&spec).map_err(spawn_err)?;
        let namespaced = spec.ns.is_some();
        drop(spec);
        let channel = channel.map(|(host, child)| {
            drop(child);
            host
        });
        drop((
            stdin_child,
            stdout_child,
            stderr_child,
            report_write,
            landlock_dup,
        ));
        if namespaced {
            // The first child has exited (the tool exec'd, or something failed): reap it,
            // which also makes the tool our child (this process is a subreaper).
            let _ = reap_pid(first);
        }

        // EOF: the tool exec'd (CLOEXEC closed the report pipe) or everything failed. Each
        // message is 8 bytes: a failure, or (namespaced) the tool's pid.
        let mut report = std::fs::File::from(report_read);
        let mut msg = [0u8; 16];
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
        let mut leader = if namespaced { None } else { Some(first) };
        let mut failure = None;
        for m in msg[..got - got % 8].chunks_exact(8) {
            let stage = u32::from_ne_bytes([m[0], m[1], m[2], m[3]]);
            let value = i32::from_ne_bytes([m[4], m[5], m[6], m[7]]);
            if stage == Stage::Started as u32 {
                leader = Some(value).filter(|&pid| pid > 0);
            } else {
                failure = Some((stage, value));
            }
        }
        let reap_leader = || {
            if let Some(pid) = leader {
                let _ = reap_pid(pid);
            }
        };
        if let Some(e) = read_err {
            // Unknown outcome: fail closed.
            if let Some(pid) = leader {
                // SAFETY: kill(2) on our own unreaped child; no memory involved.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            reap_leader();
            return Err(SandboxError::Io(e));
        }
        if got % 8 != 0 {
            reap_leader();
            return Err(spawn_err(io::Error::other(
                "truncated report from the child",
            )));
        }
        if let Some((stage, code)) = failure {
            reap_leader();
            let err = io::Error::from_raw_os_error(code);
            let step = stage >> 16;
            let stage = usize::try_from(stage & 0xffff)
                .ok()
                .and_then(|i| STAGE_NAMES.get(i).copied())
                .unwrap_or("unknown");
            tracing::debug!(stage, step, error = %err, "sandboxed child failed before exec");
            // Namespaces the kernel or a policy refuses, or grants without the capabilities to
            // use them (some LSM policies): the first mount of the plan fails with EPERM.
            let refused_mount = stage == STAGE_NAMES[Stage::Mount as usize]
                && step == 0
                && matches!(code, libc::EPERM | libc::EACCES);
            if stage == STAGE_NAMES[Stage::Unshare as usize]
                || stage == STAGE_NAMES[Stage::IdMap as usize]
                || refused_mount
            {
                return Err(SandboxError::NamespacesUnavailable {
                    reason: format!("{stage}: {err}"),
                });
            }
            return Err(spawn_err(err));
        }
        let Some(pid) = leader else {
            return Err(spawn_err(io::Error::other(
                "the namespaced tool's pid was not reported",
            )));
        };
        let proxy_listener = match channel.as_ref().map(receive_listener) {
            None => None,
            Some(Ok(listener)) => Some(listener),
            Some(Err(e)) => {
                // The tool runs (its exec closed the report pipe): stop it before failing.
                killpg(pid);
                let _ = reap_pid(pid);
                return Err(spawn_err(e));
            }
        };
        Ok(Spawned {
            pid,
            stdin: stdin_parent,
            stdout: stdout_parent,
            stderr: stderr_parent,
            proxy_listener,
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

    pub(super) async fn run(mut cmd: SandboxedCommand) -> Result<ProcessOutput, SandboxError> {
        let start = Instant::now();
        // Fail closed: a tool with network reaches it only through an egress proxy, and only
        // from its own network namespace.
        let egress = if cmd.network {
            let Some(proxy) = cmd.egress.take() else {
                return Err(SandboxError::NetworkWithoutEgress);
            };
            if cmd.namespaces_unavailable {
                return Err(SandboxError::NamespacesUnavailable {
                    reason: "a tool with network needs its own network namespace (test hook)"
                        .to_owned(),
                });
            }
            let url = format!("http://{PROXY_ADDR}");
            let names = ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"];
            let empty = ["no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"];
            cmd.env.retain(|(k, _)| {
                !names
                    .iter()
                    .chain(&empty)
                    .any(|n| k.as_os_str() == OsStr::new(n))
            });
            for name in names {
                cmd.env.push((name.into(), url.clone().into()));
            }
            for name in &empty[..2] {
                cmd.env.push(((*name).into(), OsString::new()));
            }
            Some(proxy)
        } else {
            None
        };
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
        if cmd.namespaces_unavailable && cmd.isolation == Isolation::Namespaces {
            return Err(SandboxError::NamespacesUnavailable {
                reason: "this run was told namespaces are unavailable (test hook)".to_owned(),
            });
        }
        for path in &cmd.read_only {
            check_read_only(path)?;
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
        // The scratch directory as the kernel resolves it: its path inside the namespaces.
        let scratch_real = std::fs::canonicalize(scratch.path()).map_err(SandboxError::Io)?;
        let (landlock_fd, landlock) = landlock_ruleset(&scratch_real, cmd.network, &cmd.read_only)?;
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
        let plan = if cmd.namespaces_unavailable {
            None
        } else {
            Some(namespace_plan(
                &cmd.read_only,
                &scratch_real,
                cmd.network,
                ids.unwrap_or((euid, egid)),
                l.file_size_bytes,
            )?)
        };
        let mut config = SpawnConfig {
            ns: plan.as_ref(),
            cwd: &scratch_real,
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
        let weaker_allowed = cmd.isolation == Isolation::NamespacesOrWeaker;
        let attempt = if config.ns.is_some() {
            spawn(&cmd, &config)
        } else {
            Err(SandboxError::NamespacesUnavailable {
                reason: "test hook".to_owned(),
            })
        };
        let (child, namespaces) = match attempt {
            Ok(child) => (child, true),
            // Never for a tool with network: without its own network namespace it would reach
            // whatever the host reaches.
            Err(SandboxError::NamespacesUnavailable { reason })
                if weaker_allowed && !cmd.network =>
            {
                tracing::warn!(%reason, "namespaces unavailable: running in the weaker mode");
                config.ns = None;
                config.cwd = scratch.path();
                (spawn(&cmd, &config)?, false)
            }
            Err(e) => return Err(e),
        };
        drop(landlock_fd);
        let pgid = child.pid;
        let pid = pgid.unsigned_abs();
        // From here the group is killed and reaped however `run` ends.
        let mut group = Group {
            pgid,
            killed: false,
            done: false,
        };
        // The egress proxy on the listener in the tool's namespace, until the run ends.
        let proxy = match (child.proxy_listener, egress) {
            (Some(listener), Some(egress)) => {
                listener.set_nonblocking(true).map_err(SandboxError::Io)?;
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(SandboxError::Io)?;
                Some(egress.spawn(listener))
            }
            _ => None,
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
        drop(proxy);
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
                namespaces,
            },
            pid,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn text(c: &CString) -> &str {
            c.to_str().unwrap()
        }

        #[test]
        fn read_only_paths_the_sandbox_provides_or_that_escape_are_refused() {
            for bad in [
                "/",
                "relative",
                "/usr/../etc",
                "/proc",
                "/proc/1",
                "/dev",
                "/dev/shm",
                "/tmp",
                "/tmp/x",
            ] {
                assert!(
                    matches!(
                        check_read_only(Path::new(bad)),
                        Err(SandboxError::InvalidReadOnlyPath(_))
                    ),
                    "{bad}"
                );
            }
            for good in ["/usr", "/etc/ssl/certs", "/opt/tool", "/tmpfoo", "/devices"] {
                assert!(check_read_only(Path::new(good)).is_ok(), "{good}");
            }
        }

        /// Every host path the plan mounts is a read-only path, the scratch directory or a
        /// device node, and everything from the host except the scratch directory and the
        /// device nodes is remounted read-only; the host's tree is detached at the end.
        #[test]
        fn the_plan_mounts_only_the_allowlist_and_the_scratch_read_write() {
            let scratch = std::env::temp_dir();
            let scratch = std::fs::canonicalize(scratch).unwrap();
            let read_only: Vec<PathBuf> = ["/usr", "/etc/hosts", "/nonexistent-path"]
                .iter()
                .map(PathBuf::from)
                .collect();
            let plan =
                namespace_plan(&read_only, &scratch, false, (65_534, 65_534), 1 << 20).unwrap();
            assert_ne!(plan.flags & libc::CLONE_NEWNET, 0);
            assert_ne!(plan.flags & libc::CLONE_NEWUSER, 0);
            assert_ne!(plan.flags & libc::CLONE_NEWPID, 0);
            assert_eq!(text(&plan.uid_map), "65534 65534 1\n");
            let mut sources = Vec::new();
            let mut read_only_targets = Vec::new();
            for op in &plan.ops {
                match op {
                    MountOp::Mount {
                        source: Some(source),
                        target,
                        fstype: None,
                        flags,
                        ..
                    } if flags & libc::MS_BIND != 0 && text(source) != "newroot" => {
                        sources.push((text(source).to_owned(), text(target).to_owned()));
                    }
                    MountOp::Remount { target, flags } if flags & libc::MS_RDONLY != 0 => {
                        read_only_targets.push(text(target).to_owned());
                    }
                    _ => {}
                }
            }
            let scratch_text = scratch.to_str().unwrap().to_owned();
            for (source, target) in &sources {
                let host = source.strip_prefix(OLD_ROOT).unwrap();
                let allowed = host.starts_with("/usr")
                    || host == "/etc/hosts"
                    || host == scratch_text
                    || DEVICES.iter().any(|d| host == format!("/dev/{d}"));
                assert!(allowed, "{source} -> {target}");
                let writable = host == scratch_text || host.starts_with("/dev/");
                assert_eq!(
                    read_only_targets.contains(target),
                    !writable,
                    "{source} -> {target}"
                );
            }
            assert!(sources.iter().any(|(s, _)| s.ends_with(&scratch_text)));
            assert!(!sources.iter().any(|(s, _)| s.contains("nonexistent")));
            assert!(read_only_targets.contains(&NEW_ROOT.to_owned()));
            assert!(
                plan.ops
                    .iter()
                    .any(|op| matches!(op, MountOp::Detach(p) if text(p) == OLD_ROOT))
            );
            // With network: a network namespace too (the egress proxy is the way out).
            let plan = namespace_plan(&read_only, &scratch, true, (1, 1), 1 << 20).unwrap();
            assert_ne!(plan.flags & libc::CLONE_NEWNET, 0);
            assert!(plan.network);
        }

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
            namespaces: false,
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
