//! Egress policies: the floor that nothing lifts, and per-agent / per-tool allowlists.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::ranges::{Class, classify};
use crate::target::{Target, TargetHost};
use crate::{Decision, Reason};

/// Enforce, or only report what would be denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Deny what the policy denies.
    #[default]
    Enforce,
    /// Allow what the policy would deny (and log it), except what the floor denies: forbidden
    /// addresses, metadata and local names, schemes, and unparsable URLs are denied in both modes.
    Report,
}

/// A host pattern: `example.com` matches exactly; `*.example.com` matches any subdomain but not
/// the apex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host.
    Exact(String),
    /// Any host ending in `.suffix`.
    Subdomains(String),
}

impl HostPattern {
    /// Parses `example.com` or `*.example.com` (lowercased, trailing dot removed).
    ///
    /// # Errors
    /// [`PolicyError::Pattern`] for empty labels, a wildcard anywhere but the first label, or
    /// characters that cannot be in a host name.
    pub fn parse(pattern: &str) -> Result<Self, PolicyError> {
        let p = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wild, rest) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, p.clone()),
        };
        let valid = !rest.is_empty()
            && rest.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(PolicyError::Pattern(pattern.to_owned()));
        }
        Ok(if wild {
            Self::Subdomains(rest)
        } else {
            Self::Exact(rest)
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host == h,
            Self::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        }
    }
}

/// A policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A host pattern is malformed.
    #[error("invalid host pattern {0:?}")]
    Pattern(String),
    /// A CIDR exception is malformed.
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    /// The policy file is not valid JSON of the expected shape.
    #[error("invalid policy file: {0}")]
    File(String),
}

/// Names that always resolve to the local machine, the local network or a metadata server.
const FORBIDDEN_NAMES: [&str; 6] = [
    "localhost",
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Suffixes of names that are never public (RFC 6761 `.localhost`, RFC 6762 `.local`,
/// RFC 8375 `.home.arpa`, ICANN's private-use `.internal`).
const FORBIDDEN_SUFFIXES: [&str; 4] = [".localhost", ".local", ".home.arpa", ".internal"];

/// An egress policy for one agent or tool.
#[derive(Clone)]
pub struct EgressPolicy {
    hooks: Vec<std::sync::Arc<dyn crate::DecisionHook>>,
    name: String,
    mode: Mode,
    hosts: Vec<HostPattern>,
    hostnames_only: bool,
    ports: Vec<u16>,
    exceptions: Vec<IpNet>,
}

impl std::fmt::Debug for EgressPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressPolicy")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("hosts", &self.hosts)
            .field("hostnames_only", &self.hostnames_only)
            .field("ports", &self.ports)
            .field("exceptions", &self.exceptions)
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl EgressPolicy {
    /// A policy allowing any public host on ports 80 and 443, enforcing.
    #[must_use]
    pub fn new(name: &str) -> Self {
        Self {
            hooks: Vec::new(),
            name: name.to_owned(),
            mode: Mode::Enforce,
            hosts: Vec::new(),
            hostnames_only: false,
            ports: vec![80, 443],
            exceptions: Vec::new(),
        }
    }

    /// Only these hosts (patterns) are allowed.
    ///
    /// # Errors
    /// [`PolicyError::Pattern`].
    pub fn allow_hosts<'a>(
        mut self,
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, PolicyError> {
        for p in patterns {
            self.hosts.push(HostPattern::parse(p)?);
        }
        Ok(self)
    }

    /// Refuse IP literals: only host names.
    #[must_use]
    pub const fn hostnames_only(mut self, on: bool) -> Self {
        self.hostnames_only = on;
        self
    }

    /// Allowed ports (replacing 80 and 443).
    #[must_use]
    pub fn ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.ports = ports.into_iter().collect();
        self
    }

    /// An operator's explicit exception: addresses in `cidr` may be reached although the floor
    /// forbids them (never metadata endpoints).
    ///
    /// # Errors
    /// [`PolicyError::Cidr`].
    pub fn allow_cidr(mut self, cidr: &str) -> Result<Self, PolicyError> {
        self.exceptions.push(
            cidr.parse()
                .map_err(|_| PolicyError::Cidr(cidr.to_owned()))?,
        );
        Ok(self)
    }

    /// Enforce or report.
    #[must_use]
    pub const fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Also hand every decision of this policy to `hook` (an audit sink, counters).
    #[must_use]
    pub fn with_hook(mut self, hook: std::sync::Arc<dyn crate::DecisionHook>) -> Self {
        self.hooks.push(hook);
        self
    }

    pub(crate) fn hooks(&self) -> &[std::sync::Arc<dyn crate::DecisionHook>] {
        &self.hooks
    }

    /// The policy's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Decides a URL before any connection: scheme, port, host name rules, IP literals.
    #[must_use]
    pub fn check_url(&self, url: &str) -> Decision {
        let decision = self.evaluate_url(url);
        decision.publish(self);
        decision
    }

    pub(crate) fn evaluate_url(&self, url: &str) -> Decision {
        match Target::parse(url) {
            Ok(target) => self.evaluate_target(&target),
            Err(reason) => Decision::evaluate(self, None, None, reason, true),
        }
    }

    /// Decides a normalised target (also used for every redirect hop).
    #[must_use]
    pub fn check_target(&self, target: &Target) -> Decision {
        let decision = self.evaluate_target(target);
        decision.publish(self);
        decision
    }

    pub(crate) fn evaluate_target(&self, target: &Target) -> Decision {
        let (reason, floor) = self.verdict(target);
        Decision::evaluate(self, Some(target.clone()), None, reason, floor)
    }

    /// Whether a verdict lets the request proceed in this policy's mode.
    pub(crate) fn permits(&self, reason: Reason, floor: bool) -> bool {
        match reason {
            Reason::Allowed => true,
            _ if floor => false,
            _ => self.mode_value() == Mode::Report,
        }
    }

    /// The reason and whether it is part of the floor, without building a [`Decision`].
    pub(crate) fn verdict(&self, target: &Target) -> (Reason, bool) {
        match &target.host {
            TargetHost::Ip(ip) => {
                if let Some(reason) = self.floor(*ip) {
                    return (reason, true);
                }
                if self.hostnames_only {
                    return (Reason::IpLiteralRefused, false);
                }
                if !self.hosts.is_empty() && !self.exception_covers(*ip) {
                    return (Reason::HostNotAllowed, false);
                }
            }
            TargetHost::Name(name) => {
                if FORBIDDEN_NAMES.contains(&name.as_str())
                    || FORBIDDEN_SUFFIXES.iter().any(|s| name.ends_with(s))
                {
                    return (Reason::ForbiddenName, true);
                }
                if !self.hosts.is_empty() && !self.hosts.iter().any(|p| p.matches(name)) {
                    return (Reason::HostNotAllowed, false);
                }
            }
        }
        if !self.ports.contains(&target.port) {
            return (Reason::PortNotAllowed, false);
        }
        (Reason::Allowed, false)
    }

    /// Decides one resolved (or literal) address of an allowed host: the floor, unless an
    /// explicit CIDR exception covers it.
    #[must_use]
    pub fn check_address(&self, target: &Target, ip: IpAddr) -> Decision {
        let decision = self.evaluate_address(target, ip);
        decision.publish(self);
        decision
    }

    pub(crate) fn evaluate_address(&self, target: &Target, ip: IpAddr) -> Decision {
        let (reason, floor) = self
            .floor(ip)
            .map_or((Reason::Allowed, false), |r| (r, true));
        Decision::evaluate(self, Some(target.clone()), Some(ip), reason, floor)
    }

    /// Whether an exception covers `ip` — judged, like the floor, on the effective address
    /// (the IPv4 inside a mapped, compatible, SIIT or NAT64 IPv6 address).
    fn exception_covers(&self, ip: IpAddr) -> bool {
        let effective = match ip {
            IpAddr::V6(v6) => crate::ranges::embedded_v4(v6).map_or(ip, |(v4, _)| IpAddr::V4(v4)),
            IpAddr::V4(_) => ip,
        };
        self.exceptions
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&effective))
    }

    /// The floor: a forbidden address, unless an explicit exception covers it (metadata never).
    fn floor(&self, ip: IpAddr) -> Option<Reason> {
        match classify(ip) {
            Class::Public => None,
            Class::Forbidden(why) if why.metadata => Some(Reason::Metadata(why)),
            Class::Forbidden(_) if self.exception_covers(ip) => None,
            Class::Forbidden(why) => Some(Reason::ForbiddenAddress(why)),
        }
    }

    pub(crate) const fn mode_value(&self) -> Mode {
        self.mode
    }
}

/// The JSON policy file format (see the README).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    allow_hosts: Vec<String>,
    #[serde(default)]
    hostnames_only: bool,
    #[serde(default)]
    ports: Option<Vec<u16>>,
    #[serde(default)]
    allow_cidrs: Vec<String>,
}

impl std::str::FromStr for EgressPolicy {
    type Err = PolicyError;

    fn from_str(json: &str) -> Result<Self, Self::Err> {
        let file: PolicyFile =
            serde_json::from_str(json).map_err(|e| PolicyError::File(e.to_string()))?;
        let mut policy = Self::new(&file.name)
            .mode(file.mode)
            .hostnames_only(file.hostnames_only)
            .allow_hosts(file.allow_hosts.iter().map(String::as_str))?;
        if let Some(ports) = file.ports {
            policy = policy.ports(ports);
        }
        for cidr in &file.allow_cidrs {
            policy = policy.allow_cidr(cidr)?;
        }
        Ok(policy)
    }
}
