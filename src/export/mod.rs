//! `jetcrawl export`: the pages in PAGES as a WARC file, a crawl's items as JSON Lines
//! or CSV. Both stream: one PAGES message (a few dozen prefetched) or one row at a
//! time, never the whole crawl. The file appears under its name only when complete.

pub mod items;
mod output;
pub mod warc;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer::pull};
use chrono::Utc;
use clap::{ArgGroup, Args};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use jetcrawl_shared::message::Page;
use jetcrawl_shared::topology::{self, Names, ReplayStart};
use jetcrawl_shared::CompiledSpider;
use jetcrawl_sink::Store;

use crate::{replay::parse_since, Common};
use output::Output;

/// PAGES messages the ordered consumer fetches ahead (bounds memory: a page is at most
/// one NATS message).
const PREFETCH: i64 = 32;

/// `jetcrawl export`'s flags.
#[derive(Args)]
#[command(group(ArgGroup::new("output").required(true).multiple(true).args(["warc", "items"])))]
pub struct ExportArgs {
    #[command(flatten)]
    common: Common,
    /// Write the pages stored in PAGES to this WARC 1.1 file (`.warc.gz`: each record
    /// its own gzip member).
    #[arg(long)]
    warc: Option<PathBuf>,
    /// With --warc: only pages stored since an RFC 3339 time, or an age (90s, 30m, 6h, 7d).
    #[arg(long, requires = "warc")]
    since: Option<String>,
    /// Write the crawl's items to this file: `.jsonl` (one item per line) or `.csv`
    /// (a column per field).
    #[arg(long)]
    items: Option<PathBuf>,
    /// With --items: only items of this type.
    #[arg(long = "type", requires = "items")]
    item_type: Option<String>,
    /// Where the items are (with --items).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
}

/// Run the export(s) asked for; flags are all checked before anything is written.
pub async fn run(args: ExportArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, Utc::now()))
        .transpose()
        .context("--since")?;
    if let Some(path) = &args.warc {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.to_ascii_lowercase().ends_with(".warc.gz") {
            bail!(
                "--warc {}: the file name must end in .warc.gz (records are gzip-compressed)",
                path.display()
            );
        }
    }
    let format = args.items.as_deref().map(items::Format::of).transpose()?;
    let spider = CompiledSpider::load(&args.common.spider)?;
    if let Some(path) = &args.warc {
        let start = since.map_or(ReplayStart::All, ReplayStart::Since);
        let (pages, skipped) = export_warc(&args.common, &spider, path, start, &stop).await?;
        if skipped > 0 {
            println!("skipped {skipped} PAGES message(s) that are not page records");
        }
        println!("wrote {pages} page(s) to {}", path.display());
    }
    if let (Some(path), Some(format)) = (&args.items, format) {
        let store = Store::connect_lazy(&args.database_url)?;
        let written = export_items(&store, spider.name(), &args, path, format, &stop).await;
        store.close().await;
        println!("wrote {} item(s) to {}", written?, path.display());
    }
    Ok(())
}

/// PAGES from `start` to the end it had when the export began, as WARC records.
/// Returns the pages written and the messages skipped (not page records).
async fn export_warc(
    common: &Common,
    spider: &CompiledSpider,
    path: &Path,
    start: ReplayStart,
    stop: &CancellationToken,
) -> anyhow::Result<(u64, u64)> {
    let nats = topology::connect(&common.nats_url, "jetcrawl-export", stop)
        .await
        .context("connecting to nats")?;
    let js = jetstream::new(nats.clone());
    let names = Names::new(spider.name());
    let mut stream = js.get_stream(names.pages_stream()).await.with_context(|| {
        format!(
            "crawl {:?} has no PAGES stream on this NATS (nothing crawled yet, or NATS_URL \
             points elsewhere)",
            spider.name()
        )
    })?;
    // Pages stored after this are left for the next export: a running crawl would
    // otherwise never let the export end.
    let last = stream
        .info()
        .await
        .context("reading the PAGES stream's state")?
        .state
        .last_sequence;
    let archive = warc::Archive {
        crawl: spider.name().to_string(),
        user_agent: spider.spider.user_agent.clone(),
        obey_robots: spider.spider.obey_robots,
    };
    let mut out = Output::create(path).await?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    out.write(&archive.warcinfo(file_name, Utc::now()).to_gzip()?)
        .await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: names.pages_subject(),
            deliver_policy: start.deliver_policy()?,
            max_batch: PREFETCH,
            ..Default::default()
        })
        .await
        .context("creating a consumer on PAGES")?;
    let (mut pages, mut skipped) = (0u64, 0u64);
    if consumer.cached_info().num_pending > 0 && last > 0 {
        let mut messages = consumer.messages().await.context("reading PAGES")?;
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = stop.cancelled() => bail!("interrupted; no file written"),
            };
            let Some(msg) = next else {
                bail!("PAGES ended before the export was complete");
            };
            let msg = msg.context("reading PAGES")?;
            let info = msg
                .info()
                .map_err(|e| anyhow::anyhow!("a PAGES message without delivery info: {e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            match Page::from_message(msg.headers.as_ref(), msg.payload.clone()) {
                Ok(page) => {
                    for record in archive.page_records(&page) {
                        out.write(&record.to_gzip()?).await?;
                    }
                    pages += 1;
                }
                Err(e) => {
                    tracing::warn!(seq, error = %e, "skipped a PAGES message that is not a page record");
                    skipped += 1;
                }
            }
            if pending == 0 || seq >= last {
                break;
            }
        }
    }
    out.commit().await?;
    nats.drain().await.ok();
    Ok((pages, skipped))
}

/// The crawl's rows, one at a time, into a JSON Lines or CSV file.
async fn export_items(
    store: &Store,
    crawl: &str,
    args: &ExportArgs,
    path: &Path,
    format: items::Format,
    stop: &CancellationToken,
) -> anyhow::Result<u64> {
    let item_type = args.item_type.as_deref();
    let mut out = Output::create(path).await?;
    let columns = match format {
        items::Format::Csv => {
            let fields = store
                .field_names(crawl, item_type)
                .await
                .context("reading field names from the database")?;
            let columns = items::Columns::new(fields);
            out.write(columns.header().as_bytes()).await?;
            Some(columns)
        }
        items::Format::Jsonl => None,
    };
    let mut rows = store.rows(crawl, item_type);
    let mut written = 0u64;
    loop {
        let next = tokio::select! {
            next = rows.next() => next,
            _ = stop.cancelled() => bail!("interrupted; no file written"),
        };
        let Some(row) = next else { break };
        let row = row.context("reading items from the database")?;
        let line = match &columns {
            Some(columns) => columns.row(&row)?,
            None => items::jsonl_line(&row)?,
        };
        out.write(line.as_bytes()).await?;
        written += 1;
    }
    drop(rows);
    out.commit().await?;
    Ok(written)
}
