//! `/config_dump` of the workload registry: served on the admin port (the
//! runtime calls [`render`] instead of showing its empty gateway snapshot),
//! and also on an optional separate address (`--config-dump-addr`).
//! Control-plane only: one blocking thread, one request at a time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_registry::workloads::WorkloadRegistry;

pub fn spawn(
    addr: SocketAddr,
    node: String,
    registry: Arc<ArcSwap<WorkloadRegistry>>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot bind the config dump address {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ztunnel-config-dump".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = serve(stream, &node, &registry) {
                    tracing::debug!(error = %e, "config dump request failed");
                }
            }
        })?;
    tracing::info!(addr = %bound, "serving /config_dump");
    Ok(bound)
}

fn serve(
    mut stream: TcpStream,
    node: &str,
    registry: &ArcSwap<WorkloadRegistry>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/config_dump" {
        let dump = render(node, registry);
        (
            "200 OK",
            serde_json::to_string_pretty(&dump).unwrap_or_default(),
        )
    } else {
        ("404 Not Found", "try /config_dump\n".to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The node, the pods it captures, and the whole workload registry.
pub fn render(node: &str, registry: &ArcSwap<WorkloadRegistry>) -> serde_json::Value {
    let registry = registry.load();
    let mut captured: Vec<_> = registry
        .captured_on_node(node)
        .iter()
        .map(|w| w.uid.clone())
        .collect();
    captured.sort();
    serde_json::json!({
        "node": node,
        "captured_pods": captured,
        "registry": &**registry,
    })
}
