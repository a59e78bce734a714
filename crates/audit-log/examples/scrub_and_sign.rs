//! What an audit record keeps before anything is stored: the scrubber removing personal data and
//! secrets from an event's metadata, the event built around it, and a signed checkpoint that
//! anyone holding the public key can check. Runs offline (no database).
//!
//! ```sh
//! cargo run -p audit-log --example scrub_and_sign
//! ```
#![allow(clippy::print_stdout)]

use audit_log::scrub::{FieldRule, PseudonymKey, Replacement, ScrubPolicy, Scrubber};
use audit_log::{AuditActor, AuditEvent, CheckpointSigner, Outcome, Target, TrustedKeys};
use audit_log::{actions, genesis_hash};
use tenant_scope::{Actor, ActorId, ActorKind, TenantId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Pseudonyms are keyed per tenant: the same address gives the same pn:v1:… in one tenant
    // and an unrelated one in another. Load the key from your secret store.
    let policy = ScrubPolicy::new()
        .with_replacement(Replacement::Pseudonymise)
        .allow("member.role_changed", "role", FieldRule::Keep);
    let scrubber = Scrubber::new(policy, vec![PseudonymKey::new(1, Box::new([7u8; 32]))])?;

    let tenant = TenantId::new_random();
    let metadata = serde_json::json!({
        "role": "admin",
        "asked_by": "ann@example.com",
        "note": "call +44 20 7946 0958 if this looks wrong",
        "password": "hunter2",
        "session": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLWJ5dGVz",
    });
    let scrubbed = scrubber.scrub_metadata(tenant, "member.role_changed", &metadata)?;
    println!("metadata as given:   {metadata}");
    println!("metadata as stored:  {scrubbed}");
    println!(
        "free text as stored: {}",
        scrubber.scrub_text(tenant, "reset for bob@example.com")
    );

    // The event: tenant, actor, action, outcome, targets and metadata, validated when built.
    // `AuditLog::append` / `record` scrub the metadata like this before storing the event.
    let admin = Actor::new(ActorKind::User, ActorId::new_random(), tenant);
    let member = ActorId::new_random();
    let event = AuditEvent::new(
        tenant,
        AuditActor::from_actor(&admin),
        actions::MEMBER_ROLE_CHANGED,
        Outcome::Allowed,
    )
    .with_target(Target::new("member", &member.to_string()))?
    .with_metadata(metadata)?;
    println!("event (its Debug leaves out unscrubbed parts): {event:?}");

    // A checkpoint signs a chain head; kept outside the database, it catches a rewrite there.
    // Here the head of an empty chain (sequence 0, the genesis hash).
    let signer = CheckpointSigner::generate("audit-2026")?;
    let keys = TrustedKeys::new().with(signer.verifying_key());
    let checkpoint = signer.sign(tenant, 0, &genesis_hash(tenant))?;
    println!("checkpoint verifies: {}", keys.verifies(&checkpoint));
    let mut rewritten = checkpoint.clone();
    rewritten.seq = 1;
    println!("after an edit:       {}", keys.verifies(&rewritten));
    let other_signer =
        TrustedKeys::new().with(CheckpointSigner::generate("someone-else")?.verifying_key());
    println!(
        "under another key:   {}",
        other_signer.verifies(&checkpoint)
    );
    Ok(())
}
