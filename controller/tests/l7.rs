//! The controller publishes one `ringmesh.l7.v1.Proxy` per Gateway of its
//! class (name `NS/NAME`), to clients subscribing by name: an edit re-sends
//! only the Gateway it changes, an unrelated edit sends nothing, and the
//! decoded Proxy routes like the standalone translation.

mod support;

use std::time::Duration;

use mesh_api::type_url;
use mesh_registry::xds::l7;
use mesh_xds::{ClientConfig, Delta, XdsClient};
use support::*;
use tokio::sync::mpsc;

fn gateways(route_weight: u32) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: ringmesh
  listeners: [{{name: http, port: 8080, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: internal, namespace: infra}}
spec:
  gatewayClassName: ringmesh
  listeners: [{{name: http, port: 9090, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: foreign, namespace: infra}}
spec:
  gatewayClassName: someone-else
  listeners: [{{name: http, port: 7070, protocol: HTTP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: infra}}
spec:
  ports: [{{port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: infra, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: 3000}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: web, port: 80, weight: {route_weight}}}]}}]
"#
    )
}

struct Subscriber {
    deltas: mpsc::UnboundedReceiver<Delta>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    fn connect(xds: std::net::SocketAddr, names: &[&str]) -> Self {
        let mut config = ClientConfig::new(
            format!("http://{xds}"),
            "router~127.0.0.1~gw.infra~infra.svc.cluster.local",
        )
        .named(type_url::L7_PROXY, names.iter().map(|n| n.to_string()));
        config.max_backoff = Duration::from_millis(300);
        let (tx, deltas) = mpsc::unbounded_channel();
        let task = tokio::spawn(XdsClient::new(config).run(move |delta, _all| {
            let _ = tx.send(delta.clone());
            Ok(())
        }));
        Self { deltas, task }
    }

    async fn next(&mut self, limit: Duration) -> Option<Delta> {
        tokio::time::timeout(limit, self.deltas.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn names(delta: &Delta) -> Vec<&str> {
    delta.updated.iter().map(|(n, _)| n.as_str()).collect()
}

fn weight_of(delta: &Delta, name: &str) -> u32 {
    let resource = &delta
        .updated
        .iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
        .resource;
    let proxy = l7::decode(name, resource).unwrap();
    let snapshot = l7::snapshot_of(&proxy).unwrap();
    let listener = snapshot.ports[&8080].listeners.select("any.host").unwrap();
    let table = listener.routes.select("any.host").unwrap();
    table.entries[0].rule.backends[0].weight
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_are_published_by_name_and_only_changes_are_sent() {
    let dir = temp_dir("l7");
    write_file(&dir.join("gateways.yaml"), &gateways(1));
    let controller = ControllerProcess::start(&dir, "127.0.0.1:0");
    assert_eq!(
        controller.status()["resources"]["proxies"],
        2,
        "edge and internal, not foreign"
    );

    let mut edge = Subscriber::connect(controller.xds, &["infra/edge"]);
    let first = edge
        .next(Duration::from_secs(5))
        .await
        .expect("initial push");
    assert_eq!(first.type_url, type_url::L7_PROXY);
    assert_eq!(names(&first), ["infra/edge"]);
    assert_eq!(weight_of(&first, "infra/edge"), 1);
    let mut internal = Subscriber::connect(controller.xds, &["infra/internal"]);
    let first = internal
        .next(Duration::from_secs(5))
        .await
        .expect("initial push");
    assert_eq!(names(&first), ["infra/internal"]);

    // The route weight changes: only edge's Proxy is re-sent.
    let sent = controller.metric("ringmesh_xds_resources_sent_total");
    write_file(&dir.join("gateways.yaml"), &gateways(7));
    let delta = edge
        .next(Duration::from_secs(1))
        .await
        .expect("edit within 1 s");
    assert_eq!(weight_of(&delta, "infra/edge"), 7);
    assert!(internal.next(Duration::from_millis(500)).await.is_none());
    assert_eq!(
        controller.metric("ringmesh_xds_resources_sent_total"),
        sent + 1
    );

    // An edit that changes no gateway's config sends nothing.
    write_file(
        &dir.join("unrelated.yaml"),
        &pod("x", "10.0.0.9", "node1", "x"),
    );
    controller.wait_status(Duration::from_secs(5), |s| s["generation"] == 3);
    assert!(edge.next(Duration::from_millis(500)).await.is_none());
    assert_eq!(
        controller.metric("ringmesh_xds_resources_sent_total"),
        sent + 1
    );
}
