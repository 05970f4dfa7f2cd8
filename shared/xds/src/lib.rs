//! Delta ADS server and client.
