//! The approval gate's principals and rules: who may approve, how fresh their second factor
//! must be, how long proposals and approvals live — and the proposal table.
//!
//! Only an authenticated human may approve: never an agent or a system job, never from the
//! session that proposed the call, and never the person who requested the turn, from any of
//! their sessions (separation of duties, always on). The approver must be staff, or a tenant
//! admin when the policy allows it, and must have passed a second-factor check within
//! [`ApprovalPolicy::step_up_max_age`]. The model's output has no path here: an approval is a
//! call to [`Gate::approve`](crate::Gate::approve) by the application, with the approver's
//! authenticated session.
//!
//! An approval is signed: the gate holds an [`ApprovalKey`] the database never sees, and stores
//! with every approval an HMAC-SHA256 over the tenant, the proposal, its digest, the approver,
//! the approver's session, the decision time and the approval's expiry. Consuming an approval
//! recomputes the tag and refuses on any mismatch, so a status written by hand — by anyone who
//! can run SQL as the runtime role — never runs.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tenant_scope::{Actor, ActorKind, TenantContext};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SandboxError;

/// The longest an approval may wait to be executed. The database refuses any approval whose
/// expiry lies further out than this from the moment it is recorded, whoever writes it.
pub const MAX_APPROVAL_TTL: Duration = Duration::from_secs(60 * 60);

/// The secret the gate signs approvals with (32 bytes, HMAC-SHA256). Keep it outside the
/// database, like the other application keys: whoever holds it can mint approvals. Every
/// instance of the application that approves or executes proposals needs the same key;
/// replacing it makes outstanding approvals fail closed (they are refused at execution and must
/// be approved again).
///
/// It is never printed (`Debug` shows `[redacted]`) and is wiped from memory when dropped.
pub struct ApprovalKey(zeroize::Zeroizing<[u8; 32]>);

impl ApprovalKey {
    /// A key from 32 secret bytes: a [`SecretBox`](secrecy::SecretBox), or a `Box<[u8; 32]>`
    /// (moved into one, so it is zeroized when dropped).
    ///
    /// # Errors
    /// [`SandboxError::InvalidConfig`] for the all-zero key (an unset secret).
    pub fn from_bytes(
        bytes: impl Into<secrecy::SecretBox<[u8; 32]>>,
    ) -> Result<Self, SandboxError> {
        let bytes = bytes.into();
        let key = zeroize::Zeroizing::new(*secrecy::ExposeSecret::expose_secret(&bytes));
        if key.iter().all(|b| *b == 0) {
            return Err(SandboxError::InvalidConfig("the approval key is all zeros"));
        }
        Ok(Self(key))
    }

    /// A fresh random key from the operating system. Approvals signed with it can be executed
    /// only by gates holding the same key: use it for a single process or for tests.
    ///
    /// # Errors
    /// [`SandboxError::InvalidConfig`] when the system's random source fails.
    pub fn generate() -> Result<Self, SandboxError> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *key)
            .map_err(|_| SandboxError::InvalidConfig("no random source for the approval key"))?;
        Ok(Self(key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&*self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// The tag of `approval`.
    pub(crate) fn sign(&self, approval: &SignedApproval<'_>) -> [u8; 32] {
        let mut mac = self.mac();
        approval.feed(&mut mac);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `approval` (constant time).
    pub(crate) fn verify(&self, approval: &SignedApproval<'_>, tag: &[u8]) -> bool {
        let mut mac = self.mac();
        approval.feed(&mut mac);
        mac.verify_slice(tag).is_ok()
    }
}

impl std::fmt::Debug for ApprovalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApprovalKey([redacted])")
    }
}

/// What an approval's tag covers. Every field has a fixed length, so no two approvals encode
/// alike.
pub(crate) struct SignedApproval<'a> {
    pub(crate) tenant: &'a Uuid,
    pub(crate) proposal: &'a Uuid,
    pub(crate) digest: &'a [u8; 32],
    pub(crate) approver: &'a Uuid,
    /// `user` or `staff`, as stored.
    pub(crate) approver_kind: &'a str,
    pub(crate) approver_session: &'a Uuid,
    pub(crate) decided_at: OffsetDateTime,
    pub(crate) expires_at: OffsetDateTime,
}

impl SignedApproval<'_> {
    fn feed(&self, mac: &mut Hmac<Sha256>) {
        // PostgreSQL keeps microseconds: sign exactly what is stored.
        let micros = |at: OffsetDateTime| {
            let micros = at.unix_timestamp_nanos().div_euclid(1000);
            i64::try_from(micros).unwrap_or(i64::MIN).to_be_bytes()
        };
        let kind: u8 = match self.approver_kind {
            "user" => 1,
            "staff" => 2,
            _ => 0,
        };
        mac.update(b"tool-sandbox/approval/v1\n");
        mac.update(self.tenant.as_bytes());
        mac.update(self.proposal.as_bytes());
        mac.update(self.digest);
        mac.update(self.approver.as_bytes());
        mac.update(&[kind]);
        mac.update(self.approver_session.as_bytes());
        mac.update(&micros(self.decided_at));
        mac.update(&micros(self.expires_at));
    }
}

/// An authenticated human who may approve or reject proposals. `magic-auth`'s `Session`
/// implements it (feature `magic-auth`); wrap it in [`AsTenantAdmin`] for tenant admins.
pub trait Approver: Send + Sync {
    /// Who is approving.
    fn actor(&self) -> Actor;
    /// The approver's authenticated session.
    fn session_id(&self) -> Uuid;
    /// When the approver last passed a second-factor check in this session (`None`: never).
    fn second_factor_at(&self) -> Option<OffsetDateTime>;
    /// Whether the application has established that this approver administers their tenant.
    fn is_tenant_admin(&self) -> bool {
        false
    }
}

/// An approver the application has checked to be an admin of their own tenant.
#[derive(Debug, Clone, Copy)]
pub struct AsTenantAdmin<'a, A: ?Sized>(pub &'a A);

impl<A: Approver + ?Sized> Approver for AsTenantAdmin<'_, A> {
    fn actor(&self) -> Actor {
        self.0.actor()
    }
    fn session_id(&self) -> Uuid {
        self.0.session_id()
    }
    fn second_factor_at(&self) -> Option<OffsetDateTime> {
        self.0.second_factor_at()
    }
    fn is_tenant_admin(&self) -> bool {
        true
    }
}

#[cfg(feature = "magic-auth")]
impl Approver for magic_auth::Session {
    fn actor(&self) -> Actor {
        magic_auth::Session::actor(self)
    }
    fn session_id(&self) -> Uuid {
        self.id
    }
    fn second_factor_at(&self) -> Option<OffsetDateTime> {
        // Only a session that passed a second factor has one; `authenticated_at` is the last
        // factor check (sign-in or step-up).
        (self.assurance == magic_auth::Assurance::Aal2).then_some(self.authenticated_at)
    }
}

/// Who may approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Approvers {
    /// Staff only (default).
    #[default]
    Staff,
    /// Staff, or an admin of the proposal's tenant.
    StaffOrTenantAdmin,
}

/// The approval rules.
///
/// Built from [`ApprovalPolicy::default`] with the `with_*` methods; the gate checks the
/// windows when it is built ([`GateBuilder::build`](crate::GateBuilder::build)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApprovalPolicy {
    /// Who may approve.
    pub approvers: Approvers,
    /// The oldest second-factor check accepted (default 10 minutes).
    pub step_up_max_age: Duration,
    /// How long a proposal waits for a decision (default 24 hours).
    pub proposal_ttl: Duration,
    /// How long an approval may wait to be executed (default 15 minutes, at most
    /// [`MAX_APPROVAL_TTL`]; the gate refuses to build with more).
    pub approval_ttl: Duration,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        Self {
            approvers: Approvers::Staff,
            step_up_max_age: Duration::from_secs(10 * 60),
            proposal_ttl: Duration::from_secs(24 * 60 * 60),
            approval_ttl: Duration::from_secs(15 * 60),
        }
    }
}

impl ApprovalPolicy {
    /// Sets [`ApprovalPolicy::approvers`].
    #[must_use]
    pub const fn with_approvers(mut self, approvers: Approvers) -> Self {
        self.approvers = approvers;
        self
    }

    /// Sets [`ApprovalPolicy::step_up_max_age`].
    #[must_use]
    pub const fn with_step_up_max_age(mut self, max_age: Duration) -> Self {
        self.step_up_max_age = max_age;
        self
    }

    /// Sets [`ApprovalPolicy::proposal_ttl`]. A zero window is refused when the gate is built.
    #[must_use]
    pub const fn with_proposal_ttl(mut self, ttl: Duration) -> Self {
        self.proposal_ttl = ttl;
        self
    }

    /// Sets [`ApprovalPolicy::approval_ttl`]. A zero window, or one beyond
    /// [`MAX_APPROVAL_TTL`], is refused when the gate is built.
    #[must_use]
    pub const fn with_approval_ttl(mut self, ttl: Duration) -> Self {
        self.approval_ttl = ttl;
        self
    }
}

/// Why an approval, a rejection or an execution of a proposal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApprovalRefusal {
    /// The approver is not a human (an agent or a system job).
    NotHuman,
    /// The approver is not staff (or a tenant admin, where allowed).
    NotAuthorized,
    /// The tenant context is not the approver's own (or a cross-tenant grant to them).
    ContextMismatch,
    /// The approver's last second-factor check is missing or too old.
    StepUpRequired,
    /// The approver is using the session that proposed the call.
    ProposingSession,
    /// The approver is the person who requested the turn that proposed the call (from any of
    /// their sessions).
    SelfApproval,
    /// The proposal is not waiting for a decision.
    NotPending,
    /// The proposal or its approval has expired.
    Expired,
    /// What the approver saw (the digest) is not what was proposed.
    DigestMismatch,
    /// The proposal is not approved (or its approval was already used).
    NotApproved,
    /// The arguments presented for execution differ from the approved ones.
    ArgumentsChanged,
    /// The tool changed (version, effect) or left the registry or the agent's allowlist since
    /// the approval.
    ToolChanged,
    /// The executing agent or tenant is not the one the proposal was made for.
    WrongAgent,
    /// The stored approval does not carry a valid signature of this gate's key: it was written
    /// outside the gate (or under another key). The proposal is invalidated.
    ForgedApproval,
}

impl ApprovalRefusal {
    /// The stable code.
    #[must_use]
    pub const fn code(self) -> &'static str {
        match self {
            Self::NotHuman => "not_human",
            Self::NotAuthorized => "not_authorized",
            Self::ContextMismatch => "context_mismatch",
            Self::StepUpRequired => "step_up_required",
            Self::ProposingSession => "proposing_session",
            Self::SelfApproval => "self_approval",
            Self::NotPending => "not_pending",
            Self::Expired => "expired",
            Self::DigestMismatch => "digest_mismatch",
            Self::NotApproved => "not_approved",
            Self::ArgumentsChanged => "arguments_changed",
            Self::ToolChanged => "tool_changed",
            Self::WrongAgent => "wrong_agent",
            Self::ForgedApproval => "forged_approval",
        }
    }
}

impl ApprovalPolicy {
    /// The checks that need no database: a human, allowed to approve, in their own context,
    /// with a fresh second factor.
    pub(crate) fn check_approver(
        &self,
        context: &TenantContext,
        approver: &dyn Approver,
        now: OffsetDateTime,
        need_step_up: bool,
    ) -> Result<Actor, SandboxError> {
        let refuse = |r| Err(SandboxError::ApprovalRefused(r));
        let actor = approver.actor();
        if !matches!(actor.kind(), ActorKind::User | ActorKind::Staff) {
            return refuse(ApprovalRefusal::NotHuman);
        }
        if context.actor() != Some(&actor) {
            return refuse(ApprovalRefusal::ContextMismatch);
        }
        let own_tenant = context.tenant() == actor.tenant() && !context.is_cross_tenant();
        let granted = context.is_cross_tenant() && actor.is_staff();
        if !own_tenant && !granted {
            return refuse(ApprovalRefusal::ContextMismatch);
        }
        let authorized = actor.is_staff()
            || (self.approvers == Approvers::StaffOrTenantAdmin
                && approver.is_tenant_admin()
                && own_tenant);
        if !authorized {
            return refuse(ApprovalRefusal::NotAuthorized);
        }
        if need_step_up {
            let max =
                time::Duration::try_from(self.step_up_max_age).unwrap_or(time::Duration::ZERO);
            let fresh = approver.second_factor_at().is_some_and(|at| {
                let age = now - at;
                // A check from the future (clock skew beyond a minute) is not trusted either.
                age <= max && age >= -time::Duration::minutes(1)
            });
            if !fresh {
                return refuse(ApprovalRefusal::StepUpRequired);
            }
        }
        Ok(actor)
    }
}

/// The status of a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProposalStatus {
    /// Waiting for a decision.
    Pending,
    /// Approved, waiting to run.
    Approved,
    /// Rejected by a human.
    Rejected,
    /// Expired before it was decided or used.
    Expired,
    /// Consumed; running (a proposal left here by a crash never runs again).
    Executing,
    /// Ran.
    Executed,
    /// Ran and failed.
    Failed,
    /// The tool changed after the approval.
    Invalidated,
    /// Found `executing` after a crash; never retried.
    Interrupted,
}

impl ProposalStatus {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Executing => "executing",
            Self::Executed => "executed",
            Self::Failed => "failed",
            Self::Invalidated => "invalidated",
            Self::Interrupted => "interrupted",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "rejected" => Self::Rejected,
            "expired" => Self::Expired,
            "executing" => Self::Executing,
            "executed" => Self::Executed,
            "failed" => Self::Failed,
            "invalidated" => Self::Invalidated,
            "interrupted" => Self::Interrupted,
            _ => return None,
        })
    }
}

/// Tells `check` about the triggers [`schema_sql`] installs on the proposal table deliberately
/// (the state machine's guard, which also stamps decision times and caps approval windows), so
/// `rls-guard`'s coverage check does not report them.
#[must_use]
pub fn coverage_trust(check: rls_guard::CoverageCheck) -> rls_guard::CoverageCheck {
    check
        .trust_trigger("tool_sandbox.proposals", "proposals_guard")
        .trust_trigger("tool_sandbox.proposals", "proposals_no_truncate")
}

/// The SQL that installs the proposal table (after `rls_guard::schema::SUPPORT_SQL`), granting
/// `runtime_role` `SELECT`, `INSERT` and `UPDATE` within its bound tenant. A trigger (owned by
/// the role running this SQL, enabled `ALWAYS`, so `session_replication_role` cannot skip it)
/// enforces the state machine in the database too: what was proposed can never change, every
/// proposal names its requester, an approval needs a decider other than the agent, the requester
/// and the proposing session, the database stamps every decision with its own clock and refuses
/// an approval that expires later than [`MAX_APPROVAL_TTL`] from then, a consumed approval can
/// never be re-armed, and nothing is deleted. The runtime role can still write a status by hand;
/// such an approval carries no valid signature and never executes. Idempotent.
///
/// # Errors
/// [`SandboxError::InvalidSchema`] unless `runtime_role` is a plain lowercase identifier.
pub fn schema_sql(runtime_role: &str) -> Result<String, SandboxError> {
    let invalid = |reason: &str| SandboxError::InvalidSchema {
        tool: "(schema)".to_owned(),
        reason: reason.to_owned(),
    };
    if !rls_guard::schema::is_plain_identifier(runtime_role) {
        return Err(invalid("runtime role must be a plain lowercase identifier"));
    }
    let rls = rls_guard::schema::tenant_table_sql("tool_sandbox.proposals")
        .map_err(|_| invalid("table"))?;
    let r = runtime_role;
    let max_ttl = MAX_APPROVAL_TTL.as_secs();
    Ok(format!(
        r#"
CREATE SCHEMA IF NOT EXISTS tool_sandbox;
REVOKE ALL ON SCHEMA tool_sandbox FROM PUBLIC;
GRANT USAGE ON SCHEMA tool_sandbox TO {r};

CREATE TABLE IF NOT EXISTS tool_sandbox.proposals (
    tenant_id           uuid        NOT NULL,
    id                  uuid        NOT NULL,
    agent_id            uuid        NOT NULL,
    session_id          uuid        NOT NULL,
    on_behalf_of        uuid        NOT NULL,
    call_id             text        NOT NULL CHECK (length(call_id) <= 128),
    tool                text        NOT NULL CHECK (tool ~ '^[a-z][a-z0-9_]{{0,63}}$'),
    tool_version        bigint      NOT NULL CHECK (tool_version BETWEEN 0 AND 4294967295),
    arguments           text        NOT NULL CHECK (length(arguments) <= 65536),
    digest              bytea       NOT NULL CHECK (length(digest) = 32),
    flags               jsonb       NOT NULL,
    taint_sources       jsonb       NOT NULL,
    warnings            jsonb       NOT NULL,
    status              text        NOT NULL CHECK (status IN ('pending', 'approved', 'rejected',
                            'expired', 'executing', 'executed', 'failed', 'invalidated',
                            'interrupted')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    decided_by          uuid,
    decided_by_kind     text CHECK (decided_by_kind IN ('user', 'staff')),
    decided_session     uuid,
    decided_at          timestamptz,
    decision_reason     text CHECK (length(decision_reason) <= 512),
    approval_expires_at timestamptz,
    consumed_at         timestamptz,
    finished_at         timestamptz,
    outcome             text CHECK (length(outcome) <= 512),
    approval_mac        bytea CHECK (length(approval_mac) = 32),
    PRIMARY KEY (tenant_id, id)
);
ALTER TABLE tool_sandbox.proposals ADD COLUMN IF NOT EXISTS
    approval_mac bytea CHECK (length(approval_mac) = 32);
CREATE INDEX IF NOT EXISTS proposals_status_idx
    ON tool_sandbox.proposals (tenant_id, status, created_at);
{rls}
REVOKE ALL ON tool_sandbox.proposals FROM PUBLIC;
REVOKE ALL ON tool_sandbox.proposals FROM {r};
GRANT SELECT, INSERT, UPDATE ON tool_sandbox.proposals TO {r};

CREATE OR REPLACE FUNCTION tool_sandbox.guard_proposal() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'proposals are never deleted' USING ERRCODE = 'TS001';
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' OR NEW.decided_by IS NOT NULL OR NEW.decided_at IS NOT NULL
           OR NEW.approval_expires_at IS NOT NULL OR NEW.consumed_at IS NOT NULL
           OR NEW.finished_at IS NOT NULL OR NEW.approval_mac IS NOT NULL THEN
            RAISE EXCEPTION 'a proposal starts pending and undecided' USING ERRCODE = 'TS001';
        END IF;
        IF NEW.on_behalf_of IS NULL THEN
            RAISE EXCEPTION 'a proposal names its requester' USING ERRCODE = 'TS001';
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.tenant_id, NEW.id, NEW.agent_id, NEW.session_id, NEW.on_behalf_of, NEW.call_id,
        NEW.tool, NEW.tool_version, NEW.arguments, NEW.digest, NEW.flags, NEW.taint_sources,
        NEW.warnings, NEW.created_at, NEW.expires_at)
       IS DISTINCT FROM
       (OLD.tenant_id, OLD.id, OLD.agent_id, OLD.session_id, OLD.on_behalf_of, OLD.call_id,
        OLD.tool, OLD.tool_version, OLD.arguments, OLD.digest, OLD.flags, OLD.taint_sources,
        OLD.warnings, OLD.created_at, OLD.expires_at) THEN
        RAISE EXCEPTION 'what was proposed cannot change' USING ERRCODE = 'TS001';
    END IF;
    IF NOT ((OLD.status = 'pending' AND NEW.status IN ('approved', 'rejected', 'expired'))
         OR (OLD.status = 'approved' AND NEW.status IN ('executing', 'expired', 'invalidated'))
         OR (OLD.status = 'executing' AND NEW.status IN ('executed', 'failed', 'interrupted')))
    THEN
        RAISE EXCEPTION 'illegal proposal transition % -> %', OLD.status, NEW.status
            USING ERRCODE = 'TS001';
    END IF;
    IF OLD.status <> 'pending' AND (NEW.decided_by, NEW.decided_by_kind, NEW.decided_session,
        NEW.decided_at, NEW.approval_expires_at, NEW.approval_mac) IS DISTINCT FROM
        (OLD.decided_by, OLD.decided_by_kind, OLD.decided_session, OLD.decided_at,
        OLD.approval_expires_at, OLD.approval_mac) THEN
        RAISE EXCEPTION 'a decision cannot change' USING ERRCODE = 'TS001';
    END IF;
    IF OLD.status = 'pending' AND NEW.status IN ('approved', 'rejected') THEN
        -- The decision time is the database's, whatever the statement said.
        NEW.decided_at := now();
    END IF;
    IF NEW.status = 'approved' AND (NEW.decided_by IS NULL OR NEW.decided_by = OLD.agent_id
        OR NEW.decided_by IS NOT DISTINCT FROM OLD.on_behalf_of
        OR NEW.decided_session IS NULL OR NEW.decided_session = OLD.session_id
        OR NEW.approval_expires_at IS NULL OR OLD.expires_at <= now()) THEN
        RAISE EXCEPTION 'invalid approval' USING ERRCODE = 'TS001';
    END IF;
    IF OLD.status = 'pending' AND NEW.status = 'approved'
       AND (NEW.approval_expires_at <= now()
            OR NEW.approval_expires_at > now() + make_interval(secs => {max_ttl})) THEN
        RAISE EXCEPTION 'approval window outside (now, now + {max_ttl} s]'
            USING ERRCODE = 'TS001';
    END IF;
    IF OLD.status = 'pending' AND NEW.status <> 'approved'
       AND (NEW.approval_expires_at IS NOT NULL OR NEW.approval_mac IS NOT NULL) THEN
        RAISE EXCEPTION 'only an approval has an approval window' USING ERRCODE = 'TS001';
    END IF;
    IF NEW.status = 'executing' AND (OLD.approval_expires_at <= now()
        OR NEW.consumed_at IS NULL OR OLD.consumed_at IS NOT NULL) THEN
        RAISE EXCEPTION 'approval expired or already consumed' USING ERRCODE = 'TS001';
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS proposals_guard ON tool_sandbox.proposals;
CREATE TRIGGER proposals_guard BEFORE INSERT OR UPDATE OR DELETE ON tool_sandbox.proposals
    FOR EACH ROW EXECUTE FUNCTION tool_sandbox.guard_proposal();
DROP TRIGGER IF EXISTS proposals_no_truncate ON tool_sandbox.proposals;
CREATE TRIGGER proposals_no_truncate BEFORE TRUNCATE ON tool_sandbox.proposals
    FOR EACH STATEMENT EXECUTE FUNCTION tool_sandbox.guard_proposal();
ALTER TABLE tool_sandbox.proposals ENABLE ALWAYS TRIGGER proposals_guard;
ALTER TABLE tool_sandbox.proposals ENABLE ALWAYS TRIGGER proposals_no_truncate;
"#
    ))
}
