//! The parser's page work alone, fast path against DOM: the demo shop's pages parsed
//! with the benchmark spider's rules by `Rules::parse` (the streaming fast path) and
//! by `Rules::parse_without_fast_path` (html5ever's DOM), in alternating rounds, on
//! this thread's CPU clock. Both must give the same items and links.

use anyhow::{bail, Result};
use url::Url;

use jetcrawl_bench::demo_site::DemoSite;
use jetcrawl_parser::Rules;
use jetcrawl_shared::message::Page;
use jetcrawl_shared::CompiledSpider;

use crate::{median, spider};

/// This thread's CPU time, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

pub(crate) fn parse(pages: usize, rounds: usize) -> Result<()> {
    println!("\n## parse: {pages} demo pages per round, fast path vs DOM, {rounds} rounds");
    let host = "127.0.0.1:8080";
    let site = DemoSite::new(20_000);
    let toml = spider(&format!("http://{host}/")).replace("{crawl}", "bench_parse");
    let rules = Rules::new(&CompiledSpider::from_toml(
        &toml,
        std::path::Path::new("s.toml"),
    )?)?;
    let mut docs = Vec::new();
    for i in 0..pages {
        // Products mostly, a listing every tenth page, as in a crawl.
        let path = if i % 10 == 9 {
            format!("/category/{}/page/{}", i % 20, 1 + i % 40)
        } else {
            format!("/product/{}", (i * 7919) % 20_000)
        };
        let (_, body) = site.body(&path, host);
        let url = Url::parse(&format!("http://{host}{path}"))?;
        docs.push(Page::html(url, 1, body));
    }
    for p in &docs {
        let (fast, dom) = (rules.parse(p), rules.parse_without_fast_path(p));
        if !fast.streamed || fast.items != dom.items || fast.links != dom.links {
            bail!(
                "{}: the fast path did not serve, or differs from the DOM",
                p.url
            );
        }
    }
    let (mut fast, mut dom) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = thread_cpu();
        for p in &docs {
            std::hint::black_box(rules.parse(p));
        }
        fast.push((thread_cpu() - t) * 1e6 / pages as f64);
        let t = thread_cpu();
        for p in &docs {
            std::hint::black_box(rules.parse_without_fast_path(p));
        }
        dom.push((thread_cpu() - t) * 1e6 / pages as f64);
    }
    let bytes: usize = docs.iter().map(|p| p.body.len()).sum();
    let (f, d) = (median(fast), median(dom));
    println!("| path | CPU µs per page (median of {rounds}) |");
    println!("|---|---|");
    println!("| fast path (streaming) | {f:.1} |");
    println!("| DOM (html5ever + selectors) | {d:.1} |");
    println!(
        "DOM ÷ fast: {:.2}; pages average {:.1} KB",
        d / f,
        bytes as f64 / pages as f64 / 1e3
    );
    Ok(())
}
