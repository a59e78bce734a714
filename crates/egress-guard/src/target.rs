//! The one normalisation point: every decision is made on a [`Target`] parsed here, with the
//! same URL parser (`url`, WHATWG rules) that reqwest uses to connect.

use std::net::IpAddr;

use url::{Host, Url};

use crate::Reason;

/// The host of a normalised URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum TargetHost {
    /// A domain name: ASCII (IDNA applied), lowercase, without a trailing dot.
    Name(String),
    /// An IP literal, as the client would connect to it.
    Ip(IpAddr),
}

/// A URL reduced to what egress decisions need.
///
/// Built by [`Target::parse`], [`Target::from_url`] or [`Target::new`], which all normalise
/// the same way; its parts are read-only, so what was checked is what was normalised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Target {
    pub(crate) scheme: String,
    pub(crate) host: TargetHost,
    pub(crate) port: u16,
}

impl Target {
    /// A target from its parts, normalised as [`Target::parse`] would normalise
    /// `scheme://host:port/`: the scheme is lowercased, and a host name has IDNA applied, is
    /// lowercased, loses its trailing dot and becomes [`TargetHost::Ip`] when it spells an IPv4
    /// address (the numeric forms included).
    ///
    /// # Errors
    /// [`Reason::SchemeNotAllowed`] for a scheme other than `http` or `https`;
    /// [`Reason::UnparsableUrl`] for a host name the URL parser would not accept as one (empty,
    /// holding a URL delimiter or an IPv6 literal), and for one holding a tab or a line break,
    /// which a URL's parsing would silently remove.
    pub fn new(scheme: &str, host: TargetHost, port: u16) -> Result<Self, Reason> {
        let scheme = if scheme.eq_ignore_ascii_case("http") {
            "http"
        } else if scheme.eq_ignore_ascii_case("https") {
            "https"
        } else {
            return Err(Reason::SchemeNotAllowed);
        };
        let host = match host {
            TargetHost::Ip(ip) => TargetHost::Ip(ip),
            TargetHost::Name(name) => match Host::parse(&name) {
                Ok(Host::Domain(name)) => normalise_name(&name)?,
                Ok(Host::Ipv4(ip)) => TargetHost::Ip(IpAddr::V4(ip)),
                Ok(Host::Ipv6(_)) | Err(_) => return Err(Reason::UnparsableUrl),
            },
        };
        Ok(Self {
            scheme: scheme.to_owned(),
            host,
            port,
        })
    }

    /// Parses and normalises `input`.
    ///
    /// The WHATWG parser already decodes the numeric IPv4 forms (`0x7f.1`, `017700000001`,
    /// `127.1`), maps full-width digits and ideographic dots, applies IDNA and lowercases; what
    /// it produces is exactly where the client will connect.
    ///
    /// # Errors
    /// [`Reason::UnparsableUrl`], [`Reason::SchemeNotAllowed`].
    pub fn parse(input: &str) -> Result<Self, Reason> {
        let url = Url::parse(input).map_err(|_| Reason::UnparsableUrl)?;
        Self::from_url(&url)
    }

    /// Normalises an already parsed URL (a redirect's `Location`, for instance).
    ///
    /// # Errors
    /// [`Reason::UnparsableUrl`], [`Reason::SchemeNotAllowed`].
    pub fn from_url(url: &Url) -> Result<Self, Reason> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(Reason::SchemeNotAllowed);
        }
        let host = match url.host() {
            Some(Host::Domain(name)) => normalise_name(name)?,
            Some(Host::Ipv4(ip)) => TargetHost::Ip(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => TargetHost::Ip(IpAddr::V6(ip)),
            None => return Err(Reason::UnparsableUrl),
        };
        let port = url.port_or_known_default().ok_or(Reason::UnparsableUrl)?;
        Ok(Self {
            scheme: scheme.to_owned(),
            host,
            port,
        })
    }

    /// `http` or `https`.
    #[must_use]
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host.
    #[must_use]
    pub const fn host(&self) -> &TargetHost {
        &self.host
    }

    /// The port (explicit, or the scheme's default).
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The host as text (an IP literal without brackets).
    #[must_use]
    pub fn host_text(&self) -> String {
        match &self.host {
            TargetHost::Name(n) => n.clone(),
            TargetHost::Ip(ip) => ip.to_string(),
        }
    }
}

/// The last step for a host name the URL parser accepted as a domain: lowercase, without its
/// trailing dots, and an address when that is what it spells.
fn normalise_name(name: &str) -> Result<TargetHost, Reason> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.contains(['[', ']', '%', '\\', '@', ' ']) {
        return Err(Reason::UnparsableUrl);
    }
    // The parser treats only one trailing dot as part of an IPv4 address, so `127.0.0.1..` and
    // `0x7f.1..` arrive here as names; without their dots they are addresses, and are judged as
    // such (a name the parser would not accept without its dots is refused).
    match Host::parse(&name) {
        Ok(Host::Domain(_)) => Ok(TargetHost::Name(name)),
        Ok(Host::Ipv4(ip)) => Ok(TargetHost::Ip(IpAddr::V4(ip))),
        Ok(Host::Ipv6(_)) | Err(_) => Err(Reason::UnparsableUrl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found with the `target_parse` fuzz target (`fuzz/`): extra trailing dots made an IPv4
    /// literal a host name, which the floor never judged.
    #[test]
    fn extra_trailing_dots_do_not_turn_an_address_into_a_name() {
        for (input, ip) in [
            ("http://127.0.0.1../", "127.0.0.1"),
            ("http://0x7f.1../", "127.0.0.1"),
            ("http://169.254.169.254.../latest/", "169.254.169.254"),
            ("http://10.0.0.1.../", "10.0.0.1"),
        ] {
            let target = Target::parse(input).unwrap();
            assert_eq!(target.host, TargetHost::Ip(ip.parse().unwrap()), "{input}");
        }
        assert_eq!(Target::parse("http://foo.1../"), Err(Reason::UnparsableUrl));
        let name = Target::parse("http://Example.COM../").unwrap();
        assert_eq!(name.host, TargetHost::Name("example.com".to_owned()));
        let policy = crate::EgressPolicy::new("t");
        assert!(!policy.check_url("http://127.0.0.1../").allowed);
        assert!(!policy.check_url("http://0x7f.1../").allowed);
    }

    #[test]
    fn new_normalises_its_parts_as_parse_does() {
        for (scheme, name, port, url) in [
            ("HTTP", "Example.COM.", 8080, "http://Example.COM.:8080/"),
            (
                "https",
                "METADATA.GOOGLE.INTERNAL",
                443,
                "https://metadata.google.internal/",
            ),
            ("http", "0x7f.1", 80, "http://0x7f.1/"),
            ("http", "127.0.0.1..", 80, "http://127.0.0.1../"),
            ("https", "bücher.example", 443, "https://bücher.example/"),
        ] {
            let built = Target::new(scheme, TargetHost::Name(name.to_owned()), port);
            assert_eq!(built, Target::parse(url), "{scheme} {name} {port}");
        }
        let ip = TargetHost::Ip("::1".parse().unwrap());
        assert_eq!(Target::new("http", ip, 80), Target::parse("http://[::1]/"));
    }

    /// A name carrying URL syntax must not become another host, and a mistyped scheme must
    /// not become an allowed one: refused, as `parse` refuses them.
    #[test]
    fn new_refuses_what_parse_refuses() {
        let name = |n: &str| TargetHost::Name(n.to_owned());
        assert_eq!(
            Target::new("ftp", name("example.com"), 21),
            Err(Reason::SchemeNotAllowed)
        );
        assert_eq!(
            Target::new("", name("example.com"), 80),
            Err(Reason::SchemeNotAllowed)
        );
        for bad in [
            "",
            ".",
            "example.com@169.254.169.254",
            "example.com/x",
            "example.com:80",
            "[::1]",
            "exa mple.com",
            "a%2fb",
            "a\\b",
        ] {
            assert_eq!(
                Target::new("http", name(bad), 80),
                Err(Reason::UnparsableUrl),
                "{bad:?}"
            );
        }
    }
}
