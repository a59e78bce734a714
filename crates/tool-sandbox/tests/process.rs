//! Attacks on the subprocess sandbox: each test names the control it attacks and asserts the
//! closed outcome. Linux only; most tests expect to run as root (the tool then runs as
//! `nobody`), and still work as an ordinary user (the tool runs as the invoker).
#![cfg(target_os = "linux")]
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)] // Helpers fail the test by panicking.

mod subprocess;

use subprocess::{is_root, no_egress, text};

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use tool_sandbox::process::{
    Exit, LandlockStatus, ProcessLimits, ProcessOutput, RunAs, SandboxError, SandboxedCommand,
    support,
};

/// (pid, state, pgrp) of every process.
fn processes() -> Vec<(i32, char, i32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ..."; comm may contain spaces and parens.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 3 {
            continue;
        }
        let state = fields[0].chars().next().unwrap_or('?');
        let pgrp = fields[2].parse().unwrap_or(0);
        out.push((pid, state, pgrp));
    }
    out
}

fn members_of_group(pgid: u32) -> Vec<(i32, char, i32)> {
    let pgid = i32::try_from(pgid).unwrap();
    processes()
        .into_iter()
        .filter(|&(_, _, g)| g == pgid)
        .collect()
}

fn processes_of_uid(uid: u32) -> usize {
    processes()
        .into_iter()
        .filter(|&(pid, _, _)| {
            std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid)
        })
        .count()
}

fn zombies() -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|&(_, state, _)| state == 'Z')
        .map(|(pid, _, _)| pid)
        .collect()
}

fn assert_group_gone(out: &ProcessOutput) {
    let left = members_of_group(out.pid);
    assert!(
        left.is_empty(),
        "processes left in group {}: {left:?}",
        out.pid
    );
}

fn limits() -> ProcessLimits {
    ProcessLimits::default()
}

async fn sh(script: &str, limits: ProcessLimits) -> ProcessOutput {
    SandboxedCommand::new("/bin/sh")
        .args(["-c", script])
        .limits(limits)
        .run()
        .await
        .unwrap()
}

#[tokio::test]
async fn infinite_loop_is_killed_at_the_wall_clock_and_its_group_is_gone() {
    let start = Instant::now();
    let out = sh(
        "while :; do :; done",
        limits().with_wall_clock(Duration::from_millis(500)),
    )
    .await;
    assert_eq!(out.exit, Exit::TimedOut);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_group_gone(&out);
    assert!(!zombies().contains(&i32::try_from(out.pid).unwrap()));
}

#[tokio::test]
async fn background_child_dies_with_the_group_on_timeout() {
    let out = sh(
        "sleep 1000 & echo started; while :; do :; done",
        limits().with_wall_clock(Duration::from_millis(500)),
    )
    .await;
    assert_eq!(out.exit, Exit::TimedOut);
    assert_eq!(text(&out.stdout), "started\n");
    assert_group_gone(&out);
}

#[tokio::test]
async fn background_child_does_not_outlive_a_normal_exit() {
    let start = Instant::now();
    // The background sleep keeps stdout open; the run must not wait for it.
    let out = sh("sleep 1000 & echo bye", limits()).await;
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(text(&out.stdout), "bye\n");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_group_gone(&out);
}

#[tokio::test]
async fn fork_bomb_is_contained_by_the_process_limit() {
    const LIMIT: u64 = 16;
    // A uid of its own, so that other tests running as nobody do not share the count.
    let (run_as, uid, limit) = if is_root() {
        (
            RunAs::Ids {
                uid: 61_234,
                gid: 61_234,
            },
            61_234,
            LIMIT,
        )
    } else {
        let uid = nix::unistd::getuid().as_raw();
        (RunAs::Invoker, uid, processes_of_uid(uid) as u64 + LIMIT)
    };
    let before = processes_of_uid(uid);
    let sampler = tokio::spawn(async move {
        let mut max = 0;
        let stop = Instant::now() + Duration::from_secs(4);
        while Instant::now() < stop {
            max = max.max(processes_of_uid(uid));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        max
    });
    let out = SandboxedCommand::new("/bin/bash")
        .args(["-c", "f(){ f | f & }; f; while :; do sleep 100 & done"])
        .run_as(run_as)
        .limits(
            limits()
                .with_wall_clock(Duration::from_secs(2))
                .with_processes(limit),
        )
        .run()
        .await
        .unwrap();
    let max = sampler.await.unwrap();
    println!("fork bomb: uid {uid} peaked at {max} processes (limit {limit}, before {before})");
    assert!(
        matches!(out.exit, Exit::TimedOut | Exit::Code(_)),
        "{:?}",
        out.exit
    );
    assert!(
        max <= before + usize::try_from(limit).unwrap() + 2,
        "uid {uid} reached {max} processes (limit {limit}, before {before})"
    );
    assert_group_gone(&out);
    if is_root() {
        assert_eq!(processes_of_uid(uid), 0, "processes of uid {uid} left");
    }
}

#[tokio::test]
async fn endless_stdout_is_cut_at_the_cap_and_the_tool_killed() {
    let start = Instant::now();
    let out = SandboxedCommand::new("/usr/bin/yes")
        .limits(limits().with_wall_clock(Duration::from_secs(30)))
        .run()
        .await
        .unwrap();
    assert_eq!(out.exit, Exit::OutputCapped);
    assert!(out.stdout_truncated);
    assert!(!out.stderr_truncated);
    assert_eq!(out.stdout.len(), limits().output_bytes);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_group_gone(&out);
}

#[tokio::test]
async fn one_gigabyte_on_stderr_is_cut_at_the_cap_quickly() {
    let start = Instant::now();
    let out = sh(
        "head -c 1073741824 /dev/zero >&2",
        limits()
            .with_wall_clock(Duration::from_secs(60))
            .with_output_bytes(64 * 1024),
    )
    .await;
    assert_eq!(out.exit, Exit::OutputCapped);
    assert!(out.stderr_truncated);
    assert_eq!(out.stderr.len(), 64 * 1024);
    assert!(out.stdout.is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_group_gone(&out);
}

async fn bash_connect(port: u16, network: bool) -> ProcessOutput {
    SandboxedCommand::new("/bin/bash")
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
        ])
        .network(network)
        .egress(no_egress())
        .run()
        .await
        .unwrap()
}

async fn accepted(listener: &tokio::net::TcpListener) -> bool {
    tokio::time::timeout(Duration::from_millis(300), listener.accept())
        .await
        .is_ok()
}

#[tokio::test]
async fn tool_without_network_cannot_connect_to_a_loopback_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = bash_connect(port, false).await;
    assert_ne!(out.exit, Exit::Code(0), "stderr: {}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("connected"));
    assert!(
        !accepted(&listener).await,
        "the listener accepted a connection"
    );

    // With network too: the tool's own network namespace has only its own loopback.
    let out = bash_connect(port, true).await;
    assert_ne!(out.exit, Exit::Code(0), "stderr: {}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("connected"));
    assert!(
        !accepted(&listener).await,
        "the listener accepted a connection"
    );

    // The control: the same command outside the sandbox connects.
    let out = std::process::Command::new("/bin/bash")
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "connected\n", "{}", text(&out.stderr));
    assert!(accepted(&listener).await, "the control did not connect");
}

#[tokio::test]
async fn tool_without_network_cannot_create_an_inet_socket() {
    let script = "import socket\ntry:\n    socket.socket()\n    print('open')\nexcept PermissionError:\n    print('denied')\n";
    let out = SandboxedCommand::new("/usr/bin/python3")
        .args(["-c", script])
        .run()
        .await
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "denied\n",
        "stderr: {}",
        text(&out.stderr)
    );
    // AF_UNIX stays available (socketpair is used by many tools).
    let out = SandboxedCommand::new("/usr/bin/python3")
        .args(["-c", "import socket; socket.socketpair(); print('ok')"])
        .run()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "ok\n", "stderr: {}", text(&out.stderr));
    // The control: with network the socket opens.
    let out = SandboxedCommand::new("/usr/bin/python3")
        .args(["-c", script])
        .network(true)
        .egress(no_egress())
        .run()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "open\n", "stderr: {}", text(&out.stderr));
}

#[tokio::test]
async fn writes_outside_the_scratch_dir_are_denied_by_landlock() {
    let offered = support().landlock;
    if offered == LandlockStatus::NotSupported {
        let err = SandboxedCommand::new("/bin/true")
            .require_landlock(true)
            .run()
            .await
            .unwrap_err();
        assert!(matches!(err, SandboxError::Landlock { .. }), "{err:?}");
        println!("landlock not supported here, so only require_landlock was checked: {err}");
        return;
    }
    // A directory everyone may write to: only Landlock stands in the way.
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let outside = open_dir.path().join("escaped");
    let script = format!(
        "echo x > '{}' 2>/dev/null && echo outside-written; echo y > inside && cat inside",
        outside.display()
    );

    // The control: the run-as identity can write there without the sandbox.
    let control_target = open_dir.path().join("control");
    let mut control = std::process::Command::new("/bin/sh");
    control.args(["-c", &format!("echo x > '{}'", control_target.display())]);
    if let RunAs::Ids { uid, gid } = RunAs::default() {
        use std::os::unix::process::CommandExt;
        control.uid(uid).gid(gid);
    }
    assert!(control.status().unwrap().success());
    assert!(control_target.exists());

    let out = SandboxedCommand::new("/bin/sh")
        .args(["-c", &script])
        .require_landlock(true)
        .run()
        .await
        .unwrap();
    assert_eq!(out.confinement.landlock, offered);
    assert_eq!(text(&out.stdout), "y\n", "stderr: {}", text(&out.stderr));
    assert!(!outside.exists(), "the tool wrote outside its scratch dir");
}

#[tokio::test]
async fn scratch_dir_is_private_to_the_tool_and_removed() {
    let out = sh("pwd; stat -c '%a %u' .", limits()).await;
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    let dir = lines.next().unwrap().to_owned();
    let expected_uid = match RunAs::default() {
        RunAs::Ids { uid, .. } => uid,
        _ => nix::unistd::getuid().as_raw(),
    };
    assert_eq!(lines.next().unwrap(), format!("700 {expected_uid}"));
    assert!(!Path::new(&dir).exists(), "scratch dir {dir} not removed");
}

#[tokio::test]
async fn environment_is_cleared() {
    // Cargo sets this for the test process; the tool must not see it.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let out = SandboxedCommand::new("/usr/bin/env")
        .env("TOOL_VAR", "v1")
        .run()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "PATH=/usr/bin:/bin\nTOOL_VAR=v1\n");
}

#[tokio::test]
async fn stdin_is_delivered() {
    let out = SandboxedCommand::new("wc")
        .arg("-c")
        .stdin(vec![b'a'; 200_000])
        .run()
        .await
        .unwrap();
    assert_eq!(out.exit, Exit::Code(0));
    assert_eq!(text(&out.stdout).trim(), "200000");
}

#[tokio::test]
async fn core_dumps_are_disabled() {
    let out = sh("ulimit -c; ulimit -n", limits()).await;
    assert_eq!(text(&out.stdout), "0\n64\n");
}

#[tokio::test]
async fn writing_past_the_file_size_limit_fails() {
    let limit = 1 << 20;
    let out = sh(
        "head -c 4194304 /dev/zero > big; echo rc=$?; wc -c < big",
        limits().with_file_size_bytes(limit),
    )
    .await;
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_ne!(lines.next().unwrap(), "rc=0", "{stdout}");
    let size: u64 = lines.next().unwrap().trim().parse().unwrap();
    assert!(size <= limit, "wrote {size} bytes");
}

#[tokio::test]
async fn cpu_loop_is_killed_by_the_cpu_limit() {
    let start = Instant::now();
    let out = sh(
        "while :; do :; done",
        limits()
            .with_wall_clock(Duration::from_secs(30))
            .with_cpu_seconds(1),
    )
    .await;
    assert!(
        matches!(out.exit, Exit::Signal(s) if s == libc::SIGXCPU || s == libc::SIGKILL),
        "{:?}",
        out.exit
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn no_new_privs_and_seccomp_are_set() {
    let out = SandboxedCommand::new("grep")
        .args(["-E", "^(NoNewPrivs|Seccomp):", "/proc/self/status"])
        .run()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "NoNewPrivs:\t1\nSeccomp:\t2\n");
    assert!(out.confinement.no_new_privs);
    assert!(out.confinement.seccomp);
}

#[tokio::test]
async fn tool_cannot_leave_its_process_group() {
    for call in ["os.setsid()", "os.setpgid(0, 0)"] {
        let out = SandboxedCommand::new("python3")
            .args(["-c", &format!("import os\ntry:\n    {call}\n    print('escaped')\nexcept PermissionError:\n    print('denied')\n")])
            .run()
            .await
            .unwrap();
        assert_eq!(
            text(&out.stdout),
            "denied\n",
            "{call}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn tool_cannot_create_namespaces() {
    // unshare(2) and clone(2) with CLONE_NEWUSER (| SIGCHLD for clone): both EPERM.
    let clone_nr = if cfg!(target_arch = "aarch64") {
        220
    } else {
        56
    };
    let script = format!(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         print('unshare', libc.unshare(0x10000000), ctypes.get_errno())\n\
         r = libc.syscall({clone_nr}, 0x10000000 | 17, 0, 0, 0, 0)\n\
         if r == 0:\n    os._exit(0)\n\
         print('clone', r, ctypes.get_errno())\n"
    );
    let out = SandboxedCommand::new("python3")
        .args(["-c", &script])
        .run()
        .await
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        format!(
            "unshare -1 {eperm}\nclone -1 {eperm}\n",
            eperm = libc::EPERM
        ),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn cancelling_the_run_kills_the_group() {
    let marker = format!("cancel-marker-{}", std::process::id());
    let script = format!("sleep 1000 & sleep 1000; : {marker}");
    let run = SandboxedCommand::new("/bin/sh").args(["-c", &script]).run();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), run)
            .await
            .is_err()
    );
    let leader = processes().into_iter().find(|&(pid, _, _)| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
    });
    // Killed at drop; reaping happens in the background: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<_> = match leader {
            Some((pid, _, _)) => members_of_group(pid.unsigned_abs()),
            None => Vec::new(),
        };
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left after cancel: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn debug_output_shows_env_names_not_values() {
    let cmd = SandboxedCommand::new("/bin/true")
        .env("API_TOKEN", "s3cr3t-value")
        .stdin(b"private stdin".to_vec());
    let text = format!("{cmd:?}");
    assert!(text.contains("API_TOKEN"), "{text}");
    assert!(!text.contains("s3cr3t-value"), "{text}");
    assert!(!text.contains("private stdin"), "{text}");
}

#[test]
fn this_kernel_offers_seccomp() {
    let offered = support();
    println!("support: {offered:?}");
    assert!(offered.seccomp);
    assert!(offered.no_new_privs);
}

#[tokio::test]
async fn a_program_that_cannot_start_is_a_spawn_error() {
    let err = SandboxedCommand::new("/nonexistent/tool")
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SandboxError::Spawn(ref e) if e.raw_os_error() == Some(libc::ENOENT)),
        "{err:?}"
    );
    let err = SandboxedCommand::new("no-such-tool-on-path")
        .run()
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::Spawn(_)), "{err:?}");
}

#[tokio::test]
async fn the_tool_starts_with_no_blocked_or_caught_signals_and_default_sigpipe() {
    let out = SandboxedCommand::new("/bin/cat")
        .arg("/proc/self/status")
        .run()
        .await
        .unwrap();
    let status = text(&out.stdout);
    let mask = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{status}");
    // The host's handlers (tokio's SIGCHLD, std's SIGSEGV) are reset before exec.
    assert_eq!(mask("SigCgt:"), 0, "{status}");
    // std ignores SIGPIPE in this process; the tool gets the default back.
    assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{status}");
}
