//! PgBouncer in front of the test server, for tests that must hold when server connections are
//! shared between clients (transaction pooling).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::cluster::{free_port, owner_ids, scratch_root, spawn_supervised, unique_suffix};
use crate::{TestServer, TestkitError, sys};

/// Where Debian and most distributions install it; `$TESTKIT_PGBOUNCER` overrides.
const DEFAULT_BINARY: &str = "/usr/sbin/pgbouncer";

/// How PgBouncer hands server connections to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolMode {
    /// A server connection per transaction: consecutive transactions of one client may run on
    /// different server connections, and one server connection serves many clients.
    Transaction,
    /// A server connection per client session.
    Session,
}

/// A PgBouncer process on a free loopback port in front of the test server, stopped and its
/// directory removed on drop (and killed with the test process).
pub struct PgBouncer {
    dir: PathBuf,
    port: u16,
    pid: Pid,
    exited: Option<mpsc::Receiver<std::process::ExitStatus>>,
}

impl std::fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBouncer")
            .field("port", &self.port)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl PgBouncer {
    /// Starts PgBouncer in front of `server` for `users` (role names; the owner and runtime
    /// roles' password is known to testkit), with `pool_size` server connections per
    /// (database, user) pair.
    ///
    /// PgBouncer 1.18 (Debian 12) does not track prepared statements across server connections,
    /// so it runs `DEALLOCATE ALL` after every transaction (`server_reset_query_always`), and
    /// clients must disable sqlx's statement cache and keep every statement inside an explicit
    /// transaction ([`PgBouncer::options`] does the former). Settings are *not* reset: what
    /// leaks between clients through a plain `SET` is exactly what the tests look for.
    ///
    /// # Errors
    /// [`TestkitError::NoPgBouncer`] when the binary is missing (the message says how to install
    /// it), and I/O errors, or [`TestkitError::Start`] when it does not accept connections.
    pub fn start(
        server: &TestServer,
        mode: PoolMode,
        pool_size: u32,
        users: &[&str],
    ) -> Result<Self, TestkitError> {
        let binary = std::env::var_os("TESTKIT_PGBOUNCER")
            .map_or_else(|| PathBuf::from(DEFAULT_BINARY), PathBuf::from);
        if !binary.is_file() {
            return Err(TestkitError::NoPgBouncer(binary.display().to_string()));
        }
        // PgBouncer refuses to run as root: run it as the server's unprivileged user.
        let run_as = crate::cluster::unprivileged_user()?;
        let dir = scratch_root().join(format!("testkit-pgbouncer-{}", unique_suffix()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(TestkitError::io(format!("create {}", dir.display())))?;
        let (uid, gid) = owner_ids(run_as.as_ref());
        std::os::unix::fs::chown(&dir, Some(uid.as_raw()), Some(gid.as_raw()))
            .map_err(TestkitError::io("chown the PgBouncer directory"))?;

        let target = server.options(crate::Role::Admin, "postgres");
        let host = target.get_socket().map_or_else(
            || target.get_host().to_owned(),
            |socket| socket.display().to_string(),
        );
        let port = free_port()?;
        let users_file: String = users
            .iter()
            .map(|u| format!("\"{u}\" \"{}\"\n", crate::server::ROLE_PASSWORD))
            .collect();
        let mode = match mode {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        };
        let ini = format!(
            "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {users}\n\
             pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmin_pool_size = 0\n\
             reserve_pool_size = 0\nmax_client_conn = 500\n\
             server_reset_query = DEALLOCATE ALL\nserver_reset_query_always = 1\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {log}\npidfile = {pid}\n",
            server_port = target.get_port(),
            users = dir.join("users.txt").display(),
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        for (name, content) in [("users.txt", users_file), ("pgbouncer.ini", ini)] {
            write_private(&dir.join(name), &content, uid.as_raw(), gid.as_raw())?;
        }

        let mut command = Command::new(&binary);
        command
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(user) = &run_as {
            use std::os::unix::process::CommandExt;
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        sys::die_with_parent(&mut command);
        let (pid, exited) = spawn_supervised(command)?;
        let bouncer = Self {
            dir,
            port,
            pid,
            exited: Some(exited),
        };
        bouncer.wait_ready()?;
        Ok(bouncer)
    }

    fn wait_ready(&self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let exited = self.exited.as_ref().and_then(|rx| rx.try_recv().ok());
            if exited.is_some() || Instant::now() > deadline {
                let log = self.dir.join("pgbouncer.log");
                return Err(TestkitError::Start {
                    reason: format!("PgBouncer did not accept connections ({exited:?})"),
                    tail: fs::read_to_string(&log).unwrap_or_default(),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Options for `role` on `database` through PgBouncer, with sqlx's statement cache off.
    #[must_use]
    pub fn options(&self, role: &str, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(role)
            .password(crate::server::ROLE_PASSWORD)
            .database(database)
            .statement_cache_capacity(0)
            .disable_statement_logging()
    }

    /// The port it listens on (loopback).
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(exited) = self.exited.take() {
            let _ = kill(self.pid, Signal::SIGTERM);
            if exited.recv_timeout(Duration::from_secs(5)).is_err() {
                let _ = kill(self.pid, Signal::SIGKILL);
                let _ = exited.recv_timeout(Duration::from_secs(5));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &Path, content: &str, uid: u32, gid: u32) -> Result<(), TestkitError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(TestkitError::io(format!("write {}", path.display())))?;
    file.write_all(content.as_bytes())
        .map_err(TestkitError::io(format!("write {}", path.display())))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(TestkitError::io(format!("chown {}", path.display())))
}
