//! Open-loop pacing: when each request is *meant* to be sent, and how much of
//! its latency to record.
//!
//! The requested rate is split evenly over all connections (as wrk2 does):
//! connection `g` of `C` sends request `k` at `start + g/qps + k*C/qps`, so the
//! union of all connections is a uniform stream at `qps`. A connection that is
//! still waiting for a response when its next slot passes sends as soon as it
//! is free ("catch up") and that request's latency counts from its intended
//! slot: the time it spent queued behind a slow response is part of what a
//! real client would see. Ignoring it is "coordinated omission".
//!
//! Everything here works on plain `Duration` offsets from the run start so it
//! is testable without clocks.

use std::time::Duration;

/// The send schedule of one connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Offset of this connection's first slot from the run start.
    first: Duration,
    /// Time between two slots of this connection, in nanoseconds (f64 so that
    /// rates that do not divide a second evenly do not drift over a long run).
    interval_ns: f64,
}

impl Schedule {
    /// Schedule of connection `index` (0-based) out of `connections`, all of
    /// them together sending `qps` requests per second.
    pub fn for_connection(qps: f64, connections: usize, index: usize) -> Schedule {
        assert!(qps > 0.0 && connections > 0 && index < connections);
        let global_interval_ns = 1e9 / qps;
        Schedule {
            first: Duration::from_nanos((global_interval_ns * index as f64) as u64),
            interval_ns: global_interval_ns * connections as f64,
        }
    }

    /// Intended send time of this connection's request number `k` (0-based),
    /// as an offset from the run start.
    pub fn intended(&self, k: u64) -> Duration {
        self.first + Duration::from_nanos((self.interval_ns * k as f64) as u64)
    }

    /// What the connection should do for request `k` when it is free at `now`
    /// (offset from the run start).
    pub fn next_send(&self, k: u64, now: Duration) -> NextSend {
        let intended = self.intended(k);
        if now >= intended {
            NextSend::Now { intended }
        } else {
            NextSend::SleepUntil { intended }
        }
    }
}

/// The pacing decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextSend {
    /// The slot has passed (or is exactly now): send immediately; latency
    /// counts from `intended`.
    Now { intended: Duration },
    /// Too early: wait for the slot.
    SleepUntil { intended: Duration },
}

/// Latency to record for one open-loop request, corrected for coordinated
/// omission but not charged with the load generator's own timer slop.
///
/// - `intended`: the request's slot.
/// - `ready`: when the connection became free to send it (previous response
///   done, or connection opened).
/// - `sent`: when it was actually written (later than `max(intended, ready)`
///   only because timers fire late, by up to a millisecond on monoio's wheel).
/// - `done`: when the response was complete.
///
/// A perfect client would have sent at `max(intended, ready)`; the time
/// between that and `sent` is the generator's fault, not the server's, so it is
/// removed. The time between `intended` and `ready` (queued behind a slow
/// response) is the server's fault and is kept.
pub fn corrected_latency(
    intended: Duration,
    ready: Duration,
    sent: Duration,
    done: Duration,
) -> Duration {
    let ideal_send = intended.max(ready);
    let timer_slop = sent.saturating_sub(ideal_send);
    done.saturating_sub(intended).saturating_sub(timer_slop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn connections_interleave_into_a_uniform_stream() {
        // 1000 qps over 4 connections: one request every 1 ms overall, each
        // connection every 4 ms, connection g offset by g ms.
        let schedules: Vec<Schedule> = (0..4)
            .map(|g| Schedule::for_connection(1000.0, 4, g))
            .collect();
        let mut all: Vec<Duration> = schedules
            .iter()
            .flat_map(|s| (0..25).map(move |k| s.intended(k)))
            .collect();
        all.sort();
        assert_eq!(all.len(), 100);
        for (i, t) in all.iter().enumerate() {
            assert_eq!(*t, ms(i as u64), "slot {i}");
        }
        assert_eq!(schedules[3].intended(0), ms(3));
        assert_eq!(schedules[3].intended(2), ms(11));
    }

    #[test]
    fn fractional_intervals_do_not_drift() {
        // 3 qps on one connection: 333.33.. ms apart; request 3000 is due at
        // exactly 1000 s, not 999 s as integer-ns accumulation would give.
        let s = Schedule::for_connection(3.0, 1, 0);
        let t = s.intended(3000);
        assert!(
            t >= Duration::from_millis(999_999) && t <= Duration::from_millis(1_000_001),
            "{t:?}"
        );
    }

    #[test]
    fn early_connection_sleeps_late_connection_sends_now() {
        let s = Schedule::for_connection(100.0, 1, 0); // every 10 ms
        assert_eq!(
            s.next_send(3, ms(25)),
            NextSend::SleepUntil { intended: ms(30) }
        );
        assert_eq!(s.next_send(3, ms(30)), NextSend::Now { intended: ms(30) });
        assert_eq!(s.next_send(3, ms(47)), NextSend::Now { intended: ms(30) });
    }

    #[test]
    fn latency_counts_queueing_behind_a_slow_response() {
        // Slot at 10 ms but the previous response only finished at 40 ms; the
        // request went out at 40 ms and came back at 41 ms: 31 ms, not 1 ms.
        assert_eq!(corrected_latency(ms(10), ms(40), ms(40), ms(41)), ms(31));
    }

    #[test]
    fn latency_excludes_timer_slop() {
        // Free at 5 ms, slot at 10 ms, the timer woke at 10.8 ms, response at
        // 11.8 ms: the server took 1 ms.
        let l = corrected_latency(
            ms(10),
            ms(5),
            Duration::from_micros(10_800),
            Duration::from_micros(11_800),
        );
        assert_eq!(l, ms(1));
    }

    #[test]
    fn on_time_request_latency_is_service_time() {
        assert_eq!(corrected_latency(ms(10), ms(10), ms(10), ms(12)), ms(2));
    }
}
