//! The fetcher's error type: what went wrong with one HTTP fetch, classified so the
//! ack logic can choose between retrying (`Nak` with backoff) and giving up.

/// Why a fetch failed. Messages are lowercase and never contain credentials: every
/// URL stored in a variant has had its userinfo removed (see [`redact_url`]).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The total deadline passed, or the server went silent for longer than the read timeout.
    #[error("request timed out")]
    Timeout,
    /// TCP or TLS connection could not be established.
    #[error("connect error: {0}")]
    Connect(String),
    /// The host name could not be resolved.
    #[error("dns error: {0}")]
    Dns(String),
    /// The host is, or resolves only to, a loopback/private/link-local/... address.
    #[error("refused private network address: {0}")]
    PrivateAddress(String),
    /// More redirects than allowed, or a redirect loop; holds the number of hops followed.
    #[error("too many redirects ({0})")]
    TooManyRedirects(usize),
    /// A redirect pointed outside the crawl's scope; holds the target URL.
    #[error("redirect out of scope: {0}")]
    RedirectOutOfScope(String),
    /// A body over a hard limit that cannot be truncated instead; holds the limit in bytes.
    #[error("body too large (limit {0} bytes)")]
    BodyTooLarge(usize),
    /// Response headers larger than `max_header_bytes`; holds the limit in bytes.
    #[error("response headers too large (limit {0} bytes)")]
    HeadersTooLarge(usize),
    /// Not http or https; holds the scheme.
    #[error("unsupported scheme: {0}")]
    UnsupportedScheme(String),
    /// Any other transport or protocol error.
    #[error("http error: {0}")]
    Http(String),
    /// The URL (or a redirect's Location) could not be used.
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// NATS plumbing of the service (streams, consumers), not a fetch.
    #[error(transparent)]
    Shared(#[from] jetcrawl_shared::Error),
}

impl FetchError {
    /// A low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Connect(_) => "connect",
            FetchError::Dns(_) => "dns",
            FetchError::PrivateAddress(_) => "private_address",
            FetchError::TooManyRedirects(_) => "redirects",
            FetchError::RedirectOutOfScope(_) => "out_of_scope",
            FetchError::BodyTooLarge(_) | FetchError::HeadersTooLarge(_) => "too_large",
            FetchError::UnsupportedScheme(_) => "scheme",
            FetchError::Http(_) => "http",
            FetchError::InvalidUrl(_) => "invalid_url",
            FetchError::Shared(_) => "nats",
        }
    }

    /// Whether trying the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Timeout
            | FetchError::Connect(_)
            | FetchError::Dns(_)
            | FetchError::Http(_) => true,
            FetchError::PrivateAddress(_)
            | FetchError::TooManyRedirects(_)
            | FetchError::RedirectOutOfScope(_)
            | FetchError::BodyTooLarge(_)
            | FetchError::HeadersTooLarge(_)
            | FetchError::UnsupportedScheme(_)
            | FetchError::InvalidUrl(_) => false,
            FetchError::Shared(e) => e.is_retryable(),
        }
    }
}

/// `url` as a string without its username and password, fit for errors and logs.
pub fn redact_url(url: &url::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut clean = url.clone();
    // Both setters only fail on URLs that cannot have credentials in the first place.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_retryability() {
        assert_eq!(FetchError::Timeout.kind(), "timeout");
        assert!(FetchError::Timeout.is_retryable());
        assert!(FetchError::Dns("x".into()).is_retryable());
        assert!(!FetchError::PrivateAddress("127.0.0.1".into()).is_retryable());
        assert_eq!(FetchError::TooManyRedirects(3).kind(), "redirects");
        assert_eq!(FetchError::HeadersTooLarge(10).kind(), "too_large");
    }

    #[test]
    fn messages_are_lowercase_without_period() {
        let errors = [
            FetchError::Timeout,
            FetchError::TooManyRedirects(5),
            FetchError::BodyTooLarge(1),
            FetchError::Http("broken pipe".into()),
        ];
        for e in errors {
            let msg = e.to_string();
            assert_eq!(msg, msg.to_lowercase());
            assert!(!msg.ends_with('.'));
        }
    }

    #[test]
    fn redaction_drops_credentials() {
        let url = url::Url::parse("https://user:secret@example.com/a?b=c").unwrap();
        let shown = redact_url(&url);
        assert_eq!(shown, "https://example.com/a?b=c");
        let err = FetchError::RedirectOutOfScope(shown);
        assert!(!err.to_string().contains("secret"));
    }
}
