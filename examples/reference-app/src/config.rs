//! Configuration: embedded development defaults, and a production mode that refuses to start
//! without what production needs.

use std::net::SocketAddr;
use std::path::PathBuf;

use zeroize::Zeroizing;

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

/// What production mode runs with, read from the environment (never from the database).
#[derive(Clone)]
pub struct Production {
    /// The key-encryption key every data key is derived from.
    pub(crate) kek: Zeroizing<[u8; 32]>,
    /// The runtime role's connection (TLS, verified).
    pub(crate) database_url: Zeroizing<String>,
    /// The owner role's connection, for migrations only.
    pub(crate) owner_database_url: Zeroizing<String>,
    /// The checkpointer role's connection: the only runtime identity that writes audit
    /// checkpoints.
    pub(crate) checkpointer_database_url: Zeroizing<String>,
    /// The SMTP relay sign-in links go through.
    pub(crate) smtp: Smtp,
    /// Seed the demo workspaces (off unless asked for).
    pub(crate) seed_demo: bool,
}

impl std::fmt::Debug for Production {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Production")
            .field("smtp_host", &self.smtp.host)
            .field("seed_demo", &self.seed_demo)
            .finish_non_exhaustive()
    }
}

/// An SMTP relay over TLS (implicit TLS on 465, STARTTLS otherwise).
#[derive(Clone)]
pub(crate) struct Smtp {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) credentials: Option<(String, secrecy::SecretString)>,
    pub(crate) from: String,
}

/// The app's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Production settings; `None` runs the development profile.
    pub production: Option<Production>,
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
  --production         refuse to start without production settings (below)
  --tls-cert <pem>, --tls-key <pem>
                       the certificate chain and key to serve (production)
  --seed-demo          production only: also seed the demo workspaces

ENVIRONMENT
  DATABASE_URL                  use this PostgreSQL instead of a throwaway one; in production the
                                runtime role's URL, with sslmode=verify-full (and sslrootcert=)
  REFERENCE_APP_MODEL_URL       an OpenAI-compatible endpoint (e.g. http://127.0.0.1:8080/v1)
  REFERENCE_APP_MODEL           the model name for it (default: local)
  REFERENCE_APP_MODEL_API_KEY   its API key, if any

PRODUCTION ENVIRONMENT
  REFERENCE_APP_KEK                 32-byte key-encryption key in hex, kept outside the database
  REFERENCE_APP_OWNER_DATABASE_URL  the owner role's URL (migrations), sslmode=verify-full
  REFERENCE_APP_CHECKPOINTER_DATABASE_URL  the audit checkpointer role's URL, sslmode=verify-full
  REFERENCE_APP_SMTP_HOST           SMTP relay (TLS required: 465 implicit, else STARTTLS)
  REFERENCE_APP_SMTP_PORT           default 465
  REFERENCE_APP_SMTP_USER, REFERENCE_APP_SMTP_PASSWORD   relay credentials, if any
  REFERENCE_APP_MAIL_FROM           the sender address of sign-in mail
";

impl Config {
    /// Parses the command line, with the environment of this process; `Ok(None)` for
    /// `--help`.
    ///
    /// # Errors
    /// [`ConfigError`] for a bad argument, or production settings that are missing.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Option<Self>, ConfigError> {
        Self::parse(args, |name| std::env::var(name).ok())
    }

    /// Parses the command line with `env` as the environment; `Ok(None)` for `--help`.
    ///
    /// # Errors
    /// [`ConfigError`] for a bad argument, or production settings that are missing or unsafe.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let mut production = false;
        let mut seed_demo = false;
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
                "--seed-demo" => seed_demo = true,
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
        let model = match env("REFERENCE_APP_MODEL_URL") {
            Some(base_url) if !base_url.is_empty() => ModelSource::OpenAi {
                base_url,
                model: env("REFERENCE_APP_MODEL").unwrap_or_else(|| "local".to_owned()),
            },
            _ => ModelSource::Scripted,
        };
        let mut config = Self {
            production: None,
            data_dir,
            https,
            http,
            base_url,
            tls_cert,
            tls_key,
            model,
        };
        if production {
            config.production = Some(config.check_production(&env, seed_demo)?);
        } else if !(https.ip().is_loopback() && http.ip().is_loopback()) {
            // The development profile shows sign-in links on /dev/outbox and uses keys from a
            // local directory: it never listens beyond this machine.
            return Err(ConfigError::Production(
                "the development profile listens on loopback only; use --production to serve others"
                    .to_owned(),
            ));
        } else if seed_demo {
            return Err(ConfigError::UnknownArgument(
                "--seed-demo (development always seeds; the flag is for --production)".to_owned(),
            ));
        }
        Ok(Some(config))
    }

    /// Everything production mode requires that can be checked before connecting. The runtime
    /// role is checked after connecting (`rls_guard::verify_runtime_role`), and the certificate
    /// when it is loaded.
    fn check_production(
        &self,
        env: impl Fn(&str) -> Option<String>,
        seed_demo: bool,
    ) -> Result<Production, ConfigError> {
        let refuse = |why: &str| ConfigError::Production(why.to_owned());
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) if cert.is_file() && key.is_file() => {}
            _ => {
                return Err(refuse(
                    "a real certificate is required (--tls-cert and --tls-key)",
                ));
            }
        }
        if !self.base_url.starts_with("https://") {
            return Err(refuse("--base-url must be https"));
        }
        let kek = Zeroizing::new(env("REFERENCE_APP_KEK").unwrap_or_default());
        let mut key = Zeroizing::new([0u8; 32]);
        if hex::decode_to_slice(kek.trim(), &mut *key).is_err() || key.iter().all(|b| *b == 0) {
            return Err(refuse(
                "REFERENCE_APP_KEK must hold a 32-byte key-encryption key in hex, kept outside the database",
            ));
        }
        let database_url = Zeroizing::new(env("DATABASE_URL").ok_or_else(|| {
            refuse("DATABASE_URL is required (no throwaway database in production)")
        })?);
        let owner_database_url =
            Zeroizing::new(env("REFERENCE_APP_OWNER_DATABASE_URL").ok_or_else(|| {
                refuse("REFERENCE_APP_OWNER_DATABASE_URL is required to run migrations as the owner role")
            })?);
        let checkpointer_database_url = Zeroizing::new(
            env("REFERENCE_APP_CHECKPOINTER_DATABASE_URL").ok_or_else(|| {
                refuse(
                    "REFERENCE_APP_CHECKPOINTER_DATABASE_URL is required: audit checkpoints are written by a role of their own",
                )
            })?,
        );
        for (name, url) in [
            ("DATABASE_URL", &database_url),
            ("REFERENCE_APP_OWNER_DATABASE_URL", &owner_database_url),
            (
                "REFERENCE_APP_CHECKPOINTER_DATABASE_URL",
                &checkpointer_database_url,
            ),
        ] {
            // Every TLS-mode parameter (sqlx reads `sslmode` and `ssl-mode`, the last one
            // winning) must say verify-full, and there must be one: a later `sslmode=disable`
            // cannot undo the check.
            let verified = url::Url::parse(url).ok().is_some_and(|u| {
                let modes: Vec<String> = u
                    .query_pairs()
                    .filter(|(k, _)| k == "sslmode" || k == "ssl-mode")
                    .map(|(_, v)| v.into_owned())
                    .collect();
                !modes.is_empty() && modes.iter().all(|m| m == "verify-full")
            });
            if !verified {
                return Err(ConfigError::Production(format!(
                    "{name} must use TLS with the server's certificate verified (sslmode=verify-full)"
                )));
            }
        }
        let host = env("REFERENCE_APP_SMTP_HOST")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                refuse("REFERENCE_APP_SMTP_HOST is required (sign-in links go by mail)")
            })?;
        let port = match env("REFERENCE_APP_SMTP_PORT") {
            None => 465,
            Some(p) => p
                .parse()
                .map_err(|_| refuse("REFERENCE_APP_SMTP_PORT must be a port number"))?,
        };
        let credentials = match (
            env("REFERENCE_APP_SMTP_USER"),
            env("REFERENCE_APP_SMTP_PASSWORD"),
        ) {
            (Some(user), Some(password)) => Some((user, password.into())),
            (None, None) => None,
            _ => {
                return Err(refuse(
                    "set both REFERENCE_APP_SMTP_USER and REFERENCE_APP_SMTP_PASSWORD, or neither",
                ));
            }
        };
        let from = env("REFERENCE_APP_MAIL_FROM")
            .ok_or_else(|| refuse("REFERENCE_APP_MAIL_FROM is required"))?;
        Ok(Production {
            kek: key,
            database_url,
            owner_database_url,
            checkpointer_database_url,
            smtp: Smtp {
                host,
                port,
                credentials,
                from,
            },
            seed_demo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production(args: &[&str], env: &[(&str, &str)]) -> Result<Production, ConfigError> {
        let mut all = vec!["--production"];
        all.extend_from_slice(args);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::parse(all.iter().map(|s| (*s).to_owned()), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .map(|c| c.unwrap().production.unwrap())
    }

    #[test]
    fn production_refuses_each_missing_or_unsafe_requirement() {
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
            (
                "REFERENCE_APP_CHECKPOINTER_DATABASE_URL",
                "postgres://checkpointer@db/app?sslmode=verify-full",
            ),
            ("REFERENCE_APP_SMTP_HOST", "smtp.example.com"),
            ("REFERENCE_APP_MAIL_FROM", "no-reply@example.com"),
        ];
        let args = [
            "--tls-cert",
            c,
            "--tls-key",
            c,
            "--base-url",
            "https://app.example.com",
        ];
        let without = |name: &str| -> Vec<(&str, &str)> {
            full.iter().copied().filter(|(k, _)| *k != name).collect()
        };
        let with = |name: &'static str, value: &'static str| -> Vec<(&'static str, &str)> {
            let mut env = without(name);
            env.push((name, value));
            env
        };
        let ok = production(&args, &full).unwrap();
        assert_eq!(ok.smtp.port, 465);
        assert!(!ok.seed_demo);
        let debug = format!("{ok:?}");
        assert!(
            !debug.contains("abab") && !debug.contains("postgres://"),
            "{debug}"
        );

        assert!(production(&[], &full).is_err(), "no certificate");
        assert!(
            production(&args[..4], &full).is_ok(),
            "base URL defaults to https"
        );
        assert!(
            production(
                &[&args[..4], &["--base-url", "http://app.example.com"]].concat(),
                &full
            )
            .is_err(),
            "plain-http base URL"
        );
        for name in [
            "REFERENCE_APP_KEK",
            "DATABASE_URL",
            "REFERENCE_APP_OWNER_DATABASE_URL",
            "REFERENCE_APP_CHECKPOINTER_DATABASE_URL",
            "REFERENCE_APP_SMTP_HOST",
            "REFERENCE_APP_MAIL_FROM",
        ] {
            assert!(production(&args, &without(name)).is_err(), "without {name}");
        }
        for (name, value) in [
            ("REFERENCE_APP_KEK", "short"),
            (
                "REFERENCE_APP_KEK",
                "00000000000000000000000000000000000000000000000000000000000000000",
            ),
            (
                "REFERENCE_APP_KEK",
                "0000000000000000000000000000000000000000000000000000000000000000",
            ),
            ("DATABASE_URL", "postgres://app@db/app"),
            ("DATABASE_URL", "postgres://app@db/app?sslmode=require"),
            ("DATABASE_URL", "postgres://app@db/app?sslmode=prefer"),
            (
                "DATABASE_URL",
                "postgres://app@db/app?sslmode=verify-full&sslmode=disable",
            ),
            (
                "DATABASE_URL",
                "postgres://app@db/app?sslmode=verify-full&ssl-mode=require",
            ),
            (
                "REFERENCE_APP_OWNER_DATABASE_URL",
                "postgres://owner@db/app?sslmode=disable",
            ),
            (
                "REFERENCE_APP_CHECKPOINTER_DATABASE_URL",
                "postgres://checkpointer@db/app?sslmode=require",
            ),
            ("REFERENCE_APP_SMTP_PORT", "smtp"),
        ] {
            assert!(
                production(&args, &with(name, value)).is_err(),
                "{name}={value}"
            );
        }
        let mut half = full.to_vec();
        half.push(("REFERENCE_APP_SMTP_USER", "mailer"));
        assert!(production(&args, &half).is_err(), "user without password");
        assert!(
            Config::parse(["--seed-demo".to_owned()], |_| None).is_err(),
            "--seed-demo is production-only"
        );
        for listener in ["--https", "--http"] {
            let exposed = Config::parse([listener.to_owned(), "0.0.0.0:8443".to_owned()], |_| None);
            assert!(exposed.is_err(), "development on 0.0.0.0 via {listener}");
        }
        std::fs::remove_file(cert).unwrap();
    }
}
