//! The development data directory: a TLS certificate and the keys the app needs, generated on
//! the first run into 0600 files and reused afterwards.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DevDataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: readable by other users; fix with chmod 600 (or delete it to regenerate)")]
    Permissions(PathBuf),
    #[error("{0}: not a 32-byte hex key")]
    Malformed(PathBuf),
    #[error("could not generate the development certificate: {0}")]
    Certificate(String),
    #[error("the system random source failed")]
    Random,
}

/// The development secrets.
pub(crate) struct DevData {
    pub(crate) tls_cert_pem: String,
    pub(crate) tls_key_pem: Zeroizing<String>,
    /// The key-encryption key for field-crypto (TOTP seeds, note bodies, phone numbers).
    pub(crate) field_key: Zeroizing<[u8; 32]>,
    /// The blind-index key (phone number lookups).
    pub(crate) blind_key: Zeroizing<[u8; 32]>,
    /// The audit log's pseudonymisation key.
    pub(crate) pseudonym_key: Zeroizing<[u8; 32]>,
    /// The audit checkpoint signing key.
    pub(crate) checkpoint_key: Zeroizing<[u8; 32]>,
    /// The key the assistant's approval gate signs approvals with.
    pub(crate) approval_key: Zeroizing<[u8; 32]>,
    /// The key magic-auth signs session rows with.
    pub(crate) session_key: Zeroizing<[u8; 32]>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevDataError + '_ {
    move |source| DevDataError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads `name` from `dir`, refusing files others can read, or creates it with `make()`.
fn secret_file(
    dir: &Path,
    name: &str,
    make: impl FnOnce() -> Result<Zeroizing<String>, DevDataError>,
) -> Result<Zeroizing<String>, DevDataError> {
    let path = dir.join(name);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(DevDataError::Permissions(path));
            }
            Ok(Zeroizing::new(
                std::fs::read_to_string(&path).map_err(io(&path))?,
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let content = make()?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(&path))?;
            file.write_all(content.as_bytes()).map_err(io(&path))?;
            Ok(content)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

fn random_key() -> Result<Zeroizing<String>, DevDataError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *key).map_err(|_| DevDataError::Random)?;
    Ok(Zeroizing::new(hex::encode(*key)))
}

fn key_file(dir: &Path, name: &str) -> Result<Zeroizing<[u8; 32]>, DevDataError> {
    let text = secret_file(dir, name, random_key)?;
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut *key)
        .map_err(|_| DevDataError::Malformed(dir.join(name)))?;
    Ok(key)
}

impl DevData {
    /// Loads or creates everything under `dir` (created 0700).
    pub(crate) fn load_or_create(dir: &Path, host: &str) -> Result<Self, DevDataError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let key = secret_file(dir, "tls-key.pem", || {
            let pair =
                rcgen::KeyPair::generate().map_err(|e| DevDataError::Certificate(e.to_string()))?;
            Ok(Zeroizing::new(pair.serialize_pem()))
        })?;
        let cert = secret_file(dir, "tls-cert.pem", || {
            let pair = rcgen::KeyPair::from_pem(&key)
                .map_err(|e| DevDataError::Certificate(e.to_string()))?;
            let names = vec![
                host.to_owned(),
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ];
            let params = rcgen::CertificateParams::new(names)
                .map_err(|e| DevDataError::Certificate(e.to_string()))?;
            let cert = params
                .self_signed(&pair)
                .map_err(|e| DevDataError::Certificate(e.to_string()))?;
            Ok(Zeroizing::new(cert.pem()))
        })?;
        Ok(Self {
            tls_cert_pem: cert.to_string(),
            tls_key_pem: key,
            field_key: key_file(dir, "field-kek.key")?,
            blind_key: key_file(dir, "blind-index.key")?,
            pseudonym_key: key_file(dir, "audit-pseudonym.key")?,
            checkpoint_key: key_file(dir, "audit-checkpoint.key")?,
            approval_key: key_file(dir, "tool-approval.key")?,
            session_key: key_file(dir, "session-row.key")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_reused_and_refused_when_readable_by_others() {
        let dir = std::env::temp_dir().join(format!("ra-devdata-{}", uuid::Uuid::new_v4()));
        let first = DevData::load_or_create(&dir, "localhost").unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = DevData::load_or_create(&dir, "localhost").unwrap();
        assert_eq!(*first.field_key, *again.field_key);
        assert_eq!(first.tls_cert_pem, again.tls_cert_pem);
        std::fs::set_permissions(
            dir.join("field-kek.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            DevData::load_or_create(&dir, "localhost"),
            Err(DevDataError::Permissions(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
