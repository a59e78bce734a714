//! The event model: who did what, to what, in which tenant, with what outcome.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use tenant_scope::{Actor, TenantId};
use uuid::Uuid;

use crate::AuditError;

/// The version of the event schema written into every canonical record.
pub const SCHEMA_VERSION: u32 = 1;
/// The most targets one event names.
pub const MAX_TARGETS: usize = 16;
/// The longest identifier (target kind or id, request id, reason), in bytes after encoding.
pub const MAX_IDENTIFIER_BYTES: usize = 256;
/// The longest user agent kept, in bytes after encoding (longer ones are cut at a character
/// boundary and marked with `…`).
pub const MAX_USER_AGENT_BYTES: usize = 512;
/// The largest scrubbed metadata object, serialised. Larger metadata is replaced by
/// `{"metadata_dropped": "too_large", "bytes": N}` so an oversized payload can neither block the
/// privileged action nor bloat the log.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// The longest action name (and actor kind), in bytes.
pub const MAX_ACTION_BYTES: usize = 64;
/// The largest record (the canonical bytes hashed into the chain) the queue accepts: larger ones
/// are refused at insert (SQLSTATE `AL003`) before they are read. The library keeps every record
/// it writes under it: metadata whose canonical spelling would push a record past it (numbers
/// such as `1e300` are spelled out in full) is replaced by the `metadata_dropped` marker, as
/// for [`MAX_METADATA_BYTES`]; every other field is bounded well below it.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// What was done: a dotted, lowercase name from the documented vocabulary (see [`actions`]) or
/// the application's own (`segment.segment`, ASCII `a-z`, `0-9`, `_`, at most 64 bytes).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Action(Cow<'static, str>);

impl Action {
    /// An application-defined action, validated.
    ///
    /// # Errors
    /// [`AuditError::InvalidAction`] when `name` is outside the grammar.
    pub fn new(name: &str) -> Result<Self, AuditError> {
        if is_valid_action(name) {
            Ok(Self(Cow::Owned(name.to_owned())))
        } else {
            Err(AuditError::InvalidAction)
        }
    }

    /// A vocabulary constant (validated by this crate's tests).
    const fn known(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Action {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

pub(crate) fn is_valid_action(name: &str) -> bool {
    let segment = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    name.len() <= MAX_ACTION_BYTES && name.split('.').count() >= 2 && name.split('.').all(segment)
}

/// The documented action vocabulary. Applications add their own with [`Action::new`].
pub mod actions {
    use super::Action;

    /// A user completed sign-in (session created).
    pub const AUTHN_LOGIN_SUCCEEDED: Action = Action::known("authn.login_succeeded");
    /// A sign-in attempt failed (bad or expired link, wrong code).
    pub const AUTHN_LOGIN_FAILED: Action = Action::known("authn.login_failed");
    /// A sign-in link was requested (recorded for known accounts only; the answer to the
    /// requester is the same either way).
    pub const AUTHN_LINK_REQUESTED: Action = Action::known("authn.link_requested");
    /// A one-time code was wrong.
    pub const AUTHN_CODE_FAILED: Action = Action::known("authn.code_failed");
    /// An account was locked after repeated failed codes.
    pub const AUTHN_LOCKED_OUT: Action = Action::known("authn.locked_out");
    /// A TOTP authenticator was enrolled.
    pub const AUTHN_MFA_ENROLLED: Action = Action::known("authn.mfa_enrolled");
    /// A locked second factor was unlocked by an operator (the failure count and every lock
    /// cleared).
    pub const AUTHN_MFA_UNLOCKED: Action = Action::known("authn.mfa_unlocked");
    /// A recovery code was used.
    pub const AUTHN_RECOVERY_CODE_USED: Action = Action::known("authn.recovery_code_used");
    /// Recovery codes were regenerated.
    pub const AUTHN_RECOVERY_CODES_REGENERATED: Action =
        Action::known("authn.recovery_codes_regenerated");
    /// A fresh second-factor check for a sensitive action (step-up).
    pub const AUTHN_STEP_UP: Action = Action::known("authn.step_up");
    /// A user signed out.
    pub const AUTHN_LOGOUT: Action = Action::known("authn.logout");
    /// One session was revoked.
    pub const SESSION_REVOKED: Action = Action::known("session.revoked");
    /// All of a user's sessions (optionally but the current one) were revoked.
    pub const SESSION_REVOKED_ALL: Action = Action::known("session.revoked_all");
    /// Every pending sign-in link of an account was invalidated.
    pub const AUTHN_LINKS_INVALIDATED: Action = Action::known("authn.links_invalidated");
    /// An account was disabled for sign-in (its sessions and links ended with it).
    pub const AUTHN_ACCOUNT_DISABLED: Action = Action::known("authn.account_disabled");
    /// A disabled account was enabled for sign-in again.
    pub const AUTHN_ACCOUNT_ENABLED: Action = Action::known("authn.account_enabled");
    /// A replacement of an account's authenticator was started (after a fresh step-up or a
    /// recovery code); the old authenticator stays active until it is completed.
    pub const AUTHN_MFA_REPLACEMENT_STARTED: Action =
        Action::known("authn.mfa_replacement_started");
    /// An account's authenticator was replaced: the old seed destroyed, the account's other
    /// sessions ended.
    pub const AUTHN_MFA_REPLACED: Action = Action::known("authn.mfa_replaced");
    /// A change of an account's e-mail address was requested (a confirmation link sent to the
    /// new address, a notice to the old one).
    pub const AUTHN_EMAIL_CHANGE_REQUESTED: Action = Action::known("authn.email_change_requested");
    /// An account's e-mail address was changed (confirmed from the new address); the account's
    /// other sessions ended.
    pub const AUTHN_EMAIL_CHANGED: Action = Action::known("authn.email_changed");
    /// A request was refused by an authorization control.
    pub const AUTHZ_DENIED: Action = Action::known("authz.denied");
    /// A staff member was granted a context in another tenant.
    pub const TENANT_CROSS_TENANT_GRANTED: Action = Action::known("tenant.cross_tenant_granted");
    /// A cross-tenant grant, or a use of an expired one, was refused.
    pub const TENANT_CROSS_TENANT_REFUSED: Action = Action::known("tenant.cross_tenant_refused");
    /// A context granted in another tenant was used (recorded before each use).
    pub const TENANT_CROSS_TENANT_USED: Action = Action::known("tenant.cross_tenant_used");
    /// A member's role changed.
    pub const MEMBER_ROLE_CHANGED: Action = Action::known("member.role_changed");
    /// A member was invited or added.
    pub const MEMBER_ADDED: Action = Action::known("member.added");
    /// A member was removed or disabled.
    pub const MEMBER_REMOVED: Action = Action::known("member.removed");
    /// Tenant data was exported.
    pub const DATA_EXPORTED: Action = Action::known("data.exported");
    /// An agent called a read-only tool.
    pub const AGENT_TOOL_CALLED: Action = Action::known("agent.tool_called");
    /// An agent proposed a tool call that needs approval.
    pub const AGENT_TOOL_PROPOSED: Action = Action::known("agent.tool_proposed");
    /// A human approved a proposed tool call.
    pub const AGENT_TOOL_APPROVED: Action = Action::known("agent.tool_approved");
    /// A human rejected a proposed tool call.
    pub const AGENT_TOOL_REJECTED: Action = Action::known("agent.tool_rejected");
    /// A tool call was denied by policy (allowlist, schema, taint).
    pub const AGENT_TOOL_DENIED: Action = Action::known("agent.tool_denied");
    /// A proposal or an approval expired before it was used.
    pub const AGENT_TOOL_EXPIRED: Action = Action::known("agent.tool_expired");
    /// An approval was consumed: the approved call is about to run, exactly once.
    pub const AGENT_TOOL_CONSUMED: Action = Action::known("agent.tool_consumed");
    /// An approved call ran to completion.
    pub const AGENT_TOOL_EXECUTED: Action = Action::known("agent.tool_executed");
    /// A tool call failed (error, timeout, egress refusal) or was interrupted.
    pub const AGENT_TOOL_FAILED: Action = Action::known("agent.tool_failed");
    /// An outbound request was refused by the egress guard.
    pub const EGRESS_DENIED: Action = Action::known("egress.denied");
    /// Events older than the retention period were pruned behind a signed checkpoint.
    pub const AUDIT_PRUNED: Action = Action::known("audit.pruned");
    /// An audit export was made.
    pub const AUDIT_EXPORTED: Action = Action::known("audit.exported");

    /// Every action above.
    pub const ALL: &[Action] = &[
        AUTHN_LOGIN_SUCCEEDED,
        AUTHN_LOGIN_FAILED,
        AUTHN_LINK_REQUESTED,
        AUTHN_CODE_FAILED,
        AUTHN_LOCKED_OUT,
        AUTHN_MFA_ENROLLED,
        AUTHN_MFA_UNLOCKED,
        AUTHN_RECOVERY_CODE_USED,
        AUTHN_RECOVERY_CODES_REGENERATED,
        AUTHN_STEP_UP,
        AUTHN_LOGOUT,
        SESSION_REVOKED,
        SESSION_REVOKED_ALL,
        AUTHN_LINKS_INVALIDATED,
        AUTHN_ACCOUNT_DISABLED,
        AUTHN_ACCOUNT_ENABLED,
        AUTHN_MFA_REPLACEMENT_STARTED,
        AUTHN_MFA_REPLACED,
        AUTHN_EMAIL_CHANGE_REQUESTED,
        AUTHN_EMAIL_CHANGED,
        AUTHZ_DENIED,
        TENANT_CROSS_TENANT_GRANTED,
        TENANT_CROSS_TENANT_REFUSED,
        TENANT_CROSS_TENANT_USED,
        MEMBER_ROLE_CHANGED,
        MEMBER_ADDED,
        MEMBER_REMOVED,
        DATA_EXPORTED,
        AGENT_TOOL_CALLED,
        AGENT_TOOL_PROPOSED,
        AGENT_TOOL_APPROVED,
        AGENT_TOOL_REJECTED,
        AGENT_TOOL_DENIED,
        AGENT_TOOL_EXPIRED,
        AGENT_TOOL_CONSUMED,
        AGENT_TOOL_EXECUTED,
        AGENT_TOOL_FAILED,
        EGRESS_DENIED,
        AUDIT_PRUNED,
        AUDIT_EXPORTED,
    ];
}

/// Who acted, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditActor {
    kind: &'static str,
    id: Option<Uuid>,
    home_tenant: Option<TenantId>,
}

impl AuditActor {
    /// The signed-in actor (its home tenant is recorded too, so a staff member acting in
    /// another tenant is visible as such).
    #[must_use]
    pub fn from_actor(actor: &Actor) -> Self {
        Self {
            kind: actor.kind().as_str(),
            id: Some(*actor.id().as_uuid()),
            home_tenant: Some(actor.tenant()),
        }
    }

    /// Nobody signed in (a sign-in attempt, a denied anonymous request).
    #[must_use]
    pub const fn anonymous() -> Self {
        Self {
            kind: "anonymous",
            id: None,
            home_tenant: None,
        }
    }

    /// The platform itself (retention, scheduled jobs with no acting user).
    #[must_use]
    pub const fn system() -> Self {
        Self {
            kind: "system",
            id: None,
            home_tenant: None,
        }
    }

    /// An account known by id whose kind the reporter does not know (an authentication event
    /// about a user id, e.g. a failed second-factor code).
    #[must_use]
    pub const fn account(id: Uuid, tenant: TenantId) -> Self {
        Self {
            kind: "account",
            id: Some(id),
            home_tenant: Some(tenant),
        }
    }

    /// The actor kind: `user`, `staff`, `agent`, `system`, `account` or `anonymous`.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        self.kind
    }

    /// The actor's id, when signed in.
    #[must_use]
    pub const fn id(&self) -> Option<Uuid> {
        self.id
    }

    /// The actor's own tenant, when signed in.
    #[must_use]
    pub const fn home_tenant(&self) -> Option<TenantId> {
        self.home_tenant
    }
}

/// What the action was done to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub(crate) kind: String,
    pub(crate) id: String,
}

impl Target {
    /// A target such as `("note", "5f0c…")`. When the event is appended both parts are
    /// scrubbed, encoded against log injection and cut to [`MAX_IDENTIFIER_BYTES`].
    #[must_use]
    pub fn new(kind: &str, id: &str) -> Self {
        Self {
            kind: bounded(kind, MAX_IDENTIFIER_BYTES),
            id: bounded(id, MAX_IDENTIFIER_BYTES),
        }
    }

    /// The kind of object.
    #[must_use]
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Its identifier.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// How the action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It was allowed and done.
    Allowed,
    /// A control refused it; the reason is a short machine code such as `mfa_required`.
    Denied {
        /// Why.
        reason: String,
    },
    /// It was allowed but failed.
    Failed {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Denied, with a reason (scrubbed, encoded and cut to [`MAX_IDENTIFIER_BYTES`] when the
    /// event is appended).
    #[must_use]
    pub fn denied(reason: &str) -> Self {
        Self::Denied {
            reason: bounded(reason, MAX_IDENTIFIER_BYTES),
        }
    }

    /// Failed, with a reason (scrubbed, encoded and cut to [`MAX_IDENTIFIER_BYTES`] when the
    /// event is appended).
    #[must_use]
    pub fn failed(reason: &str) -> Self {
        Self::Failed {
            reason: bounded(reason, MAX_IDENTIFIER_BYTES),
        }
    }

    /// `allowed`, `denied` or `failed`.
    #[must_use]
    pub const fn status(&self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied { .. } => "denied",
            Self::Failed { .. } => "failed",
        }
    }

    /// The reason, for a denial or failure.
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Allowed => None,
            Self::Denied { reason } | Self::Failed { reason } => Some(reason),
        }
    }
}

/// One privileged action, before it is scrubbed, stamped and chained.
///
/// Built with [`AuditEvent::new`] and the `with_*` methods; the time is taken by the sink from
/// the server's clock when the event is appended, never from the caller. Its `Debug` output
/// leaves out the unscrubbed parts (metadata, user agent, target ids, reasons).
#[derive(Clone)]
pub struct AuditEvent {
    pub(crate) tenant: TenantId,
    pub(crate) actor: AuditActor,
    pub(crate) action: Action,
    pub(crate) targets: Vec<Target>,
    pub(crate) outcome: Outcome,
    pub(crate) request_id: Option<String>,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) user_agent: Option<String>,
    pub(crate) metadata: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditEvent")
            .field("tenant", &self.tenant)
            .field("actor", &self.actor)
            .field("action", &self.action)
            .field("outcome", &self.outcome.status())
            .field("targets", &self.targets.len())
            .field("metadata_fields", &self.metadata.len())
            .finish_non_exhaustive()
    }
}

impl AuditEvent {
    /// An event in `tenant`'s chain.
    #[must_use]
    pub fn new(tenant: TenantId, actor: AuditActor, action: Action, outcome: Outcome) -> Self {
        Self {
            tenant,
            actor,
            action,
            targets: Vec::new(),
            outcome,
            request_id: None,
            ip: None,
            user_agent: None,
            metadata: serde_json::Map::new(),
        }
    }

    /// Adds a target.
    ///
    /// # Errors
    /// [`AuditError::InvalidEvent`] beyond [`MAX_TARGETS`].
    pub fn with_target(mut self, target: Target) -> Result<Self, AuditError> {
        if self.targets.len() >= MAX_TARGETS {
            return Err(AuditError::InvalidEvent("too many targets"));
        }
        self.targets.push(target);
        Ok(self)
    }

    /// The request id (scrubbed, encoded and cut to [`MAX_IDENTIFIER_BYTES`] when appended).
    #[must_use]
    pub fn with_request_id(mut self, id: &str) -> Self {
        self.request_id = Some(bounded(id, MAX_IDENTIFIER_BYTES));
        self
    }

    /// The client's address.
    #[must_use]
    pub const fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// The client's user agent (scrubbed, encoded and cut to [`MAX_USER_AGENT_BYTES`] when
    /// appended).
    #[must_use]
    pub fn with_user_agent(mut self, user_agent: &str) -> Self {
        self.user_agent = Some(bounded(user_agent, MAX_USER_AGENT_BYTES));
        self
    }

    /// Free-form metadata: a JSON object, scrubbed before it is stored.
    ///
    /// # Errors
    /// [`AuditError::InvalidEvent`] when `metadata` is not a JSON object.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Result<Self, AuditError> {
        match metadata {
            serde_json::Value::Object(map) => {
                self.metadata = map;
                Ok(self)
            }
            _ => Err(AuditError::InvalidEvent("metadata must be a JSON object")),
        }
    }

    /// The tenant whose chain records this event.
    #[must_use]
    pub const fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The action.
    #[must_use]
    pub const fn action(&self) -> &Action {
        &self.action
    }

    /// The outcome.
    #[must_use]
    pub const fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// The actor.
    #[must_use]
    pub const fn actor(&self) -> &AuditActor {
        &self.actor
    }
}

/// Encodes text that came from a client so it cannot forge or disguise log lines: control
/// characters (C0 including CR, LF, TAB and ESC, which starts ANSI sequences; DEL; C1),
/// Unicode bidirectional controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), line
/// and paragraph separators (U+2028, U+2029), zero-width, invisible-operator and BOM characters
/// (U+200B–U+200D, U+2060–U+206F, U+FEFF), the soft hyphen (U+00AD), interlinear annotation
/// characters (U+FFF9–U+FFFB), tag characters (U+E0000–U+E007F) and a literal backslash become
/// `\u{XXXX}` escapes. The result is cut at a
/// character boundary to at most `max_bytes`, marked with `…` when cut.
#[must_use]
pub fn encode_text(text: &str, max_bytes: usize) -> String {
    const ELLIPSIS: char = '…';
    let mut out = String::with_capacity(text.len().min(max_bytes));
    // Where to cut if the text turns out too long: the last piece boundary that leaves room for
    // the ellipsis (an escape is never split).
    let mut cut = None;
    for c in text.chars() {
        let before = out.len();
        if needs_escape(c) {
            out.push_str(&format!("\\u{{{:04X}}}", u32::from(c)));
        } else {
            out.push(c);
        }
        if cut.is_none() && out.len() + ELLIPSIS.len_utf8() > max_bytes {
            cut = Some(before);
        }
        if out.len() > max_bytes {
            out.truncate(cut.unwrap_or(0));
            if out.len() + ELLIPSIS.len_utf8() <= max_bytes {
                out.push(ELLIPSIS);
            }
            return out;
        }
    }
    out
}

/// Client text is kept raw until it is scrubbed; this bounds the work by cutting it (at a
/// character boundary) to four times the recorded limit first.
fn bounded(text: &str, max_bytes: usize) -> String {
    let cap = max_bytes.saturating_mul(4);
    if text.len() <= cap {
        return text.to_owned();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// What the detectors look at: NFKC-normalised (fullwidth `＠` and digits become ASCII), with
/// invisible format characters removed (zero-width spaces and joiners, bidirectional controls,
/// soft hyphens, tag characters, invisible operators, BOM) so they cannot split a secret past
/// the detectors.
#[must_use]
pub fn normalize_text(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    text.nfkc().filter(|c| !is_invisible(*c)).collect()
}

/// Invisible formatting characters dropped by [`normalize_text`].
const fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

/// Metadata strings, before scrubbing: [`normalize_text`], and control characters other than
/// tab, line feed and carriage return (which JSON escapes), plus the Unicode line and paragraph
/// separators, become spaces — a separator the detectors understand.
pub(crate) fn normalize_metadata(value: &mut serde_json::Value) {
    use serde_json::Value;
    fn clean(s: &str) -> String {
        normalize_text(s)
            .chars()
            .map(|c| match c {
                '\t' | '\n' | '\r' => c,
                '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}' | '\u{2028}' | '\u{2029}' => ' ',
                c => c,
            })
            .collect()
    }
    // Iterative, so a deep value cannot overflow the stack.
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => *s = clean(s),
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (k, v) in entries {
                    map.insert(clean(&k), v);
                }
                stack.extend(map.values_mut());
            }
            _ => {}
        }
    }
}

const fn needs_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}' | '\\'
        | '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2028}' | '\u{2029}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{00AD}'
        | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vocabulary_action_is_valid_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for action in actions::ALL {
            assert!(is_valid_action(action.as_str()), "{action}");
            assert!(seen.insert(action.as_str()), "duplicate {action}");
        }
    }

    #[test]
    fn action_grammar() {
        for good in ["a.b", "authn.login_succeeded", "app.note.deleted", "x1.y_2"] {
            assert!(Action::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "login",
            ".a",
            "a.",
            "a..b",
            "A.b",
            "a.B",
            "1a.b",
            "a.b-c",
            "a.b c",
            "a.b\n",
            "a.\u{0430}",
        ] {
            assert!(Action::new(bad).is_err(), "{bad:?}");
        }
        assert!(Action::new(&format!("a.{}", "b".repeat(62))).is_ok());
        assert!(Action::new(&format!("a.{}", "b".repeat(63))).is_err());
    }

    #[test]
    fn log_injection_characters_are_encoded() {
        let ua = "curl/8\r\n2026-11-29 INFO admin logged in\u{1b}[31mred\u{202e}txt.exe\u{2066}\\";
        let encoded = encode_text(ua, 512);
        assert!(!encoded.contains(['\r', '\n', '\u{1b}', '\u{202e}', '\u{2066}']));
        assert_eq!(
            encoded,
            "curl/8\\u{000D}\\u{000A}2026-11-29 INFO admin logged in\\u{001B}[31mred\\u{202E}txt.exe\\u{2066}\\u{005C}"
        );
        // A pre-encoded sequence cannot be confused with an encoded control: the backslash is
        // itself encoded.
        assert_ne!(encode_text("\\u{000A}", 64), encode_text("\n", 64));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let text = "é".repeat(400);
        let encoded = encode_text(&text, 100);
        assert!(encoded.len() <= 100, "{}", encoded.len());
        assert!(encoded.ends_with('…'));
        assert_eq!(encode_text("short", 100), "short");
        let exact = "a".repeat(100);
        assert_eq!(encode_text(&exact, 100), exact);
    }
}
