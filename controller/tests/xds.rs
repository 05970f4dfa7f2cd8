//! A client subscribing the way Istio's ztunnel does (Delta ADS, Istio's type
//! URLs, node id `ztunnel~IP~POD.NS~NS.svc.cluster.local`) against the real
//! controller binary: initial state, file edits pushed as minimal deltas
//! within 1 s, a broken edit changing nothing, and a restart without re-push.

mod support;

use std::time::{Duration, Instant};

use mesh_api::istio::security::{Action, Authorization, Scope};
use mesh_api::istio::workload::{address, Address, TunnelProtocol};
use mesh_api::type_url;
use mesh_xds::{ClientConfig, ClientStats, Delta, XdsClient};
use support::*;
use tokio::sync::mpsc;

const PUSH_LIMIT: Duration = Duration::from_secs(1);

struct Ztunnel {
    deltas: mpsc::UnboundedReceiver<Delta>,
    stats: std::sync::Arc<ClientStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Ztunnel {
    fn connect(xds: std::net::SocketAddr) -> Self {
        let node_id =
            mesh_xds::ztunnel_node_id("10.0.0.100".parse().unwrap(), "ztunnel-x", "istio-system");
        assert_eq!(
            node_id,
            "ztunnel~10.0.0.100~ztunnel-x.istio-system~istio-system.svc.cluster.local"
        );
        let mut config = ClientConfig::new(format!("http://{xds}"), node_id)
            .wildcard(type_url::ADDRESS)
            .wildcard(type_url::AUTHORIZATION);
        config.max_backoff = Duration::from_millis(300);
        let client = XdsClient::new(config);
        let stats = client.stats();
        let (tx, deltas) = mpsc::unbounded_channel();
        let task = tokio::spawn(client.run(move |delta, _all| {
            let _ = tx.send(delta.clone());
            Ok(())
        }));
        Self {
            deltas,
            stats,
            task,
        }
    }

    async fn next(&mut self, limit: Duration) -> Delta {
        tokio::time::timeout(limit, self.deltas.recv())
            .await
            .expect("no delta in time")
            .expect("client ended")
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn names(delta: &Delta) -> Vec<String> {
    let mut n: Vec<String> = delta.updated.iter().map(|(n, _)| n.clone()).collect();
    n.sort();
    n
}

fn decode_address(delta: &Delta, name: &str) -> address::Type {
    let resource = &delta
        .updated
        .iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1
        .resource;
    let decoded: Address = mesh_api::from_any(type_url::ADDRESS, resource).unwrap();
    decoded.r#type.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_client_gets_registry_edits_and_survives_restart() {
    let dir = temp_dir("xds");
    write_file(&dir.join("base.yaml"), BASE);
    let controller = ControllerProcess::start(&dir, "127.0.0.1:0");
    let mut ztunnel = Ztunnel::connect(controller.xds);

    // Initial state: one response per type with everything.
    let mut addresses = None;
    let mut authorizations = None;
    while addresses.is_none() || authorizations.is_none() {
        let delta = ztunnel.next(Duration::from_secs(5)).await;
        match delta.type_url.as_str() {
            type_url::ADDRESS => addresses = Some(delta),
            type_url::AUTHORIZATION => authorizations = Some(delta),
            other => panic!("unexpected type {other}"),
        }
    }
    let addresses = addresses.unwrap();
    assert_eq!(
        names(&addresses),
        [
            "Kubernetes//Pod/apps/a",
            "Kubernetes//Pod/apps/b",
            "apps/b.apps.svc.cluster.local"
        ]
    );
    let address::Type::Workload(a) = decode_address(&addresses, "Kubernetes//Pod/apps/a") else {
        panic!("a is not a workload")
    };
    assert_eq!(a.addresses, [vec![10, 0, 0, 2]]);
    assert_eq!(
        (a.node.as_str(), a.service_account.as_str()),
        ("node1", "sa-a")
    );
    assert_eq!(a.tunnel_protocol, TunnelProtocol::Hbone as i32);
    let address::Type::Workload(b) = decode_address(&addresses, "Kubernetes//Pod/apps/b") else {
        panic!("b is not a workload")
    };
    assert_eq!(
        b.services["apps/b.apps.svc.cluster.local"].ports[0].target_port,
        8080
    );
    assert_eq!(b.authorization_policies, ["apps/allow-a"]);
    let address::Type::Service(svc) = decode_address(&addresses, "apps/b.apps.svc.cluster.local")
    else {
        panic!("not a service")
    };
    assert_eq!(svc.addresses[0].address, [10, 96, 0, 10]);
    let authorizations = authorizations.unwrap();
    assert_eq!(names(&authorizations), ["apps/allow-a"]);

    // Add an endpoint: a new pod behind Service b. Only that workload is pushed
    // (the Service message carries no endpoints, so it is unchanged).
    let edit = Instant::now();
    write_file(&dir.join("c.yaml"), &pod("c", "10.0.0.4", "node1", "b"));
    let delta = ztunnel.next(PUSH_LIMIT).await;
    assert!(edit.elapsed() < PUSH_LIMIT, "took {:?}", edit.elapsed());
    assert_eq!(delta.type_url, type_url::ADDRESS);
    assert_eq!(names(&delta), ["Kubernetes//Pod/apps/c"]);
    assert!(delta.removed.is_empty());
    let address::Type::Workload(c) = decode_address(&delta, "Kubernetes//Pod/apps/c") else {
        panic!("c is not a workload")
    };
    assert!(c.services.contains_key("apps/b.apps.svc.cluster.local"));

    // Add a namespace-wide DENY policy: only that Authorization is pushed.
    let edit = Instant::now();
    write_file(
        &dir.join("deny.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: deny-22, namespace: apps}\n\
         spec: {action: DENY, rules: [{to: [{operation: {ports: [\"22\"]}}]}]}\n",
    );
    let delta = ztunnel.next(PUSH_LIMIT).await;
    assert!(edit.elapsed() < PUSH_LIMIT, "took {:?}", edit.elapsed());
    assert_eq!(delta.type_url, type_url::AUTHORIZATION);
    assert_eq!(names(&delta), ["apps/deny-22"]);
    let deny: Authorization =
        mesh_api::from_any(type_url::AUTHORIZATION, &delta.updated[0].1.resource).unwrap();
    assert_eq!(deny.action, Action::Deny as i32);
    assert_eq!(deny.scope, Scope::Namespace as i32);
    assert_eq!(deny.groups[0].rules[0].matches[0].destination_ports, [22]);

    // A broken edit (pod c's document made invalid): reported on /status, the
    // file's last good objects keep serving, and nothing is pushed — the next
    // delta the client sees is the following good edit alone.
    let generation = controller.status()["generation"].as_u64().unwrap();
    write_file(
        &dir.join("c.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: apps}\nspec: {nodeName: [x]}\n",
    );
    let status =
        controller.wait_status(PUSH_LIMIT, |s| s["generation"].as_u64() > Some(generation));
    let errors = status["config_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{status:#}");
    assert!(errors[0].as_str().unwrap().contains("c.yaml"), "{errors:?}");
    assert_eq!(status["resources"]["addresses"], 4, "pod c still served");
    // Fixing it back to what was served pushes nothing either.
    let generation = status["generation"].as_u64().unwrap();
    write_file(&dir.join("c.yaml"), &pod("c", "10.0.0.4", "node1", "b"));
    controller.wait_status(PUSH_LIMIT, |s| {
        s["generation"].as_u64() > Some(generation)
            && s["config_errors"].as_array().is_some_and(|e| e.is_empty())
    });
    write_file(&dir.join("d.yaml"), &pod("d", "10.0.0.5", "node2", "d"));
    let delta = ztunnel.next(PUSH_LIMIT).await;
    assert_eq!(
        names(&delta),
        ["Kubernetes//Pod/apps/d"],
        "the broken edit or its fix pushed something"
    );

    // Restart on the same port: the client resyncs with initial_resource_versions
    // and nothing unchanged is sent again.
    let xds_addr = controller.xds.to_string();
    controller.kill();
    let controller = ControllerProcess::start(&dir, &xds_addr);
    let start = Instant::now();
    while ztunnel.stats.connects() < 2 || controller.metric("ringmesh_xds_connections_active") < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "client did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An edit after the resync: the first thing the client receives from the new
    // controller is that one workload, and it is all the new process ever sent.
    write_file(&dir.join("e.yaml"), &pod("e", "10.0.0.6", "node2", "e"));
    let delta = ztunnel.next(Duration::from_secs(2)).await;
    assert_eq!(
        names(&delta),
        ["Kubernetes//Pod/apps/e"],
        "re-push after restart"
    );
    assert_eq!(controller.metric("ringmesh_xds_resources_sent_total"), 1);
    assert_eq!(controller.metric("ringmesh_xds_removed_sent_total"), 0);

    // The config path vanishing keeps the last state (and says why).
    std::fs::remove_dir_all(&dir).unwrap();
    let status = controller.wait_status(PUSH_LIMIT, |s| !s["last_reload_error"].is_null());
    assert_eq!(status["resources"]["addresses"], 6, "{status:#}");
    assert!(
        ztunnel.deltas.try_recv().is_err(),
        "unreadable path pushed a change"
    );
}
