//! Pure page parsing: extraction rules to items, anchors to in-scope canonical links.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Mutex, OnceLock};

use scraper::{ElementRef, Html, Selector};
use serde_json::Value;
use url::Url;

use jetcrawl_shared::canon::{self, host_in_scope};
use jetcrawl_shared::dupefilter::{FpHasher, FpSet};
use jetcrawl_shared::hostkey::registrable_domain;
use jetcrawl_shared::message::{item_id, Item, Page};
use jetcrawl_shared::CompiledSpider;

use crate::error::ParseError;
use crate::stream::{Scan, StreamPlan};
use crate::traps::{Trap, TrapGuard};

/// An href this many times `[traps] max_url_length` is garbage: not even
/// canonicalized (nor counted as a trap).
const HREF_GARBAGE_FACTOR: usize = 8;

/// Links whose verdict [`LinkMemo`] keeps; cleared when full.
const LINK_MEMO_CAPACITY: usize = 16_384;

/// A page's links to follow, and those a trap heuristic refused, with the reason.
type Links = (Vec<Url>, Vec<(Url, Trap)>);

/// Extraction rules with their selectors compiled once.
#[derive(Debug)]
pub struct Rules {
    spider: CompiledSpider,
    items: Vec<CompiledItemRule>,
    links: Selector,
    base: Selector,
    scope: Vec<String>,
    memo: LinkMemo,
    /// The streaming fast path, when every selector allows it (`stream.rs`).
    stream: Option<StreamPlan>,
    traps: TrapGuard,
}

/// What [`Rules::follow`] decided for links that recur on page after page (a site's
/// navigation, footer, category menus): most of a page's anchors, and each one costs
/// two URL parses to canonicalize. Only links whose verdict depends on nothing but
/// the base URL's origin are kept (absolute and root-relative ones), keyed by a 128-bit
/// hash of origin, page host and href.
#[derive(Debug, Default)]
struct LinkMemo {
    /// Keyed by the 128-bit hash itself (no second hashing).
    verdicts: Mutex<HashMap<u128, Option<Url>, BuildHasherDefault<FpHasher>>>,
}

impl LinkMemo {
    /// The memo key for `href` on a page with `base`, if the verdict can be reused.
    fn key(href: &str, base: &Url, page_host: Option<&str>) -> Option<u128> {
        let h = href.as_bytes();
        let root_relative = h.first() == Some(&b'/') && h.get(1) != Some(&b'/');
        let absolute = h.len() > 7
            && (h[..7].eq_ignore_ascii_case(b"http://")
                || h[..8].eq_ignore_ascii_case(b"https://"));
        if !(root_relative || absolute) {
            return None;
        }
        // Every part is delimited, and "no port" differs from any port, so two
        // different (origin, page host, href) never feed the hash the same bytes.
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(base.scheme().as_bytes());
        hasher.update(b"\0");
        hasher.update(base.host_str().unwrap_or_default().as_bytes());
        hasher.update(b"\0");
        hasher.update(&base.port().map_or(u32::MAX, u32::from).to_le_bytes());
        hasher.update(page_host.unwrap_or_default().as_bytes());
        hasher.update(b"\0");
        hasher.update(h);
        Some(hasher.digest128())
    }

    fn get(&self, key: u128) -> Option<Option<Url>> {
        self.verdicts.lock().ok()?.get(&key).cloned()
    }

    fn put(&self, key: u128, verdict: Option<Url>) {
        if let Ok(mut map) = self.verdicts.lock() {
            if map.len() >= LINK_MEMO_CAPACITY {
                map.clear();
            }
            map.insert(key, verdict);
        }
    }
}

#[derive(Debug)]
struct CompiledItemRule {
    item_type: String,
    key: Option<String>,
    /// One item per match of this (fields relative to it), or one per page if `None`.
    each: Option<Selector>,
    fields: Vec<CompiledField>,
}

#[derive(Debug)]
struct CompiledField {
    name: String,
    selector: Selector,
    attr: Option<String>,
    absolute: bool,
    all: bool,
}

/// What a page yields.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Extracted {
    /// Items, one per matching rule.
    pub items: Vec<Item>,
    /// In-scope, allowed, canonical links at `depth + 1`, each once, in page order:
    /// at most `[follow] max_links_per_page`.
    pub links: Vec<Url>,
    /// Links to follow the page had beyond `max_links_per_page`, dropped.
    pub links_capped: usize,
    /// Whether the streaming fast path read the page (else the DOM did).
    pub streamed: bool,
    /// In-scope links refused by a trap heuristic, with the reason.
    pub refused: Vec<(Url, Trap)>,
    /// For a sitemap's links: each one's `<lastmod>` (same order as `links`; empty
    /// for an HTML page).
    pub lastmods: Vec<Option<String>>,
    /// Sitemaps to fetch, with the depth to schedule them at: a sitemap index's
    /// entries (its own depth) and the robots.txt `Sitemap:` URLs the page record
    /// carried (depth 0).
    pub sitemaps: Vec<(Url, u32)>,
    /// Set when the page was a sitemap.
    pub sitemap: Option<crate::sitemap::Summary>,
}

impl Rules {
    /// Compile the spider's selectors; a bad selector names its field.
    pub fn new(spider: &CompiledSpider) -> Result<Self, ParseError> {
        let mut items = Vec::new();
        for rule in &spider.spider.items {
            let mut fields = Vec::new();
            for (name, field) in &rule.fields {
                let spec = field.spec();
                let selector = Selector::parse(&spec.css).map_err(|e| ParseError::Selector {
                    field: format!("{}.{name}", rule.item_type),
                    css: spec.css.clone(),
                    reason: e.to_string(),
                })?;
                fields.push(CompiledField {
                    name: name.clone(),
                    selector,
                    attr: spec.attr,
                    absolute: spec.absolute,
                    all: spec.all,
                });
            }
            let each = match &rule.each {
                Some(css) => Some(Selector::parse(css).map_err(|e| ParseError::Selector {
                    field: format!("{}.each", rule.item_type),
                    css: css.clone(),
                    reason: e.to_string(),
                })?),
                None => None,
            };
            items.push(CompiledItemRule {
                item_type: rule.item_type.clone(),
                key: rule.key.clone(),
                each,
                fields,
            });
        }
        let fixed = |css: &str| {
            Selector::parse(css).map_err(|e| ParseError::Selector {
                field: "links".into(),
                css: css.into(),
                reason: e.to_string(),
            })
        };
        let stream = StreamPlan::new(spider.spider.items.iter().map(|rule| {
            let fields = rule
                .fields
                .values()
                .map(|field| {
                    let spec = field.spec();
                    (spec.css, spec.attr, spec.all)
                })
                .collect::<Vec<_>>();
            (rule.each.is_some(), fields)
        }));
        Ok(Rules {
            stream,
            scope: spider.scope_hosts(),
            spider: spider.clone(),
            items,
            links: fixed("a[href], area[href]")?,
            base: fixed("base[href]")?,
            memo: LinkMemo::default(),
            traps: TrapGuard::new(spider.spider.traps.clone()),
        })
    }

    /// The spider these rules come from.
    pub fn spider(&self) -> &CompiledSpider {
        &self.spider
    }

    /// Items and links of a page. Only 2xx HTML pages and sitemaps yield anything
    /// (besides the robots.txt sitemaps any page record may carry).
    ///
    /// HTML pages the streaming fast path can read exactly take it (`stream.rs`); the
    /// rest are parsed into a DOM. With `JETCRAWL_CHECK_FAST_PATH=1` in the environment
    /// (the test suite sets it) every streamed page is parsed both ways and a
    /// difference panics, naming the page.
    pub fn parse(&self, page: &Page) -> Extracted {
        let extracted = self.parse_with(page, true);
        if extracted.streamed && check_fast_path() {
            let dom = self.parse_with(page, false);
            assert!(
                dom.items == extracted.items
                    && dom.links == extracted.links
                    && dom.refused == extracted.refused
                    && dom.links_capped == extracted.links_capped,
                "fast path and DOM differ on {}:\nfast: {extracted:?}\nDOM: {dom:?}",
                page.url
            );
        }
        extracted
    }

    /// [`Rules::parse`] through html5ever's DOM alone: what the fast path is held to.
    pub fn parse_without_fast_path(&self, page: &Page) -> Extracted {
        self.parse_with(page, false)
    }

    fn parse_with(&self, page: &Page, fast: bool) -> Extracted {
        let robots_sitemaps = self.robots_sitemaps(page);
        if let Some(mut extracted) = self.parse_sitemap(page) {
            extracted.sitemaps.extend(robots_sitemaps);
            return extracted;
        }
        if !page.is_parseable_html() {
            return Extracted {
                sitemaps: robots_sitemaps,
                ..Extracted::default()
            };
        }
        // The fetcher hands over UTF-8; validating is faster than the lossy path.
        let text = match std::str::from_utf8(&page.body) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(&page.body),
        };
        let page_url = canon::canonicalize(&page.final_url, &self.spider.query_filter)
            .unwrap_or_else(|_| page.final_url.clone());
        let wanted: Vec<bool> = self
            .spider
            .item_matches
            .iter()
            .map(|m| m.is_match(page_url.as_str()))
            .collect();
        let follow = page.depth < self.spider.spider.max_depth;
        let page_host = self.own_host(page, &page_url);
        let scan = self
            .stream
            .as_ref()
            .filter(|_| fast)
            .and_then(|plan| plan.scan(&text, &wanted, follow));
        let streamed = scan.is_some();
        let (items, (links, refused)) = match scan {
            Some(scan) => self.read_scan(scan, &wanted, &page_url, page, follow, page_host),
            None => self.read_dom(&text, &wanted, &page_url, page, follow, page_host),
        };
        let cap = self.spider.spider.follow.max_links_per_page;
        let links_capped = links.len().saturating_sub(cap);
        let mut links = links;
        links.truncate(cap);
        Extracted {
            items,
            links,
            links_capped,
            streamed,
            refused,
            sitemaps: robots_sitemaps,
            ..Extracted::default()
        }
    }

    /// Items and links through html5ever's DOM: any page, any selector.
    fn read_dom(
        &self,
        text: &str,
        wanted: &[bool],
        page_url: &Url,
        page: &Page,
        follow: bool,
        page_host: Option<&str>,
    ) -> (Vec<Item>, Links) {
        let doc = Html::parse_document(text);
        // <base href> changes how relative links resolve.
        let base = resolve_base(
            doc.select(&self.base)
                .next()
                .and_then(|b| b.value().attr("href")),
            page,
        );
        let items = self.items(wanted, page_url, page, |rule| match &rule.each {
            None => vec![(
                fields(&rule.fields, &base, |i| {
                    dom_values(doc.select(&rule.fields[i].selector), &rule.fields[i])
                }),
                None,
            )],
            Some(each) => doc
                .select(each)
                .enumerate()
                .map(|(n, el)| {
                    let data = fields(&rule.fields, &base, |i| {
                        dom_values(el.select(&rule.fields[i].selector), &rule.fields[i])
                    });
                    (data, Some(n))
                })
                .collect(),
        });
        let links = if follow {
            let hrefs = doc
                .select(&self.links)
                .filter_map(|el| el.value().attr("href"));
            self.links(hrefs, &base, page_host)
        } else {
            Default::default()
        };
        (items, links)
    }

    /// Items and links from the streaming scan (`stream.rs`): the same values the DOM
    /// path would read, without the DOM.
    fn read_scan(
        &self,
        mut scan: Scan,
        wanted: &[bool],
        page_url: &Url,
        page: &Page,
        follow: bool,
        page_host: Option<&str>,
    ) -> (Vec<Item>, Links) {
        let base = resolve_base(scan.base.as_deref(), page);
        // The scan's values are for the wanted rules only, in order.
        let mut per_rule = std::mem::take(&mut scan.values).into_iter();
        let items = self.items(wanted, page_url, page, |rule| {
            let mut values = per_rule.next().unwrap_or_default();
            let data = fields(&rule.fields, &base, |i| {
                values.get_mut(i).map(std::mem::take).unwrap_or_default()
            });
            vec![(data, None)]
        });
        let links = if follow {
            self.links(scan.hrefs.iter().map(String::as_str), &base, page_host)
        } else {
            Default::default()
        };
        (items, links)
    }

    /// Items of the rules `wanted` says; `data` gives a rule's field maps, each with its
    /// position among `each` matches (`None` for a whole-page item).
    fn items(
        &self,
        wanted: &[bool],
        page_url: &Url,
        page: &Page,
        mut data: impl FnMut(&CompiledItemRule) -> Vec<(serde_json::Map<String, Value>, Option<usize>)>,
    ) -> Vec<Item> {
        let mut out = Vec::new();
        for (rule, _) in self.items.iter().zip(wanted).filter(|(_, w)| **w) {
            for (data, position) in data(rule) {
                // `key`'s value makes ids distinct; in `each` rules, failing a
                // (non-null) key, the element's position does.
                let mut key = rule.key.as_ref().and_then(|k| data.get(k)).cloned();
                if let Some(position) = position {
                    if key.as_ref().is_none_or(Value::is_null) {
                        key = Some(Value::from(position));
                    }
                }
                out.push(Item {
                    crawl: self.spider.name().to_string(),
                    item_id: item_id(page_url.as_str(), &rule.item_type, key.as_ref()),
                    item_type: rule.item_type.clone(),
                    url: page_url.to_string(),
                    data,
                    fetched_at: page.fetched_at,
                });
            }
        }
        out
    }

    /// The host a page adds to the scope when `allowed_domains` is empty (`None`
    /// otherwise): the host it was requested from, which was in scope or a seed's. A
    /// redirect's target counts only within the same registrable domain (`a.test` to
    /// `www.a.test`): one off-site redirect must not put a whole foreign site in scope.
    pub(crate) fn own_host<'a>(&self, page: &'a Page, final_url: &'a Url) -> Option<&'a str> {
        if !self.spider.spider.allowed_domains.is_empty() {
            return None;
        }
        let requested = page.url.host_str()?;
        match final_url.host_str() {
            Some(landed) if landed.eq_ignore_ascii_case(requested) => Some(landed),
            Some(landed) if registrable_domain(final_url) == registrable_domain(&page.url) => {
                Some(landed)
            }
            _ => Some(requested),
        }
    }

    /// Links to follow, and those a trap heuristic refused.
    fn links<'h>(
        &self,
        hrefs: impl Iterator<Item = &'h str>,
        base: &Url,
        page_host: Option<&str>,
    ) -> Links {
        let mut seen = FpSet::default();
        let mut out = Vec::new();
        let mut refused = Vec::new();
        for href in hrefs {
            let href = href.trim();
            let key = LinkMemo::key(href, base, page_host);
            let verdict = match key.and_then(|k| self.memo.get(k)) {
                Some(verdict) => verdict,
                None => {
                    let verdict = self.follow(href, Some(base), page_host);
                    if let Some(k) = key {
                        self.memo.put(k, verdict.clone());
                    }
                    verdict
                }
            };
            if let Some(url) = verdict {
                if seen.insert(xxhash_rust::xxh3::xxh3_64(url.as_str().as_bytes())) {
                    match self.traps.check(&url) {
                        None => out.push(url),
                        Some(trap) => refused.push((url, trap)),
                    }
                }
            }
        }
        (out, refused)
    }

    /// Canonicalize a link and apply scope and follow rules; `None` if not to be
    /// followed. `page_host`: the host its page adds to the scope, if any.
    /// Trap heuristics are not applied here ([`Rules::trap`]).
    pub fn follow(&self, href: &str, base: Option<&Url>, page_host: Option<&str>) -> Option<Url> {
        if href.len() > HREF_GARBAGE_FACTOR * self.traps.max_url_length() {
            return None;
        }
        let url = canon::canonicalize_str(href, base, &self.spider.query_filter).ok()?;
        let host = url.host_str()?;
        // With no allowed_domains, the seeds' hosts are the scope: a page was fetched
        // only if in scope, so its own host counts too.
        let in_scope = host_in_scope(host, &self.scope) || Some(host) == page_host;
        if !in_scope {
            return None;
        }
        self.allowed_by_rules(&url).then_some(url)
    }

    /// A sitemap's URL (from robots.txt or a sitemap index), canonical, in scope (or
    /// on `page_host`) and not denied by `follow.deny`; `follow.allow` is for pages, so
    /// it does not apply.
    pub fn sitemap_url(&self, raw: &str, page_host: Option<&str>) -> Option<Url> {
        if raw.len() > self.traps.max_url_length() {
            return None;
        }
        let url = canon::canonicalize_str(raw.trim(), None, &self.spider.query_filter).ok()?;
        let host = url.host_str()?;
        let in_scope = host_in_scope(host, &self.scope) || Some(host) == page_host;
        let denied = self
            .spider
            .follow_deny
            .iter()
            .any(|r| r.is_match(url.as_str()));
        (in_scope && !denied).then_some(url)
    }

    /// Whether a canonical URL to follow looks like a link trap (`[traps]`); a URL let
    /// through has its query values counted.
    pub fn trap(&self, url: &Url) -> Option<Trap> {
        self.traps.check(url)
    }

    /// `follow.allow` / `follow.deny` on a canonical URL.
    pub fn allowed_by_rules(&self, url: &Url) -> bool {
        let s = url.as_str();
        (self.spider.follow_allow.is_empty()
            || self.spider.follow_allow.iter().any(|r| r.is_match(s)))
            && !self.spider.follow_deny.iter().any(|r| r.is_match(s))
    }

    /// The fingerprint of a redirected page's final URL, which the scheduler marks seen
    /// so a link to it is not fetched again; `None` if not redirected.
    pub fn redirect_target(&self, page: &Page) -> Option<u64> {
        (page.final_url != page.url)
            .then(|| canon::canonicalize(&page.final_url, &self.spider.query_filter).ok())
            .flatten()
            .map(|u| canon::url_fingerprint(&u))
    }

    /// A seed URL, canonical and in scope, ready to plan at depth 0.
    pub fn seed(&self, raw: &str) -> Result<Url, jetcrawl_shared::UrlError> {
        let url = canon::canonicalize_str(raw, None, &self.spider.query_filter)?;
        if !self.seed_in_scope(&url) {
            let host = url.host_str().unwrap_or_default().to_string();
            return Err(jetcrawl_shared::UrlError::OutOfScope(host));
        }
        Ok(url)
    }

    /// Whether a seed's host is in scope (always, with no `allowed_domains`).
    pub fn seed_in_scope(&self, url: &Url) -> bool {
        self.spider.spider.allowed_domains.is_empty()
            || url
                .host_str()
                .is_some_and(|h| host_in_scope(h, &self.scope))
    }
}

/// `JETCRAWL_CHECK_FAST_PATH=1`: compare the fast path with the DOM on every page.
fn check_fast_path() -> bool {
    static CHECK: OnceLock<bool> = OnceLock::new();
    *CHECK.get_or_init(|| std::env::var("JETCRAWL_CHECK_FAST_PATH").is_ok_and(|v| v == "1"))
}

/// `<base href>` resolved against the page's URL, or the page's URL.
fn resolve_base(href: Option<&str>, page: &Page) -> Url {
    href.and_then(|href| page.final_url.join(href.trim()).ok())
        .unwrap_or_else(|| page.final_url.clone())
}

/// Every field's value; `raw(i)` gives field `i`'s raw values, in match order (for a
/// field that is not `all`, only the first is used).
fn fields(
    fields: &[CompiledField],
    base: &Url,
    mut raw: impl FnMut(usize) -> Vec<String>,
) -> serde_json::Map<String, Value> {
    let mut data = serde_json::Map::new();
    for (i, field) in fields.iter().enumerate() {
        let mut values = raw(i).into_iter().map(|v| finish_value(v, field, base));
        let value = if field.all {
            Value::Array(values.map(Value::String).collect())
        } else {
            values.next().map(Value::String).unwrap_or(Value::Null)
        };
        data.insert(field.name.clone(), value);
    }
    data
}

/// A field's raw values from its matches: every one if `all`, else the first.
fn dom_values<'a>(
    matches: impl Iterator<Item = ElementRef<'a>>,
    field: &CompiledField,
) -> Vec<String> {
    let values = matches.filter_map(|el| raw_value(el, field));
    if field.all {
        values.collect()
    } else {
        values.take(1).collect()
    }
}

/// What a matched element gives a field before [`finish_value`]: the attribute,
/// trimmed (`None` if absent), or the text, whitespace collapsed.
fn raw_value(el: ElementRef<'_>, field: &CompiledField) -> Option<String> {
    Some(match &field.attr {
        Some(attr) => el.value().attr(attr)?.trim().to_string(),
        None => collapse_ws(el.text()),
    })
}

fn finish_value(mut raw: String, field: &CompiledField, base: &Url) -> String {
    // NUL never means anything in a page's text, and PostgreSQL's jsonb refuses it.
    if raw.contains('\0') {
        raw.retain(|c| c != '\0');
    }
    if field.absolute {
        return base.join(&raw).map(|u| u.to_string()).unwrap_or(raw);
    }
    raw
}

/// Text nodes joined, whitespace runs collapsed to one space, trimmed.
fn collapse_ws<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for word in parts.flat_map(str::split_whitespace) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests;
