//! What one politeness budget covers (`[politeness] per`): the key a URL's host maps
//! to. The parser partitions the frontier by it and the fetcher that owns the
//! partition paces requests by it, so both must agree: in `ip` mode the parser
//! resolves the host once and the request carries the key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use url::{Host, Url};

use crate::config::PolitenessPer;

/// Addresses remembered before the cache is emptied and starts again.
const IP_CACHE_CAP: usize = 100_000;
/// How long a resolved address (or a failure to resolve) is kept.
const IP_TTL: Duration = Duration::from_secs(300);
/// How long a resolution may take before the host name stands in for the address.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Maps URLs to politeness keys. Cheap to clone; clones share the address cache.
#[derive(Clone, Debug)]
pub struct HostKeys {
    per: PolitenessPer,
    resolved: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl HostKeys {
    /// Keys of this kind.
    pub fn new(per: PolitenessPer) -> Self {
        HostKeys {
            per,
            resolved: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// What the keys are.
    pub fn per(&self) -> PolitenessPer {
        self.per
    }

    /// The key without a lookup: the host or its registrable domain. `None` in `ip`
    /// mode for a host name not resolved yet.
    pub fn key_now(&self, url: &Url) -> Option<String> {
        let host = url.host_str().unwrap_or_default();
        match self.per {
            PolitenessPer::Host => Some(host.to_string()),
            PolitenessPer::Domain => Some(registrable_domain(url)),
            PolitenessPer::Ip => match url.host() {
                Some(Host::Ipv4(ip)) => Some(ip.to_string()),
                Some(Host::Ipv6(ip)) => Some(ip.to_string()),
                _ => {
                    let cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
                    cache
                        .get(host)
                        .filter(|(_, at)| at.elapsed() < IP_TTL)
                        .map(|(key, _)| key.clone())
                }
            },
        }
    }

    /// The key, resolving the host in `ip` mode. A host that does not resolve is its
    /// own key (the fetch will report the DNS error).
    pub async fn key(&self, url: &Url) -> String {
        if let Some(key) = self.key_now(url) {
            return key;
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let key = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(mut addrs)) => addrs
                .next()
                .map(|a| canonical_ip(a.ip()).to_string())
                .unwrap_or_else(|| host.clone()),
            _ => host.clone(),
        };
        let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= IP_CACHE_CAP {
            cache.clear();
        }
        cache.insert(host, (key.clone(), Instant::now()));
        key
    }
}

/// `a.b.example.co.uk` → `example.co.uk`; an IP address or a name without a known
/// suffix is its own domain.
pub fn registrable_domain(url: &Url) -> String {
    match url.host() {
        Some(Host::Domain(d)) => psl::domain_str(d).unwrap_or(d).to_string(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn host_mode_keeps_subdomains_apart() {
        let k = HostKeys::new(PolitenessPer::Host);
        assert_eq!(
            k.key_now(&url("http://a.blog.example/x")).unwrap(),
            "a.blog.example"
        );
        assert_ne!(
            k.key_now(&url("http://a.example.com/")),
            k.key_now(&url("http://b.example.com/"))
        );
    }

    #[test]
    fn domain_mode_groups_by_registrable_domain() {
        let k = HostKeys::new(PolitenessPer::Domain);
        assert_eq!(
            k.key_now(&url("http://a.b.example.co.uk/")).unwrap(),
            "example.co.uk"
        );
        assert_eq!(
            k.key_now(&url("http://alice.github.io/")).unwrap(),
            "alice.github.io",
            "a public suffix's customers are separate sites"
        );
        assert_eq!(
            k.key_now(&url("http://www.example.com/")).unwrap(),
            "example.com"
        );
        assert_eq!(
            k.key_now(&url("http://127.0.0.2:8080/")).unwrap(),
            "127.0.0.2"
        );
    }

    #[tokio::test]
    async fn ip_mode_resolves_names_and_keeps_literals() {
        let k = HostKeys::new(PolitenessPer::Ip);
        assert_eq!(k.key(&url("http://127.0.0.3:81/")).await, "127.0.0.3");
        let local = k.key(&url("http://localhost:9/")).await;
        assert!(
            local == "127.0.0.1" || local == "::1",
            "localhost is {local}"
        );
        assert_eq!(
            k.key_now(&url("http://localhost:9/")).unwrap(),
            local,
            "cached"
        );
        let unknown = url("http://no-such-host.invalid/");
        assert_eq!(k.key(&unknown).await, "no-such-host.invalid");
    }
}
