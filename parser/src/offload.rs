//! Parsing a page without holding up the async runtime: small pages on the worker that
//! handles them, large ones on the blocking pool ([`Rules::parse_off_runtime`]).

use std::borrow::Borrow;
use std::sync::{Arc, OnceLock};

use jetcrawl_shared::message::Page;

use crate::extract::{Extracted, Rules};

/// Pages up to this size are parsed on the async worker that handles them
/// ([`Rules::parse_off_runtime`]).
pub const INLINE_PARSE_BYTES: usize = 256 * 1024;

/// Parsing a page panicked (a bug): what the panic said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePanic(pub String);

impl std::fmt::Display for ParsePanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panic: {}", self.0)
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

impl Rules {
    /// [`Rules::parse`] without holding up the async runtime for long. A page up to
    /// [`INLINE_PARSE_BYTES`] is parsed on the task's own worker thread (a 20 KB page
    /// takes ~0.2 ms): handing it to another thread and back cost more than parsing it
    /// (two thread wake-ups a page; the parser's worker threads spent 58% of its CPU
    /// in the benchmark, the parse threads 35%). Larger pages go to tokio's blocking
    /// pool, at most one per core at a time: more at once only adds threads, and each
    /// thread's allocator cache holds DOM-sized blocks (16 parse threads took the
    /// parser's RSS past 100 MB in the benchmark). A panic while parsing is returned as
    /// an error naming it, either way.
    pub async fn parse_off_runtime<P>(self: &Arc<Self>, page: P) -> Result<Extracted, ParsePanic>
    where
        P: Borrow<Page> + Send + 'static,
    {
        if page.borrow().body.len() <= INLINE_PARSE_BYTES {
            let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.parse(page.borrow())
            }));
            return parsed.map_err(|panic| ParsePanic(panic_message(&*panic)));
        }
        static CORES: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();
        let cores = CORES.get_or_init(|| {
            let n = std::thread::available_parallelism().map_or(2, |n| n.get());
            Arc::new(tokio::sync::Semaphore::new(n))
        });
        // The semaphore is never closed, so acquiring cannot fail.
        let _permit = cores.clone().acquire_owned().await.ok();
        let rules = Arc::clone(self);
        tokio::task::spawn_blocking(move || rules.parse(page.borrow()))
            .await
            .map_err(|e| match e.try_into_panic() {
                Ok(panic) => ParsePanic(panic_message(&*panic)),
                Err(e) => ParsePanic(e.to_string()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use jetcrawl_shared::CompiledSpider;
    use url::Url;

    /// A small page is parsed inline, one past [`INLINE_PARSE_BYTES`] on the blocking
    /// pool; either way the page's item and links come out.
    #[tokio::test]
    async fn small_and_large_pages_parse_alike() {
        let toml = "name = \"t\"\nstart_urls = [\"http://shop.test/\"]\n[[items]]\ntype = \"p\"\nmatch = \"/p\"\n\
                    [items.fields]\ntitle = \"h1\"\n";
        let spider = CompiledSpider::from_toml(toml, Path::new("t.toml")).unwrap();
        let rules = Arc::new(Rules::new(&spider).unwrap());
        let body = |pad: usize| {
            format!(
                "<html><body><h1>Hat</h1><a href=\"/next\">n</a><p>{}</p></body></html>",
                "x".repeat(pad)
            )
        };
        let url = Url::parse("http://shop.test/p").unwrap();
        let small = Page::html(url.clone(), 0, body(10));
        let large = Page::html(url, 0, body(INLINE_PARSE_BYTES));
        assert!(large.body.len() > INLINE_PARSE_BYTES);
        for page in [small, large] {
            let got = rules.parse_off_runtime(page).await.unwrap();
            assert_eq!(got.items.len(), 1);
            assert_eq!(got.items[0].data["title"], "Hat");
            assert_eq!(got.links.len(), 1);
            assert_eq!(got.links[0].as_str(), "http://shop.test/next");
        }
    }

    #[test]
    fn a_panic_is_named_by_its_message() {
        let of = |f: fn()| {
            let panic = std::panic::catch_unwind(f).unwrap_err();
            ParsePanic(panic_message(&*panic)).to_string()
        };
        assert_eq!(of(|| panic!("static")), "panic: static");
        assert_eq!(of(|| panic!("{}", 7)), "panic: 7");
    }
}
