//! What the subprocess tests (`process.rs`, `isolation.rs`, `network.rs`) share: who runs them,
//! an egress proxy for tools that need one, and re-running a test as an ordinary user.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

/// The uid and gid the unprivileged re-run uses (not `nobody`, so it owns its files).
pub const HELPER_ID: u32 = 65_533;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An egress proxy that resolves no name and allows only public addresses on 80 and 443: what a
/// network tool needs to run at all (nothing in these tests goes through it).
pub fn no_egress() -> egress_guard::EgressProxy {
    struct NoNames;
    impl egress_guard::NameResolver for NoNames {
        fn lookup<'a>(
            &'a self,
            _host: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, std::io::Error>> + Send + 'a>>
        {
            Box::pin(async { Err(std::io::Error::other("no names in tests")) })
        }
    }
    egress_guard::EgressProxy::new(egress_guard::EgressPolicy::new("tests"), Arc::new(NoNames))
}

/// Re-runs this test binary's `unprivileged_helper` test as uid and gid [`HELPER_ID`], with
/// `marker` set in its (otherwise cleared) environment, and returns its output. Run as root.
pub fn rerun_as_ordinary_user(marker: &str) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap();
    std::process::Command::new(exe)
        .args([
            "--exact",
            "unprivileged_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .env(marker, "1")
        .env("PATH", "/usr/bin:/bin")
        .env("TMPDIR", "/tmp")
        .current_dir("/")
        .uid(HELPER_ID)
        .gid(HELPER_ID)
        .output()
        .unwrap()
}
