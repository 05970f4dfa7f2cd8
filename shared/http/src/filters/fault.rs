//! Fault injection (Istio VirtualService `fault`), as Envoy's fault filter
//! does it: before the upstream call, a delay for `delay.percent` of the
//! requests, then, independently, an abort for `abort.percent` of them,
//! answered locally with the body `fault filter abort`.
//!
//! An abort with an HTTP status answers that status (a gRPC request gets
//! the status's gRPC mapping as a trailers-only answer, like every answer
//! the proxy writes itself); an abort with a gRPC status answers HTTP 200
//! with that `grpc-status` (trailers-only on HTTP/2), and a plain HTTP
//! request gets HTTP 200 with the body, as Envoy's local reply does.
//! Envoy adds no response header for injected faults (only its access-log
//! flags DI/FI), so neither do we.

use std::cell::RefCell;

use bytes::Bytes;
use mesh_registry::{AbortStatus, FaultInjection};
use rand::rngs::SmallRng;
use rand::Rng;

use crate::codec::{Headers, RequestHead};

/// The body of an aborted request (Envoy's text, byte for byte).
pub const ABORT_BODY: &str = "fault filter abort";

/// True for `percent` of the calls (0..=100, fractions honoured).
pub fn roll<R: Rng>(rng: &mut R, percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    percent > 0.0 && rng.random_range(0.0..100.0) < percent
}

/// Runs the fault for one request: sleeps the delay when it fires, then
/// returns the abort to answer, if that fires.
pub async fn inject(fault: &FaultInjection, rng: &RefCell<SmallRng>) -> Option<AbortStatus> {
    let delay = fault
        .delay
        .as_ref()
        .filter(|d| roll(&mut *rng.borrow_mut(), d.percent));
    if let Some(d) = delay {
        monoio::time::sleep(d.duration).await;
    }
    fault
        .abort
        .as_ref()
        .filter(|a| roll(&mut *rng.borrow_mut(), a.percent))
        .map(|a| a.status)
}

/// `content-type: application/grpc...` on an HTTP/1-shaped head.
pub fn is_grpc(req: &RequestHead) -> bool {
    req.headers
        .get("content-type")
        .is_some_and(|v| v.starts_with(b"application/grpc"))
}

/// The HTTP/1.1 answer to an abort: status, extra headers, body.
pub fn http1_answer(abort: AbortStatus, req: &RequestHead) -> (u16, Headers, &'static str) {
    let mut headers = Headers::default();
    match abort {
        AbortStatus::Http(status) => (status, headers, ABORT_BODY),
        AbortStatus::Grpc(code) if is_grpc(req) => {
            headers.add(
                Bytes::from_static(b"content-type"),
                Bytes::from_static(b"application/grpc"),
            );
            headers.add(
                Bytes::from_static(b"grpc-status"),
                Bytes::from(code.to_string()),
            );
            headers.add(
                Bytes::from_static(b"grpc-message"),
                Bytes::from_static(ABORT_BODY.as_bytes()),
            );
            (200, headers, "")
        }
        AbortStatus::Grpc(_) => (200, headers, ABORT_BODY),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn percentages_are_honoured_statistically() {
        let mut rng = SmallRng::seed_from_u64(7);
        for (percent, low, high) in [(50.0, 4_700, 5_300), (12.5, 1_100, 1_400), (0.5, 20, 90)] {
            let hits = (0..10_000).filter(|_| roll(&mut rng, percent)).count();
            assert!((low..=high).contains(&hits), "{percent}%: {hits}/10000");
        }
        assert!((0..1000).all(|_| roll(&mut rng, 100.0)));
        assert!((0..1000).all(|_| !roll(&mut rng, 0.0)));
    }

    fn head(extra: &str) -> RequestHead {
        let text = format!("POST /svc/M HTTP/1.1\r\nhost: a\r\n{extra}content-length: 0\r\n\r\n");
        let mut buf = bytes::BytesMut::from(text.as_bytes());
        crate::codec::request::parse_request(&mut buf, 4096)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn grpc_aborts_answer_200_with_the_status_only_to_grpc_requests() {
        let (status, _, body) = http1_answer(AbortStatus::Grpc(14), &head(""));
        assert_eq!((status, body), (200, ABORT_BODY));
        let req = head("content-type: application/grpc\r\n");
        let (status, headers, body) = http1_answer(AbortStatus::Grpc(14), &req);
        assert_eq!((status, body), (200, ""));
        assert_eq!(headers.get("grpc-status").map(|v| &v[..]), Some(&b"14"[..]));
        let (status, _, body) = http1_answer(AbortStatus::Http(503), &req);
        assert_eq!((status, body), (503, ABORT_BODY));
    }
}
