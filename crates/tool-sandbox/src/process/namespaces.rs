//! The namespaced run's plan: the `unshare` flags, uid/gid maps and mount tree (built by the
//! parent, run by the child), the scratch directory and the namespace support probe.
#![forbid(unsafe_code)]

use std::ffi::{CString, c_int};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{ABI, Access, AccessFs};
use rustix::process::{Gid, Uid};
use rustix::thread;

use super::reap::reap_pid;
use super::spawn::cstring;
use super::sys;
use super::{RunAs, SandboxError};

/// Whether a child switched to the default run-as identity can create the namespaces a
/// run needs (probed with a short-lived child).
pub(super) fn namespaces_available() -> bool {
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
    // The child switches ids with raw, per-thread system calls (groups dropped), then
    // exits 0 if unshare succeeds, 1 otherwise.
    let probe = move || {
        if let Some((uid, gid)) = ids {
            let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
            let dropped = thread::set_thread_groups(&[]).is_ok()
                && thread::set_thread_res_gid(gid, gid, gid).is_ok()
                && thread::set_thread_res_uid(uid, uid, uid).is_ok();
            if !dropped {
                return 1;
            }
        }
        c_int::from(sys::unshare_namespaces(flags).is_err())
    };
    sys::fork_probe(probe)
        .is_ok_and(|pid| reap_pid(pid).is_ok_and(|status| status.code() == Some(0)))
}

/// The scratch directory: the caller's, or a fresh private one owned by the run-as ids.
pub(super) enum Scratch {
    Given(PathBuf),
    Temp(tempfile::TempDir),
}

impl Scratch {
    pub(super) fn path(&self) -> &Path {
        match self {
            Self::Given(p) => p,
            Self::Temp(t) => t.path(),
        }
    }
}

pub(super) fn make_scratch(
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
pub(super) const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];
/// Where the new root is assembled (in the run's own mount namespace: the host's `/tmp`
/// stays untouched and visible to the setup under `/oldroot/tmp`).
const BASE: &str = "/tmp";
const NEW_ROOT: &str = "/newroot";
const OLD_ROOT: &str = "/oldroot";

fn path_cstring(parts: &[&[u8]]) -> Result<CString, SandboxError> {
    cstring(&parts.concat(), "a path")
}

/// `/newroot` + `path` (absolute).
pub(super) fn new(path: &Path) -> Result<CString, SandboxError> {
    path_cstring(&[NEW_ROOT.as_bytes(), path.as_os_str().as_bytes()])
}

/// `/oldroot` + `path` (absolute).
pub(super) fn old(path: &Path) -> Result<CString, SandboxError> {
    path_cstring(&[OLD_ROOT.as_bytes(), path.as_os_str().as_bytes()])
}

/// Checks a read-only path: absolute, no `..`, not `/` and not under what the sandbox
/// provides itself.
pub(super) fn check_read_only(path: &Path) -> Result<(), SandboxError> {
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
pub(super) fn namespace_plan(
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

    let abi = ABI::from(i32::try_from(sys::landlock_abi()).unwrap_or(0));
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

/// One step of the mount plan, run by the tool in its own mount namespace before exec.
pub(super) enum MountOp {
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
pub(super) struct NsPlan {
    /// `unshare` flags.
    pub(super) flags: c_int,
    /// A tool with network: loopback up and the proxy's listener passed back.
    pub(super) network: bool,
    pub(super) uid_map: CString,
    pub(super) gid_map: CString,
    pub(super) ops: Vec<MountOp>,
    /// Landlock rules added for the new `/proc`, `/dev` and `/tmp` (path, access).
    pub(super) landlock_rules: Vec<(CString, u64)>,
    /// The highest capability number of this kernel.
    pub(super) last_cap: c_int,
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
        let plan = namespace_plan(&read_only, &scratch, false, (65_534, 65_534), 1 << 20).unwrap();
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
}
