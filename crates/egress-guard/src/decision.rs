//! Decisions and their reasons: one structured event per decision.

use std::net::IpAddr;

use crate::policy::{EgressPolicy, Mode};
use crate::ranges::{Forbidden, TABLE_VERSION};
use crate::target::Target;

/// Why a destination is allowed or denied. The `code` is stable for dashboards and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// Allowed by the policy.
    Allowed,
    /// The URL does not parse (or has no host or port).
    UnparsableUrl,
    /// Only `http` and `https` are allowed.
    SchemeNotAllowed,
    /// The port is not in the policy's list.
    PortNotAllowed,
    /// A special-purpose address (private, loopback, link-local, ...).
    ForbiddenAddress(Forbidden),
    /// A cloud metadata endpoint.
    Metadata(Forbidden),
    /// A name that is never public (`localhost`, `*.internal`, `metadata.google.internal`, ...).
    ForbiddenName,
    /// The policy refuses IP literals.
    IpLiteralRefused,
    /// The host is not on the policy's allowlist.
    HostNotAllowed,
}

impl Reason {
    /// The stable machine code.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::UnparsableUrl => "unparsable_url",
            Self::SchemeNotAllowed => "scheme_not_allowed",
            Self::PortNotAllowed => "port_not_allowed",
            Self::ForbiddenAddress(_) => "forbidden_address",
            Self::Metadata(_) => "metadata",
            Self::ForbiddenName => "forbidden_name",
            Self::IpLiteralRefused => "ip_literal_refused",
            Self::HostNotAllowed => "host_not_allowed",
        }
    }
}

/// The outcome of checking one destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// What the policy itself says (`allowed` can differ from it in report mode).
    pub reason: Reason,
    /// Whether the reason is part of the floor (denied in every mode).
    pub floor: bool,
    /// The policy's name.
    pub policy: String,
    /// The policy's mode.
    pub mode: Mode,
    /// The normalised destination, when the URL parsed.
    pub target: Option<Target>,
    /// The address judged, for resolved or literal addresses.
    pub address: Option<IpAddr>,
    /// Every address the host name resolved to, for a request through [`GuardedClient`]
    /// (empty for IP literals and for checks made without a connection).
    ///
    /// [`GuardedClient`]: crate::GuardedClient
    pub addresses: Vec<IpAddr>,
    /// Which hop of a request through [`GuardedClient`] (0 = the original URL, 1 = the first
    /// redirect, ...); `None` for a check made directly on the policy.
    ///
    /// [`GuardedClient`]: crate::GuardedClient
    pub hop: Option<usize>,
    /// Who asked: the tool or agent the client was built for
    /// ([`GuardedClientBuilder::caller`](crate::GuardedClientBuilder::caller)).
    pub caller: Option<String>,
    /// The version of the range table.
    pub table_version: u32,
}

impl Decision {
    /// Decides without publishing: the guarded client publishes one decision per request hop.
    pub(crate) fn evaluate(
        policy: &EgressPolicy,
        target: Option<Target>,
        address: Option<IpAddr>,
        reason: Reason,
        floor: bool,
    ) -> Self {
        let mode = policy.mode_value();
        Self {
            allowed: policy.permits(reason, floor),
            reason,
            floor,
            policy: policy.name().to_owned(),
            mode,
            target,
            address,
            addresses: Vec::new(),
            hop: None,
            caller: None,
            table_version: TABLE_VERSION,
        }
    }

    /// Emits the tracing event and hands the decision to the policy's hooks.
    pub(crate) fn publish(&self, policy: &EgressPolicy) {
        self.emit();
        for hook in policy.hooks() {
            hook.record(self);
        }
    }

    fn emit(&self) {
        let host = self.target.as_ref().map(Target::host_text);
        let caller = self.caller.as_deref();
        let address = self.address.map(tracing::field::display);
        let addresses =
            (!self.addresses.is_empty()).then(|| tracing::field::debug(&self.addresses));
        if self.allowed && self.reason != Reason::Allowed {
            tracing::warn!(
                policy = %self.policy, caller, code = self.reason.code(), host = host.as_deref(),
                address, addresses, hop = self.hop, mode = ?self.mode,
                "egress allowed in report mode; enforce would deny"
            );
        } else if !self.allowed {
            tracing::info!(
                policy = %self.policy, caller, code = self.reason.code(), host = host.as_deref(),
                address, addresses, hop = self.hop, mode = ?self.mode, floor = self.floor,
                "egress denied"
            );
        } else {
            tracing::debug!(
                policy = %self.policy, caller, host = host.as_deref(), addresses,
                hop = self.hop, "egress allowed"
            );
        }
    }
}

/// Receives every decision a policy makes: the extension point for `audit-log` (which records
/// denials with actor and tenant) and for metrics. Called synchronously on the request path:
/// keep it cheap (buffer, count, send to a channel).
pub trait DecisionHook: Send + Sync + 'static {
    /// Records one decision.
    fn record(&self, decision: &Decision);
}

/// Counts decisions per reason code (a [`DecisionHook`] for metrics). Through
/// [`GuardedClient`](crate::GuardedClient) that is one decision per request hop.
#[derive(Debug, Default)]
pub struct DecisionCounters {
    counts: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl DecisionCounters {
    /// A snapshot: reason code → decisions so far.
    #[must_use]
    pub fn snapshot(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl DecisionHook for DecisionCounters {
    fn record(&self, decision: &Decision) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(decision.reason.code()).or_default() += 1;
        }
    }
}
