//! Outbound requests that cannot reach what they must not: internal services, private ranges,
//! cloud metadata.
//!
//! An agent tool or a webhook that fetches a user-supplied URL is an SSRF waiting to happen.
//! This crate decides every destination at one normalisation point, with the same URL parser the
//! HTTP client uses, against a reviewed, versioned table of forbidden ranges ([`ranges`]) that no
//! allowlist can lift.
//!
//! - [`classify`]: every IANA special-purpose IPv4 and IPv6 range, cloud metadata addresses, and
//!   IPv4 embedded in IPv6 (mapped, compatible, SIIT, NAT64) judged as IPv4; 6to4, Teredo and
//!   local-use NAT64 denied outright.
//! - [`Target`]: `http`/`https` only, WHATWG parsing (numeric IPv4 forms, IDNA, full-width
//!   characters), lowercase, no trailing dot.
//! - [`EgressPolicy`]: a floor plus per-agent host patterns (`*.example.com` excludes the apex),
//!   ports, host-names-only, explicit CIDR exceptions; enforce or report mode.
//! - The `egress-guard check <url> [--policy file]` command prints a [`Decision`] as JSON.
//!
//! ```
//! use egress_guard::EgressPolicy;
//! let policy = EgressPolicy::new("weather-tool").allow_hosts(["api.weather.example", "*.cdn.example"])?;
//! assert!(policy.check_url("https://api.weather.example/v1/today").allowed);
//! assert!(!policy.check_url("http://169.254.169.254/latest/meta-data/").allowed);
//! assert!(!policy.check_url("http://0x7f.1/").allowed);            // 127.0.0.1
//! assert!(!policy.check_url("http://[::ffff:10.0.0.1]/").allowed); // mapped private IPv4
//! assert!(!policy.check_url("https://cdn.example/").allowed);      // apex not in *.cdn.example
//! # Ok::<(), egress_guard::PolicyError>(())
//! ```
//!
//! - [`GuardedClient`]: reqwest with every hop re-checked, a filtering resolver (the connection
//!   goes only to addresses that were checked; mixed public/private answers are denied), system
//!   proxies ignored, credentials dropped on cross-origin redirects, timeouts and a body cap;
//!   also a `tower::Service`.
//! - [`EgressProxy`]: an HTTP/1.1 forward proxy (`CONNECT` and absolute-form `http://`) that
//!   makes the same decisions, for programs that only honour `http_proxy`/`https_proxy`.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod decision;
mod policy;
mod proxy;
pub mod ranges;
mod target;

pub use client::{
    DEFAULT_SENSITIVE_HEADERS, EgressError, GuardedClient, GuardedClientBuilder, GuardedResponse,
    HickoryResolver, NameResolver,
};
pub use decision::{Decision, DecisionCounters, DecisionHook, Reason};
pub use policy::{EgressPolicy, HostPattern, Mode, PolicyError};
pub use proxy::{DEFAULT_HEAD_LIMIT, EgressProxy, ProxyHandle};
pub use ranges::{Class, classify};
pub use target::{Target, TargetHost};

// The README's code blocks compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
