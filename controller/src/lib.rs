//! ringmesh's controller: config folder → workload registry → Delta xDS
//! (Istio's ztunnel types), the workload CA, and Gateway API status.
//!
//! The binary (`main.rs`) only parses flags and composes these modules.

pub mod admin;
pub mod ca;
pub mod grpc;
pub mod serving_tls;
pub mod state;
pub mod watch;
pub mod xds_access;

pub use state::{Controller, ControllerOptions, ReloadOutcome, State};
