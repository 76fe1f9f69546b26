//! The sink's item store against both databases: one suite, instantiated for
//! PostgreSQL (a fresh database per test) and SQLite (a temp file per test) by
//! `store_test_suite!` (quickwit's `metastore_test_suite!` pattern). Every test
//! asserts on what a user reading `jetcrawl_items` would see.

use crate::common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{PgPool, SqlitePool};
use tempfile::TempDir;

use common::{random_hex, TestDb};
use jetcrawl_shared::message::Item;
use jetcrawl_sink::Store;

/// Instantiates every test of [`suite`] for one backend: `mod $backend { ... }`, each
/// test opening a fresh `Backend::$backend()`.
macro_rules! store_test_suite {
    ($backend:ident) => {
        store_test_suite!(@tests $backend [
            migrate_twice_keeps_the_table_and_its_rows,
            migrate_from_four_sinks_at_once,
            storing_a_batch_again_updates_its_rows,
            duplicates_in_one_batch_last_one_wins,
            an_older_fetch_never_overwrites_a_newer_one,
            same_item_id_in_two_crawls_is_two_rows,
            text_round_trips_exactly,
            nul_characters_are_stored_removed,
            a_batch_of_5000_lands_in_one_call,
        ]);
    };
    (@tests $backend:ident [$($test:ident),+ $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::suite::$test(super::Backend::$backend().await).await;
                }
            )+
        }
    };
}

store_test_suite!(postgres);
store_test_suite!(sqlite);

// ------------------------------------------------------------------------------------
// backends

/// One row of `jetcrawl_items` as a user's query returns it.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    item_id: String,
    item_type: String,
    url: String,
    data: Value,
    fetched_at: Option<DateTime<Utc>>,
    stored_at: DateTime<Utc>,
}

/// Reads the table the way a user would, on a pool of its own.
enum Reader {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A database for one test: its URL (what `--database-url` would be), a reader, and
/// whatever keeps it alive (dropped with the backend).
struct Backend {
    url: String,
    reader: Reader,
    _db: Option<TestDb>,
    _dir: Option<TempDir>,
}

impl Backend {
    /// A fresh PostgreSQL database (tests/common/db.rs).
    async fn postgres() -> Backend {
        let db = TestDb::create().await;
        let url = db.url();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect reader to {url}: {e}"));
        Backend {
            url,
            reader: Reader::Postgres(pool),
            _db: Some(db),
            _dir: None,
        }
    }

    /// A SQLite file in a fresh temp dir.
    async fn sqlite() -> Backend {
        let dir = tempfile::Builder::new()
            .prefix("jetcrawl-store-test-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join("items.db");
        let url = format!("sqlite://{}", path.display());
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .busy_timeout(Duration::from_secs(10)),
            );
        Backend {
            url,
            reader: Reader::Sqlite(pool),
            _db: None,
            _dir: Some(dir),
        }
    }

    /// A store on this database, as a sink opens it.
    fn store(&self) -> Store {
        Store::connect_lazy(&self.url).unwrap_or_else(|e| panic!("connect_lazy: {e}"))
    }

    /// Whether `jetcrawl_items` exists.
    async fn table_exists(&self) -> bool {
        match &self.reader {
            Reader::Postgres(pool) => {
                sqlx::query_scalar::<_, bool>("SELECT to_regclass('jetcrawl_items') IS NOT NULL")
                    .fetch_one(pool)
                    .await
            }
            Reader::Sqlite(pool) => {
                sqlx::query_scalar::<_, bool>(
                    "SELECT count(*) > 0 FROM sqlite_master \
                 WHERE type = 'table' AND name = 'jetcrawl_items'",
                )
                .fetch_one(pool)
                .await
            }
        }
        .unwrap_or_else(|e| panic!("look for the table: {e}"))
    }

    /// Every row of one crawl, by item id.
    async fn rows(&self, crawl: &str) -> Vec<Row> {
        type Raw = (
            String,
            String,
            String,
            String,
            Option<DateTime<Utc>>,
            DateTime<Utc>,
        );
        let raw: Vec<Raw> = match &self.reader {
            // `data::text` is the JSON as PostgreSQL gives it back to any client.
            Reader::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT item_id, item_type, url, data::text, fetched_at, stored_at \
                 FROM jetcrawl_items WHERE crawl = $1 ORDER BY item_id",
                )
                .bind(crawl)
                .fetch_all(pool)
                .await
            }
            Reader::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT item_id, item_type, url, data, fetched_at, stored_at \
                 FROM jetcrawl_items WHERE crawl = ? ORDER BY item_id",
                )
                .bind(crawl)
                .fetch_all(pool)
                .await
            }
        }
        .unwrap_or_else(|e| panic!("read rows of {crawl}: {e}"));
        raw.into_iter()
            .map(
                |(item_id, item_type, url, data, fetched_at, stored_at)| Row {
                    data: serde_json::from_str(&data).unwrap_or_else(|e| {
                        panic!("row {item_id}: data is not JSON ({e}): {data}")
                    }),
                    item_id,
                    item_type,
                    url,
                    fetched_at,
                    stored_at,
                },
            )
            .collect()
    }
}

// ------------------------------------------------------------------------------------
// helpers

/// A crawl name no other test uses.
fn crawl() -> String {
    format!("t_{}", random_hex())
}

/// An item of `crawl` with id `id`; `data` must be a JSON object.
fn item(crawl: &str, id: &str, data: Value) -> Item {
    let Value::Object(data) = data else {
        panic!("item data must be an object: {data}");
    };
    Item {
        crawl: crawl.to_string(),
        item_id: id.to_string(),
        item_type: "book".to_string(),
        url: format!("https://books.example/catalogue/{id}/index.html"),
        data,
        // Whole microseconds: what both databases keep.
        fetched_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).expect("timestamp"),
    }
}

/// Asserts `row` holds exactly what `item` carried.
fn assert_row_is(row: &Row, item: &Item) {
    assert_eq!(row.item_id, item.item_id);
    assert_eq!(
        row.item_type, item.item_type,
        "item_type of {}",
        item.item_id
    );
    assert_eq!(row.url, item.url, "url of {}", item.item_id);
    assert_eq!(
        row.data,
        Value::Object(item.data.clone()),
        "data of {}",
        item.item_id
    );
    assert_eq!(
        row.fetched_at,
        Some(item.fetched_at),
        "fetched_at of {}",
        item.item_id
    );
}

async fn store_ok(store: &Store, items: &[Item]) {
    if let Err(e) = store.store(items).await {
        panic!(
            "storing {} items failed (retryable: {}): {e}",
            items.len(),
            e.is_retryable()
        );
    }
}

// ------------------------------------------------------------------------------------
// the suite

mod suite {
    use super::*;

    /// `init` and every sink migrate at start: a second run must neither fail nor
    /// touch what is stored.
    pub async fn migrate_twice_keeps_the_table_and_its_rows(db: Backend) {
        let store = db.store();
        store.migrate().await.expect("first migrate");
        assert!(db.table_exists().await, "migrate did not create the table");
        let crawl = crawl();
        let stored = item(&crawl, "a", json!({"title": "kept"}));
        store_ok(&store, std::slice::from_ref(&stored)).await;

        store.migrate().await.expect("second migrate");
        let again = db.store();
        again.migrate().await.expect("migrate from a new pool");

        let rows = db.rows(&crawl).await;
        assert_eq!(rows.len(), 1, "rows after migrating again: {rows:?}");
        assert_row_is(&rows[0], &stored);
        store.close().await;
        again.close().await;
    }

    /// Four sinks starting together on an empty database all come up, and the table
    /// they create works.
    pub async fn migrate_from_four_sinks_at_once(db: Backend) {
        assert!(!db.table_exists().await, "a fresh database has no table");
        let stores: Vec<Store> = (0..4).map(|_| db.store()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, store) in stores.iter().cloned().enumerate() {
            tasks.spawn(async move { (i, store.migrate().await) });
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, result) = joined.expect("migrate task panicked");
            if let Err(e) = result {
                panic!("sink {i}'s concurrent migrate failed: {e}");
            }
        }
        assert!(db.table_exists().await);
        let crawl = crawl();
        let items: Vec<Item> = (0..4)
            .map(|i| item(&crawl, &format!("id{i}"), json!({ "n": i })))
            .collect();
        for (store, item) in stores.iter().zip(&items) {
            store_ok(store, std::slice::from_ref(item)).await;
        }
        let rows = db.rows(&crawl).await;
        assert_eq!(rows.len(), 4, "{rows:?}");
        for (row, item) in rows.iter().zip(&items) {
            assert_row_is(row, item);
        }
        for store in &stores {
            store.close().await;
        }
    }

    /// A redelivered or replayed batch updates its rows, never adds rows.
    pub async fn storing_a_batch_again_updates_its_rows(db: Backend) {
        let store = db.store();
        store.migrate().await.expect("migrate");
        let crawl = crawl();
        let first: Vec<Item> = (0..20)
            .map(|i| item(&crawl, &format!("id{i:02}"), json!({"price": i, "v": 1})))
            .collect();
        store_ok(&store, &first).await;
        let before = db.rows(&crawl).await;
        assert_eq!(before.len(), first.len());

        // The very same batch again (a redelivery): same rows, same data.
        store_ok(&store, &first).await;
        let same = db.rows(&crawl).await;
        assert_eq!(same.len(), first.len(), "a repeated batch added rows");
        for (row, item) in same.iter().zip(&first) {
            assert_row_is(row, item);
        }

        // The batch with new values (a replay with new rules): the last write wins.
        let second: Vec<Item> = first
            .iter()
            .map(|it| {
                let mut it = it.clone();
                it.data.insert("v".to_string(), json!(2));
                it.data.insert("new_field".to_string(), json!("added"));
                it.data.remove("price");
                it.fetched_at =
                    DateTime::from_timestamp(1_700_000_060, 654_321_000).expect("timestamp");
                it
            })
            .collect();
        store_ok(&store, &second).await;
        let after = db.rows(&crawl).await;
        assert_eq!(after.len(), first.len(), "an updated batch added rows");
        for ((row, item), old) in after.iter().zip(&second).zip(&same) {
            assert_row_is(row, item);
            assert!(
                row.stored_at >= old.stored_at,
                "stored_at went back on update: {} -> {}",
                old.stored_at,
                row.stored_at
            );
        }
        store.close().await;
    }

    /// A batch can hold one item id twice (a page delivered twice in one batch): it is
    /// stored once, with the data of the later one, and the batch does not fail.
    pub async fn duplicates_in_one_batch_last_one_wins(db: Backend) {
        let store = db.store();
        store.migrate().await.expect("migrate");
        let crawl = crawl();
        let batch = vec![
            item(&crawl, "dup", json!({"v": 1})),
            item(&crawl, "other", json!({"v": "x"})),
            item(&crawl, "dup", json!({"v": 2})),
            item(&crawl, "dup", json!({"v": 3, "last": true})),
        ];
        store_ok(&store, &batch).await;
        let rows = db.rows(&crawl).await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_row_is(&rows[0], &batch[3]);
        assert_row_is(&rows[1], &batch[1]);
        store.close().await;
    }

    /// A stale copy (a redelivery, or a replay of an old page beside a fresh crawl)
    /// must not overwrite what a newer fetch stored, in separate batches or in one.
    pub async fn an_older_fetch_never_overwrites_a_newer_one(db: Backend) {
        let store = db.store();
        store.migrate().await.expect("migrate");
        let first = crawl();
        let old = item(&first, "v", json!({"v": "old"}));
        let mut new = item(&first, "v", json!({"v": "new"}));
        new.fetched_at = old.fetched_at + chrono::Duration::seconds(60);
        store_ok(&store, std::slice::from_ref(&new)).await;
        store_ok(&store, std::slice::from_ref(&old)).await;
        let rows = db.rows(&first).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_row_is(&rows[0], &new);
        // In one batch, the newer fetch wins whatever the order.
        let other = crawl();
        let (mut old2, mut new2) = (old.clone(), new.clone());
        old2.crawl = other.clone();
        new2.crawl = other.clone();
        store_ok(&store, &[new2.clone(), old2]).await;
        let rows = db.rows(&other).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_row_is(&rows[0], &new2);
        store.close().await;
    }

    /// Item ids are per crawl: two crawls storing the same id keep a row each.
    pub async fn same_item_id_in_two_crawls_is_two_rows(db: Backend) {
        let store = db.store();
        store.migrate().await.expect("migrate");
        let (one, two) = (crawl(), crawl());
        let a = item(&one, "same", json!({"crawl": "one"}));
        let b = item(&two, "same", json!({"crawl": "two"}));
        // One batch holding both, then each again on its own.
        store_ok(&store, &[a.clone(), b.clone()]).await;
        store_ok(&store, std::slice::from_ref(&b)).await;
        let (rows_one, rows_two) = (db.rows(&one).await, db.rows(&two).await);
        assert_eq!(rows_one.len(), 1, "{rows_one:?}");
        assert_eq!(rows_two.len(), 1, "{rows_two:?}");
        assert_row_is(&rows_one[0], &a);
        assert_row_is(&rows_two[0], &b);
        store.close().await;
    }

    /// Scraped text comes back exactly as extracted, whatever it contains.
    pub async fn text_round_trips_exactly(db: Backend) {
        let store = db.store();
        store.migrate().await.expect("migrate");
        let crawl = crawl();
        let data = json!({
            "accents": "Ça coûte 12 € — naïve façade, Ærøskøbing, Straße",
            "cjk": "東京の本屋 / 서울 / 北京",
            "rtl": "مرحبا بالعالم עברית",
            "emoji": "📚🦀 👩🏽‍💻 🇫🇷 ❤️",
            "combining": "e\u{301} vs \u{e9}",
            "quotes": "He said \"hi\" and 'bye' — “curly” ‘single’ `back`",
            "backslashes": "C:\\path\\to\\file \\n is not a newline \\\" \\\\",
            "sql": "'; DROP TABLE jetcrawl_items; --",
            "controls": "tab\there\nnewline\r\nbell\u{7} escape\u{1b} del\u{7f}",
            "json_looking": "{\"a\": [1, 2]}",
            "unicode_escapes": "\\u0041 \\u0000 stays literal",
            "nonchar": "\u{fffd}\u{fffe}\u{10ffff}\u{2028}\u{2029}",
            "emoji key 🔑": "value",
            "\"quoted\\key\"": "value",
            "empty": "",
            "nested": {"list": ["ä", "😀", "\\", "\""], "n": 12.5, "big": 9007199254740993_u64},
            "null": null,
            "bool": false
        });
        let stored = item(&crawl, "text", data);
        store_ok(&store, std::slice::from_ref(&stored)).await;
        let rows = db.rows(&crawl).await;
        assert_eq!(rows.len(), 1);
        assert_row_is(&rows[0], &stored);
        store.close().await;
    }

    /// A page can carry a NUL character (U+0000) into a field; PostgreSQL's jsonb
    /// cannot hold one. What a user wants: the item stored with the NUL removed (its
    /// neighbours in the batch too), the same in both databases, rather than the item
    /// dead-lettered (or a batch retried forever).
    pub async fn nul_characters_are_stored_removed(db: Backend) {
        let store = db.store();
        store.migrate().await.expect("migrate");
        let crawl = crawl();
        let with_nul = item(
            &crawl,
            "nul",
            json!({
                "title": "before\u{0}after",
                "tags": ["a\u{0}b", "\u{0}"],
                "nested": {"k": "x\u{0}\u{0}y"},
                "key\u{0}with_nul": "v",
            }),
        );
        let neighbour = item(&crawl, "plain", json!({"title": "plain"}));
        let result = store.store(&[with_nul, neighbour.clone()]).await;
        if let Err(e) = &result {
            panic!(
                "an item with a NUL character was refused (retryable: {}): {e}; \
                 the store should remove NULs before writing",
                e.is_retryable()
            );
        }
        let rows = db.rows(&crawl).await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        let expected = item(
            &crawl,
            "nul",
            json!({
                "title": "beforeafter",
                "tags": ["ab", ""],
                "nested": {"k": "xy"},
                "keywith_nul": "v",
            }),
        );
        assert_row_is(&rows[0], &expected);
        assert_row_is(&rows[1], &neighbour);
        store.close().await;
    }

    /// A big batch (a sink's backlog after an outage) is one call, all rows landed.
    pub async fn a_batch_of_5000_lands_in_one_call(db: Backend) {
        let store = db.store();
        store.migrate().await.expect("migrate");
        let crawl = crawl();
        let items: Vec<Item> = (0..5000)
            .map(|i| {
                item(
                    &crawl,
                    &format!("id{i:05}"),
                    json!({"n": i, "title": format!("Book number {i} — «{}»", "x".repeat(i % 200))}),
                )
            })
            .collect();
        let started = Instant::now();
        store_ok(&store, &items).await;
        let took = started.elapsed();
        let rows = db.rows(&crawl).await;
        assert_eq!(rows.len(), items.len(), "rows stored of one batch of 5000");
        for (row, item) in rows.iter().zip(&items) {
            assert_row_is(row, item);
        }
        eprintln!("5000 items stored in {took:?}");
        store.close().await;
    }
}

// ------------------------------------------------------------------------------------
// PostgreSQL only: connection failures

/// A database that cannot be reached is a transient condition (the sink holds the
/// batch and retries), reported promptly, and the error text never shows the password.
#[tokio::test]
async fn unreachable_postgres_is_retryable_and_redacted() {
    let with_password = format!("postgres://jetcrawl:{SECRET}@127.0.0.1:1/x");
    tokio::join!(
        assert_unreachable("postgres://postgres@127.0.0.1:1/x"),
        assert_unreachable(&with_password),
    );
}

/// Something no error text may contain.
const SECRET: &str = "s3cret-Pa55word";

/// `migrate` and `store` on `url` (nothing listening) both fail fast, retryable,
/// without [`SECRET`] in the text.
async fn assert_unreachable(url: &str) {
    let store = Store::connect_lazy(url).expect("connect_lazy makes no connection");
    let crawl = crawl();
    let batch = [item(&crawl, "a", json!({}))];
    let (migrated, stored) = tokio::join!(timed(store.migrate()), timed(store.store(&batch)));
    for (what, (took, result)) in [("migrate", migrated), ("store", stored)] {
        let err = match result {
            Ok(()) => panic!("{what} on {url} succeeded"),
            Err(e) => e,
        };
        assert!(
            err.is_retryable(),
            "{what} on an unreachable database: not retryable: {err}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{what} on an unreachable database took {took:?}"
        );
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(
                !text.contains(SECRET),
                "{what} error shows the password: {text}"
            );
        }
    }
    store.close().await;
}

/// A URL the sink cannot use is a permanent error that names it without its password.
#[tokio::test]
async fn unusable_urls_are_permanent_and_redacted() {
    for url in [
        format!("mysql://jetcrawl:{SECRET}@127.0.0.1:3306/x"),
        format!("postgres://jetcrawl:{SECRET}@127.0.0.1:notaport/x"),
    ] {
        let err = match Store::connect_lazy(&url) {
            Ok(_) => panic!("{url} accepted"),
            Err(e) => e,
        };
        assert!(!err.is_retryable(), "{url}: retryable: {err}");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(SECRET), "error shows the password: {text}");
        }
    }
}

/// Runs `fut` under a 30 s cap, returning how long it took.
async fn timed<T>(fut: impl std::future::Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("gave up after 30 s");
    (started.elapsed(), out)
}
