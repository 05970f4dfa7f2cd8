//! Local rate limits (token buckets per route, optionally keyed) and retry
//! budgets: the limits that protect a backend from its callers.
