//! Translation tests: small YAML fixtures routed "on paper" through the
//! snapshot (ListenerSet::select → VirtualHosts::select → first matching
//! entry), plus the Gateway API conformance vectors when they are present.

mod fixtures;
mod grpc;
mod tls;
mod unit;
mod vectors;
