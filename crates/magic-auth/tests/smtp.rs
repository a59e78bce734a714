//! The SMTP mailer against an SMTP server on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use magic_auth::EmailAddress;
use magic_auth::mailer::{Mailer, Message, SmtpMailer};
use magic_auth::secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A minimal SMTP server: accepts one message per connection and keeps the transcript, or
/// refuses every recipient.
async fn smtp_server(refuse_recipients: bool) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 test ESMTP\r\n").await.unwrap();
                let mut in_data = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    seen.lock().unwrap().push(line.clone());
                    let reply: &[u8] = if in_data {
                        if line == "." {
                            in_data = false;
                            b"250 queued\r\n"
                        } else {
                            continue;
                        }
                    } else {
                        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                        match verb.as_str() {
                            "EHLO" | "HELO" => b"250 test\r\n",
                            "MAIL" => b"250 ok\r\n",
                            "RCPT" if refuse_recipients => b"550 no such user\r\n",
                            "RCPT" => b"250 ok\r\n",
                            "DATA" => {
                                in_data = true;
                                b"354 go ahead\r\n"
                            }
                            "QUIT" => {
                                write.write_all(b"221 bye\r\n").await.unwrap();
                                break;
                            }
                            _ => b"250 ok\r\n",
                        }
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, log)
}

fn message() -> Message {
    Message::new(
        EmailAddress::parse("ada@example.com").unwrap(),
        "Your sign-in link",
        SecretString::from("Sign in: https://app.example.test/auth/link?token=l1.abc\n"),
    )
}

#[tokio::test]
async fn a_message_is_delivered_to_the_relay() {
    let (addr, log) = smtp_server(false).await;
    let mailer = SmtpMailer::loopback(addr, "no-reply@example.test").unwrap();
    mailer.send(message()).await.unwrap();
    let transcript = log.lock().unwrap().join("\n");
    assert!(
        transcript.contains("MAIL FROM:<no-reply@example.test>"),
        "{transcript}"
    );
    assert!(
        transcript.contains("RCPT TO:<ada@example.com>"),
        "{transcript}"
    );
    assert!(
        transcript.contains("Subject: Your sign-in link"),
        "{transcript}"
    );
    assert!(transcript.contains("token=l1.abc"), "{transcript}");
}

#[tokio::test]
async fn a_refusal_is_an_error_for_the_application() {
    let (addr, _) = smtp_server(true).await;
    let mailer = SmtpMailer::loopback(addr, "no-reply@example.test").unwrap();
    let err = mailer.send(message()).await.unwrap_err();
    assert!(
        err.to_string().contains("550") || err.to_string().contains("no such user"),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains("token="));
}

#[test]
fn plain_text_smtp_is_refused_off_loopback_and_bad_senders_too() {
    assert!(SmtpMailer::loopback("192.0.2.1:25".parse().unwrap(), "a@example.test").is_err());
    assert!(
        SmtpMailer::loopback(
            "127.0.0.1:25".parse().unwrap(),
            "a@example.test\r\nBcc: x@y.z"
        )
        .is_err()
    );
    assert!(SmtpMailer::tls("smtp.example.test", 587, None, "no-reply@example.test").is_ok());
}
