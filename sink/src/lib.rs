//! jetcrawl sink stage: items from the ITEMS stream into PostgreSQL or SQLite,
//! in batches, idempotently.
//!
//! Layout:
//! - `store`: the table, its schema and the batch upsert, for both databases; `store/read`
//!   reads rows back for `jetcrawl export`
//! - `service`: the JetStream loop and the batcher
//! - `error`: errors classified by SQLSTATE

pub mod error;
pub mod service;
pub mod store;

pub use error::SinkError;
pub use service::{run, SinkConfig};
pub use store::Store;
