//! Attacks on per-run isolation (user, mount, PID, network, IPC and UTS namespaces): each test
//! names what a tool must not reach, asserts the closed outcome and, as a positive control,
//! that the same thing is reachable without the sandbox (or that the legitimate run works).
//! Linux only. Run as root, the tool runs as `nobody` in its own user namespace; the
//! `*_as_an_ordinary_user` test re-runs the checks from a child of this test binary that has
//! dropped to an unprivileged uid, so the unprivileged-user-namespace path is covered too.
#![cfg(target_os = "linux")]
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)] // Helpers fail the test by panicking.

mod subprocess;

use subprocess::{is_root, no_egress, rerun_as_ordinary_user, text};

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tool_sandbox::process::{
    Exit, Isolation, LandlockStatus, ProcessOutput, RunAs, SandboxError, SandboxedCommand, support,
};

/// Set in the environment of the unprivileged child that runs `unprivileged_helper`.
const HELPER_ENV: &str = "TOOL_SANDBOX_ISOLATION_HELPER";

/// The identity the tool runs as outside its namespace.
fn run_as_ids() -> Option<(u32, u32)> {
    match RunAs::default() {
        RunAs::Ids { uid, gid } => Some((uid, gid)),
        _ => None,
    }
}

async fn sh(script: &str) -> ProcessOutput {
    SandboxedCommand::new("/bin/sh")
        .args(["-c", script])
        .run()
        .await
        .unwrap()
}

/// The control: the same script as the run-as identity, without the sandbox.
fn sh_unsandboxed(script: &str) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", script]).env_clear();
    if let Some((uid, gid)) = run_as_ids() {
        cmd.uid(uid).gid(gid);
    }
    cmd.output().unwrap()
}

/// A world-readable file in a world-readable directory of the host's `/tmp`, so only the
/// sandbox (not file permissions) can keep the tool away from it.
fn world_readable_secret() -> (tempfile::TempDir, PathBuf) {
    world_readable_secret_in("/tmp")
}

fn world_readable_secret_in(parent: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("app-data-")
        .tempdir_in(parent)
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("secret.txt");
    std::fs::write(&file, "app-secret-value\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, file)
}

/// A scratch directory the run-as identity owns, for a run whose path the test must know.
fn owned_scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("scratch-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    if let Some((uid, gid)) = run_as_ids() {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    }
    dir
}

// ---------------------------------------------------------------------------------------------
// The checks, shared by the root tests and the unprivileged child.

async fn check_concurrent_runs_cannot_read_each_others_scratch() {
    let scratch_a = owned_scratch();
    let a_dir = scratch_a.path().to_path_buf();
    let run_a = SandboxedCommand::new("/bin/sh")
        .args(["-c", "echo secret-of-a > secret; sleep 2; cat secret"])
        .scratch_dir(&a_dir)
        .run();
    let probe = format!(
        "sleep 0.5; cat '{dir}/secret' 2>&1 || echo cannot-read; ls -d '{dir}' 2>&1 || echo cannot-see; echo own > mine && cat mine",
        dir = a_dir.display()
    );
    let run_b = async {
        // B starts while A is running and its file exists.
        tokio::time::sleep(Duration::from_millis(200)).await;
        sh(&probe).await
    };
    let (a, b) = tokio::join!(run_a, run_b);
    let a = a.unwrap();
    let b_out = text(&b.stdout);
    assert!(
        !b_out.contains("secret-of-a"),
        "B read A's scratch: {b_out}"
    );
    assert!(b_out.contains("cannot-read"), "{b_out}");
    assert!(b_out.contains("cannot-see"), "{b_out}");
    // The controls: each run uses its own scratch normally, and A's file was there.
    assert!(b_out.ends_with("own\n"), "{b_out} / {}", text(&b.stderr));
    assert_eq!(a.exit, Exit::Code(0), "{}", text(&a.stderr));
    assert_eq!(text(&a.stdout), "secret-of-a\n");
    assert!(a_dir.join("secret").exists());
}

async fn check_run_cannot_read_the_apps_files() {
    let (_dir, secret) = world_readable_secret();
    let app_dir = env!("CARGO_MANIFEST_DIR");
    let script = format!(
        "cat '{secret}' 2>/dev/null || echo no-secret; \
         test -e '{app_dir}' && echo app-dir-visible; \
         test -e /home && echo home-visible; \
         test -e /root && echo root-home-visible; \
         ls -A /tmp | grep -vx \"$(basename \"$PWD\")\"; echo tmp-listed; \
         test -e /var/run/postgresql && echo pg-socket-dir-visible; \
         test -e /run && echo run-visible; \
         echo done",
        secret = secret.display()
    );
    let out = sh(&script).await;
    assert_eq!(
        text(&out.stdout),
        "no-secret\ntmp-listed\ndone\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(out.confinement.namespaces);
    // The control: the run-as identity reads the file and sees the host's /tmp without the
    // sandbox, so only the isolation stopped it.
    let control = sh_unsandboxed(&format!(
        "cat '{}'; ls -A /tmp | grep -c app-data-",
        secret.display()
    ));
    let control = text(&control.stdout);
    assert!(control.starts_with("app-secret-value\n"), "{control}");
    assert_ne!(control.lines().nth(1), Some("0"), "{control}");
}

async fn check_unix_sockets_to_a_host_service_fail() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};

    let dir = tempfile::Builder::new()
        .prefix("host-service-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("service.sock");
    let pathname = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let abstract_name = format!("tool-sandbox-test-{}", std::process::id());
    let abstract_listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap())
            .unwrap();
    pathname.set_nonblocking(true).unwrap();
    abstract_listener.set_nonblocking(true).unwrap();

    let script = format!(
        "import socket\n\
         for name, addr in (('pathname', '{path}'), ('abstract', '\\0{abstract_name}')):\n\
         \x20   s = socket.socket(socket.AF_UNIX)\n\
         \x20   try:\n\
         \x20       s.connect(addr)\n\
         \x20       print(name, 'connected')\n\
         \x20   except OSError as e:\n\
         \x20       print(name, 'refused')\n",
        path = path.display()
    );
    // With network too: abstract sockets belong to the network namespace, and every tool has
    // its own.
    for network in [false, true] {
        let out = SandboxedCommand::new("/usr/bin/python3")
            .args(["-c", &script])
            .network(network)
            .egress(no_egress())
            .run()
            .await
            .unwrap();
        assert_eq!(
            text(&out.stdout),
            "pathname refused\nabstract refused\n",
            "network {network}: {}",
            text(&out.stderr)
        );
        assert!(pathname.accept().is_err(), "the pathname listener accepted");
        assert!(
            abstract_listener.accept().is_err(),
            "the abstract listener accepted"
        );
    }
    // The control: the run-as identity connects to both without the sandbox.
    use std::os::unix::process::CommandExt;
    let mut control = std::process::Command::new("/usr/bin/python3");
    control.args(["-c", &script]).env_clear();
    if let Some((uid, gid)) = run_as_ids() {
        control.uid(uid).gid(gid);
    }
    let control = control.output().unwrap();
    assert_eq!(
        text(&control.stdout),
        "pathname connected\nabstract connected\n",
        "{}",
        text(&control.stderr)
    );
}

async fn check_no_network_tool_cannot_reach_a_loopback_server() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");
    let out = SandboxedCommand::new("/bin/bash")
        .args(["-c", &script])
        .run()
        .await
        .unwrap();
    assert!(!text(&out.stdout).contains("connected"));
    assert_ne!(out.exit, Exit::Code(0));
    std::thread::sleep(Duration::from_millis(100));
    assert!(listener.accept().is_err(), "the listener accepted");
    // Beneath seccomp, the network namespace has no interface but a loopback that is down.
    let out = SandboxedCommand::new("/bin/sh")
        .args(["-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"])
        .run()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "lo\n", "{}", text(&out.stderr));
    // A tool declared with network does not either: it has its own network namespace, whose
    // only way out is the egress proxy (see tests/network.rs).
    let out = SandboxedCommand::new("/bin/bash")
        .args(["-c", &script])
        .network(true)
        .egress(no_egress())
        .run()
        .await
        .unwrap();
    assert!(!text(&out.stdout).contains("connected"));
    std::thread::sleep(Duration::from_millis(100));
    assert!(listener.accept().is_err(), "the listener accepted");
    // The control: the same script outside the sandbox connects.
    let out = std::process::Command::new("/bin/bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "connected\n", "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(100));
    assert!(listener.accept().is_ok(), "the control did not connect");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// As the app's own identity (root on CI: the tool runs as `nobody`).

#[tokio::test]
async fn two_concurrent_runs_cannot_read_each_others_scratch() {
    check_concurrent_runs_cannot_read_each_others_scratch().await;
}

#[tokio::test]
async fn a_run_cannot_read_the_apps_files_home_or_host_tmp() {
    check_run_cannot_read_the_apps_files().await;
}

#[tokio::test]
async fn pathname_and_abstract_unix_sockets_to_a_host_service_fail() {
    check_unix_sockets_to_a_host_service_fail().await;
}

#[tokio::test]
async fn a_tool_without_network_cannot_connect_to_a_loopback_server() {
    check_no_network_tool_cannot_reach_a_loopback_server().await;
}

#[tokio::test]
async fn a_tool_sees_only_its_own_processes_and_has_no_capabilities() {
    let out = sh("ls /proc | grep -cE '^[0-9]+$'; hostname; id -u; \
         grep -E '^Cap(Eff|Prm|Bnd|Amb):' /proc/self/status | tr -d '\\t'")
    .await;
    let expected_uid = run_as_ids().map_or_else(|| nix::unistd::getuid().as_raw(), |(u, _)| u);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // The init, sh and ls (and grep's pipeline partner) only.
    let count: u32 = lines[0].parse().unwrap();
    assert!((2..=4).contains(&count), "{stdout}");
    assert_eq!(lines[1], "tool-sandbox");
    assert_eq!(lines[2], expected_uid.to_string());
    assert_eq!(
        &lines[3..],
        [
            "CapPrm:0000000000000000",
            "CapEff:0000000000000000",
            "CapBnd:0000000000000000",
            "CapAmb:0000000000000000"
        ],
        "{stdout}"
    );
}

#[tokio::test]
async fn the_root_and_read_only_paths_cannot_be_written() {
    let out = sh(
        "touch /usr/x 2>/dev/null || echo usr-ro; touch /x 2>/dev/null || echo root-ro; \
         touch /dev/x 2>/dev/null || echo dev-ro; echo ok > /tmp/t && cat /tmp/t; \
         echo ok > here && cat here; echo hi > /dev/null && echo null-ok",
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "usr-ro\nroot-ro\ndev-ro\nok\nok\nnull-ok\n",
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn a_custom_read_only_allowlist_is_all_the_tool_reads() {
    // Not under /tmp: the tool's /tmp is its own.
    let (_dir, secret) = world_readable_secret_in("/var/tmp");
    let dir = secret.parent().unwrap().to_path_buf();
    let script = format!("cat '{}'", secret.display());
    // Not listed: refused.
    let out = sh(&script).await;
    assert_ne!(out.exit, Exit::Code(0));
    // Listed (with the default system paths): readable, and still read-only.
    let mut paths: Vec<PathBuf> = tool_sandbox::process::DEFAULT_READ_ONLY_PATHS
        .iter()
        .map(PathBuf::from)
        .collect();
    paths.push(dir.clone());
    let out = SandboxedCommand::new("/bin/sh")
        .args([
            "-c",
            &format!(
                "{script}; echo x > '{}/new' 2>/dev/null || echo read-only",
                dir.display()
            ),
        ])
        .read_only_paths(&paths)
        .run()
        .await
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "app-secret-value\nread-only\n",
        "{}",
        text(&out.stderr)
    );
    // Paths the sandbox provides itself, relative paths and `..` are refused.
    for bad in ["/proc/1", "relative", "/usr/../etc", "/", "/tmp/x", "/dev"] {
        let err = SandboxedCommand::new("/bin/true")
            .read_only_paths([bad])
            .run()
            .await
            .unwrap_err();
        assert!(
            matches!(err, SandboxError::InvalidReadOnlyPath(ref p) if p == Path::new(bad)),
            "{bad}: {err:?}"
        );
    }
}

#[tokio::test]
async fn without_namespaces_a_run_is_refused_unless_the_weaker_mode_is_chosen() {
    let err = SandboxedCommand::new("/bin/echo")
        .arg("ran")
        .simulate_namespaces_unavailable(true)
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(err, SandboxError::NamespacesUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("namespaces are unavailable"));

    // The operator's explicit opt-in: the weaker mode runs, and says so.
    let out = SandboxedCommand::new("/bin/echo")
        .arg("ran")
        .isolation(Isolation::NamespacesOrWeaker)
        .simulate_namespaces_unavailable(true)
        .run()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "ran\n");
    assert!(!out.confinement.namespaces);
    // Still confined there: Landlock keeps reads to the allowlist.
    if support().landlock != LandlockStatus::NotSupported {
        let (_dir, secret) = world_readable_secret();
        let out = SandboxedCommand::new("/bin/cat")
            .arg(&secret)
            .isolation(Isolation::NamespacesOrWeaker)
            .simulate_namespaces_unavailable(true)
            .run()
            .await
            .unwrap();
        assert_ne!(out.exit, Exit::Code(0));
        assert!(out.stdout.is_empty());
    }

    // The control: where namespaces exist, both settings isolate.
    assert!(support().namespaces, "this host should offer namespaces");
    for isolation in [Isolation::Namespaces, Isolation::NamespacesOrWeaker] {
        let out = SandboxedCommand::new("/bin/echo")
            .arg("ran")
            .isolation(isolation)
            .run()
            .await
            .unwrap();
        assert_eq!(text(&out.stdout), "ran\n");
        assert!(out.confinement.namespaces);
    }
}

// ---------------------------------------------------------------------------------------------
// As an ordinary user: this test binary re-runs `unprivileged_helper` as uid 65533.

#[test]
fn the_same_attacks_fail_as_an_ordinary_user() {
    if std::env::var_os(HELPER_ENV).is_some() {
        return; // Inside the helper itself.
    }
    if !is_root() {
        // Already an ordinary user: run the checks here.
        runtime().block_on(run_all_checks());
        return;
    }
    let out = rerun_as_ordinary_user(HELPER_ENV);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("unprivileged checks passed"),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
}

async fn run_all_checks() {
    assert!(!is_root());
    assert!(
        support().namespaces,
        "unprivileged user namespaces are needed"
    );
    check_concurrent_runs_cannot_read_each_others_scratch().await;
    check_run_cannot_read_the_apps_files().await;
    check_unix_sockets_to_a_host_service_fail().await;
    check_no_network_tool_cannot_reach_a_loopback_server().await;
    // The tool runs as the invoker, inside its own namespaces.
    let out = sh("id -u; cat /proc/self/uid_map | tr -s ' '").await;
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(text(&out.stdout), format!("{uid}\n {uid} {uid} 1\n"));
}

#[test]
fn unprivileged_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return; // Only meaningful in the child started above.
    }
    runtime().block_on(run_all_checks());
    let mut stdout = std::io::stdout();
    writeln!(stdout, "unprivileged checks passed").unwrap();
    stdout.flush().unwrap();
    let _ = std::io::stdin().read(&mut [0u8; 0]);
}
