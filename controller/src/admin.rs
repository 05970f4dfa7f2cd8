//! Admin/status HTTP endpoint (default 127.0.0.1:15014, Istio's control-plane
//! monitoring port): `/status` (JSON: config generation, rejected documents,
//! Gateway API status, xDS connections, NACKs and
//! resources withheld from callers), `/metrics` (Prometheus
//! text), `/healthz/ready`. HTTP/1.1, one request per connection.

use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::state::Controller;

const MAX_REQUEST: usize = 16 * 1024;

pub async fn serve(listener: TcpListener, controller: Arc<Controller>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let controller = controller.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let line = String::from_utf8_lossy(&buf);
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (code, content_type, body) = respond(&path, &controller);
            let head = format!(
                "HTTP/1.1 {code}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn respond(path: &str, controller: &Controller) -> (&'static str, &'static str, String) {
    match path {
        "/status" => (
            "200 OK",
            "application/json",
            serde_json::to_string_pretty(&status_json(controller)).unwrap_or_default(),
        ),
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics(controller)),
        "/healthz/ready" => {
            if controller.state().generation > 0 {
                ("200 OK", "text/plain", "ready\n".into())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "no config loaded\n".into(),
                )
            }
        }
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

pub fn status_json(controller: &Controller) -> serde_json::Value {
    let state = controller.state();
    let xds = controller.xds();
    let connections: Vec<_> = xds
        .connections()
        .into_iter()
        .map(|c| json!({"node_id": c.node_id, "subscriptions": c.subscriptions, "resources_held": c.resources_held}))
        .collect();
    let nacks: Vec<_> = xds
        .nacks()
        .into_iter()
        .map(|n| json!({"node_id": n.node_id, "type_url": n.type_url, "message": n.message, "resources": n.resources}))
        .collect();
    let denials: Vec<_> = xds
        .denials()
        .into_iter()
        .map(|d| json!({"node_id": d.node_id, "type_url": d.type_url, "name": d.name, "reason": d.reason}))
        .collect();
    json!({
        "generation": state.generation,
        "last_reload_error": state.last_reload_error,
        "config_errors": state.status.config_errors,
        "resources": {"addresses": state.addresses, "authorizations": state.authorizations, "proxies": state.proxies},
        "gateway_api": state.status,
        "xds": {"connections": connections, "nacks": nacks, "denials": denials},
    })
}

fn metrics(controller: &Controller) -> String {
    let s = controller.xds().stats();
    let state = controller.state();
    let lines = [
        ("ringmesh_controller_config_generation", state.generation),
        (
            "ringmesh_controller_config_errors",
            state.status.config_errors.len() as u64,
        ),
        ("ringmesh_xds_responses_total", s.responses),
        ("ringmesh_xds_resources_sent_total", s.resources_sent),
        ("ringmesh_xds_removed_sent_total", s.removed_sent),
        ("ringmesh_xds_bytes_sent_total", s.bytes_sent),
        ("ringmesh_xds_acks_total", s.acks),
        ("ringmesh_xds_nacks_total", s.nacks),
        ("ringmesh_xds_denied_total", s.denials),
        (
            "ringmesh_controller_serving_certs_issued_total",
            crate::serving_tls::SERVING_CERTS_ISSUED.load(std::sync::atomic::Ordering::Relaxed),
        ),
        ("ringmesh_xds_connections_active", s.connections_active),
    ];
    lines
        .iter()
        .map(|(name, value)| format!("{name} {value}\n"))
        .collect()
}
