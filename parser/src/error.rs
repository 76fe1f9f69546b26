//! Parser errors, classified for ack decisions.

/// What can go wrong in the parser.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A CSS selector in the spider file does not parse.
    #[error("field `{field}`: bad css selector {css:?}: {reason}")]
    Selector {
        /// `type.field`
        field: String,
        /// The selector.
        css: String,
        /// Why.
        reason: String,
    },
    /// Dupefilter, NATS plumbing.
    #[error(transparent)]
    Shared(#[from] jetcrawl_shared::Error),
    /// A downstream publish was not acknowledged (stream full, server away).
    #[error("publish to {subject}: {message}")]
    Publish {
        /// Where to.
        subject: String,
        /// The server's or client's word.
        message: String,
        /// False when it can never go through (larger than the server allows).
        retryable: bool,
    },
}

impl ParseError {
    /// Whether trying the same message again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ParseError::Selector { .. } => false,
            ParseError::Shared(e) => e.is_retryable(),
            ParseError::Publish { retryable, .. } => *retryable,
        }
    }
}
