//! The private-address guard: which IPs a crawler refuses, and a resolver that drops
//! them after DNS, so a name pointing at 127.0.0.1 or 169.254.169.254 is never reached.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::lowercase_first;
use crate::error::FetchError;

/// Whether a crawler must not connect to `ip` unless private networks are allowed:
/// loopback, RFC 1918, link-local (cloud metadata), CGNAT, unique-local, multicast,
/// broadcast, documentation, benchmarking, reserved, and IPv6 forms embedding those.
pub fn is_refused_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => is_refused_v6(v6),
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network", including 0.0.0.0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || (a == 100 && (b & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || a >= 240 // reserved
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let low_v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return is_refused_v4(mapped);
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[..6] == [0; 6] && is_refused_v4(low_v4)) // IPv4-compatible ::a.b.c.d
        || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && is_refused_v4(low_v4)) // NAT64
        || (s[0] == 0x2002 // 6to4 embeds the IPv4 address in bits 16..48
            && is_refused_v4(Ipv4Addr::new(
                (s[1] >> 8) as u8,
                s[1] as u8,
                (s[2] >> 8) as u8,
                s[2] as u8,
            )))
}

/// Through a proxy, the proxy resolves the target's name, out of the resolver's
/// reach: resolve it here and refuse it if any address is refused (the proxy may pick
/// any of them). IP literals are checked by `check_target`. The proxy resolves the name
/// again, so a name whose records change between the two lookups is not caught here:
/// restrict private ranges at the proxy too (docs/OPERATIONS.md).
pub(super) async fn check_name(url: &url::Url) -> Result<(), FetchError> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| {
            FetchError::Dns(
                ResolveError::Lookup {
                    host: host.to_string(),
                    message: lowercase_first(&e.to_string()),
                }
                .to_string(),
            )
        })?
        .collect();
    if found.is_empty() {
        return Err(FetchError::Dns(
            ResolveError::NoAddresses(host.to_string()).to_string(),
        ));
    }
    if found.iter().any(|addr| is_refused_address(addr.ip())) {
        return Err(FetchError::PrivateAddress(host.to_string()));
    }
    Ok(())
}

/// What the resolver reports; found again in reqwest's error chain by [`map_reqwest_error`].
#[derive(Debug, thiserror::Error)]
pub(super) enum ResolveError {
    #[error("lookup of {host} failed: {message}")]
    Lookup { host: String, message: String },
    #[error("{0} has no addresses")]
    NoAddresses(String),
    #[error("{0} resolves only to refused addresses")]
    Refused(String),
}

/// Resolves with the system resolver, then drops refused addresses, so a name that
/// points at 127.0.0.1 or 169.254.169.254 is never connected to (no rebinding window:
/// reqwest connects to exactly the addresses returned here).
pub(super) struct GuardedResolver {
    pub(super) allow_private: bool,
    /// Names resolved unfiltered: the configured proxies' own (the operator's choice).
    pub(super) exempt: Vec<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private || self.exempt.contains(&host.to_ascii_lowercase());
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| ResolveError::Lookup {
                    host: host.clone(),
                    message: lowercase_first(&e.to_string()),
                })?
                .collect();
            if found.is_empty() {
                return Err(ResolveError::NoAddresses(host).into());
            }
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| allow_private || !is_refused_address(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(ResolveError::Refused(host).into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
