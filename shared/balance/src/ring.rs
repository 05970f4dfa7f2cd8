//! Envoy's ring hash (ketama-style): every endpoint owns the same number of
//! points on a 64-bit ring, each the hash of `"<endpoint key>_<i>"`; a
//! request goes to the first point at or after its hash.
//!
//! Envoy gives each endpoint `ceil(minimum_ring_size / endpoints)` points,
//! so adding or removing one endpoint changes every endpoint's point count
//! and moves keys between endpoints that stayed (about 8% of all keys when
//! 1 of 10 goes). We round that count up to a power of two: the ring still
//! has at least `minimum_ring_size` points, and removing an endpoint moves
//! only the keys it owned, except when the count crosses a power of two.

use crate::hash::hash_bytes;

#[derive(Debug, Clone)]
pub struct Ring {
    /// (point hash, endpoint index), sorted by hash.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// `keys` identify endpoints stably (e.g. `ip:port`); their order only
    /// fixes the indices `pick` returns.
    pub fn new<K: AsRef<[u8]>>(keys: &[K], minimum_ring_size: u64) -> Ring {
        if keys.is_empty() {
            return Ring { points: Vec::new() };
        }
        let per_endpoint = points_per_endpoint(keys.len(), minimum_ring_size);
        let mut points = Vec::with_capacity(per_endpoint as usize * keys.len());
        let mut buf = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            for i in 0..per_endpoint {
                buf.clear();
                buf.extend_from_slice(key.as_ref());
                buf.push(b'_');
                buf.extend_from_slice(i.to_string().as_bytes());
                points.push((hash_bytes(&buf), index as u32));
            }
        }
        // Ties (astronomically rare) resolve by index so every worker agrees.
        points.sort_unstable();
        Ring { points }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The owner of `hash`, walking clockwise past endpoints that are not
    /// `available` (ejected): their keys spread over their ring neighbours.
    pub fn pick(&self, hash: u64, available: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(h, _)| *h < hash);
        let n = self.points.len();
        (0..n)
            .map(|step| self.points[(start + step) % n].1 as usize)
            .find(|&i| available(i))
    }
}

/// `ceil(minimum / endpoints)` rounded up to a power of two, with the whole
/// ring kept within `MAX_RING_SIZE`.
fn points_per_endpoint(endpoints: usize, minimum_ring_size: u64) -> u64 {
    let n = endpoints.max(1) as u64;
    let min = minimum_ring_size.clamp(1, crate::config::MAX_RING_SIZE);
    let max_per_endpoint = (crate::config::MAX_RING_SIZE / n).max(1);
    min.div_ceil(n).next_power_of_two().min(max_per_endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_bytes;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn ring_size_and_balance() {
        let ring = Ring::new(&keys(3), 1024);
        // ceil(1024 / 3) = 342, rounded up to 512 points each.
        assert_eq!(ring.len(), 512 * 3);
        let mut counts = [0u32; 3];
        for k in 0..30_000 {
            counts[ring
                .pick(hash_bytes(format!("user{k}").as_bytes()), |_| true)
                .unwrap()] += 1;
        }
        for c in counts {
            // Each endpoint owns about a third of the ring.
            assert!((8_500..11_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_one_endpoint_moves_only_its_keys() {
        let all = keys(10);
        let before = Ring::new(&all, 1024);
        let removed = 3;
        let rest: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, k)| k.clone())
            .collect();
        let after = Ring::new(&rest, 1024);
        let (mut moved, mut moved_elsewhere) = (0, 0);
        let total = 20_000;
        for k in 0..total {
            let h = hash_bytes(format!("session-{k}").as_bytes());
            let a = &all[before.pick(h, |_| true).unwrap()];
            let b = &rest[after.pick(h, |_| true).unwrap()];
            if a != b {
                moved += 1;
                if *a != all[removed] {
                    moved_elsewhere += 1;
                }
            }
        }
        // Only the removed endpoint's share (about 1/10) moves: 10 and 9
        // endpoints both get 128 points each, so no other key changes owner.
        assert!(moved < total * 14 / 100, "moved {moved}");
        assert!(moved > total * 6 / 100, "moved {moved}");
        assert_eq!(moved_elsewhere, 0);
    }

    #[test]
    fn ring_is_bounded_by_the_maximum_size() {
        assert_eq!(points_per_endpoint(3, u64::MAX), 2_796_202);
        assert_eq!(points_per_endpoint(10, 1024), 128);
        assert_eq!(points_per_endpoint(9, 1024), 128);
        assert_eq!(points_per_endpoint(2000, 1024), 1);
        assert_eq!(points_per_endpoint(0, 0), 1);
    }

    #[test]
    fn unavailable_endpoints_are_skipped_and_keys_of_others_stay() {
        let ring = Ring::new(&keys(4), 1024);
        for k in 0..1000 {
            let h = hash_bytes(format!("k{k}").as_bytes());
            let owner = ring.pick(h, |_| true).unwrap();
            let fallback = ring.pick(h, |i| i != 2).unwrap();
            assert_ne!(fallback, 2);
            if owner != 2 {
                assert_eq!(owner, fallback);
            }
        }
        assert_eq!(ring.pick(1, |_| false), None);
        assert_eq!(Ring::new::<String>(&[], 1024).pick(1, |_| true), None);
    }
}
