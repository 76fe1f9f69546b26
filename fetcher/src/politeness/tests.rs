use super::*;

fn gate(delay_ms: u64, concurrency: u32) -> Politeness {
    Politeness::new(PolitenessConfig {
        delay: Duration::from_millis(delay_ms),
        concurrency,
        autothrottle: false,
        max_in_flight: usize::MAX,
        max_waiting: None,
        max_wait: None,
    })
}

#[tokio::test(start_paused = true)]
async fn delay_spaces_request_starts_per_host() {
    let p = gate(250, 4);
    let t0 = Instant::now();
    let mut starts = Vec::new();
    for _ in 0..4 {
        let permit = p.acquire("a.test", None, 0).await.unwrap();
        starts.push(t0.elapsed());
        drop(permit);
    }
    assert_eq!(
        starts,
        vec![
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_millis(500),
            Duration::from_millis(750)
        ]
    );
    // Another host is not held back by the first one's delay.
    let before = Instant::now();
    let _b = p.acquire("b.test", None, 0).await.unwrap();
    assert_eq!(before.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn concurrent_waiters_are_spaced_by_the_delay() {
    let p = gate(100, 8);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let permit = p.acquire("h", None, 0).await.unwrap();
            let at = t0.elapsed();
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            drop(permit);
            at
        }));
    }
    let mut starts = Vec::new();
    for t in tasks {
        starts.push(t.await.unwrap());
    }
    starts.sort();
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(100),
            "starts {starts:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn crawl_delay_wins_when_longer() {
    let p = gate(100, 1);
    drop(
        p.acquire("a.test", Some(Duration::from_secs(2)), 0)
            .await
            .unwrap(),
    );
    let t = Instant::now();
    drop(
        p.acquire("a.test", Some(Duration::from_secs(2)), 0)
            .await
            .unwrap(),
    );
    assert_eq!(t.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn concurrency_caps_in_flight_and_release_wakes_waiter() {
    let p = gate(0, 2);
    let a = p.acquire("h", None, 0).await.unwrap();
    let _b = p.acquire("h", None, 0).await.unwrap();
    let p2 = p.clone();
    let waiter =
        tokio::spawn(async move { p2.acquire("h", None, 0).await.map(|_| Instant::now()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "third request must wait for a slot");
    let released_at = Instant::now();
    drop(a);
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got, released_at);
}

#[tokio::test(start_paused = true)]
async fn process_cap_holds_across_hosts() {
    let p = Politeness::new(PolitenessConfig {
        max_in_flight: 2,
        ..gate(0, 4).config().clone()
    });
    let _a = p.acquire("a", None, 0).await.unwrap();
    let b = p.acquire("b", None, 0).await.unwrap();
    let p2 = p.clone();
    let third = tokio::spawn(async move { p2.acquire("c", None, 0).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !third.is_finished(),
        "a third request waits for the process cap"
    );
    drop(b);
    assert!(third.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn shallower_waiters_go_first() {
    let p = gate(10, 1);
    let first = p.acquire("h", None, 0).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for depth in [5u32, 3, 9, 1, 3] {
        let (p, order) = (p.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let permit = p.acquire("h", None, depth).await.unwrap();
            order.lock().unwrap().push(depth);
            drop(permit);
        }));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(first);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![1, 3, 3, 5, 9]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_gives_its_turn_away() {
    let p = gate(0, 1);
    let first = p.acquire("h", None, 0).await.unwrap();
    let p2 = p.clone();
    let cancelled = tokio::spawn(async move { p2.acquire("h", None, 0).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(1)).await;
    cancelled.abort();
    let p3 = p.clone();
    let next = tokio::spawn(async move { p3.acquire("h", None, 1).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(first);
    assert!(next.await.unwrap(), "the live waiter gets the slot");
}

#[tokio::test(start_paused = true)]
async fn long_wait_is_refused_not_queued() {
    let p = Politeness::new(PolitenessConfig {
        max_wait: Some(Duration::from_secs(5)),
        ..gate(2_000, 1).config().clone()
    });
    let first = p.acquire("h", None, 0).await.unwrap();
    // Expected wait: 2 s to the next start, plus one round behind the one in flight.
    let p2 = p.clone();
    let queued = tokio::spawn(async move { p2.acquire("h", None, 5).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let refused = p
        .acquire("h", None, 5)
        .await
        .err()
        .expect("a request expected to wait ~6 s is refused");
    assert!(refused.retry_after >= Duration::from_secs(5));
    // A shallower request goes before the queued one, so its wait is short enough.
    let p3 = p.clone();
    let shallow =
        tokio::spawn(async move { p3.acquire("h", None, 1).await.map(|_| Instant::now()) });
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(first);
    let shallow_at = shallow
        .await
        .unwrap()
        .expect("a shallower request is not refused");
    assert!(
        queued.await.unwrap(),
        "the request within the bound is served"
    );
    assert!(
        Instant::now() >= shallow_at + Duration::from_secs(2),
        "after the shallow one"
    );
}

#[tokio::test(start_paused = true)]
async fn back_off_pauses_the_host() {
    let p = gate(10, 1);
    let mut permit = p.acquire("h", None, 0).await.unwrap();
    permit.back_off(Duration::from_secs(30));
    drop(permit);
    let t = Instant::now();
    drop(p.acquire("h", None, 0).await.unwrap());
    assert_eq!(t.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn autothrottle_follows_latency() {
    let p = Politeness::new(PolitenessConfig {
        autothrottle: true,
        ..gate(10, 1).config().clone()
    });
    p.acquire("h", None, 0)
        .await
        .unwrap()
        .finish(Duration::from_secs(3));
    let t = Instant::now();
    drop(p.acquire("h", None, 0).await.unwrap());
    // The previous start scheduled the next at +10ms (no latency known yet).
    assert!(t.elapsed() <= Duration::from_millis(10));
    let t = Instant::now();
    drop(p.acquire("h", None, 0).await.unwrap());
    assert_eq!(t.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn quiet_at_waits_for_in_flight_and_the_delay() {
    let p = gate(500, 1);
    let permit = p.acquire("h", None, 0).await.unwrap();
    assert!(p.quiet_at(|k| k == "h").is_none(), "busy while in flight");
    assert!(p.quiet_at(|k| k == "other").is_some());
    let released = Instant::now();
    drop(permit);
    let at = p.quiet_at(|k| k == "h").unwrap();
    assert_eq!(at, released + Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn the_delay_counts_from_the_actual_start() {
    let p = gate(100, 1);
    let mut permit = p.acquire("h", None, 0).await.unwrap();
    // The task holding the slot ran late: the request goes out 40 ms after the grant.
    tokio::time::sleep(Duration::from_millis(40)).await;
    permit.start();
    let sent = Instant::now();
    drop(permit);
    drop(p.acquire("h", None, 0).await.unwrap());
    assert_eq!(sent.elapsed(), Duration::from_millis(100));
}
