//! The reviewed table of forbidden destinations. One place, one version, a source for each row.
//!
//! Review rule: a row is added or removed only together with its source (an RFC or the vendor's
//! documentation) and a test in `tests/corpus.rs` that lands on its edges. Bump
//! [`TABLE_VERSION`] on every change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The version of this table, reported with every decision.
pub const TABLE_VERSION: u32 = 2;

/// Why an address is forbidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Forbidden {
    /// The range, in CIDR notation.
    pub range: &'static str,
    /// What it is.
    pub name: &'static str,
    /// Where it is defined.
    pub source: &'static str,
    /// Whether it is a cloud metadata endpoint (never liftable, not even by a CIDR exception).
    pub metadata: bool,
}

const fn row(range: &'static str, name: &'static str, source: &'static str) -> Forbidden {
    Forbidden {
        range,
        name,
        source,
        metadata: false,
    }
}

const fn meta(range: &'static str, name: &'static str, source: &'static str) -> Forbidden {
    Forbidden {
        range,
        name,
        source,
        metadata: true,
    }
}

/// Cloud metadata addresses, checked before the ranges (some lie in public space).
pub const METADATA_V4: [(Ipv4Addr, Forbidden); 5] = [
    (
        Ipv4Addr::new(169, 254, 169, 254),
        meta(
            "169.254.169.254/32",
            "AWS, GCP, Azure, OpenStack instance metadata",
            "AWS EC2 IMDS docs; GCP metadata server docs",
        ),
    ),
    (
        Ipv4Addr::new(169, 254, 170, 2),
        meta(
            "169.254.170.2/32",
            "AWS ECS task metadata and credentials",
            "AWS ECS task metadata endpoint docs",
        ),
    ),
    (
        Ipv4Addr::new(100, 100, 100, 200),
        meta(
            "100.100.100.200/32",
            "Alibaba Cloud ECS metadata",
            "Alibaba Cloud ECS instance metadata docs",
        ),
    ),
    (
        Ipv4Addr::new(192, 0, 0, 192),
        meta(
            "192.0.0.192/32",
            "Oracle Cloud metadata",
            "Oracle Cloud Infrastructure instance metadata docs",
        ),
    ),
    (
        Ipv4Addr::new(168, 63, 129, 16),
        meta(
            "168.63.129.16/32",
            "Azure WireServer / host agent",
            "Microsoft Azure docs: What is IP address 168.63.129.16",
        ),
    ),
];

/// Cloud metadata addresses in IPv6.
pub const METADATA_V6: [(Ipv6Addr, Forbidden); 1] = [(
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
    meta(
        "fd00:ec2::254/128",
        "AWS instance metadata (IPv6)",
        "AWS EC2 IMDS docs",
    ),
)];

/// IPv4 special-purpose ranges as (first, last, why), sorted and non-overlapping, so a lookup is
/// a binary search. Source: the IANA IPv4 Special-Purpose Address Registry (RFC 6890) and the
/// RFCs named per row.
pub const SPECIAL_V4: [(u32, u32, Forbidden); 19] = [
    (
        v4(0, 0, 0, 0),
        v4(0, 255, 255, 255),
        row("0.0.0.0/8", "this network", "RFC 791, RFC 1122"),
    ),
    (
        v4(10, 0, 0, 0),
        v4(10, 255, 255, 255),
        row("10.0.0.0/8", "private use", "RFC 1918"),
    ),
    (
        v4(100, 64, 0, 0),
        v4(100, 127, 255, 255),
        row("100.64.0.0/10", "shared address space (CGN)", "RFC 6598"),
    ),
    (
        v4(127, 0, 0, 0),
        v4(127, 255, 255, 255),
        row("127.0.0.0/8", "loopback", "RFC 1122"),
    ),
    (
        v4(169, 254, 0, 0),
        v4(169, 254, 255, 255),
        row("169.254.0.0/16", "link local", "RFC 3927"),
    ),
    (
        v4(172, 16, 0, 0),
        v4(172, 31, 255, 255),
        row("172.16.0.0/12", "private use", "RFC 1918"),
    ),
    (
        v4(192, 0, 0, 0),
        v4(192, 0, 0, 255),
        row("192.0.0.0/24", "IETF protocol assignments", "RFC 6890"),
    ),
    (
        v4(192, 0, 2, 0),
        v4(192, 0, 2, 255),
        row("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737"),
    ),
    (
        v4(192, 31, 196, 0),
        v4(192, 31, 196, 255),
        row("192.31.196.0/24", "AS112-v4", "RFC 7535"),
    ),
    (
        v4(192, 52, 193, 0),
        v4(192, 52, 193, 255),
        row("192.52.193.0/24", "AMT", "RFC 7450"),
    ),
    (
        v4(192, 88, 99, 0),
        v4(192, 88, 99, 255),
        row(
            "192.88.99.0/24",
            "deprecated 6to4 relay anycast",
            "RFC 7526",
        ),
    ),
    (
        v4(192, 168, 0, 0),
        v4(192, 168, 255, 255),
        row("192.168.0.0/16", "private use", "RFC 1918"),
    ),
    (
        v4(192, 175, 48, 0),
        v4(192, 175, 48, 255),
        row("192.175.48.0/24", "direct delegation AS112", "RFC 7534"),
    ),
    (
        v4(198, 18, 0, 0),
        v4(198, 19, 255, 255),
        row("198.18.0.0/15", "benchmarking", "RFC 2544"),
    ),
    (
        v4(198, 51, 100, 0),
        v4(198, 51, 100, 255),
        row("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737"),
    ),
    (
        v4(203, 0, 113, 0),
        v4(203, 0, 113, 255),
        row("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737"),
    ),
    (
        v4(224, 0, 0, 0),
        v4(239, 255, 255, 255),
        row("224.0.0.0/4", "multicast", "RFC 5771"),
    ),
    (
        v4(240, 0, 0, 0),
        v4(255, 255, 255, 254),
        row("240.0.0.0/4", "reserved for future use", "RFC 1112"),
    ),
    (
        v4(255, 255, 255, 255),
        v4(255, 255, 255, 255),
        row(
            "255.255.255.255/32",
            "limited broadcast",
            "RFC 919, RFC 8190",
        ),
    ),
];

const fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_be_bytes([a, b, c, d])
}

const V6_OUTSIDE_GLOBAL: Forbidden = row(
    "not 2000::/3",
    "outside global unicast (loopback, unspecified, ULA, link-local, site-local, multicast, discard, ...)",
    "RFC 4291, RFC 4193, RFC 3879, RFC 6666, IANA IPv6 Special-Purpose Registry",
);
const V6_LOOPBACK: Forbidden = row("::1/128", "loopback", "RFC 4291");
const V6_UNSPECIFIED: Forbidden = row("::/128", "unspecified", "RFC 4291");

/// IPv6 ranges inside 2000::/3 that are still special, as (network, prefix length, why).
pub const SPECIAL_V6_GLOBAL: [(u128, u8, Forbidden); 6] = [
    (
        0x2001_0000 << 96,
        32,
        row(
            "2001::/32",
            "Teredo tunnelling (embeds a client IPv4)",
            "RFC 4380",
        ),
    ),
    (
        0x2001_0000 << 96,
        23,
        row("2001::/23", "IETF protocol assignments", "RFC 2928"),
    ),
    (
        0x2001_0db8 << 96,
        32,
        row("2001:db8::/32", "documentation", "RFC 3849"),
    ),
    (
        0x2002 << 112,
        16,
        row("2002::/16", "6to4 (embeds an IPv4)", "RFC 3056"),
    ),
    (
        0x3fff << 112,
        20,
        row("3fff::/20", "documentation", "RFC 9637"),
    ),
    (
        0x2620_004f_8000 << 80,
        48,
        row(
            "2620:4f:8000::/48",
            "direct delegation AS112 (IPv6)",
            "RFC 7534",
        ),
    ),
];

const NAT64_LOCAL: Forbidden = row(
    "64:ff9b:1::/48",
    "local-use IPv4/IPv6 translation",
    "RFC 8215",
);

/// How an IPv6 address embeds an IPv4 one that must be judged instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Embedding {
    /// `::ffff:a.b.c.d` (RFC 4291).
    Mapped,
    /// `::a.b.c.d` (deprecated IPv4-compatible, RFC 4291).
    Compatible,
    /// `::ffff:0:a.b.c.d` (SIIT, RFC 6145 / RFC 2765).
    Siit,
    /// `64:ff9b::a.b.c.d` (NAT64 well-known prefix, RFC 6052).
    Nat64,
}

/// The verdict on one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A public address.
    Public,
    /// A forbidden address.
    Forbidden(Forbidden),
}

/// Classifies an address. IPv4 embedded in IPv6 (mapped, compatible, SIIT, NAT64) is decoded and
/// judged as IPv4; 6to4, Teredo and local-use NAT64 are forbidden outright.
#[must_use]
pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some((v4, _)) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

/// The IPv4 address embedded in `v6`, and how, for the forms that are judged as IPv4.
#[must_use]
pub fn embedded_v4(v6: Ipv6Addr) -> Option<(Ipv4Addr, Embedding)> {
    let bits = u128::from(v6);
    let low = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    match bits >> 32 {
        0x0000_ffff => Some((low, Embedding::Mapped)),
        0xffff_0000 => Some((low, Embedding::Siit)),
        0x0064_ff9b_0000_0000_0000_0000 => Some((low, Embedding::Nat64)),
        // `::` and `::1` are IPv6's own unspecified and loopback, not IPv4-compatible forms.
        0 if bits > 1 => Some((low, Embedding::Compatible)),
        _ => None,
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    for (addr, why) in &METADATA_V4 {
        if *addr == ip {
            return Class::Forbidden(*why);
        }
    }
    let n = u32::from(ip);
    let i = SPECIAL_V4.partition_point(|(first, _, _)| *first <= n);
    match i.checked_sub(1).map(|i| &SPECIAL_V4[i]) {
        Some((_, last, why)) if n <= *last => Class::Forbidden(*why),
        _ => Class::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    for (addr, why) in &METADATA_V6 {
        if *addr == ip {
            return Class::Forbidden(*why);
        }
    }
    let bits = u128::from(ip);
    if bits == 0 {
        return Class::Forbidden(V6_UNSPECIFIED);
    }
    if bits == 1 {
        return Class::Forbidden(V6_LOOPBACK);
    }
    if bits >> 80 == 0x0064_ff9b_0001 {
        return Class::Forbidden(NAT64_LOCAL);
    }
    if bits >> 125 != 0b001 {
        return Class::Forbidden(V6_OUTSIDE_GLOBAL);
    }
    for (network, len, why) in &SPECIAL_V6_GLOBAL {
        let mask = u128::MAX << (128 - u32::from(*len));
        if bits & mask == *network {
            return Class::Forbidden(*why);
        }
    }
    Class::Public
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_table_is_sorted_and_disjoint() {
        for pair in SPECIAL_V4.windows(2) {
            assert!(
                pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0,
                "{:?}",
                pair[1].2
            );
        }
        for (first, last, why) in SPECIAL_V4 {
            let net: ipnet::Ipv4Net = why.range.parse().unwrap();
            assert_eq!(u32::from(net.network()), first, "{}", why.range);
            if why.range != "240.0.0.0/4" {
                assert_eq!(u32::from(net.broadcast()), last, "{}", why.range);
            }
        }
    }

    #[test]
    fn v6_table_matches_its_cidrs() {
        for (network, len, why) in SPECIAL_V6_GLOBAL {
            let net: ipnet::Ipv6Net = why.range.parse().unwrap();
            assert_eq!(
                (u128::from(net.network()), net.prefix_len()),
                (network, len),
                "{}",
                why.range
            );
        }
    }
}
