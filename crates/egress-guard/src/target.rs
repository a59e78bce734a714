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
                TargetHost::Name(name)
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
