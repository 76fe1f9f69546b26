//! What the site saw, measured from its request log: gaps between request starts,
//! requests in flight at once, requests per sender.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::hosts::Hit;

/// Consecutive request starts to one host, `every`-th apart: `(gap, earlier, later)`.
/// `every = 1` gives the gaps between consecutive starts; `every = c` the gaps between
/// a start and the c-th before it, which are at least the delay when each of `c`
/// slots waits the delay.
pub fn start_gaps(reqs: &[Hit], every: usize) -> Vec<(Duration, &Hit, &Hit)> {
    let mut sorted: Vec<&Hit> = reqs.iter().collect();
    sorted.sort_by_key(|r| r.start);
    (every..sorted.len())
        .map(|i| {
            let (a, b) = (sorted[i - every], sorted[i]);
            (b.start.duration_since(a.start), a, b)
        })
        .collect()
}

/// The most requests in flight at once (a request still unfinished counts to the end).
pub fn max_in_flight(reqs: &[Hit]) -> usize {
    let mut events: Vec<(Instant, i32)> = Vec::new();
    let now = Instant::now();
    for r in reqs {
        events.push((r.start, 1));
        events.push((r.end.unwrap_or(now), -1));
    }
    // An end and a start at the same instant do not overlap: ends first.
    events.sort();
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, delta) in events {
        cur += delta;
        max = max.max(cur);
    }
    max as usize
}

/// Requests per sender (`fetcher k` or address), for messages.
pub fn by_sender(reqs: &[Hit]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in reqs {
        *out.entry(r.sender()).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn hit(start_ms: u64, end_ms: u64, t0: Instant) -> Hit {
        Hit {
            host: 0,
            host_header: String::new(),
            path: "/".into(),
            peer: IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2)),
            start: t0 + Duration::from_millis(start_ms),
            end: Some(t0 + Duration::from_millis(end_ms)),
        }
    }

    #[test]
    fn gaps_and_in_flight_are_measured_from_the_log() {
        let t0 = Instant::now();
        let reqs = vec![
            hit(0, 50, t0),
            hit(100, 150, t0),
            hit(130, 200, t0),
            hit(200, 210, t0),
        ];
        let gaps: Vec<u128> = start_gaps(&reqs, 1)
            .iter()
            .map(|(g, _, _)| g.as_millis())
            .collect();
        assert_eq!(gaps, vec![100, 30, 70]);
        let per_slot: Vec<u128> = start_gaps(&reqs, 2)
            .iter()
            .map(|(g, _, _)| g.as_millis())
            .collect();
        assert_eq!(per_slot, vec![130, 100]);
        // 130-150 overlaps; the request ending at 200 and the one starting at 200 do not.
        assert_eq!(max_in_flight(&reqs), 2);
        assert_eq!(max_in_flight(&reqs[..2]), 1);
        assert_eq!(reqs[0].fetcher(), Some(2));
    }
}
