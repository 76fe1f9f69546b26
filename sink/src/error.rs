//! Sink errors, classified by SQLSTATE at the database boundary.

/// What can go wrong in the sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The database refused or was unreachable.
    #[error("database: {message}")]
    Database {
        /// SQLSTATE, when the server sent one.
        code: Option<String>,
        /// What happened (no credentials).
        message: String,
        /// Whether the same write may succeed later.
        retryable: bool,
    },
    /// `--database-url` is not something the sink can write to.
    #[error("unsupported database url (expected postgres://, postgresql:// or sqlite://): {0}")]
    UnsupportedUrl(String),
    /// NATS plumbing.
    #[error(transparent)]
    Shared(#[from] jetcrawl_shared::Error),
}

impl SinkError {
    /// Whether trying the same batch again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Database { retryable, .. } => *retryable,
            SinkError::UnsupportedUrl(_) => false,
            SinkError::Shared(e) => e.is_retryable(),
        }
    }
}

impl From<sqlx::Error> for SinkError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned());
                // Connection trouble (08), rollbacks like deadlocks (40), resources
                // (53), shutdowns (57), system errors (58): transient. Data errors
                // (22: bad value, 23: constraint) will fail again.
                let retryable = code.as_deref().is_none_or(|c| {
                    matches!(&c[..2.min(c.len())], "08" | "40" | "53" | "57" | "58" | "XX")
                        || c == "55P03"
                        || c == "5" // SQLite: SQLITE_BUSY
                        || c == "6" // SQLite: SQLITE_LOCKED
                });
                SinkError::Database {
                    code,
                    message: db.message().to_string(),
                    retryable,
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => SinkError::Database {
                code: None,
                message: e.to_string(),
                retryable: true,
            },
            _ => SinkError::Database {
                code: None,
                message: e.to_string(),
                retryable: false,
            },
        }
    }
}
