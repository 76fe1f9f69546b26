//! The dupefilter's depth rule, on both backends: Redis (a real redis-server the test
//! starts) and the in-memory one the embedded mode uses.

use jetcrawl_bench::servers::RedisServer;
use jetcrawl_shared::dupefilter::{Dupefilter, MemoryDupefilter, RedisDupefilter};

async fn suite(df: Dupefilter, backend: &str) {
    let (a, b, c) = (0x1234_5678_9abc_def0u64, 0xfedc_ba98_7654_3210u64, 7u64);
    assert_eq!(
        df.check(&[(a, 3), (b, 0)]).await.unwrap(),
        vec![false, false],
        "{backend}: nothing seen yet"
    );
    df.add(&[(a, 3)]).await.unwrap();
    assert_eq!(
        df.check(&[(a, 3), (a, 5), (a, 2), (a, 0)]).await.unwrap(),
        vec![true, true, false, false],
        "{backend}: seen at its depth and deeper, news at a shallower one"
    );
    let deeper = df
        .add_counting_deeper(&[(a, 1), (b, 2), (c, 9)], 3, 31)
        .await
        .unwrap();
    assert_eq!(
        deeper, 1,
        "{backend}: only `a` was scheduled before, deeper"
    );
    assert_eq!(
        df.check(&[(a, 1), (a, 2), (b, 2), (c, 40)]).await.unwrap(),
        vec![true, true, true, true],
        "{backend}: the shallower depth is what counts now"
    );
    // Depths from 31 on share one value.
    let d = 0xdddd_0000_0000_0042u64;
    df.add(&[(d, 100)]).await.unwrap();
    assert_eq!(
        df.check(&[(d, 31), (d, 1000), (d, 30)]).await.unwrap(),
        vec![true, true, false],
        "{backend}"
    );
}

#[tokio::test]
async fn depth_rule_on_redis_and_in_memory() {
    let redis = RedisServer::start().await;
    let df = RedisDupefilter::connect(&redis.url(), "dftest")
        .await
        .unwrap();
    suite(Dupefilter::Redis(df), "redis").await;
    suite(Dupefilter::Memory(MemoryDupefilter::default()), "memory").await;
}
