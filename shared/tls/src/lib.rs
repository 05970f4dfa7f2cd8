//! SPIFFE identities, the CA, rustls configs and the TLS stream on monoio.
