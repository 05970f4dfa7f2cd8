//! The runtime's own Prometheus series, rendered after every registered
//! [`MetricsSource`](crate::MetricsSource).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::control::ControlState;

pub(crate) fn render_all(state: &ControlState) -> String {
    let mut out = String::with_capacity(4096);
    for source in &state.sources {
        source.render(&mut out);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    }
    render_runtime(state, &mut out);
    out
}

fn render_runtime(state: &ControlState, out: &mut String) {
    let snapshot = state.snapshots.load();
    let active: usize = state
        .workers
        .iter()
        .map(|w| w.active.load(Ordering::Relaxed))
        .sum();
    let uring = state
        .workers
        .iter()
        .filter(|w| w.io_uring.load(Ordering::Relaxed))
        .count();
    let series: [(&str, &str, &str, u64); 8] = [
        (
            "ringmesh_workers",
            "gauge",
            "Worker threads.",
            state.workers.len() as u64,
        ),
        (
            "ringmesh_workers_io_uring",
            "gauge",
            "Workers running on io_uring (the rest use epoll).",
            uring as u64,
        ),
        (
            "ringmesh_snapshot_version",
            "gauge",
            "Version of the snapshot being served.",
            snapshot.version,
        ),
        (
            "ringmesh_listener_ports",
            "gauge",
            "Listener ports in the snapshot.",
            snapshot.ports.len() as u64,
        ),
        (
            "ringmesh_downstream_connections_active",
            "gauge",
            "Open downstream connections, all workers.",
            active as u64,
        ),
        (
            "ringmesh_ready",
            "gauge",
            "1 when every worker bound every listener port.",
            u64::from(state.is_ready()),
        ),
        (
            "ringmesh_config_reloads_total",
            "counter",
            "Configuration reloads attempted after a change.",
            state.reloads.total.load(Ordering::Relaxed),
        ),
        (
            "ringmesh_config_reload_failures_total",
            "counter",
            "Configuration reloads that failed (last good snapshot kept).",
            state.reloads.failed.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    render_per_worker(state, out);
    let _ = writeln!(
        out,
        "# HELP ringmesh_config_errors Documents rejected in the current snapshot.\n# TYPE ringmesh_config_errors gauge\nringmesh_config_errors {}",
        snapshot.status.config_errors.len()
    );
}

/// Per-worker gauges: a worker stuck on an old snapshot or missing a port
/// shows up here.
fn render_per_worker(state: &ControlState, out: &mut String) {
    type Read = fn(&crate::worker::WorkerState) -> u64;
    let series: [(&str, &str, Read); 3] = [
        (
            "ringmesh_worker_connections_active",
            "Open downstream connections of one worker.",
            |w| w.active.load(Ordering::Relaxed) as u64,
        ),
        (
            "ringmesh_worker_listeners_bound",
            "Listener ports one worker has bound.",
            |w| w.bound_ports.load(Ordering::Relaxed) as u64,
        ),
        (
            "ringmesh_worker_snapshot_version",
            "Snapshot version one worker last reconciled its listeners with.",
            |w| w.seen_version.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, read) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (index, worker) in state.workers.iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{index}\"}} {}", read(worker));
        }
    }
}
