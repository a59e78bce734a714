//! Finding the PostgreSQL server binaries.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::TestkitError;

/// The directory holding `initdb` and `postgres`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    dir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries: `$TESTKIT_PG_BIN`, then `$PATH`, then the newest
    /// `/usr/lib/postgresql/*/bin` (where Debian keeps them off `PATH`).
    ///
    /// # Errors
    /// [`TestkitError::NoPostgres`], whose message says how to install them.
    pub fn discover() -> Result<Self, TestkitError> {
        let explicit = std::env::var_os("TESTKIT_PG_BIN").map(PathBuf::from);
        Self::discover_in(
            explicit.as_deref(),
            std::env::var_os("PATH").as_deref(),
            Path::new("/usr/lib/postgresql"),
        )
    }

    /// [`discover`](Self::discover) with the search places given explicitly.
    ///
    /// # Errors
    /// [`TestkitError::NoPostgres`] when no directory holds both binaries.
    pub fn discover_in(
        explicit: Option<&Path>,
        path_var: Option<&OsStr>,
        versions_root: &Path,
    ) -> Result<Self, TestkitError> {
        let mut candidates: Vec<PathBuf> = explicit.map(Path::to_path_buf).into_iter().collect();
        if let Some(path_var) = path_var {
            candidates.extend(std::env::split_paths(path_var));
        }
        let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir(versions_root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((major, entry.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
        candidates.extend(versioned.into_iter().map(|(_, dir)| dir));

        candidates
            .iter()
            .find(|dir| is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres")))
            .map(|dir| Self { dir: dir.clone() })
            .ok_or_else(|| TestkitError::NoPostgres {
                searched: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn initdb(&self) -> PathBuf {
        self.dir.join("initdb")
    }

    pub(crate) fn postgres(&self) -> PathBuf {
        self.dir.join("postgres")
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_give_a_message_that_says_how_to_fix_it() {
        let empty = tempfile_dir();
        let err = PgBinaries::discover_in(None, Some(OsStr::new("")), &empty).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, TestkitError::NoPostgres { .. }));
        for needle in [
            "apt-get install postgresql",
            "DATABASE_URL=",
            "TESTKIT_PG_BIN",
            "never skip",
        ] {
            assert!(message.contains(needle), "{needle} missing from: {message}");
        }
        std::fs::remove_dir_all(empty).unwrap();
    }

    #[test]
    fn finds_binaries_in_versioned_root_preferring_newest() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile_dir();
        for v in ["14", "16", "9"] {
            let bin = root.join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for exe in ["initdb", "postgres"] {
                std::fs::write(bin.join(exe), "").unwrap();
                std::fs::set_permissions(bin.join(exe), std::fs::Permissions::from_mode(0o755))
                    .unwrap();
            }
        }
        let found = PgBinaries::discover_in(None, None, &root).unwrap();
        assert_eq!(found.dir(), root.join("16").join("bin"));
        std::fs::remove_dir_all(root).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "testkit-unit-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir(&dir).unwrap();
        dir
    }
}
