//! Page budgets (`max_pages`, `max_pages_per_host`), kept beside the dupefilter so
//! that every parser draws on one count.
//!
//! A request is *admitted* once: its member (the request's message id, which carries
//! its fingerprint and tracked depth) joins the crawl's set of admitted requests and
//! bumps its host's count, if the crawl and the host are both under their limits. Asked
//! again for a member already admitted (a redelivered page, a retry after a failed
//! publish, two parsers racing on one link), the answer is yes and nothing is counted:
//! so the count is exact however often a page is handled. The publish that follows
//! uses the same message id, so the duplicate window makes the racing copies one
//! request, and each admitted request becomes one page record.
//!
//! Redis: one Lua script per batch (atomic, so parsers cannot both take the last
//! slot) over two keys that share a hash tag, so a Redis Cluster serves them from one
//! slot: `jetcrawl:{<crawl>}:budget:admitted` (a set of message ids; ~70 bytes per
//! admitted request, bounded by `max_pages` when set) and
//! `jetcrawl:{<crawl>}:budget:hosts` (a hash: host → requests admitted).

use std::collections::{HashMap, HashSet};

use super::{Batch, Dupefilter, RedisDupefilter};
use crate::config::Budget;
use crate::error::Error;

/// One request asking for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The request's message id (fingerprint and depth): what makes asking idempotent.
    pub member: String,
    /// Its host name.
    pub host: String,
}

/// The answer for one [`Ask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted (now or before).
    Admitted,
    /// The crawl has had `max_pages`.
    OverCrawl,
    /// Its host has had `max_pages_per_host`.
    OverHost,
}

impl Admission {
    /// The metric label of a refusal (`None` when admitted).
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Admission::Admitted => None,
            Admission::OverCrawl => Some("max_pages"),
            Admission::OverHost => Some("max_pages_per_host"),
        }
    }
}

/// Returns, for each ask, two flags: admitted, and (if not) whether its host's limit
/// was the reason. A limit of -1 is none.
const ADMIT: &str = r#"
local admitted, hosts = KEYS[1], KEYS[2]
local max_pages, max_host = tonumber(ARGV[1]), tonumber(ARGV[2])
local total = redis.call('SCARD', admitted)
local out = {}
for i = 3, #ARGV, 2 do
  local member, host = ARGV[i], ARGV[i + 1]
  if redis.call('SISMEMBER', admitted, member) == 1 then
    out[#out + 1] = 1; out[#out + 1] = 0
  elseif max_pages >= 0 and total >= max_pages then
    out[#out + 1] = 0; out[#out + 1] = 0
  elseif max_host >= 0 and tonumber(redis.call('HGET', hosts, host) or '0') >= max_host then
    out[#out + 1] = 0; out[#out + 1] = 1
  else
    redis.call('SADD', admitted, member)
    redis.call('HINCRBY', hosts, host, 1)
    total = total + 1
    out[#out + 1] = 1; out[#out + 1] = 0
  end
end
return out
"#;

impl Dupefilter {
    /// Admit requests under `budget`, in order (one round trip). With no limit set,
    /// every request is admitted and nothing is stored.
    pub async fn admit(&self, budget: &Budget, asks: &[Ask]) -> Result<Vec<Admission>, Error> {
        if !budget.is_limited() || asks.is_empty() {
            return Ok(vec![Admission::Admitted; asks.len()]);
        }
        match self {
            Dupefilter::Redis(r) => r.admit(budget, asks).await,
            Dupefilter::Memory(m) => {
                let mut state = m.budget.lock().unwrap_or_else(|p| p.into_inner());
                Ok(asks.iter().map(|a| state.admit(budget, a)).collect())
            }
        }
    }
}

impl RedisDupefilter {
    fn budget_keys(&self) -> (String, String) {
        (
            format!("jetcrawl:{{{}}}:budget:admitted", self.crawl),
            format!("jetcrawl:{{{}}}:budget:hosts", self.crawl),
        )
    }

    async fn admit(&self, budget: &Budget, asks: &[Ask]) -> Result<Vec<Admission>, Error> {
        let (admitted, hosts) = self.budget_keys();
        let limit = |l: Option<u64>| l.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ADMIT)
            .arg(2)
            .arg(&admitted)
            .arg(&hosts)
            .arg(limit(budget.max_pages))
            .arg(limit(budget.max_pages_per_host));
        for ask in asks {
            cmd.arg(&ask.member).arg(&ask.host);
        }
        let mut batch = Batch::new(&self.conn);
        batch.add(&admitted, cmd, true);
        let reply = batch.query().await?;
        let flags = reply.into_iter().next().unwrap_or_default();
        if flags.len() != asks.len() * 2 {
            return Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "budget script answered with the wrong number of flags",
            ))));
        }
        Ok(flags
            .chunks(2)
            .map(|pair| match pair {
                [true, _] => Admission::Admitted,
                [false, true] => Admission::OverHost,
                _ => Admission::OverCrawl,
            })
            .collect())
    }
}

/// The embedded mode's budget: the same rules, in memory.
#[derive(Debug, Default)]
pub(super) struct MemoryBudget {
    admitted: HashSet<String>,
    hosts: HashMap<String, u64>,
}

impl MemoryBudget {
    fn admit(&mut self, budget: &Budget, ask: &Ask) -> Admission {
        if self.admitted.contains(&ask.member) {
            return Admission::Admitted;
        }
        if budget
            .max_pages
            .is_some_and(|max| self.admitted.len() as u64 >= max)
        {
            return Admission::OverCrawl;
        }
        let host = self.hosts.get(&ask.host).copied().unwrap_or(0);
        if budget.max_pages_per_host.is_some_and(|max| host >= max) {
            return Admission::OverHost;
        }
        self.admitted.insert(ask.member.clone());
        *self.hosts.entry(ask.host.clone()).or_insert(0) += 1;
        Admission::Admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dupefilter::MemoryDupefilter;

    fn ask(member: &str, host: &str) -> Ask {
        Ask {
            member: member.into(),
            host: host.into(),
        }
    }

    #[tokio::test]
    async fn memory_budget_counts_each_member_once_and_names_the_limit() {
        let df = Dupefilter::Memory(MemoryDupefilter::default());
        let budget = Budget {
            max_pages: Some(3),
            max_pages_per_host: Some(2),
        };
        let first = df
            .admit(&budget, &[ask("1", "a"), ask("2", "a"), ask("3", "a")])
            .await
            .unwrap();
        assert_eq!(
            first,
            [
                Admission::Admitted,
                Admission::Admitted,
                Admission::OverHost
            ]
        );
        // Asked again (a redelivered page): still admitted, not counted again.
        let again = df
            .admit(&budget, &[ask("1", "a"), ask("4", "b"), ask("5", "b")])
            .await
            .unwrap();
        assert_eq!(
            again,
            [
                Admission::Admitted,
                Admission::Admitted,
                Admission::OverCrawl
            ]
        );
        let unlimited = df
            .admit(&Budget::default(), &[ask("9", "z")])
            .await
            .unwrap();
        assert_eq!(unlimited, [Admission::Admitted]);
    }
}
