//! The bypass corpus: URLs that try to reach what they must not, by technique, with expected
//! verdicts — plus the legitimate neighbours that must stay reachable. Decisions only (no
//! network): redirect, DNS and proxy attacks come with the guarded client (issue 6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use egress_guard::{EgressPolicy, Mode, Target, TargetHost};

#[derive(Clone, Copy)]
enum P {
    /// Any public host, ports 80/443.
    Open,
    /// Allowlist `*.example.com` and `api.partner.example`.
    List,
    /// Host names only.
    NamesOnly,
    /// Exception for 10.1.0.0/16 and 169.254.0.0/16.
    Cidr,
    /// Allowlist, report mode.
    Report,
}

fn policy(p: P) -> EgressPolicy {
    match p {
        P::Open => EgressPolicy::new("open"),
        P::List => EgressPolicy::new("list")
            .allow_hosts(["*.example.com", "api.partner.example"])
            .unwrap(),
        P::NamesOnly => EgressPolicy::new("names").hostnames_only(true),
        P::Cidr => EgressPolicy::new("cidr")
            .allow_cidr("10.1.0.0/16")
            .unwrap()
            .allow_cidr("169.254.0.0/16")
            .unwrap(),
        P::Report => EgressPolicy::new("report")
            .allow_hosts(["*.example.com"])
            .unwrap()
            .mode(Mode::Report),
    }
}

/// (technique, url, policy, allowed, reason code)
const CORPUS: &[(&str, &str, P, bool, &str)] = &[
    // Numeric IPv4 forms the WHATWG parser decodes.
    (
        "ipv4-numeric",
        "http://127.0.0.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://127.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://127.0.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://2130706433/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://0x7f.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://0x7f000001/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://017700000001/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://0177.0.0.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://012.0.0.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://0/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://127.0.0.1./",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-numeric",
        "http://0xa9.0xfe.0xa9.0xfe/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "ipv4-numeric",
        "http://2852039166/",
        P::Open,
        false,
        "metadata",
    ),
    // IPv6 forms, with and without embedded IPv4.
    ("ipv6", "http://[::1]/", P::Open, false, "forbidden_address"),
    ("ipv6", "http://[::]/", P::Open, false, "forbidden_address"),
    (
        "ipv6",
        "http://[0:0:0:0:0:0:0:1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[::ffff:127.0.0.1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[::ffff:7f00:1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[::ffff:169.254.169.254]/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "ipv6",
        "http://[::127.0.0.1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[::ffff:0:10.0.0.1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[64:ff9b::127.0.0.1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[64:ff9b::a9fe:a9fe]/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "ipv6",
        "http://[64:ff9b:1::1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[2002:7f00:1::]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    ("ipv6", "http://[fe80::1]/", P::Open, false, "metadata"),
    (
        "ipv6",
        "http://[fe80::1%25eth0]/",
        P::Open,
        false,
        "unparsable_url",
    ),
    (
        "ipv6",
        "http://[fc00::1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[fec0::1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[ff02::1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[100::1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[2001:db8::1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[3fff::1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[4000::1]/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv6",
        "http://[2001:4860:4860::8888]/",
        P::Open,
        true,
        "allowed",
    ),
    ("ipv6", "http://[2001:200::1]/", P::Open, true, "allowed"),
    (
        "ipv6",
        "http://[64:ff9b::8.8.8.8]/",
        P::Open,
        true,
        "allowed",
    ),
    // Special-purpose IPv4 ranges and their edges.
    (
        "ipv4-ranges",
        "http://9.255.255.255/",
        P::Open,
        true,
        "allowed",
    ),
    (
        "ipv4-ranges",
        "http://10.0.0.0/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://10.255.255.255/",
        P::Open,
        false,
        "forbidden_address",
    ),
    ("ipv4-ranges", "http://11.0.0.0/", P::Open, true, "allowed"),
    (
        "ipv4-ranges",
        "http://100.63.255.255/",
        P::Open,
        true,
        "allowed",
    ),
    (
        "ipv4-ranges",
        "http://100.64.0.0/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://100.127.255.255/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://100.128.0.0/",
        P::Open,
        true,
        "allowed",
    ),
    (
        "ipv4-ranges",
        "http://172.15.255.255/",
        P::Open,
        true,
        "allowed",
    ),
    (
        "ipv4-ranges",
        "http://172.16.0.0/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://172.31.255.255/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://172.32.0.0/",
        P::Open,
        true,
        "allowed",
    ),
    (
        "ipv4-ranges",
        "http://192.0.0.8/",
        P::Open,
        false,
        "forbidden_address",
    ),
    ("ipv4-ranges", "http://192.0.1.1/", P::Open, true, "allowed"),
    (
        "ipv4-ranges",
        "http://192.0.2.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://192.88.99.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://192.168.1.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://198.17.255.255/",
        P::Open,
        true,
        "allowed",
    ),
    (
        "ipv4-ranges",
        "http://198.18.0.0/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://198.19.255.255/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://198.20.0.0/",
        P::Open,
        true,
        "allowed",
    ),
    (
        "ipv4-ranges",
        "http://198.51.100.7/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://203.0.113.9/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://223.255.255.255/",
        P::Open,
        true,
        "allowed",
    ),
    (
        "ipv4-ranges",
        "http://224.0.0.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://240.0.0.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "ipv4-ranges",
        "http://255.255.255.255/",
        P::Open,
        false,
        "forbidden_address",
    ),
    ("ipv4-ranges", "http://8.8.8.8/", P::Open, true, "allowed"),
    // Metadata addresses and names.
    (
        "metadata",
        "http://169.254.169.254/latest/meta-data/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "metadata",
        "http://169.254.170.2/v2/credentials",
        P::Open,
        false,
        "metadata",
    ),
    (
        "metadata",
        "http://100.100.100.200/latest/meta-data/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "metadata",
        "http://192.0.0.192/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "metadata",
        "http://168.63.129.16/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "metadata",
        "http://[fd00:ec2::254]/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "metadata",
        "http://metadata.google.internal/computeMetadata/v1/",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "metadata",
        "http://METADATA.Google.Internal./",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "metadata",
        "http://metadata/",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "metadata",
        "http://instance-data/",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "metadata",
        "http://169.254.169.254/",
        P::Cidr,
        false,
        "metadata",
    ),
    // Local names.
    (
        "local-names",
        "http://localhost/",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "local-names",
        "http://LOCALHOST./",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "local-names",
        "http://api.localhost/",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "local-names",
        "http://printer.local/",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "local-names",
        "http://router.home.arpa/",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "local-names",
        "http://billing.internal/",
        P::Open,
        false,
        "forbidden_name",
    ),
    // Userinfo, fragment and backslash tricks: the decision follows the client's own parse.
    (
        "parser-tricks",
        "http://a.example.com@127.0.0.1/",
        P::List,
        false,
        "forbidden_address",
    ),
    (
        "parser-tricks",
        "http://127.0.0.1#@a.example.com/",
        P::List,
        false,
        "forbidden_address",
    ),
    (
        "parser-tricks",
        "http://127.0.0.1\\@a.example.com/",
        P::List,
        false,
        "forbidden_address",
    ),
    (
        "parser-tricks",
        "http://a.example.com\\@127.0.0.1/",
        P::List,
        true,
        "allowed",
    ),
    (
        "parser-tricks",
        "http://127.0.0.1:80@a.example.com/",
        P::List,
        true,
        "allowed",
    ),
    (
        "parser-tricks",
        "http://a.example.com?@127.0.0.1/",
        P::List,
        true,
        "allowed",
    ),
    // Brackets.
    (
        "brackets",
        "http://[127.0.0.1]/",
        P::Open,
        false,
        "unparsable_url",
    ),
    (
        "brackets",
        "http://[a.example.com]/",
        P::List,
        false,
        "unparsable_url",
    ),
    (
        "brackets",
        "http://[::ffff:a.b]/",
        P::Open,
        false,
        "unparsable_url",
    ),
    // Percent-encoding, full-width digits, ideographic dots, IDNA.
    (
        "encoding",
        "http://%31%32%37.0.0.1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "encoding",
        "http://127%2E0%2E0%2E1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "encoding",
        "http://１２７.０.０.１/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "encoding",
        "http://127。0。0。1/",
        P::Open,
        false,
        "forbidden_address",
    ),
    (
        "encoding",
        "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "encoding",
        "http://%6c%6f%63%61%6c%68%6f%73%74/",
        P::Open,
        false,
        "forbidden_name",
    ),
    (
        "encoding",
        "http://A.EXAMPLE.COM/",
        P::List,
        true,
        "allowed",
    ),
    // Schemes.
    (
        "schemes",
        "file:///etc/passwd",
        P::Open,
        false,
        "scheme_not_allowed",
    ),
    (
        "schemes",
        "gopher://127.0.0.1:70/_stats",
        P::Open,
        false,
        "scheme_not_allowed",
    ),
    (
        "schemes",
        "dict://127.0.0.1:11211/stat",
        P::Open,
        false,
        "scheme_not_allowed",
    ),
    (
        "schemes",
        "ftp://a.example.com/",
        P::Open,
        false,
        "scheme_not_allowed",
    ),
    (
        "schemes",
        "data:text/plain,hello",
        P::Open,
        false,
        "scheme_not_allowed",
    ),
    (
        "schemes",
        "javascript:alert(1)",
        P::Open,
        false,
        "scheme_not_allowed",
    ),
    (
        "schemes",
        "ws://a.example.com/",
        P::Open,
        false,
        "scheme_not_allowed",
    ),
    ("schemes", "HTTP://a.example.com/", P::Open, true, "allowed"),
    (
        "schemes",
        "//a.example.com/",
        P::Open,
        false,
        "unparsable_url",
    ),
    ("schemes", "not a url", P::Open, false, "unparsable_url"),
    // Ports.
    (
        "ports",
        "http://a.example.com:22/",
        P::Open,
        false,
        "port_not_allowed",
    ),
    (
        "ports",
        "https://a.example.com:8443/",
        P::Open,
        false,
        "port_not_allowed",
    ),
    (
        "ports",
        "http://a.example.com:0/",
        P::Open,
        false,
        "port_not_allowed",
    ),
    (
        "ports",
        "http://a.example.com:65536/",
        P::Open,
        false,
        "unparsable_url",
    ),
    (
        "ports",
        "http://a.example.com:443/",
        P::Open,
        true,
        "allowed",
    ),
    (
        "ports",
        "https://a.example.com:80/",
        P::Open,
        true,
        "allowed",
    ),
    // Allowlist matching edges.
    (
        "allowlist",
        "https://a.example.com/",
        P::List,
        true,
        "allowed",
    ),
    (
        "allowlist",
        "https://a.b.example.com/",
        P::List,
        true,
        "allowed",
    ),
    (
        "allowlist",
        "https://a.example.com./",
        P::List,
        true,
        "allowed",
    ),
    (
        "allowlist",
        "https://example.com/",
        P::List,
        false,
        "host_not_allowed",
    ),
    (
        "allowlist",
        "https://evilexample.com/",
        P::List,
        false,
        "host_not_allowed",
    ),
    (
        "allowlist",
        "https://example.com.evil.test/",
        P::List,
        false,
        "host_not_allowed",
    ),
    (
        "allowlist",
        "https://a.example.com.evil.test/",
        P::List,
        false,
        "host_not_allowed",
    ),
    (
        "allowlist",
        "https://api.partner.example/",
        P::List,
        true,
        "allowed",
    ),
    (
        "allowlist",
        "https://x.api.partner.example/",
        P::List,
        false,
        "host_not_allowed",
    ),
    (
        "allowlist",
        "https://api.partner.example.evil/",
        P::List,
        false,
        "host_not_allowed",
    ),
    (
        "allowlist",
        "https://8.8.8.8/",
        P::List,
        false,
        "host_not_allowed",
    ),
    (
        "allowlist",
        "https://93.184.216.34/",
        P::NamesOnly,
        false,
        "ip_literal_refused",
    ),
    (
        "allowlist",
        "https://[2606:4700:4700::1111]/",
        P::NamesOnly,
        false,
        "ip_literal_refused",
    ),
    (
        "allowlist",
        "https://a.example.com/",
        P::NamesOnly,
        true,
        "allowed",
    ),
    // Operator CIDR exceptions lift the floor for their range only, never for metadata.
    (
        "cidr-exceptions",
        "http://10.1.2.3/",
        P::Cidr,
        true,
        "allowed",
    ),
    (
        "cidr-exceptions",
        "http://10.2.0.1/",
        P::Cidr,
        false,
        "forbidden_address",
    ),
    // Link-local is on the unliftable floor: an exception for 169.254.0.0/16 changes nothing.
    (
        "cidr-exceptions",
        "http://169.254.1.1/",
        P::Cidr,
        false,
        "metadata",
    ),
    (
        "cidr-exceptions",
        "http://[::ffff:169.254.1.1]/",
        P::Cidr,
        false,
        "metadata",
    ),
    (
        "cidr-exceptions",
        "http://[64:ff9b:1::a9fe:a9fe]/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "cidr-exceptions",
        "http://[fe80::a9fe:a9fe]/",
        P::Open,
        false,
        "metadata",
    ),
    (
        "cidr-exceptions",
        "http://[::ffff:10.1.2.3]/",
        P::Cidr,
        true,
        "allowed",
    ),
    // Report mode: the policy's own denials pass (and are logged); the floor does not.
    (
        "report-mode",
        "https://not-listed.test/",
        P::Report,
        true,
        "host_not_allowed",
    ),
    (
        "report-mode",
        "https://a.example.com:8080/",
        P::Report,
        true,
        "port_not_allowed",
    ),
    (
        "report-mode",
        "http://127.0.0.1/",
        P::Report,
        false,
        "forbidden_address",
    ),
    (
        "report-mode",
        "http://169.254.169.254/",
        P::Report,
        false,
        "metadata",
    ),
    (
        "report-mode",
        "http://localhost/",
        P::Report,
        false,
        "forbidden_name",
    ),
    (
        "report-mode",
        "file:///etc/passwd",
        P::Report,
        false,
        "scheme_not_allowed",
    ),
];

#[test]
fn bypass_corpus_gets_the_expected_verdicts() {
    let mut failures = Vec::new();
    let mut techniques = std::collections::BTreeMap::<&str, usize>::new();
    for (technique, url, p, allowed, code) in CORPUS {
        *techniques.entry(technique).or_default() += 1;
        let d = policy(*p).check_url(url);
        if d.allowed != *allowed || d.reason.code() != *code {
            failures.push(format!(
                "[{technique}] {url}: got allowed={} code={}, want allowed={allowed} code={code}",
                d.allowed,
                d.reason.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        CORPUS.len(),
        failures.join("\n")
    );
    let denied = CORPUS.iter().filter(|c| !c.3).count();
    assert!(denied >= 60, "corpus has only {denied} bypass attempts");
    eprintln!(
        "{} cases ({denied} bypass attempts) over {} techniques: {techniques:?}",
        CORPUS.len(),
        techniques.len()
    );
}

/// `Target::new` normalises as `Target::parse` does: every corpus target, rebuilt from its
/// parts — as they are, or with the name in capitals and a trailing dot — is the same target,
/// so a caller building one cannot dodge a rule the URL would meet.
#[test]
fn corpus_targets_rebuilt_from_their_parts_are_unchanged() {
    let mut rebuilt = 0;
    for (technique, url, _, _, _) in CORPUS {
        let Ok(target) = Target::parse(url) else {
            continue;
        };
        let same = Target::new(target.scheme(), target.host().clone(), target.port());
        assert_eq!(same.as_ref(), Ok(&target), "[{technique}] {url}");
        if let TargetHost::Name(name) = target.host() {
            let shouted = TargetHost::Name(format!("{}.", name.to_ascii_uppercase()));
            let same = Target::new(
                &target.scheme().to_ascii_uppercase(),
                shouted,
                target.port(),
            );
            assert_eq!(
                same.as_ref(),
                Ok(&target),
                "[{technique}] {url} in capitals"
            );
        }
        rebuilt += 1;
    }
    assert!(rebuilt >= 50, "only {rebuilt} corpus URLs parse");
}

#[test]
fn resolved_addresses_are_judged_by_the_floor() {
    let policy = EgressPolicy::new("open");
    let target = Target::parse("https://rebind.example.com/").unwrap();
    assert!(
        policy
            .check_address(&target, "93.184.216.34".parse().unwrap())
            .allowed
    );
    for private in [
        "127.0.0.1",
        "10.0.0.1",
        "::1",
        "::ffff:192.168.0.1",
        "169.254.169.254",
    ] {
        let d = policy.check_address(&target, private.parse().unwrap());
        assert!(!d.allowed, "{private}");
        assert_eq!(d.address, Some(private.parse().unwrap()));
    }
}

#[test]
fn policy_files_parse_strictly() {
    let p: EgressPolicy = r#"{"name":"t","mode":"report","allow_hosts":["*.example.com"],"ports":[443],"allow_cidrs":["10.1.0.0/16"]}"#.parse().unwrap();
    assert!(p.check_url("https://a.example.com/").allowed);
    for bad in [
        r#"{"name":"t","allow_hosts":["*.*.example.com"]}"#,
        r#"{"name":"t","allow_hosts":["exa mple.com"]}"#,
        r#"{"name":"t","allow_hosts":["example.com/x"]}"#,
        r#"{"name":"t","allow_cidrs":["10.1.0.0/33"]}"#,
        r#"{"name":"t","alow_hosts":[]}"#,
        r#"{"name":"t","mode":"off"}"#,
        "not json",
    ] {
        assert!(bad.parse::<EgressPolicy>().is_err(), "{bad}");
    }
}

#[test]
fn cli_prints_json_and_exits_by_verdict() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_egress-guard"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["check", "http://169.254.169.254/"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reason"]["code"], "metadata");
    assert_eq!(v["allowed"], false);
    let out = run(&["check", "https://example.org/"]);
    assert_eq!(out.status.code(), Some(0));
    let dir = std::env::temp_dir().join(format!("egress-policy-{}.json", std::process::id()));
    std::fs::write(
        &dir,
        r#"{"name":"only-example","allow_hosts":["example.org"]}"#,
    )
    .unwrap();
    let out = run(&[
        "check",
        "https://example.net/",
        "--policy",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(&dir, "{broken").unwrap();
    assert_eq!(
        run(&[
            "check",
            "https://example.net/",
            "--policy",
            dir.to_str().unwrap()
        ])
        .status
        .code(),
        Some(2)
    );
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(run(&[]).status.code(), Some(2));
}

#[test]
fn hooks_see_every_decision_and_counters_count_by_reason() {
    use std::sync::{Arc, Mutex};

    use egress_guard::{Decision, DecisionCounters, DecisionHook};

    #[derive(Default)]
    struct Sink(Mutex<Vec<Decision>>);
    impl DecisionHook for Sink {
        fn record(&self, decision: &Decision) {
            self.0.lock().unwrap().push(decision.clone());
        }
    }

    let sink = Arc::new(Sink::default());
    let counters = Arc::new(DecisionCounters::default());
    let policy = EgressPolicy::new("hooked")
        .allow_hosts(["*.example.com"])
        .unwrap()
        .with_hook(sink.clone())
        .with_hook(counters.clone());
    for url in [
        "https://a.example.com/",
        "http://169.254.169.254/",
        "http://10.0.0.1/",
        "http://127.0.0.1/",
        "https://other.test/",
        "file:///etc/passwd",
    ] {
        let _ = policy.check_url(url);
    }
    let seen = sink.0.lock().unwrap();
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|d| d.policy == "hooked"));
    assert_eq!(
        seen[1].target.as_ref().unwrap().host_text(),
        "169.254.169.254"
    );
    let counts = counters.snapshot();
    assert_eq!(counts["forbidden_address"], 2);
    assert_eq!(
        (
            counts["allowed"],
            counts["metadata"],
            counts["host_not_allowed"],
            counts["scheme_not_allowed"]
        ),
        (1, 1, 1, 1)
    );
}
