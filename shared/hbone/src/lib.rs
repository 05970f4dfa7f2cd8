//! HBONE client (pool) and server over h2 on monoio.
