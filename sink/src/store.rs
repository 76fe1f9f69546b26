//! Idempotent batch writes of items: PostgreSQL (one UNNEST upsert a batch) or SQLite.
//! SQL lives here and only here (reads for `jetcrawl export` in `store/read.rs`).

mod read;

pub use read::StoredRow;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{ConnectOptions, PgPool, SqlitePool};

use jetcrawl_shared::message::Item;

use crate::error::SinkError;

const PG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jetcrawl_items (
    crawl      TEXT        NOT NULL,
    item_id    TEXT        NOT NULL,
    item_type  TEXT        NOT NULL,
    url        TEXT        NOT NULL,
    data       JSONB       NOT NULL,
    fetched_at TIMESTAMPTZ,
    stored_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (crawl, item_id)
)";

const PG_UPSERT: &str = "
INSERT INTO jetcrawl_items (crawl, item_id, item_type, url, data, fetched_at, stored_at)
SELECT c, i, t, u, d::jsonb, f, now()
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
    AS x(c, i, t, u, d, f)
ON CONFLICT (crawl, item_id) DO UPDATE SET
    item_type = EXCLUDED.item_type,
    url = EXCLUDED.url,
    data = EXCLUDED.data,
    fetched_at = EXCLUDED.fetched_at,
    stored_at = EXCLUDED.stored_at
WHERE jetcrawl_items.fetched_at IS NULL OR jetcrawl_items.fetched_at <= EXCLUDED.fetched_at";

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jetcrawl_items (
    crawl      TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    item_type  TEXT NOT NULL,
    url        TEXT NOT NULL,
    data       TEXT NOT NULL,
    fetched_at TEXT,
    stored_at  TEXT NOT NULL,
    PRIMARY KEY (crawl, item_id)
)";

const SQLITE_UPSERT_HEAD: &str =
    "INSERT INTO jetcrawl_items (crawl, item_id, item_type, url, data, fetched_at, stored_at) VALUES ";
const SQLITE_UPSERT_ROW: &str = "(?, ?, ?, ?, ?, ?, ?)";
const SQLITE_UPSERT_TAIL: &str = "
ON CONFLICT (crawl, item_id) DO UPDATE SET
    item_type = excluded.item_type,
    url = excluded.url,
    data = excluded.data,
    fetched_at = excluded.fetched_at,
    stored_at = excluded.stored_at
WHERE jetcrawl_items.fetched_at IS NULL OR jetcrawl_items.fetched_at <= excluded.fetched_at";

/// Rows a SQLite upsert statement carries: 7 parameters a row stay under 999, the
/// smallest parameter limit SQLite has shipped with. One statement a row cost a round
/// trip to sqlx's SQLite thread each (two thread wake-ups an item).
const SQLITE_ROWS_PER_STATEMENT: usize = 128;

/// The SQLite upsert of `rows` rows.
fn sqlite_upsert(rows: usize) -> String {
    let mut sql = String::with_capacity(
        SQLITE_UPSERT_HEAD.len() + rows * (SQLITE_UPSERT_ROW.len() + 1) + SQLITE_UPSERT_TAIL.len(),
    );
    sql.push_str(SQLITE_UPSERT_HEAD);
    for n in 0..rows {
        if n > 0 {
            sql.push(',');
        }
        sql.push_str(SQLITE_UPSERT_ROW);
    }
    sql.push_str(SQLITE_UPSERT_TAIL);
    sql
}

/// Where items go.
#[derive(Clone, Debug)]
pub enum Store {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite (embedded mode, single-process use).
    Sqlite(SqlitePool),
}

impl Store {
    /// A pool for `url`. Connections are made lazily, so a sink starts (and waits)
    /// while the database is down.
    pub fn connect_lazy(url: &str) -> Result<Self, SinkError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?
                .log_statements(tracing::log::LevelFilter::Debug)
                .application_name("jetcrawl-sink");
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(opts);
            Ok(Store::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(opts);
            Ok(Store::Sqlite(pool))
        } else {
            Err(SinkError::UnsupportedUrl(redact(url)))
        }
    }

    /// Create the table if missing (safe to run from many sinks at once).
    pub async fn migrate(&self) -> Result<(), SinkError> {
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog.
                sqlx::query("SELECT pg_advisory_xact_lock(7212870452)")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(PG_SCHEMA).execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Store::Sqlite(pool) => {
                // Several processes opening one new file at once can find it locked
                // for a moment (switching to WAL takes an exclusive lock).
                let mut attempt = 0;
                loop {
                    match sqlx::query(SQLITE_SCHEMA).execute(pool).await {
                        Ok(_) => break,
                        Err(e) => {
                            let e = SinkError::from(e);
                            attempt += 1;
                            if !e.is_retryable() || attempt >= 20 {
                                return Err(e);
                            }
                            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Upsert a batch in one transaction. Later duplicates of an id in the batch win.
    pub async fn store(&self, items: &[Item]) -> Result<(), SinkError> {
        if items.is_empty() {
            return Ok(());
        }
        let items = dedupe_last(items);
        match self {
            Store::Postgres(pool) => {
                let mut cols = PgColumns::default();
                for item in &items {
                    cols.crawl.push(item.crawl.clone());
                    cols.id.push(item.item_id.clone());
                    cols.kind.push(item.item_type.clone());
                    cols.url.push(item.url.clone());
                    cols.data.push(data_json(item));
                    cols.fetched.push(item.fetched_at);
                }
                sqlx::query(PG_UPSERT)
                    .bind(cols.crawl)
                    .bind(cols.id)
                    .bind(cols.kind)
                    .bind(cols.url)
                    .bind(cols.data)
                    .bind(cols.fetched)
                    .execute(pool)
                    .await?;
            }
            Store::Sqlite(pool) => {
                static FULL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                let full = FULL.get_or_init(|| sqlite_upsert(SQLITE_ROWS_PER_STATEMENT));
                let now = chrono::Utc::now().to_rfc3339();
                let mut tx = pool.begin().await?;
                // Rows keep their order, so a later version of an item still wins.
                for chunk in items.chunks(SQLITE_ROWS_PER_STATEMENT) {
                    let partial;
                    let sql = if chunk.len() == SQLITE_ROWS_PER_STATEMENT {
                        full.as_str()
                    } else {
                        partial = sqlite_upsert(chunk.len());
                        partial.as_str()
                    };
                    let mut query = sqlx::query(sql);
                    for item in chunk {
                        query = query
                            .bind(&item.crawl)
                            .bind(&item.item_id)
                            .bind(&item.item_type)
                            .bind(&item.url)
                            .bind(data_json(item))
                            .bind(item.fetched_at.to_rfc3339())
                            .bind(&now);
                    }
                    query.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Close the pool.
    pub async fn close(&self) {
        match self {
            Store::Postgres(p) => p.close().await,
            Store::Sqlite(p) => p.close().await,
        }
    }
}

#[derive(Default)]
struct PgColumns {
    crawl: Vec<String>,
    id: Vec<String>,
    kind: Vec<String>,
    url: Vec<String>,
    data: Vec<String>,
    fetched: Vec<chrono::DateTime<chrono::Utc>>,
}

/// The item's data as JSON text, without U+0000: PostgreSQL's jsonb refuses it, and
/// both databases must hold the same data for the same crawl.
fn data_json(item: &Item) -> String {
    let text = serde_json::to_string(&item.data).unwrap_or_else(|_| "{}".to_string());
    if !text.contains("\\u0000") {
        return text;
    }
    let mut data = serde_json::Value::Object(item.data.clone());
    strip_nul(&mut data);
    data.to_string()
}

fn strip_nul(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => s.retain(|c| c != '\0'),
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nul),
        serde_json::Value::Object(map) => {
            let entries = std::mem::take(map);
            for (mut key, mut v) in entries {
                key.retain(|c| c != '\0');
                strip_nul(&mut v);
                map.insert(key, v);
            }
        }
        _ => {}
    }
}

/// One row per (crawl, item_id), the newest fetch winning: PostgreSQL refuses to update
/// a row twice in one statement.
fn dedupe_last(items: &[Item]) -> Vec<&Item> {
    let mut out = newest_of_each(items);
    // Key order: concurrent batches then lock rows in the same order and cannot
    // deadlock on each other.
    out.sort_unstable_by(|a, b| (&a.crawl, &a.item_id).cmp(&(&b.crawl, &b.item_id)));
    out
}

/// One item per (crawl, item_id): the newest fetch (the later message on a tie).
fn newest_of_each(items: &[Item]) -> Vec<&Item> {
    let mut index: std::collections::HashMap<(&str, &str), usize> =
        std::collections::HashMap::with_capacity(items.len());
    let mut out: Vec<&Item> = Vec::with_capacity(items.len());
    for item in items {
        match index.entry((item.crawl.as_str(), item.item_id.as_str())) {
            // The newer fetch wins (the later message on a tie), as in the upsert.
            std::collections::hash_map::Entry::Occupied(e) => {
                if item.fetched_at >= out[*e.get()].fetched_at {
                    out[*e.get()] = item;
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(item);
            }
        }
    }
    out
}

/// A database URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}
