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

    /// Behave as if this host did not allow namespaces, to test how a service meets such a
    /// host without changing the machine: under [`Isolation::Namespaces`] the call is refused,
    /// under [`Isolation::NamespacesOrWeaker`] it runs with the weaker isolation that setting
    /// already allows. It never weakens a call beyond its `Isolation`.
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

// Linux implementation, by responsibility: `spawn` (support, spawn, run), `namespaces` (the
// plan: unshare flags, id maps, mount tree; scratch dir), `seccomp` (BPF policy), `landlock`
// (ruleset), `child` (clone to exec), `reap` (process groups, subreaper, waiting) and `sys`
// (the system calls no safe API offers: `clone` with `CLONE_VM | CLONE_VFORK` and the child
// stacks, `execve`, signal dispositions and mask, `unshare`, Landlock, seccomp and the
// loopback `ioctl`). Every other system call goes through `rustix` (direct system calls, safe
// between clone and exec) or `std`. `unsafe` lives only in `sys`, each block with a `SAFETY:`
// comment; every other submodule, `child` included, `#![forbid(unsafe_code)]`.
#[cfg(target_os = "linux")]
mod child;
#[cfg(target_os = "linux")]
mod landlock;
#[cfg(target_os = "linux")]
mod namespaces;
#[cfg(target_os = "linux")]
mod reap;
#[cfg(target_os = "linux")]
mod seccomp;
#[cfg(target_os = "linux")]
mod spawn;
#[cfg(target_os = "linux")]
mod sys;
#[cfg(target_os = "linux")]
use spawn as imp;

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
