//! A throwaway PostgreSQL cluster on a private Unix socket.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};

use crate::{PgBinaries, TestkitError, sys};

/// The superuser `initdb` creates in a throwaway cluster.
pub const ADMIN_ROLE: &str = "testkit_admin";
const DIR_PREFIX: &str = "testkit-pg-";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start a [`PgCluster`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    tcp: bool,
    tls: Option<(String, String)>,
}

impl ClusterOptions {
    /// Default options: a Unix socket only.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Also listen on `127.0.0.1` on a free port (for benchmarks over loopback TCP).
    #[must_use]
    pub const fn with_tcp(mut self, tcp: bool) -> Self {
        self.tcp = tcp;
        self
    }

    /// Serve TLS with this certificate chain and private key (PEM), on loopback TCP (PostgreSQL
    /// speaks TLS only over TCP). For tests of clients that require `sslmode=verify-full`.
    #[must_use]
    pub fn with_tls(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.tcp = true;
        self.tls = Some((cert_pem.into(), key_pem.into()));
        self
    }
}

/// A PostgreSQL cluster in a private temporary directory (under `/dev/shm` when available), stopped and removed on drop (also when
/// a test panics while holding it). The server also dies with the process that started it.
pub struct PgCluster {
    base: PathBuf,
    port: u16,
    tcp: bool,
    launch: Launch,
    server: Mutex<Option<Running>>,
    removed: std::sync::atomic::AtomicBool,
}

/// How to (re)start the server process.
struct Launch {
    postgres: PathBuf,
    args: Vec<std::ffi::OsString>,
    run_as: Option<User>,
    data: PathBuf,
    log: PathBuf,
}

/// The running postmaster.
struct Running {
    pid: Pid,
    exited: mpsc::Receiver<ExitStatus>,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("dir", &self.base)
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl PgCluster {
    /// Starts a cluster with default options.
    ///
    /// # Errors
    /// See [`TestkitError`]; the message says how to fix the machine.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(&ClusterOptions::new())
    }

    /// Starts a cluster.
    ///
    /// # Errors
    /// See [`TestkitError`]; the message says how to fix the machine.
    pub fn start_with(options: &ClusterOptions) -> Result<Self, TestkitError> {
        let binaries = PgBinaries::discover()?;
        let run_as = unprivileged_user()?;
        sweep_stale_dirs();

        let base = private_dir(run_as.as_ref())?;
        let data = base.join("data");
        let template = initdb_template(&binaries, run_as.as_ref())?;
        match template {
            Some(template) => copy_tree(&template, &data)?,
            None => initdb(&binaries, &data, run_as.as_ref())?,
        }

        let port = if options.tcp { free_port()? } else { 5432 };
        let tls_files = match &options.tls {
            Some((cert, key)) => Some(write_tls_files(&base, cert, key, run_as.as_ref())?),
            None => None,
        };
        let log = base.join("postgres.log");
        let mut args: Vec<std::ffi::OsString> = vec!["-D".into(), data.clone().into_os_string()];
        args.extend(["-k".into(), base.clone().into_os_string()]);
        let listen = if options.tcp {
            "listen_addresses=127.0.0.1"
        } else {
            "listen_addresses="
        };
        for arg in [
            "-p",
            &port.to_string(),
            "-c",
            listen,
            "-c",
            "unix_socket_permissions=0700",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=64MB",
        ] {
            args.push(arg.into());
        }
        if let Some((cert, key)) = &tls_files {
            args.extend([
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", cert.display()).into(),
                "-c".into(),
                format!("ssl_key_file={}", key.display()).into(),
            ]);
        }
        let cluster = Self {
            base,
            port,
            tcp: options.tcp,
            launch: Launch {
                postgres: binaries.postgres(),
                args,
                run_as,
                data,
                log,
            },
            server: Mutex::new(None),
            removed: std::sync::atomic::AtomicBool::new(false),
        };
        cluster.start_server()?;
        Ok(cluster)
    }

    /// Starts the server process again after [`stop_server`](Self::stop_server), on the same
    /// data directory and port (for fault tests: clients see the database come back). Does
    /// nothing when it is running.
    ///
    /// # Errors
    /// [`TestkitError::Start`] with the end of the server log when it does not become ready.
    pub fn start_server(&self) -> Result<(), TestkitError> {
        let mut server = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if server.is_some() {
            return Ok(());
        }
        let launch = &self.launch;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(TestkitError::io("open server log"))?;
        let mut command = Command::new(&launch.postgres);
        command
            .args(&launch.args)
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(TestkitError::io("clone log handle"))?,
            )
            .stderr(log);
        if let Some(user) = &launch.run_as {
            use std::os::unix::process::CommandExt;
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        sys::die_with_parent(&mut command);
        let (pid, exited) = spawn_supervised(command)?;
        let running = Running { pid, exited };
        if let Err(e) = self.wait_ready(&running) {
            let _ = kill(pid, Signal::SIGKILL);
            return Err(e);
        }
        *server = Some(running);
        Ok(())
    }

    /// Stops the server process (fast shutdown: sessions are terminated, clients see their
    /// connections fail) but keeps the data directory, so [`start_server`](Self::start_server)
    /// can bring it back. Idempotent.
    pub fn stop_server(&self) {
        let running = self
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(Running { pid, exited }) = running else {
            return;
        };
        let _ = kill(pid, Signal::SIGINT);
        if exited.recv_timeout(STOP_TIMEOUT).is_err() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = exited.recv_timeout(STOP_TIMEOUT);
        }
    }

    fn wait_ready(&self, running: &Running) -> Result<(), TestkitError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.launch.data.join("postmaster.pid");
        let socket = self.socket_dir().join(format!(".s.PGSQL.{}", self.port));
        let log = &self.launch.log;
        loop {
            // postmaster.pid's first line is the pid and its eighth the status; "ready" once it
            // accepts connections (the pid check ignores a file left by the previous run).
            let status = fs::read_to_string(&pid_file).ok();
            let ready = status.as_deref().is_some_and(|s| {
                let mut lines = s.lines();
                lines.next().map(str::trim) == Some(&running.pid.as_raw().to_string())
                    && lines.nth(6).map(str::trim) == Some("ready")
            });
            if ready && socket.exists() {
                return Ok(());
            }
            if let Ok(status) = running.exited.try_recv() {
                return Err(start_error(format!("server exited with {status}"), log));
            }
            if Instant::now() > deadline {
                return Err(start_error(
                    format!("not ready after {START_TIMEOUT:?}"),
                    log,
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The directory holding the Unix socket.
    #[must_use]
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    /// The directory holding everything of this cluster.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.base
    }

    /// The port (also the socket's name suffix).
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server also listens on loopback TCP.
    #[must_use]
    pub const fn is_tcp(&self) -> bool {
        self.tcp
    }

    /// The postmaster's process id (0 while it is stopped).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, |r| r.pid.as_raw().unsigned_abs())
    }

    /// Connection options for `role` on `database` (Unix socket, or loopback TCP when enabled).
    #[must_use]
    pub fn connect_options(&self, role: &str, database: &str) -> sqlx::postgres::PgConnectOptions {
        let options = sqlx::postgres::PgConnectOptions::new()
            .port(self.port)
            .username(role)
            .database(database);
        if self.tcp {
            options.host("127.0.0.1")
        } else {
            options.socket(&self.base)
        }
    }

    /// Stops the server (fast shutdown, then SIGKILL if it lingers) and removes its directory.
    /// Idempotent.
    pub fn stop(&self) {
        self.stop_server();
        if !self.removed.swap(true, Ordering::SeqCst) {
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes the server's certificate and key into the cluster directory, owned by the server's
/// user (PostgreSQL refuses a key readable by others).
fn write_tls_files(
    base: &Path,
    cert: &str,
    key: &str,
    run_as: Option<&User>,
) -> Result<(PathBuf, PathBuf), TestkitError> {
    use std::os::unix::fs::OpenOptionsExt;
    let (uid, gid) = owner_ids(run_as);
    let mut paths = Vec::new();
    for (name, content) in [("server.crt", cert), ("server.key", key)] {
        let path = base.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(TestkitError::io("write TLS files"))?;
        file.write_all(content.as_bytes())
            .map_err(TestkitError::io("write TLS files"))?;
        std::os::unix::fs::chown(&path, Some(uid.as_raw()), Some(gid.as_raw()))
            .map_err(TestkitError::io("chown TLS files"))?;
        paths.push(path);
    }
    let key = paths.pop().unwrap_or_default();
    let cert = paths.pop().unwrap_or_default();
    Ok((cert, key))
}

/// Spawns the server from a thread that lives as long as the server: the parent-death signal
/// is tied to the spawning thread, so a short-lived test thread must not be the parent.
pub(crate) fn spawn_supervised(
    mut command: Command,
) -> Result<(Pid, mpsc::Receiver<ExitStatus>), TestkitError> {
    let (pid_tx, pid_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("testkit-postgres".into())
        .spawn(move || match command.spawn() {
            Ok(mut child) => {
                let _ = pid_tx.send(Ok(child.id()));
                if let Ok(status) = child.wait() {
                    let _ = exit_tx.send(status);
                }
            }
            Err(error) => {
                let _ = pid_tx.send(Err(error));
            }
        })
        .map_err(TestkitError::io("spawn supervisor thread"))?;
    let pid = pid_rx
        .recv()
        .map_err(|_| TestkitError::Io {
            context: "start postgres".into(),
            source: std::io::Error::other("supervisor thread died"),
        })?
        .map_err(TestkitError::io("start postgres"))?;
    let pid = i32::try_from(pid).map_err(|_| TestkitError::Io {
        context: "start postgres".into(),
        source: std::io::Error::other("pid out of range"),
    })?;
    Ok((Pid::from_raw(pid), exit_rx))
}

fn start_error(reason: String, log: &Path) -> TestkitError {
    TestkitError::Start {
        reason,
        log: log.to_path_buf(),
        tail: tail(log, 4000),
    }
}

fn tail(path: &Path, bytes: u64) -> String {
    let mut out = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
        let _ = f.read_to_string(&mut out);
    }
    out
}

/// The OS user to run PostgreSQL as: none when not root (run as ourselves), otherwise
/// `$TESTKIT_PG_OS_USER`, `postgres` or `nobody`.
pub(crate) fn unprivileged_user() -> Result<Option<User>, TestkitError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let names: Vec<String> = match std::env::var("TESTKIT_PG_OS_USER") {
        Ok(name) => vec![name],
        Err(_) => vec!["postgres".into(), "nobody".into()],
    };
    for name in &names {
        if let Ok(Some(user)) = User::from_name(name)
            && !user.uid.is_root()
        {
            return Ok(Some(user));
        }
    }
    Err(TestkitError::NoUnprivilegedUser(names.join(" or ")))
}

/// Where clusters live: `$TESTKIT_TMPDIR`, else `/dev/shm` (memory-backed, so copying the initdb
/// template and every write is fast), else the system temp dir.
pub(crate) fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESTKIT_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let writable =
        fs::metadata(shm).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o002 != 0);
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

pub(crate) fn owner_ids(run_as: Option<&User>) -> (Uid, Gid) {
    run_as.map_or_else(|| (Uid::effective(), Gid::effective()), |u| (u.uid, u.gid))
}

pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh 0700 directory owned by the server's user.
fn private_dir(run_as: Option<&User>) -> Result<PathBuf, TestkitError> {
    let dir = scratch_root().join(format!("{DIR_PREFIX}{}", unique_suffix()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(TestkitError::io(format!("create {}", dir.display())))?;
    if let Some(user) = run_as {
        std::os::unix::fs::chown(&dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .map_err(TestkitError::io(format!("chown {}", dir.display())))?;
    }
    Ok(dir)
}

fn initdb(binaries: &PgBinaries, data: &Path, run_as: Option<&User>) -> Result<(), TestkitError> {
    let mut command = Command::new(binaries.initdb());
    command
        .arg("-D")
        .arg(data)
        .args(["-U", ADMIN_ROLE, "-A", "trust", "-E", "UTF8", "--locale=C"])
        // 1 MiB WAL segments instead of 16: less to copy for every cluster.
        .args(["--no-sync", "--no-instructions", "--wal-segsize=1"])
        .stdin(Stdio::null());
    if let Some(user) = run_as {
        use std::os::unix::process::CommandExt;
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let output = command.output().map_err(TestkitError::io("run initdb"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(TestkitError::Initdb {
            status: output.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

/// An initdb'd data directory shared by every cluster of this user and server version, so a
/// cluster starts with a copy (tens of milliseconds) instead of an initdb (over a second).
///
/// Returns `None` when a directory of that name exists but is not safely ours (another user
/// could have planted it in the shared temp dir); the caller then runs initdb itself.
fn initdb_template(
    binaries: &PgBinaries,
    run_as: Option<&User>,
) -> Result<Option<PathBuf>, TestkitError> {
    let (uid, _) = owner_ids(run_as);
    let version = Command::new(binaries.postgres())
        .arg("--version")
        .output()
        .map_err(TestkitError::io("run postgres --version"))?;
    let version: String = String::from_utf8_lossy(&version.stdout)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let template = scratch_root().join(format!(
        // Bump the suffix whenever the initdb options change.
        "testkit-initdb-{}-uid{}-v2",
        version.trim_matches('_'),
        uid.as_raw()
    ));
    if !template.exists() {
        let partial = template.with_extension(format!("partial-{}", unique_suffix()));
        initdb(binaries, &partial, run_as)?;
        if fs::rename(&partial, &template).is_err() {
            // Another process finished first; use theirs.
            let _ = fs::remove_dir_all(&partial);
        }
    }
    let trusted = fs::symlink_metadata(&template).is_ok_and(|m| {
        m.is_dir() && m.uid() == uid.as_raw() && m.permissions().mode() & 0o077 == 0
    }) && template.join("PG_VERSION").is_file();
    Ok(trusted.then_some(template))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), TestkitError> {
    // `cp -a` keeps modes and ownership (the server's user when we run as root).
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(TestkitError::io("copy initdb template"))?;
    if status.success() {
        Ok(())
    } else {
        Err(TestkitError::Io {
            context: format!("cp -a {} {}", from.display(), to.display()),
            source: std::io::Error::other(status.to_string()),
        })
    }
}

pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(TestkitError::io("find a free loopback port"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(TestkitError::io("find a free loopback port"))
}

/// Removes cluster directories left by test processes that were killed before their exit hook
/// ran (their servers died with them through the parent-death signal).
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(scratch_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let dir = entry.path();
        let server_alive = fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            .is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok());
        if !server_alive && kill(Pid::from_raw(owner), None) == Err(nix::errno::Errno::ESRCH) {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
