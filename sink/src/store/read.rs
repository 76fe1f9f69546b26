//! Reading a crawl's items back (`jetcrawl export --items`): rows as a stream, in
//! `item_id` order (the primary key's, so PostgreSQL walks the index and sorts nothing),
//! and the field names the items use.

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::Store;
use crate::error::SinkError;

const PG_ROWS: &str = "
SELECT item_id, item_type, url, data::text, fetched_at, stored_at
FROM jetcrawl_items
WHERE crawl = $1 AND ($2::text IS NULL OR item_type = $2)
ORDER BY item_id";

const SQLITE_ROWS: &str = "
SELECT item_id, item_type, url, data, fetched_at, stored_at
FROM jetcrawl_items
WHERE crawl = ?1 AND (?2 IS NULL OR item_type = ?2)
ORDER BY item_id";

const PG_FIELDS: &str = "
SELECT DISTINCT k
FROM jetcrawl_items, jsonb_object_keys(data) AS k
WHERE crawl = $1 AND ($2::text IS NULL OR item_type = $2)
ORDER BY k";

const SQLITE_FIELDS: &str = "
SELECT DISTINCT j.key
FROM jetcrawl_items, json_each(jetcrawl_items.data) AS j
WHERE crawl = ?1 AND (?2 IS NULL OR item_type = ?2)
ORDER BY j.key";

/// One stored item, as the table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// The item's id.
    pub item_id: String,
    /// The rule's type.
    pub item_type: String,
    /// The page's canonical URL.
    pub url: String,
    /// The fields, as JSON text (an object).
    pub data: String,
    /// When the page was fetched (RFC 3339).
    pub fetched_at: Option<String>,
    /// When the row was last written (RFC 3339).
    pub stored_at: String,
}

type PgRow = (
    String,
    String,
    String,
    String,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);
type SqliteRow = (String, String, String, String, Option<String>, String);

impl Store {
    /// The crawl's items (of one type, if given), one row at a time.
    pub fn rows<'a>(
        &'a self,
        crawl: &'a str,
        item_type: Option<&'a str>,
    ) -> BoxStream<'a, Result<StoredRow, SinkError>> {
        match self {
            Store::Postgres(pool) => sqlx::query_as::<_, PgRow>(PG_ROWS)
                .bind(crawl)
                .bind(item_type)
                .fetch(pool)
                .map_ok(
                    |(item_id, item_type, url, data, fetched, stored)| StoredRow {
                        item_id,
                        item_type,
                        url,
                        data,
                        fetched_at: fetched.map(|t| t.to_rfc3339()),
                        stored_at: stored.to_rfc3339(),
                    },
                )
                .map_err(SinkError::from)
                .boxed(),
            Store::Sqlite(pool) => sqlx::query_as::<_, SqliteRow>(SQLITE_ROWS)
                .bind(crawl)
                .bind(item_type)
                .fetch(pool)
                .map_ok(
                    |(item_id, item_type, url, data, fetched_at, stored_at)| StoredRow {
                        item_id,
                        item_type,
                        url,
                        data,
                        fetched_at,
                        stored_at,
                    },
                )
                .map_err(SinkError::from)
                .boxed(),
        }
    }

    /// Every field name the crawl's items (of one type, if given) use, sorted; the
    /// database does the work, so only the names are held here.
    pub async fn field_names(
        &self,
        crawl: &str,
        item_type: Option<&str>,
    ) -> Result<Vec<String>, SinkError> {
        let names = match self {
            Store::Postgres(pool) => {
                sqlx::query_scalar::<_, String>(PG_FIELDS)
                    .bind(crawl)
                    .bind(item_type)
                    .fetch_all(pool)
                    .await?
            }
            Store::Sqlite(pool) => {
                sqlx::query_scalar::<_, String>(SQLITE_FIELDS)
                    .bind(crawl)
                    .bind(item_type)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(names)
    }
}
