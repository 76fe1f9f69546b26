//! `jetcrawl dead retry|purge`: send dead letters back to their stage, or drop them.

use anyhow::{bail, Context};
use async_nats::jetstream;
use chrono::Utc;
use clap::Args;

use jetcrawl_shared::message::{header, CrawlRequest};
use jetcrawl_shared::topology::Names;

use super::dead::{DeadLetter, DeadReader, Select};
use crate::Common;

/// `jetcrawl dead retry`'s flags.
#[derive(Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub select: Select,
}

/// `jetcrawl dead purge`'s flags.
#[derive(Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only this stage's letters.
    #[arg(long, value_enum)]
    pub stage: Option<super::Stage>,
    /// Only letters older than this: an age (30m, 6h, 7d) or an RFC 3339 time.
    #[arg(long)]
    pub older_than: Option<String>,
    /// Every letter of every stage (required when neither --stage nor --older-than is given).
    #[arg(long)]
    pub all: bool,
}

/// Headers `dead_letter` adds; a retried message goes out without them.
const DEAD_HEADERS: [&str; 4] = [
    header::ERROR,
    header::STAGE,
    header::SOURCE_SUBJECT,
    header::SOURCE_SEQ,
];

/// What a retry publishes for one letter.
#[derive(Debug)]
pub struct Requeued {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: bytes::Bytes,
}

/// The message that re-runs `letter` in its stage: the original subject (the stage's
/// input), the original headers less the dead-letter ones, and a message id of its own so
/// the duplicate window cannot swallow it. A request starts over: no tries counted, no
/// backoff, and a page id of its own, so its new page is not taken for the old one.
pub fn requeue(names: &Names, letter: &DeadLetter) -> Result<Requeued, String> {
    let prefix = format!("jetcrawl.{}.", names.crawl());
    let subject = match &letter.source_subject {
        Some(s) => s.clone(),
        None => return Err("no Jetcrawl-Source-Subject: its stage's input is unknown".into()),
    };
    if !subject.starts_with(&prefix) || subject.starts_with(&names.dead_subject("")) {
        return Err(format!(
            "source subject {subject} is not an input of this crawl"
        ));
    }
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        let n: &str = name.as_ref();
        if DEAD_HEADERS.iter().any(|d| d.eq_ignore_ascii_case(n))
            || n.eq_ignore_ascii_case("Nats-Msg-Id")
        {
            continue;
        }
        for v in values {
            headers.append(name.clone(), v.clone());
        }
    }
    headers.insert(
        "Nats-Msg-Id",
        format!("jetcrawl-dead-{}", letter.seq).as_str(),
    );
    let mut payload = letter.payload.clone();
    if subject.starts_with(&format!("{prefix}frontier.")) {
        let mut req: CrawlRequest = serde_json::from_slice(&letter.payload)
            .map_err(|e| format!("not a crawl request ({e})"))?;
        req.tries = 0;
        req.not_before_ms = None;
        req.last_error = None;
        req.page_id = Some(format!("dead-{}", letter.seq));
        payload = serde_json::to_vec(&req)
            .map_err(|e| format!("re-encoding the request: {e}"))?
            .into();
    }
    Ok(Requeued {
        subject,
        headers,
        payload,
    })
}

/// `jetcrawl dead retry`: republish each selected letter and wait for its ack, then
/// delete it from DEAD. A letter that cannot be retried stays, and is reported.
pub async fn retry(js: &jetstream::Context, names: &Names, select: &Select) -> anyhow::Result<()> {
    let Ok(dead) = js.get_stream(names.dead_stream()).await else {
        println!("retried 0 dead letter(s); 0 kept");
        return Ok(());
    };
    // One letter at a time: republished and acked, then deleted, before the next.
    let mut reader = DeadReader::open(js, names, select.stage).await?;
    let (mut retried, mut kept) = (0u64, 0u64);
    while let Some(letter) = reader.next_selected(select).await? {
        let letter = &letter;
        let msg = match requeue(names, letter) {
            Ok(m) => m,
            Err(why) => {
                eprintln!("#{} kept: {why}", letter.seq);
                kept += 1;
                continue;
            }
        };
        js.publish_with_headers(msg.subject.clone(), msg.headers, msg.payload)
            .await
            .with_context(|| format!("republishing #{} to {}", letter.seq, msg.subject))?
            .await
            .with_context(|| format!("republishing #{} to {}", letter.seq, msg.subject))?;
        dead.delete_message(letter.seq)
            .await
            .with_context(|| format!("removing #{} from DEAD after its retry", letter.seq))?;
        retried += 1;
    }
    println!("retried {retried} dead letter(s); {kept} kept");
    Ok(())
}

/// `jetcrawl dead purge`: by stage, by age, or everything.
pub async fn purge(js: &jetstream::Context, names: &Names, args: &PurgeArgs) -> anyhow::Result<()> {
    if args.stage.is_none() && args.older_than.is_none() && !args.all {
        bail!("purge what? give --stage X, --older-than AGE, or --all");
    }
    let Ok(dead) = js.get_stream(names.dead_stream()).await else {
        println!("purged 0 dead letter(s)");
        return Ok(());
    };
    let filter = match args.stage {
        Some(s) => names.dead_subject(s.as_str()),
        None => names.dead_subject(">"),
    };
    let purged = match &args.older_than {
        None => dead.purge().filter(filter).await?.purged,
        Some(age) => {
            let cutoff = crate::replay::parse_since(age, Utc::now())?.timestamp_millis();
            // The first letter at or after the cutoff; purge everything before it.
            let mut reader = DeadReader::open(js, names, args.stage).await?;
            let mut first_kept = None;
            while let Some(l) = reader.next().await? {
                if l.at_ms >= cutoff {
                    first_kept = Some(l.seq);
                    break;
                }
            }
            match first_kept {
                Some(seq) => dead.purge().filter(filter).sequence(seq).await?.purged,
                None => dead.purge().filter(filter).await?.purged,
            }
        }
    };
    println!("purged {purged} dead letter(s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(subject: Option<&str>, payload: &str) -> DeadLetter {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(header::ERROR, "boom");
        headers.insert(header::STAGE, "fetcher");
        headers.insert(header::URL, "http://a.example/");
        headers.insert("Nats-Msg-Id", "abc");
        DeadLetter {
            seq: 42,
            stage: "fetcher".into(),
            reason: "boom".into(),
            source_subject: subject.map(str::to_string),
            at_ms: 0,
            headers,
            payload: payload.to_string().into(),
        }
    }

    #[test]
    fn a_request_starts_over_on_its_partition() {
        let names = Names::new("c");
        let req =
            r#"{"url":"http://a.example/","depth":2,"tries":3,"not_before_ms":5,"last_error":"x"}"#;
        let out = requeue(&names, &letter(Some("jetcrawl.c.frontier.7"), req)).unwrap();
        assert_eq!(out.subject, "jetcrawl.c.frontier.7");
        let back: CrawlRequest = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(back.url, "http://a.example/");
        assert_eq!(back.depth, 2);
        assert_eq!(
            (back.tries, back.not_before_ms, back.last_error),
            (0, None, None)
        );
        assert_eq!(back.page_id.as_deref(), Some("dead-42"));
        assert_eq!(
            out.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some("jetcrawl-dead-42")
        );
        assert!(out.headers.get(header::ERROR).is_none());
        assert!(out.headers.get(header::STAGE).is_none());
        assert_eq!(
            out.headers.get(header::URL).map(|v| v.as_str()),
            Some("http://a.example/")
        );
    }

    #[test]
    fn pages_and_items_go_back_unchanged() {
        let names = Names::new("c");
        let out = requeue(&names, &letter(Some("jetcrawl.c.pages"), "<html>")).unwrap();
        assert_eq!(out.subject, "jetcrawl.c.pages");
        assert_eq!(&out.payload[..], b"<html>");
    }

    #[test]
    fn nothing_goes_to_another_crawl_or_back_to_dead() {
        let names = Names::new("c");
        assert!(requeue(&names, &letter(None, "x")).is_err());
        assert!(requeue(&names, &letter(Some("jetcrawl.other.pages"), "x")).is_err());
        assert!(requeue(&names, &letter(Some("jetcrawl.c.dead.parser"), "x")).is_err());
        assert!(requeue(&names, &letter(Some("jetcrawl.c.frontier.1"), "not json")).is_err());
    }
}
