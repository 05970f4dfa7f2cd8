//! Retries between upstream attempts: which outcomes are retried, the
//! cluster's retry budget, and the back-off bounded by the request deadline.
//! Shared by the HTTP/1.1 and HTTP/2 client sides.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_registry::{Cluster, RetryPolicy};
use rand::Rng;

use crate::codec::ResponseHead;
use crate::io::Io;
use crate::policy::RetryPermit;
use crate::upstream::exchange::AttemptError;
use crate::HttpHandler;

/// One attempt's outcome, as the exchange returns it.
pub(crate) type AttemptResult = Result<(Io, ResponseHead), AttemptError>;

/// After try number `tries`: a permit for another try when the policy retries
/// this outcome (a listed status, or a connect failure, reset or per-try
/// timeout), tries remain, the request deadline has not passed, and the
/// cluster's retry budget allows it. None: this outcome is final.
pub(crate) fn next_try(
    h: &HttpHandler,
    cluster: &Arc<Cluster>,
    retry: Option<&RetryPolicy>,
    outcome: &AttemptResult,
    tries: u32,
    max_tries: u32,
    expired: bool,
) -> Option<RetryPermit> {
    let retriable = match (outcome, retry) {
        (_, None) => false,
        (Ok((_, resp)), Some(p)) => p.codes.contains(&resp.status) || grpc_retriable(p, resp),
        (Err(AttemptError::Connect), Some(p)) => p.on_connect_failure,
        (Err(AttemptError::Reset { .. } | AttemptError::Timeout), Some(p)) => p.on_reset,
        (Err(_), Some(_)) => false,
    };
    if !retriable || tries >= max_tries || expired {
        return None;
    }
    h.policy.retry_permit(cluster).ok()
}

/// A trailers-only gRPC answer whose `grpc-status` the policy retries.
fn grpc_retriable(policy: &RetryPolicy, resp: &ResponseHead) -> bool {
    !policy.grpc_codes.is_empty()
        && resp
            .headers
            .get("grpc-status")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .is_some_and(|code| policy.grpc_codes.contains(&code))
}

/// Sleeps the jittered back-off before the next try. False when the request
/// deadline comes first: it sleeps until the deadline, and the request times out.
pub(crate) async fn pause_before_retry(
    h: &HttpHandler,
    retry: Option<&RetryPolicy>,
    tries: u32,
    deadline: Option<Instant>,
) -> bool {
    let pause = backoff(
        retry.and_then(|p| p.backoff),
        tries,
        &mut *h.rng.borrow_mut(),
    );
    if let Some(d) = deadline {
        if Instant::now() + pause >= d {
            monoio::time::sleep_until(d.into()).await;
            return false;
        }
    }
    monoio::time::sleep(pause).await;
    true
}

/// Envoy's default retry back-off base.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);

pub(crate) fn backoff<R: Rng>(base: Option<Duration>, tries: u32, rng: &mut R) -> Duration {
    // Envoy: fully jittered exponential back-off, capped at 10x the base.
    let base = base.unwrap_or(DEFAULT_BACKOFF);
    let factor = (1u64 << tries.min(10)) - 1;
    let max = (base.as_millis() as u64 * factor)
        .min(base.as_millis() as u64 * 10)
        .max(1);
    Duration::from_millis(rng.random_range(0..=max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        let mut rng = rand::rng();
        for tries in 1..20 {
            let b = backoff(None, tries, &mut rng);
            assert!(b <= Duration::from_millis(250));
        }
    }
}
