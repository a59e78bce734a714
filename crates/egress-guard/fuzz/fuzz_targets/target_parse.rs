//! Feeds arbitrary text to the one normalisation point, `Target::parse`, and to the policy
//! checks built on it. Invariants:
//! - a parsed target is `http`/`https`; a host name is non-empty lowercase ASCII without a
//!   trailing dot and is never itself an IP literal (those must be judged as addresses);
//! - normalisation is idempotent: `scheme://host:port/` built from a target parses back to it,
//!   and `Target::new` rebuilds it from its parts;
//! - `check_url` decides exactly as `check_target` on the parsed target, and an unparsable URL
//!   is a floor denial;
//! - what the default policy allows is a public address or a non-local name on 80/443; what an
//!   allowlist allows is on the allowlist (the exact name, or a name inside the `*.` zone);
//!   `hostnames_only` never allows an IP literal;
//! - `HostPattern::parse` is idempotent.
#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use egress_guard::{Class, EgressPolicy, HostPattern, Target, TargetHost, classify};
use libfuzzer_sys::fuzz_target;

static OPEN: LazyLock<EgressPolicy> = LazyLock::new(|| EgressPolicy::new("fuzz-open"));
static LISTED: LazyLock<EgressPolicy> = LazyLock::new(|| {
    EgressPolicy::new("fuzz-listed")
        .allow_hosts(["api.example.com", "*.cdn.example"])
        .unwrap()
});
static NAMES_ONLY: LazyLock<EgressPolicy> =
    LazyLock::new(|| EgressPolicy::new("fuzz-names").hostnames_only(true));

fn render(target: &Target) -> String {
    match target.host() {
        TargetHost::Name(n) => format!("{}://{n}:{}/", target.scheme(), target.port()),
        TargetHost::Ip(IpAddr::V4(ip)) => format!("{}://{ip}:{}/", target.scheme(), target.port()),
        TargetHost::Ip(IpAddr::V6(ip)) => format!("{}://[{ip}]:{}/", target.scheme(), target.port()),
    }
}

fn local_name(name: &str) -> bool {
    [
        "localhost",
        "metadata",
        "metadata.google.internal",
        "instance-data",
    ]
    .contains(&name)
        || [".localhost", ".local", ".home.arpa", ".internal"]
            .iter()
            .any(|s| name.ends_with(s))
}

fn check_pattern(text: &str) {
    let Ok(pattern) = HostPattern::parse(text) else {
        return;
    };
    let rendered = match &pattern {
        HostPattern::Exact(h) => h.clone(),
        HostPattern::Subdomains(s) => format!("*.{s}"),
    };
    assert_eq!(
        HostPattern::parse(&rendered).as_ref(),
        Ok(&pattern),
        "{text:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    check_pattern(input);
    let parsed = Target::parse(input);
    for policy in [&*OPEN, &*LISTED, &*NAMES_ONLY] {
        let decision = policy.check_url(input);
        match &parsed {
            Ok(target) => {
                let direct = policy.check_target(target);
                assert_eq!(
                    decision, direct,
                    "check_url and check_target differ for {input:?}"
                );
            }
            Err(reason) => {
                assert_eq!(decision.reason, *reason);
                assert!(!decision.allowed && decision.floor && decision.target.is_none());
            }
        }
        if decision.allowed {
            let target = decision
                .target
                .as_ref()
                .expect("an allowed decision has a target");
            assert!([80, 443].contains(&target.port()), "{input:?}");
            match target.host() {
                TargetHost::Ip(ip) => {
                    assert_eq!(classify(*ip), Class::Public, "allowed {ip} for {input:?}");
                    assert!(
                        !std::ptr::eq(policy, &*NAMES_ONLY),
                        "IP literal allowed: {input:?}"
                    );
                    assert!(
                        !std::ptr::eq(policy, &*LISTED),
                        "IP literal allowed: {input:?}"
                    );
                }
                TargetHost::Name(name) => {
                    assert!(!local_name(name), "local name allowed: {input:?}");
                    if std::ptr::eq(policy, &*LISTED) {
                        // Inside the zone (the WHATWG parser lets a name have empty labels,
                        // `..cdn.example`, which no resolver looks up).
                        let listed = name == "api.example.com"
                            || name
                                .strip_suffix(".cdn.example")
                                .is_some_and(|p| !p.is_empty());
                        assert!(listed, "{name:?} is not on the allowlist ({input:?})");
                    }
                }
            }
        }
    }
    let Ok(target) = parsed else {
        return;
    };
    assert!(target.scheme() == "http" || target.scheme() == "https");
    if let TargetHost::Name(name) = target.host() {
        assert!(!name.is_empty() && name.is_ascii(), "{name:?}");
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
        assert!(!name.ends_with('.'), "{name:?}");
        assert!(
            name.parse::<IpAddr>().is_err(),
            "host name {name:?} is an IP literal (from {input:?})"
        );
    }
    assert_eq!(
        Target::new(target.scheme(), target.host().clone(), target.port()).as_ref(),
        Ok(&target),
        "Target::new does not rebuild the target of {input:?}"
    );
    let again = Target::parse(&render(&target));
    assert_eq!(
        again.as_ref(),
        Ok(&target),
        "not idempotent: {input:?} -> {}",
        render(&target)
    );
});
