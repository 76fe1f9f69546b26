use super::*;

fn planner(per: PolitenessPer) -> Planner {
    Planner {
        names: Names::new("c"),
        partitions: 64,
        keys: HostKeys::new(per),
        max_depth: 8,
        budget: Budget::default(),
        render: RenderMatch::of_valid(
            &jetcrawl_shared::CompiledSpider::from_toml(
                "name = \"c\"\n[render]\nmatch = ['/app/']\n",
                std::path::Path::new("t.toml"),
            )
            .unwrap()
            .spider,
        ),
    }
}

/// A planner with `max_depth` and the in-memory dupefilter behind it.
fn with_memory_dedup(max_depth: u32) -> (Planner, Dedup) {
    let planner = Planner {
        max_depth,
        ..planner(PolitenessPer::Host)
    };
    let dedup = planner.dedup(
        Dupefilter::Memory(jetcrawl_shared::dupefilter::MemoryDupefilter::default()),
        Metrics::new(),
    );
    (planner, dedup)
}

#[tokio::test]
async fn plan_partitions_by_host_and_ids_by_fingerprint_and_depth() {
    let urls = vec![
        Url::parse("http://a.test/1").unwrap(),
        Url::parse("http://a.test/2").unwrap(),
        Url::parse("http://b.test/1").unwrap(),
    ];
    let planned = planner(PolitenessPer::Host).plan(&urls, 3).await;
    assert_eq!(planned[0].subject, planned[1].subject);
    assert!(planned[0].subject.starts_with("jetcrawl.c.frontier."));
    let fp = url_fingerprint(&urls[0]);
    assert_eq!(planned[0].msg_id, request_id(fp, 3));
    assert_ne!(
        planned[0].msg_id,
        request_id(fp, 2),
        "depth is part of the id"
    );
    assert_eq!(planned[2].request.depth, 3);
    assert_eq!(planned[0].request.key, None);
    assert_ne!(planned[0].fp, planned[1].fp);
}

#[tokio::test]
async fn render_urls_go_to_the_render_subject_of_the_same_partition() {
    let urls = vec![
        Url::parse("http://a.test/app/1").unwrap(),
        Url::parse("http://a.test/static/1").unwrap(),
    ];
    let planned = planner(PolitenessPer::Host).plan(&urls, 0).await;
    let p = partition("a.test", 64);
    assert_eq!(
        planned[0].subject,
        format!("jetcrawl.c.frontier.render.{p}")
    );
    assert_eq!(planned[1].subject, format!("jetcrawl.c.frontier.{p}"));
}

#[tokio::test]
async fn a_crawl_not_limited_by_depth_schedules_each_url_once() {
    let url = Url::parse("http://a.test/p").unwrap();
    for (max_depth, scheduled_again) in [(8, true), (100, false)] {
        let (planner, dedup) = with_memory_dedup(max_depth);
        let deep = planner.plan(std::slice::from_ref(&url), 5).await;
        let sent = dedup.fresh(&deep).await.unwrap();
        dedup.mark_sent(&sent, &[], 1).await.unwrap();
        let shallow = planner.plan(std::slice::from_ref(&url), 2).await;
        let again = dedup.fresh(&shallow).await.unwrap();
        assert_eq!(!again.is_empty(), scheduled_again, "max_depth {max_depth}");
        assert_eq!(
            deep[0].msg_id == shallow[0].msg_id,
            !scheduled_again,
            "ids carry the depth only when it is tracked"
        );
    }
}

#[tokio::test]
async fn a_new_url_found_at_two_depths_at_once_is_one_request_a_shorter_path_later_another() {
    let url = Url::parse("http://a.test/p").unwrap();
    let (planner, dedup) = with_memory_dedup(8);
    // Two pages in hand (depths 3 and 2) find the URL before either adds it.
    let deep = planner.plan(std::slice::from_ref(&url), 4).await;
    let shallow = planner.plan(std::slice::from_ref(&url), 3).await;
    let first = dedup.fresh(&deep).await.unwrap();
    let second = dedup.fresh(&shallow).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(second.len(), 1);
    assert_eq!(
        first[0].msg_id, second[0].msg_id,
        "one message id: JetStream's duplicate window keeps one request"
    );
    dedup.mark_sent(&first, &[], 1).await.unwrap();
    // Found later along a shorter path than the one scheduled: scheduled again,
    // under an id the window does not take for the first.
    let later = planner.plan(std::slice::from_ref(&url), 2).await;
    let again = dedup.fresh(&later).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].msg_id, first[0].msg_id);
    assert_eq!(again[0].msg_id, request_id(again[0].fp, 2));
    // Found at the scheduled depth or deeper: nothing.
    assert!(dedup.fresh(&deep).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_page_fetched_deeper_than_its_url_is_held_counts_at_the_shallower_depth() {
    let url = Url::parse("http://a.test/p").unwrap();
    for (max_depth, expected) in [(8, 3), (100, 5)] {
        let (planner, dedup) = with_memory_dedup(max_depth);
        // Two pages raced on the link: the request kept was at depth 5, the other
        // noted depth 3.
        let deep = planner.plan(std::slice::from_ref(&url), 5).await;
        let shallow = planner.plan(std::slice::from_ref(&url), 3).await;
        let (a, b) = (
            dedup.fresh(&deep).await.unwrap(),
            dedup.fresh(&shallow).await.unwrap(),
        );
        dedup.mark_sent(&a, &[], 1).await.unwrap();
        dedup.mark_sent(&b, &[], 1).await.unwrap();
        let fp = deep[0].fp;
        assert_eq!(
            dedup.page_depth(fp, 5).await,
            expected,
            "max_depth {max_depth}"
        );
        assert_eq!(
            dedup.page_depth(fp, 2).await,
            2,
            "never deeper than its request"
        );
    }
}

#[tokio::test]
async fn a_robots_sitemap_a_page_also_links_to_is_its_own_request() {
    let url = Url::parse("http://a.test/sitemap.xml").unwrap();
    let (planner, dedup) = with_memory_dedup(8);
    let mut requests = planner.plan(std::slice::from_ref(&url), 1).await;
    let mut sitemap = planner.plan(std::slice::from_ref(&url), 0).await;
    sitemap[0].request.sitemap = true;
    requests.extend(sitemap);
    let fresh = dedup.fresh(&requests).await.unwrap();
    assert_eq!(fresh.len(), 2);
    assert_ne!(
        fresh[0].msg_id, fresh[1].msg_id,
        "the duplicate window must not take the sitemap for the link"
    );
    assert!(fresh[1].request.sitemap);
}

#[tokio::test]
async fn domain_mode_puts_subdomains_in_one_partition() {
    let urls: Vec<Url> = (0..40)
        .map(|i| Url::parse(&format!("http://s{i}.blog.example.com/")).unwrap())
        .collect();
    let by_domain = planner(PolitenessPer::Domain).plan(&urls, 1).await;
    assert!(by_domain.iter().all(|p| p.subject == by_domain[0].subject));
    let by_host = planner(PolitenessPer::Host).plan(&urls, 1).await;
    assert!(by_host.iter().any(|p| p.subject != by_host[0].subject));
}

#[tokio::test]
async fn ip_mode_carries_the_address_in_the_request() {
    let urls = vec![Url::parse("http://127.0.0.5:8080/x").unwrap()];
    let planned = planner(PolitenessPer::Ip).plan(&urls, 0).await;
    assert_eq!(planned[0].request.key.as_deref(), Some("127.0.0.5"));
    assert_eq!(
        planned[0].subject,
        Names::new("c").frontier_subject(partition("127.0.0.5", 64))
    );
}
