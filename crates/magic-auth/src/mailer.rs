//! Sending sign-in links: a trait, and a development outbox that keeps messages for the app to
//! show instead of sending them.

use std::future::Future;
use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::email::EmailAddress;

/// One message. The body holds a sign-in link: a secret; `Debug` does not print it.
#[derive(Clone)]
pub struct Message {
    /// The recipient (validated and normalised).
    pub to: EmailAddress,
    /// The subject.
    pub subject: String,
    /// The plain-text body.
    pub body: Zeroizing<String>,
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

/// Delivers messages. An SMTP implementation (lettre) is planned; tests and local development
/// use [`DevOutbox`].
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
