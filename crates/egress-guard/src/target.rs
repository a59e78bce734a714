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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: String,
    /// The host.
    pub host: TargetHost,
    /// The port (explicit, or the scheme's default).
    pub port: u16,
}

impl Target {
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
            Some(Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if name.is_empty() || name.contains(['[', ']', '%', '\\', '@', ' ']) {
                    return Err(Reason::UnparsableUrl);
                }
                // The parser treats only one trailing dot as part of an IPv4 address, so
                // `127.0.0.1..` and `0x7f.1..` arrive here as names; without their dots they
                // are addresses, and are judged as such (a name the parser would not accept
                // without its dots is refused).
                match Host::parse(&name) {
                    Ok(Host::Domain(_)) => TargetHost::Name(name),
                    Ok(Host::Ipv4(ip)) => TargetHost::Ip(IpAddr::V4(ip)),
                    Ok(Host::Ipv6(_)) | Err(_) => return Err(Reason::UnparsableUrl),
                }
            }
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

    /// The host as text (an IP literal without brackets).
    #[must_use]
    pub fn host_text(&self) -> String {
        match &self.host {
            TargetHost::Name(n) => n.clone(),
            TargetHost::Ip(ip) => ip.to_string(),
        }
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
}
