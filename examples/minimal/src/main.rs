//! `cargo run -p minimal`: the service on <http://localhost:3000>, on a throwaway PostgreSQL
//! cluster of its own, with two workspaces (`acme`, `globex`) and one member each
//! (`ada@acme.example`, `eve@globex.example`). Sign-in mail is printed here, not sent.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;

use magic_auth::mailer::{Mailer, Message};
use secrecy::{ExposeSecret, SecretBox};
use tenant_scope::TenantId;

/// Development only: prints each message (a sign-in link is a secret; never do this with
/// real accounts).
struct Terminal;

impl Mailer for Terminal {
    type Error = std::convert::Infallible;

    async fn send(&self, message: Message) -> Result<(), Self::Error> {
        println!(
            "\nmail to {}: {}\n{}",
            message.to,
            message.subject,
            message.body.expose_secret()
        );
        Ok(())
    }
}

fn random_key() -> Result<SecretBox<[u8; 32]>, String> {
    let mut key = Box::new([0u8; 32]);
    getrandom::fill(&mut key[..]).map_err(|e| format!("the random generator failed: {e}"))?;
    Ok(SecretBox::new(key))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let migrations = minimal::migrations(testkit::RUNTIME_ROLE, testkit::CHECKPOINTER_ROLE)?;
    let template = testkit::Template::new("minimal", migrations);
    let db = testkit::try_fresh_database(&template).await?;
    let (acme, globex) = (TenantId::new_random(), TenantId::new_random());
    for (tenant, email) in [(acme, "ada@acme.example"), (globex, "eve@globex.example")] {
        db.as_admin(&format!(
            "BEGIN; SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.commit_binding = '{tenant}:';
             INSERT INTO minimal.members (tenant_id, user_id, email)
             VALUES ('{tenant}', gen_random_uuid(), '{email}'); COMMIT;"
        ))
        .await;
    }
    let keys = minimal::Keys {
        field: random_key()?,
        pseudonym: random_key()?,
        session: random_key()?,
    };
    let base_url = "http://localhost:3000";
    let workspaces = minimal::Workspaces::new([("acme", acme), ("globex", globex)]);
    let runtime = db.pool(testkit::Role::Runtime, 8).await;
    // The record of the routes is for the authorization matrix (`tests/authz_matrix.rs`).
    let (app, _routes) =
        minimal::app(runtime, base_url, &keys, workspaces, Arc::new(Terminal)).await?;
    let sequencer_login = db.options(testkit::Role::Checkpointer);
    // The sequencer, connected as the role `sequencer_sql` granted, chains each recorded event
    // into its workspace's audit chain moments after it commits. Dropping the handle stops it.
    let sequencer_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(sequencer_login)
        .await?;
    let _sequencer = audit_log::Sequencer::new(sequencer_pool).spawn();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on {base_url}; ask for a link:");
    println!("  curl -c jar -H 'Origin: {base_url}' -H 'Content-Type: application/json' \\");
    println!(
        "       -d '{{\"workspace\":\"acme\",\"email\":\"ada@acme.example\"}}' {base_url}/auth/link"
    );
    axum::serve(listener, app).await?;
    Ok(())
}
