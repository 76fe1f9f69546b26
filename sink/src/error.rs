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
    /// Whether the data itself was refused (a bad value, a constraint, a size limit): the same item
    /// will fail again anywhere, so it may be dead-lettered. Anything else — the
    /// database away, read-only after a failover, a dropped table, a revoked grant — is
    /// the database's state, and items wait for it.
    pub fn is_data_error(&self) -> bool {
        match self {
            SinkError::Database {
                code: Some(code), ..
            } => match sqlite_code(code) {
                // SQLite (extended codes; the primary code is the low byte):
                // TOOBIG 18, CONSTRAINT 19, MISMATCH 20.
                Some(n) => matches!(n & 0xff, 18..=20),
                // PostgreSQL SQLSTATE classes 22 (data exception), 23 (integrity),
                // 54 (a limit: an index row too large; a batch over a limit is split
                // into items by the caller, which then pass).
                None => ["22", "23", "54"]
                    .iter()
                    .any(|class| code.starts_with(class)),
            },
            _ => false,
        }
    }

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
                let retryable = code.as_deref().is_none_or(|c| match sqlite_code(c) {
                    // SQLite extended codes: BUSY 5, LOCKED 6, FULL 13 (by primary code).
                    Some(n) => matches!(n & 0xff, 5 | 6 | 13),
                    None => {
                        matches!(
                            &c[..2.min(c.len())],
                            "08" | "40" | "53" | "57" | "58" | "XX"
                        ) || c == "55P03"
                    }
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

/// SQLite's numeric result code, if `code` is one: PostgreSQL's SQLSTATEs are always
/// five characters (and may be all digits, like `22021`); SQLite's are shorter numbers.
fn sqlite_code(code: &str) -> Option<u32> {
    if code.len() < 5 {
        code.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(code: &str) -> SinkError {
        SinkError::Database {
            code: Some(code.to_string()),
            message: String::new(),
            retryable: false,
        }
    }

    #[test]
    fn data_errors_by_sqlstate_and_sqlite_code() {
        // PostgreSQL: bad value (22021: NUL in text), unique violation, index row too big.
        for code in ["22021", "22P05", "23505", "54000"] {
            assert!(db(code).is_data_error(), "{code}");
        }
        // PostgreSQL: the database's state, not the data's.
        for code in ["08006", "25006", "42P01", "42501", "57P01", "40001"] {
            assert!(!db(code).is_data_error(), "{code}");
        }
        // SQLite: CONSTRAINT_UNIQUE 2067, TOOBIG 18; BUSY 5, BUSY_SNAPSHOT 517.
        assert!(db("2067").is_data_error());
        assert!(db("18").is_data_error());
        assert!(!db("5").is_data_error());
        assert!(!db("517").is_data_error());
    }

    #[test]
    fn connection_level_errors_are_retryable() {
        let from = |code: &str| match SinkError::from(sqlx::Error::Protocol(code.into())) {
            SinkError::Database { retryable, .. } => retryable,
            _ => false,
        };
        // Connection-level errors without a code are transient.
        assert!(from("connection reset"));
    }
}
