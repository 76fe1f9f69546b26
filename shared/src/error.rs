//! Errors of the shared crate, classified so callers decide ack/nak/term without
//! matching on strings.

use std::path::PathBuf;

/// A spider file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read spider file: {source}", path.display())]
    Read {
        /// The spider file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        /// The spider file.
        path: PathBuf,
        /// 1-based line of the offending key or value, when known.
        line: Option<usize>,
        /// What the parser expected.
        message: String,
    },
    /// Well-formed, but a value is not acceptable.
    #[error("{}{}: key `{key}`: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The spider file.
        path: PathBuf,
        /// 1-based line of the key, when found.
        line: Option<usize>,
        /// The key.
        key: String,
        /// What was expected.
        message: String,
    },
}

/// A URL that cannot be crawled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Empty input.
    #[error("empty url")]
    Empty,
    /// Not parseable.
    #[error("invalid url {url:?}: {reason}")]
    Invalid {
        /// The input, truncated.
        url: String,
        /// Why.
        reason: String,
    },
    /// Not http or https.
    #[error("unsupported scheme {0:?}")]
    Scheme(String),
    /// Outside `allowed_domains`.
    #[error("host {0:?} is outside allowed_domains")]
    OutOfScope(String),
}

/// A transport or storage failure in shared plumbing (NATS, Redis).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A JetStream management call (streams, consumers, KV) failed.
    #[error("jetstream {op}: {message}")]
    JetStream {
        /// What was being done.
        op: &'static str,
        /// The server's or client's word.
        message: String,
    },
    /// Redis failed (dupefilter).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Could not connect to NATS.
    #[error("nats connect: {0}")]
    Connect(String),
    /// `NATS_URL` is not a list of NATS server URLs (never holds the URL itself).
    #[error("NATS_URL: {0}")]
    NatsUrl(String),
    /// A message is malformed and can never be processed.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// I/O (metrics listener and the like).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The crawl's streams exist in a shape this spider cannot use.
    #[error("{0}")]
    Topology(String),
}

impl Error {
    /// Whether trying again later may succeed (as opposed to a poison message).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Error::Malformed(_) | Error::Topology(_) | Error::NatsUrl(_)
        )
    }

    pub(crate) fn js(op: &'static str, e: impl std::fmt::Display) -> Self {
        Error::JetStream {
            op,
            message: e.to_string(),
        }
    }
}
