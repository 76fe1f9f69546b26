//! `[http] proxies`: outgoing proxy URLs, checked when the spider is read and never
//! shown with their credentials (Debug and Display print `scheme://host:port`).

use std::fmt;

use serde::Deserialize;
use url::Url;

/// Schemes a proxy may have: HTTP forward/CONNECT proxies and SOCKS5 (`socks5h`: the
/// proxy resolves names; jetcrawl still resolves and checks the target first).
const SCHEMES: [&str; 4] = ["http", "https", "socks5", "socks5h"];

/// One proxy of `[http] proxies`, e.g. `http://user:pass@p1:3128` or `socks5://p2:1080`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ProxyUrl(Url);

impl ProxyUrl {
    /// The URL, credentials included: for building the client, never for messages.
    pub fn url(&self) -> &Url {
        &self.0
    }

    /// `scheme://host:port`: how the proxy is named in logs and errors.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// The proxy's user name and password, as written and percent-decoded, if it has
    /// them (to scrub them from messages).
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for raw in [self.0.username(), self.0.password().unwrap_or("")] {
            if raw.is_empty() {
                continue;
            }
            let decoded = percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned();
            if decoded != raw {
                out.push(decoded);
            }
            out.push(raw.to_string());
        }
        out
    }
}

fn redact(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => format!("{}://?", url.scheme()),
    }
}

impl TryFrom<String> for ProxyUrl {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        // The raw text may hold a password: errors name only what they must.
        let url = Url::parse(&raw).map_err(|e| format!("a proxy is not a URL ({e})"))?;
        if !SCHEMES.contains(&url.scheme()) {
            return Err(format!(
                "proxy {}: the scheme must be one of {}",
                redact(&url),
                SCHEMES.join(", ")
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("proxy {}: no host", redact(&url)));
        }
        if url.port().is_none() && url.scheme().starts_with("socks") {
            return Err(format!(
                "proxy {}: a SOCKS proxy needs a port",
                redact(&url)
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!(
                "proxy {}: a proxy URL has no path or query",
                redact(&url)
            ));
        }
        Ok(ProxyUrl(url))
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({})", self.redacted())
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ProxyUrl, String> {
        ProxyUrl::try_from(s.to_string())
    }

    #[test]
    fn credentials_never_show() {
        let p = parse("http://user:s3cret@p1:3128").unwrap();
        assert_eq!(p.redacted(), "http://p1:3128");
        assert_eq!(
            format!("{p:?} {p}"),
            "ProxyUrl(http://p1:3128) http://p1:3128"
        );
        assert_eq!(p.secrets(), vec!["user".to_string(), "s3cret".to_string()]);
        assert_eq!(
            parse("socks5://p2:1080").unwrap().redacted(),
            "socks5://p2:1080"
        );
    }

    #[test]
    fn spider_files_take_proxies_and_errors_name_the_line() {
        let spider = |proxies: &str| {
            crate::CompiledSpider::from_toml(
                &format!("name = \"t\"\nstart_urls = []\n\n[http]\nproxies = {proxies}\n"),
                std::path::Path::new("s.toml"),
            )
        };
        let ok = spider(r#"["http://u:pw@127.0.0.1:3128", "socks5://127.0.0.1:1080"]"#).unwrap();
        let got: Vec<String> = ok
            .spider
            .http
            .proxies
            .iter()
            .map(|p| p.redacted())
            .collect();
        assert_eq!(got, ["http://127.0.0.1:3128", "socks5://127.0.0.1:1080"]);
        let err = spider(r#"["gopher://u:s3cret@h:70"]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.toml:5") && err.contains("scheme"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn bad_proxies_are_refused_without_their_password() {
        for bad in [
            "ftp://u:s3cret@p:21",
            "socks5://u:s3cret@p",
            "http://u:s3cret@p:3128/path",
            "not a url s3cret",
            "socks4://u:s3cret@p:1080",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(!err.contains("s3cret"), "{bad}: {err}");
        }
    }
}
