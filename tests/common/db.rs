//! A fresh PostgreSQL database per test on the shared server, and reading the items
//! the sink stored in it.

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// One item row as the sink stored it.
#[derive(Debug, Clone)]
pub struct StoredItem {
    pub item_id: String,
    pub item_type: String,
    pub url: String,
    pub data: serde_json::Value,
    pub has_timestamps: bool,
}

/// A fresh database on the shared PostgreSQL server, dropped (best effort) on Drop.
pub struct TestDb {
    admin_url: String,
    name: String,
    pool: PgPool,
}

/// `postgres://user@host:port/db?params` -> (`postgres://user@host:port`, `db`, `?params`).
fn split_db_url(url: &str) -> (&str, &str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    match base[after_scheme..].find('/') {
        Some(slash) => {
            let slash = after_scheme + slash;
            (&base[..slash], &base[slash + 1..], query)
        }
        None => (base, "", query),
    }
}

impl TestDb {
    /// Creates `jetcrawl_test_<random>` on `$JETCRAWL_TEST_PG` (default
    /// `postgres://postgres@127.0.0.1:5432/postgres`).
    pub async fn create() -> TestDb {
        let admin_url = std::env::var("JETCRAWL_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let name = format!("jetcrawl_test_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("connect to PostgreSQL at {admin_url} (set JETCRAWL_TEST_PG): {e}")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = admin.close().await;
        let (base, _, query) = split_db_url(&admin_url);
        let url = format!("{base}/{name}{query}");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        TestDb {
            admin_url,
            name,
            pool,
        }
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        let (base, _, query) = split_db_url(&self.admin_url);
        format!("{base}/{}{query}", self.name)
    }

    /// `host:port` of the PostgreSQL server (what a proxy forwards to).
    pub fn server_addr(&self) -> String {
        let (base, _, _) = split_db_url(&self.admin_url);
        let authority = base.rsplit("://").next().unwrap_or(base);
        let hostport = authority.rsplit('@').next().unwrap_or(authority);
        if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:5432")
        }
    }

    /// The URL of this database, reached through `hostport` instead (a proxy).
    pub fn url_via(&self, hostport: &str) -> String {
        let (base, _, query) = split_db_url(&self.admin_url);
        let (scheme, authority) = base.split_once("://").unwrap_or(("postgres", base));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{hostport}/{}{query}", self.name)
    }

    /// Runs SQL on the test database (a trigger a test installs, say).
    pub async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Whether the sink has created `jetcrawl_items` yet.
    pub async fn table_exists(&self) -> bool {
        sqlx::query_scalar::<_, bool>("SELECT to_regclass('jetcrawl_items') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .unwrap_or(false)
    }

    /// Rows of one crawl; 0 while the table does not exist.
    pub async fn count(&self, crawl: &str) -> i64 {
        if !self.table_exists().await {
            return 0;
        }
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jetcrawl_items WHERE crawl = $1")
            .bind(crawl)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("count items: {e}"))
    }

    /// Every row of one crawl.
    pub async fn items(&self, crawl: &str) -> Vec<StoredItem> {
        if !self.table_exists().await {
            return Vec::new();
        }
        // `data::text` reads the JSON the same way whatever the column type.
        let rows = sqlx::query_as::<_, (String, String, String, String, bool)>(
            "SELECT item_id, item_type, url, data::text, \
                    (fetched_at IS NOT NULL AND stored_at IS NOT NULL) \
             FROM jetcrawl_items WHERE crawl = $1",
        )
        .bind(crawl)
        .fetch_all(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("read items: {e}"));
        rows.into_iter()
            .map(
                |(item_id, item_type, url, data, has_timestamps)| StoredItem {
                    data: serde_json::from_str(&data).unwrap_or_else(|e| {
                        panic!("row {item_id}: data is not JSON ({e}): {data}")
                    }),
                    item_id,
                    item_type,
                    url,
                    has_timestamps,
                },
            )
            .collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop is sync and may run inside (or after) the test's runtime: use a thread
        // with a runtime of its own.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let pool = self.pool.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                drop(pool);
                let Ok(mut admin) = PgConnection::connect(&admin_url).await else {
                    return;
                };
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            });
        });
        let _ = dropper.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_url_splits() {
        assert_eq!(
            split_db_url("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
            (
                "postgres://postgres@127.0.0.1:5432",
                "postgres",
                "?sslmode=disable"
            )
        );
        assert_eq!(
            split_db_url("postgres://u:p@h/db"),
            ("postgres://u:p@h", "db", "")
        );
    }
}
