//! Retry back-off between upstream attempts.

use std::time::Duration;

use rand::Rng;

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
