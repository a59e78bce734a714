//! Sending sign-in links: a trait, and a development outbox that keeps messages for the app to
//! show instead of sending them.

use std::future::Future;
use std::sync::Mutex;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::email::EmailAddress;

/// One message ([`Message::new`]). The body holds a sign-in link: a secret; `Debug` does not
/// print it.
#[derive(Clone)]
#[non_exhaustive]
pub struct Message {
    /// The recipient (validated and normalised).
    pub to: EmailAddress,
    /// The subject.
    pub subject: String,
    /// The plain-text body: a secret (it may hold a sign-in link). Expose it only where it is
    /// handed to the mail transport.
    pub body: SecretString,
}

impl Message {
    /// A message to `to`.
    #[must_use]
    pub fn new(
        to: EmailAddress,
        subject: impl Into<String>,
        body: impl Into<SecretString>,
    ) -> Self {
        Self {
            to,
            subject: subject.into(),
            body: body.into(),
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("body", &"[redacted]")
            .finish()
    }
}

/// A security notice to an account's address after a change to how it signs in: no link, no
/// code, no secret — only what happened and what to do if it was not the account's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// The authenticator was replaced
    /// ([`TotpService::complete_replacement`](crate::totp::TotpService::complete_replacement)).
    AuthenticatorReplaced,
    /// The account was disabled for sign-in
    /// ([`SessionStore::disable_account`](crate::SessionStore::disable_account)).
    AccountDisabled,
    /// A change of the account's e-mail address was requested (sent to the *old* address; the
    /// new address is not named).
    EmailChangeRequested,
    /// The account's e-mail address was changed (sent to the *old* address).
    EmailChanged,
    /// New recovery codes were made and the old ones stopped working
    /// ([`TotpService::regenerate_recovery_codes`](crate::totp::TotpService::regenerate_recovery_codes)).
    RecoveryCodesRegenerated,
}

impl Notice {
    /// The message for `to`; send it with the application's [`Mailer`].
    #[must_use]
    pub fn message(self, to: EmailAddress) -> Message {
        let (subject, what) = match self {
            Self::AuthenticatorReplaced => (
                "Your authenticator was replaced",
                "The authenticator app used to sign in to your account was replaced. Codes from \
                 the old one no longer work, and every other session of the account was signed \
                 out.",
            ),
            Self::AccountDisabled => (
                "Your account was disabled",
                "Your account was disabled: every session was signed out and no sign-in link \
                 works for it any more.",
            ),
            Self::EmailChangeRequested => (
                "A change of your e-mail address was requested",
                "Someone signed in to your account asked to change its e-mail address. Nothing \
                 changes unless the link sent to the new address is opened in that same session.",
            ),
            Self::EmailChanged => (
                "Your e-mail address was changed",
                "The e-mail address of your account was changed: sign-in links now go to the new \
                 address, and every other session of the account was signed out.",
            ),
            Self::RecoveryCodesRegenerated => (
                "New recovery codes were made for your account",
                "New recovery codes were made for your account: the earlier ones no longer \
                 work.",
            ),
        };
        Message {
            to,
            subject: subject.to_owned(),
            body: crate::token::into_secret(Zeroizing::new(format!(
                "{what}\n\nIf you did not do this, contact your workspace's administrator at once.\n"
            ))),
        }
    }
}

/// Delivers messages: [`SmtpMailer`] in production, [`DevOutbox`] in tests and local
/// development.
pub trait Mailer: Send + Sync + 'static {
    /// Why delivery failed. Reported to the application (logs, events), never to the person
    /// who asked for the link.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Delivers `message`.
    fn send(&self, message: Message) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A mailer for development: keeps every message in memory (the app can show them on an
/// outbox page) and logs that a message was queued, never its body.
#[derive(Debug, Default)]
pub struct DevOutbox {
    messages: Mutex<Vec<Message>>,
}

/// The outbox's lock was poisoned.
#[derive(Debug, thiserror::Error)]
#[error("the development outbox is unavailable")]
pub struct OutboxError;

impl DevOutbox {
    /// An empty outbox.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message so far, oldest first.
    #[must_use]
    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Mailer for DevOutbox {
    type Error = OutboxError;

    async fn send(&self, message: Message) -> Result<(), Self::Error> {
        tracing::info!(to = ?message.to, subject = %message.subject, "development outbox: message queued");
        self.messages.lock().map_err(|_| OutboxError)?.push(message);
        Ok(())
    }
}

/// Sends through an SMTP relay with `lettre`. In production the connection is TLS
/// ([`SmtpMailer::tls`]: implicit TLS on 465, or STARTTLS required on 587 — never a silent
/// downgrade to plain text); plain text is accepted only to a loopback relay
/// ([`SmtpMailer::loopback`], for a local catcher).
pub struct SmtpMailer {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("from", &self.from.email.to_string())
            .finish_non_exhaustive()
    }
}

/// Why a message could not be sent (the relay's reply or the connection error; never the body).
#[derive(Debug, thiserror::Error)]
#[error("smtp delivery failed: {0}")]
pub struct SmtpError(String);

impl SmtpMailer {
    /// A relay over TLS: implicit TLS when `port` is 465, otherwise STARTTLS, required. With
    /// `credentials` (user, password) the relay's `AUTH` is used; the password is a
    /// [`SecretString`].
    ///
    /// # Errors
    /// [`crate::AuthError::InvalidConfig`] for an unusable host or sender address.
    pub fn tls(
        host: &str,
        port: u16,
        credentials: Option<(String, SecretString)>,
        from: &str,
    ) -> Result<Self, crate::AuthError> {
        let bad = || crate::AuthError::InvalidConfig("smtp relay");
        let builder = if port == 465 {
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::relay(host)
        } else {
            lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::starttls_relay(host)
        }
        .map_err(|_| bad())?
        .port(port)
        .timeout(Some(std::time::Duration::from_secs(15)));
        let builder = match credentials {
            Some((user, password)) => {
                builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                    user,
                    password.expose_secret().to_owned(),
                ))
            }
            None => builder,
        };
        Ok(Self {
            transport: builder.build(),
            from: sender(from)?,
        })
    }

    /// A relay on loopback without TLS (a local mail catcher). Any other host is refused.
    ///
    /// # Errors
    /// [`crate::AuthError::InvalidConfig`] for a non-loopback address or an unusable sender.
    pub fn loopback(addr: std::net::SocketAddr, from: &str) -> Result<Self, crate::AuthError> {
        if !addr.ip().is_loopback() {
            return Err(crate::AuthError::InvalidConfig(
                "plain-text SMTP only to a loopback relay",
            ));
        }
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(
            addr.ip().to_string(),
        )
        .port(addr.port())
        .tls(lettre::transport::smtp::client::Tls::None)
        .timeout(Some(std::time::Duration::from_secs(15)))
        .build();
        Ok(Self {
            transport,
            from: sender(from)?,
        })
    }
}

fn sender(from: &str) -> Result<lettre::message::Mailbox, crate::AuthError> {
    let address = EmailAddress::parse(from)?;
    address
        .as_str()
        .parse()
        .map_err(|_| crate::AuthError::InvalidConfig("sender address"))
}

impl Mailer for SmtpMailer {
    type Error = SmtpError;

    async fn send(&self, message: Message) -> Result<(), Self::Error> {
        use lettre::AsyncTransport;
        let to: lettre::message::Mailbox = message
            .to
            .as_str()
            .parse()
            .map_err(|_| SmtpError("invalid recipient".to_owned()))?;
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(message.body.expose_secret().to_owned())
            .map_err(|e| SmtpError(e.to_string()))?;
        self.transport
            .send(email)
            .await
            .map(drop)
            .map_err(|e| SmtpError(e.to_string()))
    }
}
