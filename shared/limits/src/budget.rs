//! Envoy's retry budget: retries in flight may be at most `percent` of the
//! requests in flight, but always at least `min_concurrency` (so a quiet
//! service can still retry). Stops retry storms from multiplying load on a
//! backend that is already failing.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_concurrency: u32,
}

/// The default (and Envoy's): 20 % of active requests, minimum 3.
impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_concurrency: 3,
        }
    }
}

impl RetryBudget {
    /// May one more retry start with `active` requests and `retries`
    /// retries already in flight?
    pub fn allows(&self, active: u32, retries: u32) -> bool {
        let share = (f64::from(active) * self.percent / 100.0) as u32;
        retries < share.max(self.min_concurrency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_percent_of_active_with_a_floor_of_three() {
        let b = RetryBudget::default();
        assert!(b.allows(0, 2));
        assert!(!b.allows(0, 3), "floor of 3");
        assert!(!b.allows(10, 3), "20% of 10 = 2 < floor");
        assert!(b.allows(100, 19));
        assert!(!b.allows(100, 20));
    }
}
