//! End-to-end politeness across many fetchers (issue 8): a site of several loopback
//! hosts (`common::hosts`) logs every request's host, sender, start and end, and the
//! tests check what a site operator would see — request gaps, requests in flight, a
//! crawl that stops or hammers a host as fetchers die, join and freeze — and that
//! depth-limited crawls, robots.txt outages and busy hosts lose or rewrite nothing.
//!
//! Layout: `support` (spider, fetchers by source address, politeness checks) ·
//! `measure` (gaps, requests in flight, senders from the site's log) ·
//! `gaps` (1: delay, concurrency, Crawl-delay at 1–3 fetchers) · `ownership` (2–4:
//! SIGKILL, join, SIGSTOP) · `depth` (5: the same items whatever the timing) ·
//! `robots` (6: robots.txt 503 then 200) · `frontier` (7: FRONTIER writes per URL).

mod depth;
mod frontier;
mod gaps;
mod measure;
mod ownership;
mod robots;
mod support;
