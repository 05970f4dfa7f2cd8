//! Load balancing, outlier detection and connection-pool limits: the
//! per-worker state behind a DestinationRule's `trafficPolicy`.
