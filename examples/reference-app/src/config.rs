//! Configuration: embedded development defaults, and a production mode that refuses to start
//! without what production needs.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the app will not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An argument the app does not know.
    #[error("unknown argument {0:?} (try --help)")]
    UnknownArgument(String),
    /// An option without its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// A listener address that does not parse.
    #[error("invalid address for {0}")]
    InvalidAddress(&'static str),
    /// Production mode is missing something it requires.
    #[error("production mode refuses to start: {0}")]
    Production(String),
}

/// Where the assistant's model comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ModelSource {
    /// The deterministic demo model.
    Scripted,
    /// An OpenAI-compatible chat-completions endpoint.
    OpenAi {
        /// The endpoint, e.g. `http://127.0.0.1:8080/v1`.
        base_url: String,
        /// The model name.
        model: String,
    },
}

/// The app's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Production mode (refuses development defaults).
    pub production: bool,
    /// Where the development certificate and keys live.
    pub data_dir: PathBuf,
    /// The HTTPS listener.
    pub https: SocketAddr,
    /// The plain-HTTP listener (redirects only).
    pub http: SocketAddr,
    /// The public origin links are built from (never the Host header).
    pub base_url: String,
    /// A real certificate (production).
    pub tls_cert: Option<PathBuf>,
    /// Its key (production).
    pub tls_key: Option<PathBuf>,
    /// The assistant's model.
    pub model: ModelSource,
}

/// `--help`.
pub const USAGE: &str = "\
reference-app: a multi-tenant workspace wired with every tenantguard crate

USAGE: cargo run -p reference-app -- [OPTIONS]

  --data-dir <dir>     development keys and certificate (default: .reference-app)
  --https <addr>       HTTPS listener (default: 127.0.0.1:8443)
  --http <addr>        HTTP listener that redirects to HTTPS (default: 127.0.0.1:8080)
  --base-url <url>     public origin for links (default: https://localhost:<https port>)
  --production         refuse to start without production settings:
                         --tls-cert/--tls-key (a real certificate),
                         REFERENCE_APP_KEK (hex key-encryption key from outside the database),
                         DATABASE_URL with sslmode=verify-full or require, and
                         REFERENCE_APP_OWNER_DATABASE_URL for migrations
  --tls-cert <pem>, --tls-key <pem>

ENVIRONMENT
  DATABASE_URL                  use this PostgreSQL instead of a throwaway one
  REFERENCE_APP_MODEL_URL       an OpenAI-compatible endpoint (e.g. http://127.0.0.1:8080/v1)
  REFERENCE_APP_MODEL           the model name for it (default: local)
  REFERENCE_APP_MODEL_API_KEY   its API key, if any
";

impl Config {
    /// Parses the command line (and the model settings from the environment); `Ok(None)` for
    /// `--help`.
    ///
    /// # Errors
    /// [`ConfigError`] for a bad argument, or production settings that are missing.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Option<Self>, ConfigError> {
        let mut production = false;
        let mut data_dir = PathBuf::from(".reference-app");
        let mut https: SocketAddr = ([127, 0, 0, 1], 8443).into();
        let mut http: SocketAddr = ([127, 0, 0, 1], 8080).into();
        let mut base_url = None;
        let (mut tls_cert, mut tls_key) = (None, None);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &'static str| args.next().ok_or(ConfigError::MissingValue(name));
            match arg.as_str() {
                "--help" | "-h" => return Ok(None),
                "--production" => production = true,
                "--data-dir" => data_dir = PathBuf::from(value("--data-dir")?),
                "--https" => {
                    https = value("--https")?
                        .parse()
                        .map_err(|_| ConfigError::InvalidAddress("--https"))?;
                }
                "--http" => {
                    http = value("--http")?
                        .parse()
                        .map_err(|_| ConfigError::InvalidAddress("--http"))?;
                }
                "--base-url" => base_url = Some(value("--base-url")?),
                "--tls-cert" => tls_cert = Some(PathBuf::from(value("--tls-cert")?)),
                "--tls-key" => tls_key = Some(PathBuf::from(value("--tls-key")?)),
                other => return Err(ConfigError::UnknownArgument(other.to_owned())),
            }
        }
        let base_url = base_url.unwrap_or_else(|| format!("https://localhost:{}", https.port()));
        let model = match std::env::var("REFERENCE_APP_MODEL_URL") {
            Ok(base_url) if !base_url.is_empty() => ModelSource::OpenAi {
                base_url,
                model: std::env::var("REFERENCE_APP_MODEL").unwrap_or_else(|_| "local".to_owned()),
            },
            _ => ModelSource::Scripted,
        };
        let config = Self {
            production,
            data_dir,
            https,
            http,
            base_url,
            tls_cert,
            tls_key,
            model,
        };
        if production {
            config.check_production(|name| std::env::var(name).ok())?;
        }
        Ok(Some(config))
    }

    /// Everything production mode requires that can be checked before connecting. The runtime
    /// role is checked after connecting (`rls_guard::verify_runtime_role`).
    ///
    /// # Errors
    /// [`ConfigError::Production`] naming the first missing requirement.
    pub fn check_production(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let refuse = |why: &str| Err(ConfigError::Production(why.to_owned()));
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) if cert.is_file() && key.is_file() => {}
            _ => return refuse("a real certificate is required (--tls-cert and --tls-key)"),
        }
        match env("REFERENCE_APP_KEK") {
            Some(k) if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) => {}
            _ => {
                return refuse(
                    "REFERENCE_APP_KEK must hold a 32-byte key-encryption key in hex, kept outside the database",
                );
            }
        }
        let Some(url) = env("DATABASE_URL") else {
            return refuse("DATABASE_URL is required (no throwaway database in production)");
        };
        let tls = url::Url::parse(&url).ok().is_some_and(|u| {
            u.query_pairs()
                .any(|(k, v)| k == "sslmode" && (v == "verify-full" || v == "require"))
        });
        if !tls {
            return refuse("DATABASE_URL must use TLS (sslmode=verify-full, or require)");
        }
        if env("REFERENCE_APP_OWNER_DATABASE_URL").is_none() {
            return refuse(
                "REFERENCE_APP_OWNER_DATABASE_URL is required to run migrations as the owner role",
            );
        }
        if !self.base_url.starts_with("https://") {
            return refuse("--base-url must be https");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production(args: &[&str], env: &[(&str, &str)]) -> Result<(), ConfigError> {
        let mut config = Config::from_args(args.iter().map(|s| (*s).to_owned()))
            .unwrap()
            .unwrap();
        config.production = true;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        config.check_production(|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn production_refuses_each_missing_requirement() {
        let dir = std::env::temp_dir();
        let cert = dir.join(format!("ra-cert-{}.pem", std::process::id()));
        std::fs::write(&cert, "x").unwrap();
        let c = cert.to_str().unwrap();
        let kek = "ab".repeat(32);
        let full = [
            ("REFERENCE_APP_KEK", kek.as_str()),
            ("DATABASE_URL", "postgres://app@db/app?sslmode=verify-full"),
            (
                "REFERENCE_APP_OWNER_DATABASE_URL",
                "postgres://owner@db/app?sslmode=verify-full",
            ),
        ];
        let args = [
            "--tls-cert",
            c,
            "--tls-key",
            c,
            "--base-url",
            "https://app.example.com",
        ];
        assert!(production(&args, &full).is_ok());
        assert!(production(&[], &full).is_err(), "no certificate");
        assert!(
            production(&args, &full[1..]).is_err(),
            "no key-encryption key"
        );
        assert!(
            production(&args, &[full[0], full[2]]).is_err(),
            "no database"
        );
        assert!(
            production(
                &args,
                &[full[0], ("DATABASE_URL", "postgres://app@db/app"), full[2]]
            )
            .is_err(),
            "database without TLS"
        );
        assert!(production(&args, &full[..2]).is_err(), "no owner URL");
        assert!(
            production(&args, &[("REFERENCE_APP_KEK", "short"), full[1], full[2]]).is_err(),
            "malformed key"
        );
        std::fs::remove_file(cert).unwrap();
    }
}
