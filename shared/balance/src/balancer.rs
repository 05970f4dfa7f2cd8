//! Endpoint choice for one cluster on one worker.

use rand::Rng;

use crate::config::LbAlgorithm;
use crate::maglev::Maglev;
use crate::ring::Ring;

#[derive(Debug, Clone)]
enum Kind {
    RoundRobin,
    LeastRequest,
    Random,
    Ring(Ring),
    Maglev(Maglev),
}

/// Picks an endpoint index in `0..len`. Built once per endpoint list (the
/// hash tables are the expensive part), then used for every request.
#[derive(Debug, Clone)]
pub struct Balancer {
    kind: Kind,
    len: usize,
    next: usize,
    /// Requests in flight per endpoint (LEAST_REQUEST), maintained by the
    /// caller through `started`/`finished`.
    active: Vec<u32>,
}

impl Balancer {
    /// `keys` identify the endpoints stably (`ip:port`) for the hash algorithms.
    pub fn new<K: AsRef<[u8]>>(algorithm: &LbAlgorithm, keys: &[K]) -> Balancer {
        let kind = match algorithm {
            LbAlgorithm::RoundRobin => Kind::RoundRobin,
            LbAlgorithm::LeastRequest => Kind::LeastRequest,
            LbAlgorithm::Random => Kind::Random,
            LbAlgorithm::RingHash { minimum_ring_size } => {
                Kind::Ring(Ring::new(keys, *minimum_ring_size))
            }
            LbAlgorithm::Maglev { table_size } => Kind::Maglev(Maglev::new(keys, *table_size)),
        };
        Balancer {
            kind,
            len: keys.len(),
            next: 0,
            active: vec![0; keys.len()],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_hash(&self) -> bool {
        matches!(self.kind, Kind::Ring(_) | Kind::Maglev(_))
    }

    /// `hash`: the request's consistent-hash key (ignored by the other
    /// algorithms; a hash algorithm without one picks at random).
    /// `available`: false for endpoints to skip (ejected).
    pub fn pick<R: Rng>(
        &mut self,
        hash: Option<u64>,
        rng: &mut R,
        available: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.len;
        if n == 0 {
            return None;
        }
        match (&self.kind, hash) {
            (Kind::Ring(r), Some(h)) => return r.pick(h, available),
            (Kind::Maglev(m), Some(h)) => return m.pick(h, available),
            _ => {}
        }
        match self.kind {
            Kind::RoundRobin => {
                let start = self.next;
                let found = (0..n).map(|s| (start + s) % n).find(|&i| available(i))?;
                self.next = (found + 1) % n;
                Some(found)
            }
            Kind::LeastRequest => {
                let first = probe(rng.random_range(0..n), n, &available)?;
                if n == 1 {
                    return Some(first);
                }
                let second = probe(rng.random_range(0..n), n, &available)?;
                // Fewer in flight wins; a tie keeps the first random choice.
                Some(if self.active[second] < self.active[first] {
                    second
                } else {
                    first
                })
            }
            _ => probe(rng.random_range(0..n), n, &available),
        }
    }

    /// A request went to endpoint `i`.
    pub fn started(&mut self, i: usize) {
        if let Some(a) = self.active.get_mut(i) {
            *a += 1;
        }
    }

    /// A request to endpoint `i` finished (in any way).
    pub fn finished(&mut self, i: usize) {
        if let Some(a) = self.active.get_mut(i) {
            *a = a.saturating_sub(1);
        }
    }

    pub fn active(&self, i: usize) -> u32 {
        self.active.get(i).copied().unwrap_or(0)
    }
}

/// `start` if available, else the next available index after it.
fn probe(start: usize, n: usize, available: &impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|s| (start + s) % n).find(|&i| available(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_bytes;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.2.0.{i}:80")).collect()
    }

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(42)
    }

    #[test]
    fn round_robin_cycles_and_skips_unavailable() {
        let mut b = Balancer::new(&LbAlgorithm::RoundRobin, &keys(3));
        let mut r = rng();
        let picks: Vec<usize> = (0..6)
            .map(|_| b.pick(None, &mut r, |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let picks: Vec<usize> = (0..4)
            .map(|_| b.pick(None, &mut r, |i| i != 1).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        assert_eq!(b.pick(None, &mut r, |_| false), None);
        assert_eq!(
            Balancer::new::<&str>(&LbAlgorithm::RoundRobin, &[]).pick(None, &mut r, |_| true),
            None
        );
    }

    #[test]
    fn random_spreads_evenly() {
        let mut b = Balancer::new(&LbAlgorithm::Random, &keys(4));
        let mut r = rng();
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[b.pick(None, &mut r, |_| true).unwrap()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn least_request_prefers_the_less_busy_endpoint() {
        let mut b = Balancer::new(&LbAlgorithm::LeastRequest, &keys(2));
        let mut r = rng();
        for _ in 0..10 {
            b.started(0);
        }
        let mut counts = [0u32; 2];
        for _ in 0..1_000 {
            counts[b.pick(None, &mut r, |_| true).unwrap()] += 1;
        }
        // Endpoint 0 wins only when both choices land on it (about 1/4).
        assert!(counts[1] > 650, "{counts:?}");
        assert!(counts[0] > 150, "{counts:?}");
        for _ in 0..10 {
            b.finished(0);
        }
        assert_eq!(b.active(0), 0);
        b.finished(0);
        assert_eq!(b.active(0), 0, "never below zero");
    }

    #[test]
    fn least_request_balances_in_flight_load() {
        // Requests that never finish: P2C keeps the in-flight counts close.
        let mut b = Balancer::new(&LbAlgorithm::LeastRequest, &keys(5));
        let mut r = rng();
        for _ in 0..1_000 {
            let i = b.pick(None, &mut r, |_| true).unwrap();
            b.started(i);
        }
        let counts: Vec<u32> = (0..5).map(|i| b.active(i)).collect();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 10, "{counts:?}");
    }

    #[test]
    fn hash_algorithms_keep_a_key_on_one_endpoint() {
        for algo in [
            LbAlgorithm::RingHash {
                minimum_ring_size: 1024,
            },
            LbAlgorithm::Maglev { table_size: 65537 },
        ] {
            let mut b = Balancer::new(&algo, &keys(5));
            assert!(b.is_hash());
            let mut r = rng();
            for k in 0..200 {
                let h = hash_bytes(format!("user{k}").as_bytes());
                let first = b.pick(Some(h), &mut r, |_| true).unwrap();
                for _ in 0..5 {
                    assert_eq!(b.pick(Some(h), &mut r, |_| true), Some(first));
                }
            }
            // Without a key: random, so all endpoints see traffic.
            let mut seen = [false; 5];
            for _ in 0..500 {
                seen[b.pick(None, &mut r, |_| true).unwrap()] = true;
            }
            assert!(seen.iter().all(|s| *s), "{algo:?}");
        }
    }
}
