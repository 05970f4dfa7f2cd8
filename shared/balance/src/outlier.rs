//! Outlier detection with Istio/Envoy semantics, for endpoints by index.
//!
//! - A 5xx response, a connect failure, a reset before the response or an
//!   upstream timeout counts as a 5xx; 502/503/504 and the local failures
//!   also count as gateway errors (Envoy without
//!   `split_external_local_origin_errors`). Any other response resets both
//!   counts; a non-gateway 5xx resets the gateway count.
//! - Reaching `consecutive_5xx` or `consecutive_gateway_errors` ejects the
//!   endpoint for `base_ejection_time × ejections` (capped at
//!   `max(max_ejection_time, base_ejection_time)`), unless that would eject
//!   more than `max_ejection_percent` of the endpoints (one may always be).
//! - Every `interval`, an endpoint that is not ejected has its ejection
//!   count lowered by one (so a host that stays healthy is forgiven).
//! - When fewer than `min_health_percent` of the endpoints are healthy,
//!   ejections are ignored (panic mode: everyone takes traffic).

use std::time::{Duration, Instant};

use crate::config::OutlierConfig;

/// What one upstream attempt ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamResult {
    Status(u16),
    ConnectFailure,
    /// Closed or reset before a complete response head.
    Reset,
    Timeout,
}

impl UpstreamResult {
    fn is_5xx(self) -> bool {
        match self {
            UpstreamResult::Status(s) => (500..600).contains(&s),
            _ => true,
        }
    }

    fn is_gateway_error(self) -> bool {
        match self {
            UpstreamResult::Status(s) => matches!(s, 502..=504),
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

#[derive(Debug, Clone)]
pub struct OutlierDetector {
    config: OutlierConfig,
    hosts: Vec<Host>,
    ejected: usize,
    last_sweep: Option<Instant>,
}

impl OutlierDetector {
    pub fn new(config: OutlierConfig, endpoints: usize) -> Self {
        Self {
            config,
            hosts: vec![Host::default(); endpoints],
            ejected: 0,
            last_sweep: None,
        }
    }

    /// The same detector for a new endpoint list: `old_index(i)` is where new
    /// endpoint `i` was before (None: new endpoint, clean state). Ejections
    /// and counts survive endpoint churn.
    pub fn remap(&self, endpoints: usize, old_index: impl Fn(usize) -> Option<usize>) -> Self {
        let hosts: Vec<Host> = (0..endpoints)
            .map(|i| {
                old_index(i)
                    .and_then(|o| self.hosts.get(o).cloned())
                    .unwrap_or_default()
            })
            .collect();
        let ejected = hosts.iter().filter(|h| h.ejected_until.is_some()).count();
        Self {
            config: self.config.clone(),
            hosts,
            ejected,
            last_sweep: self.last_sweep,
        }
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Records an attempt's result; true when it ejected the endpoint.
    pub fn report(&mut self, i: usize, result: UpstreamResult, now: Instant) -> bool {
        self.refresh(now);
        let Some(host) = self.hosts.get_mut(i) else {
            return false;
        };
        if !result.is_5xx() {
            host.consecutive_5xx = 0;
            host.consecutive_gateway = 0;
            return false;
        }
        host.consecutive_5xx += 1;
        if result.is_gateway_error() {
            host.consecutive_gateway += 1;
        } else {
            host.consecutive_gateway = 0;
        }
        if host.ejected_until.is_some() {
            return false;
        }
        let over = |limit: Option<u32>, count: u32| limit.is_some_and(|l| l > 0 && count >= l);
        let trip = over(self.config.consecutive_5xx, host.consecutive_5xx)
            || over(
                self.config.consecutive_gateway_errors,
                host.consecutive_gateway,
            );
        if !trip {
            return false;
        }
        // Envoy: eject when the share after ejecting stays within the limit,
        // or when nobody is ejected yet.
        let share_after = 100 * (self.ejected + 1) / self.hosts.len().max(1);
        if self.ejected > 0 && share_after > self.config.max_ejection_percent as usize {
            return false;
        }
        let host = &mut self.hosts[i];
        host.ejections += 1;
        host.consecutive_5xx = 0;
        host.consecutive_gateway = 0;
        let cap = self
            .config
            .max_ejection_time
            .max(self.config.base_ejection_time);
        let time = self
            .config
            .base_ejection_time
            .saturating_mul(host.ejections)
            .min(cap);
        host.ejected_until = Some(now + time);
        self.ejected += 1;
        true
    }

    /// Returns endpoints whose ejection ran out and decays ejection counts
    /// once per `interval`. Cheap when nothing is due.
    pub fn refresh(&mut self, now: Instant) {
        if self.ejected > 0 {
            for h in &mut self.hosts {
                if h.ejected_until.is_some_and(|t| now >= t) {
                    h.ejected_until = None;
                    self.ejected -= 1;
                }
            }
        }
        let due = match self.last_sweep {
            None => {
                self.last_sweep = Some(now);
                false
            }
            Some(t) => {
                now.saturating_duration_since(t)
                    >= self.config.interval.max(Duration::from_millis(1))
            }
        };
        if due {
            self.last_sweep = Some(now);
            for h in &mut self.hosts {
                if h.ejected_until.is_none() && h.ejections > 0 {
                    h.ejections -= 1;
                }
            }
        }
    }

    pub fn is_ejected(&self, i: usize) -> bool {
        self.hosts.get(i).is_some_and(|h| h.ejected_until.is_some())
    }

    /// Whether endpoint `i` may take traffic (call `refresh` first). In
    /// panic mode (too few healthy endpoints) everyone may.
    pub fn is_available(&self, i: usize) -> bool {
        !self.is_ejected(i) || self.panic()
    }

    pub fn ejected_count(&self) -> usize {
        self.ejected
    }

    fn panic(&self) -> bool {
        let n = self.hosts.len();
        n > 0 && 100 * (n - self.ejected) < self.config.min_health_percent as usize * n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UpstreamResult::*;

    fn config() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    #[test]
    fn consecutive_5xx_ejects_and_success_resets() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config(), 2);
        assert!(!d.report(0, Status(500), t0));
        assert!(!d.report(0, Status(503), t0));
        assert!(!d.report(0, Status(200), t0), "a success resets the count");
        assert!(!d.report(0, Status(500), t0));
        assert!(!d.report(0, ConnectFailure, t0));
        assert!(d.report(0, Timeout, t0), "local failures count as 5xx");
        assert!(d.is_ejected(0));
        assert!(!d.is_available(0));
        assert!(d.is_available(1));
        // 4xx is not an error.
        for _ in 0..10 {
            assert!(!d.report(1, Status(404), t0));
        }
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config(), 2);
        let eject = |d: &mut OutlierDetector, at: Instant| {
            for _ in 0..3 {
                d.report(0, Status(502), at);
            }
            assert!(d.is_ejected(0));
        };
        eject(&mut d, t0);
        d.refresh(t0 + Duration::from_secs(29));
        assert!(d.is_ejected(0));
        let t1 = t0 + Duration::from_secs(30);
        d.refresh(t1);
        assert!(!d.is_ejected(0), "back after base_ejection_time");
        eject(&mut d, t1);
        d.refresh(t1 + Duration::from_secs(59));
        assert!(d.is_ejected(0), "second ejection lasts 2 × base");
        d.refresh(t1 + Duration::from_secs(60));
        assert!(!d.is_ejected(0));
        // Many ejections: capped at max_ejection_time.
        let mut t = t1 + Duration::from_secs(60);
        for _ in 0..20 {
            eject(&mut d, t);
            t += Duration::from_secs(301);
            d.refresh(t);
            assert!(!d.is_ejected(0), "never longer than 300 s");
        }
    }

    #[test]
    fn healthy_intervals_forgive_ejections() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config(), 2);
        for _ in 0..3 {
            d.report(0, Status(500), t0);
        }
        let back = t0 + Duration::from_secs(30);
        d.refresh(back);
        // Three healthy sweeps bring the multiplier back to zero...
        for k in 1..=3 {
            d.refresh(back + Duration::from_secs(10 * k));
        }
        let t = back + Duration::from_secs(40);
        for _ in 0..3 {
            d.report(0, Status(500), t);
        }
        // ...so the next ejection lasts one base time again.
        d.refresh(t + Duration::from_secs(30));
        assert!(!d.is_ejected(0));
    }

    #[test]
    fn gateway_errors_count_separately() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(
            OutlierConfig {
                consecutive_5xx: None,
                consecutive_gateway_errors: Some(2),
                ..config()
            },
            2,
        );
        d.report(0, Status(502), t0);
        d.report(0, Status(500), t0); // a 500 breaks the gateway-error run
        assert!(!d.report(0, Status(503), t0));
        assert!(d.report(0, Reset, t0));
        assert!(d.is_ejected(0));
    }

    #[test]
    fn max_ejection_percent_limits_but_one_is_always_allowed() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(
            OutlierConfig {
                max_ejection_percent: 10,
                ..config()
            },
            2,
        );
        for _ in 0..3 {
            d.report(0, Status(500), t0);
            d.report(1, Status(500), t0);
        }
        // 50% > 10%, but the first ejection is always allowed.
        assert!(d.is_ejected(0));
        assert!(!d.is_ejected(1));
        assert_eq!(d.ejected_count(), 1);

        let mut d = OutlierDetector::new(
            OutlierConfig {
                max_ejection_percent: 50,
                ..config()
            },
            4,
        );
        for i in 0..4 {
            for _ in 0..3 {
                d.report(i, Status(500), t0);
            }
        }
        assert_eq!(d.ejected_count(), 2);
    }

    #[test]
    fn min_health_percent_turns_ejection_off_below_the_threshold() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(
            OutlierConfig {
                min_health_percent: 60,
                ..config()
            },
            2,
        );
        for _ in 0..3 {
            d.report(0, Status(500), t0);
        }
        // 1 of 2 healthy = 50% < 60%: everyone takes traffic.
        assert!(d.is_ejected(0));
        assert!(d.is_available(0));
    }

    #[test]
    fn state_survives_endpoint_churn() {
        let t0 = Instant::now();
        let mut d = OutlierDetector::new(config(), 3);
        for _ in 0..3 {
            d.report(2, Status(500), t0);
        }
        // Endpoint 0 removed: old 1 → new 0, old 2 → new 1, new endpoint 2.
        let d = d.remap(3, |i| [Some(1), Some(2), None][i]);
        assert!(!d.is_ejected(0));
        assert!(d.is_ejected(1));
        assert!(!d.is_ejected(2));
        assert_eq!(d.ejected_count(), 1);
    }
}
