//! The reviewed table of forbidden destinations. One place, one version, a source for each row.
//!
//! Review rule: a row is added or removed only together with its source (an RFC or the vendor's
//! documentation) and a test in `tests/corpus.rs` that lands on its edges. Bump
//! [`TABLE_VERSION`] on every change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The version of this table, reported with every decision.
pub const TABLE_VERSION: u32 = 3;

/// Why an address is forbidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub struct Forbidden {
    /// The range, in CIDR notation.
    pub range: &'static str,
    /// What it is.
    pub name: &'static str,
    /// Where it is defined.
    pub source: &'static str,
    /// Whether it is on the floor that no CIDR exception lifts: a cloud metadata endpoint, or
    /// a link-local range (where metadata endpoints live: 169.254.0.0/16, fe80::/10).
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
pub const METADATA_V6: [(Ipv6Addr, Forbidden); 2] = [
    (
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
        meta(
            "fd00:ec2::254/128",
            "AWS instance metadata (IPv6)",
            "AWS EC2 IMDS docs",
        ),
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0xa9fe),
        meta(
            "fe80::a9fe:a9fe/128",
            "OpenStack instance metadata (IPv6)",
            "OpenStack Nova docs, metadata service: fe80::a9fe:a9fe on IPv6 networks",
        ),
    ),
];

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
        meta(
            "169.254.0.0/16",
            "link local (holds cloud metadata endpoints; never liftable)",
            "RFC 3927",
        ),
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
const V6_LINK_LOCAL: Forbidden = meta(
    "fe80::/10",
    "link local (holds cloud metadata endpoints; never liftable)",
    "RFC 4291",
);
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
/// judged as IPv4; 6to4, Teredo and local-use NAT64 are forbidden outright, and when the IPv4
/// address they carry (in any of their layouts, see [`tunnelled_v4`]) is on the unliftable
/// floor, they are judged as that address.
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

/// The IPv4 addresses an IPv6 address may carry besides the forms [`embedded_v4`] decodes:
/// local-use NAT64 `64:ff9b:1::/48` in each RFC 6052 layout an operator may pick inside it
/// (/48, /56, /64, /96), 6to4 (RFC 3056), Teredo's server and (obfuscated) client (RFC 4380),
/// and an ISATAP interface identifier (RFC 5214).
#[must_use]
pub fn tunnelled_v4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(v6);
    let field = |shift: u32, width: u32| -> u32 {
        let mask = (1u128 << width) - 1;
        ((bits >> shift) & mask) as u32
    };
    let mut found = Vec::new();
    if bits >> 80 == 0x0064_ff9b_0001 {
        // RFC 6052 section 2.2: bits 64..71 (the "u" octet) never carry address bits.
        found.push((field(64, 16) << 16) | field(40, 16)); // /48
        found.push((field(64, 8) << 24) | field(32, 24)); // /56
        found.push(field(24, 32)); // /64
        found.push(field(0, 32)); // /96
    }
    if bits >> 112 == 0x2002 {
        found.push(field(80, 32));
    }
    if bits >> 96 == 0x2001_0000 {
        found.push(field(64, 32));
        found.push(!field(0, 32));
    }
    if field(32, 32) & 0xfdff_ffff == 0x0000_5efe {
        found.push(field(0, 32));
    }
    found.into_iter().map(Ipv4Addr::from).collect()
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    for (addr, why) in &METADATA_V6 {
        if *addr == ip {
            return Class::Forbidden(*why);
        }
    }
    let bits = u128::from(ip);
    if bits >> 118 == 0b11_1111_1010 {
        return Class::Forbidden(V6_LINK_LOCAL);
    }
    for v4 in tunnelled_v4(ip) {
        if let Class::Forbidden(why) = classify_v4(v4)
            && why.metadata
        {
            return Class::Forbidden(why);
        }
    }
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

    fn forbidden(ip: &str) -> Forbidden {
        let class = classify(ip.parse().unwrap());
        assert_ne!(class, Class::Public, "{ip}");
        match class {
            Class::Forbidden(why) => why,
            Class::Public => V6_UNSPECIFIED,
        }
    }

    #[test]
    fn link_local_is_on_the_unliftable_floor_in_every_form() {
        for ip in [
            "169.254.0.0",
            "169.254.1.1",
            "169.254.255.255",
            "::ffff:169.254.1.1",
            "::169.254.1.1",
            "::ffff:0:169.254.1.1",
            "64:ff9b::169.254.1.1",
            "fe80::",
            "fe80::1",
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(forbidden(ip).metadata, "{ip}");
        }
        // The neighbours: not link-local (still forbidden, liftable).
        for ip in ["fec0::1", "fe7f::1"] {
            assert!(!forbidden(ip).metadata, "{ip}");
        }
        for ip in ["169.253.255.255", "169.255.0.0"] {
            assert_eq!(classify(ip.parse().unwrap()), Class::Public, "{ip}");
        }
    }

    #[test]
    fn openstack_ipv6_metadata_is_listed_with_its_source() {
        let why = forbidden("fe80::a9fe:a9fe");
        assert_eq!(why.range, "fe80::a9fe:a9fe/128");
        assert!(why.metadata);
        assert!(why.source.contains("OpenStack"));
    }

    #[test]
    fn local_use_nat64_carrying_metadata_is_judged_as_metadata_in_every_layout() {
        // 169.254.169.254 = a9fe:a9fe under 64:ff9b:1::/48 in the /48, /56, /64 and /96
        // layouts of RFC 6052 (the u octet, bits 64..71, stays zero).
        for ip in [
            "64:ff9b:1:a9fe:a9:fe00::",
            "64:ff9b:1:a9:fe:a9fe::",
            "64:ff9b:1:0:a9:fea9:fe00:0",
            "64:ff9b:1::a9fe:a9fe",
        ] {
            let why = forbidden(ip);
            assert_eq!(why.range, "169.254.169.254/32", "{ip}");
        }
        // A local-use NAT64 address carrying a public IPv4 stays the (liftable) NAT64 row.
        let why = forbidden("64:ff9b:1::808:808");
        assert_eq!(why.range, "64:ff9b:1::/48");
        assert!(!why.metadata);
    }

    #[test]
    fn tunnels_carrying_link_local_are_unliftable() {
        // 6to4 of 169.254.169.254, Teredo with that server or that (obfuscated) client,
        // ISATAP with it as interface identifier.
        for ip in [
            "2002:a9fe:a9fe::1",
            "2001:0:a9fe:a9fe::1",
            "2001:0:808:808::5601:5601",
            "2001:db9::5efe:a9fe:a9fe",
        ] {
            assert!(forbidden(ip).metadata, "{ip}");
        }
        // The controls: the same tunnels with a public IPv4 stay liftable or public.
        assert!(!forbidden("2002:808:808::1").metadata);
        assert!(!forbidden("2001:0:808:808::f7f7:f7f7").metadata);
        assert_eq!(
            classify("2001:db9::5efe:808:808".parse().unwrap()),
            Class::Public
        );
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
