//! Spawning the confined child and running it to completion: `support` and `run`.
#![forbid(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use rustix::process::Resource;

use super::child::{ChildSpec, NsSpec, STAGE_NAMES, Stage, spawn_child};
use super::landlock::{landlock_ruleset, landlock_status};
use super::namespaces::{
    NsPlan, Scratch, check_read_only, make_scratch, namespace_plan, namespaces_available,
};
use super::reap::{Group, become_subreaper, kill, killpg, reap_group, reap_pid, wait_exit_nowait};
use super::seccomp::filters;
use super::sys;
use super::{
    AsyncWriteExt, Confinement, DRAIN_LIMIT, Exit, Isolation, LandlockStatus, OsString, PROXY_ADDR,
    ProcessOutput, RunAs, SandboxError, SandboxedCommand, Stream, exit_of,
};

static SUPPORT: OnceLock<Confinement> = OnceLock::new();

pub(super) fn support() -> Confinement {
    *SUPPORT.get_or_init(|| {
        let seccomp = sys::seccomp_filter_available() && filters().is_ok();
        Confinement {
            no_new_privs: true,
            seccomp,
            landlock: landlock_status(sys::landlock_abi()),
            namespaces: namespaces_available(),
        }
    })
}

/// A descriptor the child dup2s or uses must not be 0, 1 or 2 (a dup2 would clobber it).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        Ok(fd)
    } else {
        fd.try_clone() // F_DUPFD_CLOEXEC from 3.
    }
}

/// A pipe, both ends CLOEXEC (`pipe2(O_CLOEXEC)`).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// A connected pair of datagram UNIX sockets (CLOEXEC).
fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Receives the proxy's listener the namespaced child sent with `setup_network` (already
/// queued: the child has exited or exec'd the tool), and checks it is a listener on
/// [`PROXY_ADDR`].
fn receive_listener(channel: &OwnedFd) -> io::Result<std::net::TcpListener> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        channel,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    let unexpected = || io::Error::other("no listener received from the sandbox");
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(unexpected());
    }
    // Exactly one message, SCM_RIGHTS with one descriptor (any other is closed on drop).
    let mut messages = control.drain();
    let Some(RecvAncillaryMessage::ScmRights(mut fds)) = messages.next() else {
        return Err(unexpected());
    };
    let (Some(fd), None) = (fds.next(), fds.next()) else {
        return Err(unexpected());
    };
    if messages.next().is_some() {
        return Err(unexpected());
    }
    let listener = std::net::TcpListener::from(fd);
    match listener.local_addr() {
        Ok(std::net::SocketAddr::V4(addr)) if addr == PROXY_ADDR => Ok(listener),
        _ => Err(io::Error::other("the sandbox sent an unexpected socket")),
    }
}

pub(super) fn invalid(what: &str) -> SandboxError {
    SandboxError::Spawn(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} contains a NUL byte or is malformed"),
    ))
}

pub(super) fn cstring(bytes: &[u8], what: &str) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|_| invalid(what))
}

/// The paths to try for `program`: itself when it has a `/`, else each `PATH` entry
/// (an empty entry is the working directory), as execvp.
pub(super) fn candidates(program: &OsStr, path: &OsStr) -> Result<Vec<CString>, SandboxError> {
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
    rlimits: [(Resource, u64, u64); 6],
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
    let exec = sys::ExecArgs::new(strings, argc);

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
    let landlock_fd = landlock_dup.as_ref().or(config.landlock_fd);
    // With network: the listener comes back over this pair (see `setup_network`).
    let channel = match config.ns {
        Some(plan) if plan.network => {
            let (host, child) = socket_pair().map_err(SandboxError::Io)?;
            Some((host, above_stdio(child).map_err(SandboxError::Io)?))
        }
        _ => None,
    };
    if config
        .filters
        .iter()
        .any(|prog| u16::try_from(prog.len()).is_err())
    {
        return Err(spawn_err(io::Error::from_raw_os_error(libc::E2BIG)));
    }
    let mut spec = ChildSpec {
        candidates,
        exec,
        cwd: cstring(config.cwd.as_os_str().as_bytes(), "the scratch dir")?,
        stdio: [
            stdin_child.as_fd(),
            stdout_child.as_fd(),
            stderr_child.as_fd(),
        ],
        report: report_write.as_fd(),
        ids: config.ids.map(|(uid, gid)| {
            (
                rustix::process::Uid::from_raw(uid),
                rustix::process::Gid::from_raw(gid),
            )
        }),
        drop_groups: config.drop_groups,
        rlimits: config.rlimits,
        landlock_fd: landlock_fd.map(AsFd::as_fd),
        filters: config.filters,
        ns: None,
    };
    if let Some(plan) = config.ns {
        spec.ns = Some(NsSpec {
            plan,
            channel: channel.as_ref().map(|(_, child)| child.as_fd()),
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
            // Our own unreaped child.
            kill(pid);
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
                Resource::Cpu,
                l.cpu_seconds,
                l.cpu_seconds.saturating_add(1),
            ),
            (Resource::As, l.address_space_bytes, l.address_space_bytes),
            (Resource::Nofile, l.open_files, l.open_files),
            (Resource::Fsize, l.file_size_bytes, l.file_size_bytes),
            (Resource::Nproc, l.processes, l.processes),
            (Resource::Core, 0, 0),
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
        Err(SandboxError::NamespacesUnavailable { reason }) if weaker_allowed && !cmd.network => {
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
            let listener = tokio::net::TcpListener::from_std(listener).map_err(SandboxError::Io)?;
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
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

    /// Sends one byte and `fds` (SCM_RIGHTS, when any) over `channel`.
    fn send(channel: &OwnedFd, fds: &[std::os::fd::BorrowedFd<'_>]) {
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let sent = rustix::net::sendmsg(
            channel,
            &[io::IoSlice::new(&[0])],
            &mut control,
            SendFlags::empty(),
        );
        assert_eq!(sent.unwrap(), 1);
    }

    #[test]
    fn only_one_listener_on_the_proxy_address_is_accepted_from_the_sandbox() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (host, child) = socket_pair().unwrap();
        // Nothing received at all.
        let err = receive_listener(&host).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // A byte without a descriptor.
        send(&child, &[]);
        let err = receive_listener(&host).unwrap_err();
        assert_eq!(err.to_string(), "no listener received from the sandbox");
        // Two descriptors.
        send(&child, &[other.as_fd(), other.as_fd()]);
        let err = receive_listener(&host).unwrap_err();
        assert_eq!(err.to_string(), "no listener received from the sandbox");
        // One descriptor, but not a listener on the proxy address.
        send(&child, &[other.as_fd()]);
        let err = receive_listener(&host).unwrap_err();
        assert_eq!(err.to_string(), "the sandbox sent an unexpected socket");
    }
}
