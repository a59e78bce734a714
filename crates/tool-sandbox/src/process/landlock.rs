//! The Landlock ruleset, built in the parent (the child only calls `landlock_restrict_self`).
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope,
};

use super::namespaces::DEVICES;
use super::spawn::support;
use super::{LandlockStatus, SandboxError};

/// The newest Landlock ABI this crate knows; `BestEffort` drops what the kernel lacks.
const LANDLOCK_ABI: ABI = ABI::V10;
/// The ABI from which every restriction this module relies on is enforced.
const LANDLOCK_FULL_ABI: i64 = 6;

pub(super) fn landlock_status(abi: i64) -> LandlockStatus {
    if abi >= LANDLOCK_FULL_ABI {
        LandlockStatus::Enforced
    } else if abi >= 1 {
        LandlockStatus::PartiallyEnforced
    } else {
        LandlockStatus::NotSupported
    }
}

/// Builds the Landlock ruleset (in the parent: the child only calls restrict_self).
pub(super) fn landlock_ruleset(
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
