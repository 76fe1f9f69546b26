use super::*;

#[test]
fn keys_alike_in_their_low_bits_spread_over_a_table() {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let build = BuildHasherDefault::<FpHasher>::default();
    // A hostile page's links, chosen so their hashes share the low 32 bits.
    let low: std::collections::HashSet<u64> = (0..1000u64)
        .map(|i| build.hash_one((i << 32) | 0xabcd) & 0xffff)
        .collect();
    assert!(low.len() > 900, "{} distinct bucket indexes", low.len());
    let wide: std::collections::HashSet<u64> = (0..1000u128)
        .map(|i| build.hash_one((i << 96) | 0xabcd) & 0xffff)
        .collect();
    assert!(wide.len() > 900, "{} distinct bucket indexes", wide.len());
}

#[test]
fn known_seen_keeps_the_shallowest_depth_and_two_generations() {
    let mut known = KnownSeen::default();
    known.note((1, 4));
    assert!(known.holds((1, 4)) && known.holds((1, 40)));
    assert!(!known.holds((1, 3)), "shallower than known: ask");
    known.note((1, 6));
    assert!(
        known.holds((1, 4)),
        "a deeper note does not hide a shallower one"
    );
    known.note((1, 2));
    assert!(known.holds((1, 2)));
    known.note((2, 100));
    assert!(known.holds((2, 31)), "depths from 31 on are one");
    let n = KnownSeen::GENERATION as u64;
    for fp in 10..10 + n {
        known.note((fp, 0));
    }
    assert!(known.holds((1, 2)), "the first generation is still there");
    for fp in 10 + n..10 + 2 * n {
        known.note((fp, 0));
    }
    assert!(
        !known.holds((1, 2)),
        "two generations later it is forgotten"
    );
    assert!(known.holds((10 + 2 * n - 1, 0)));
    assert!(known.current.len() + known.previous.len() <= 2 * KnownSeen::GENERATION);
}

#[test]
fn bucket_and_member_cover_the_whole_fingerprint() {
    let d = MEMBER_MASK;
    for fp in [
        0u64,
        1,
        u64::MAX,
        0xabcd_0000_0000_0001,
        0x1234_5678_9abc_def0,
    ] {
        let bucket = fp >> (64 - BUCKET_BITS);
        let member = fp & d;
        assert_eq!((bucket << (64 - BUCKET_BITS)) | member, fp);
        assert!(i64::try_from(member).is_ok());
        for depth in [0, 7, MAX_TRACKED_DEPTH, 1000] {
            let m = super::member(fp, depth);
            assert!(m >= 0, "members stay positive integers (intset)");
            assert_eq!((m as u64) >> DEPTH_BITS, fp & MEMBER_MASK);
            assert_eq!((m as u64) & 31, u64::from(depth.min(MAX_TRACKED_DEPTH)));
        }
    }
}

#[tokio::test]
async fn memory_check_then_add() {
    let df = Dupefilter::Memory(MemoryDupefilter::default());
    assert_eq!(
        df.check(&[(1, 0), (2, 0)]).await.unwrap(),
        vec![false, false]
    );
    df.add(&[(2, 0)]).await.unwrap();
    assert_eq!(
        df.check(&[(1, 0), (2, 0)]).await.unwrap(),
        vec![false, true]
    );
}

#[tokio::test]
async fn memory_a_shallower_depth_is_news_a_deeper_one_is_not() {
    let df = Dupefilter::Memory(MemoryDupefilter::default());
    df.add(&[(9, 4)]).await.unwrap();
    assert_eq!(
        df.check(&[(9, 5), (9, 4), (9, 3)]).await.unwrap(),
        vec![true, true, false]
    );
    assert_eq!(
        df.add_counting_deeper(&[(9, 3), (8, 1), (9, 2)], 2, 8)
            .await
            .unwrap(),
        1,
        "(9, 3) was added at 4 before; (8, 1) is new; (9, 2) is not asked"
    );
    assert_eq!(df.check(&[(9, 3), (9, 6)]).await.unwrap(), vec![true, true]);
}
