//! The synthetic cluster `bench controller-scale` loads: N Services with 10 ready endpoints
//! each, every endpoint a Pod (so every endpoint is an Istio Workload) listed in the Service's
//! EndpointSlice. Deterministic: the same N gives the same bytes.
//!
//! One file per namespace of [`SERVICES_PER_NAMESPACE`] Services, so an edit rewrites one
//! small file (as a real controller sees one object change) and the watcher stats
//! N / 100 files.

use anyhow::Context;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub const ENDPOINTS_PER_SERVICE: usize = 10;
pub const SERVICES_PER_NAMESPACE: usize = 100;
/// Nodes the pods are spread over (round robin).
pub const NODES: usize = 100;
/// The `port` of every Service and the `port` its endpoints listen on.
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;

/// Counts of what a generated folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Generated {
    pub services: usize,
    pub pods: usize,
    pub endpoint_slices: usize,
    pub files: usize,
}

impl Generated {
    /// Istio Address resources the controller publishes for it: one per Pod and per Service.
    pub fn addresses(&self) -> usize {
        self.services + self.pods
    }
}

pub fn namespace_of(service: usize) -> String {
    format!("ns-{:04}", service / SERVICES_PER_NAMESPACE)
}

pub fn service_name(service: usize) -> String {
    format!("svc-{service:05}")
}

pub fn pod_name(service: usize, endpoint: usize) -> String {
    format!("svc-{service:05}-{endpoint:02}")
}

/// Istio's resource name of the pod's Workload, what subscribers watch for.
pub fn workload_resource_name(service: usize, endpoint: usize) -> String {
    format!(
        "Kubernetes//Pod/{}/{}",
        namespace_of(service),
        pod_name(service, endpoint)
    )
}

/// Cluster IPs from 10.96.0.1 on (room for 1M Services).
fn cluster_ip(service: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + service as u32 + 1)
}

/// Pod IPs from 10.128.0.1 on; endpoint numbers past the standard ten (added by an edit)
/// come from 10.192.0.0/10 so they never collide with another Service's pods.
fn pod_ip(service: usize, endpoint: usize) -> Ipv4Addr {
    let index = (service * ENDPOINTS_PER_SERVICE + endpoint) as u32;
    if endpoint < ENDPOINTS_PER_SERVICE {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + index + 1)
    } else {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 192, 0, 0)) + index + 1)
    }
}

/// The YAML of one namespace's file: its Services, each with `endpoints` pods (10 unless
/// an edit added some to that Service) and one EndpointSlice.
pub fn namespace_yaml(first: usize, last_exclusive: usize, extra: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity((last_exclusive - first) * 2600);
    for service in first..last_exclusive {
        let endpoints = extra
            .iter()
            .find(|(s, _)| *s == service)
            .map_or(ENDPOINTS_PER_SERVICE, |(_, n)| *n);
        service_yaml(&mut out, service, endpoints);
    }
    out
}

fn service_yaml(out: &mut String, service: usize, endpoints: usize) {
    let (ns, name) = (namespace_of(service), service_name(service));
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  clusterIP: {ip}\n  selector: {{app: {name}}}\n  ports:\n  \
         - {{name: http, port: {SERVICE_PORT}, targetPort: {TARGET_PORT}}}\n---\n",
        ip = cluster_ip(service)
    );
    for endpoint in 0..endpoints {
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: node-{node:03}, serviceAccountName: {name}, containers: []}}\n\
             status: {{podIP: {ip}}}\n---\n",
            pod = pod_name(service, endpoint),
            node = (service * ENDPOINTS_PER_SERVICE + endpoint) % NODES,
            ip = pod_ip(service, endpoint),
        );
    }
    let _ = write!(
        out,
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-0, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports:\n- {{name: http, port: {TARGET_PORT}}}\nendpoints:\n"
    );
    for endpoint in 0..endpoints {
        let _ = writeln!(
            out,
            "- {{addresses: [\"{}\"], conditions: {{ready: true}}}}",
            pod_ip(service, endpoint)
        );
    }
    out.push_str("---\n");
}

pub fn namespace_file(dir: &Path, namespace_index: usize) -> PathBuf {
    dir.join(format!("ns-{namespace_index:04}.yaml"))
}

/// Writes `services` Services (and their pods and slices) into `dir`, one file per namespace.
pub fn generate(dir: &Path, services: usize) -> anyhow::Result<Generated> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut files = 0;
    for (index, first) in (0..services).step_by(SERVICES_PER_NAMESPACE).enumerate() {
        let last = (first + SERVICES_PER_NAMESPACE).min(services);
        let path = namespace_file(dir, index);
        std::fs::write(&path, namespace_yaml(first, last, &[]))
            .with_context(|| format!("write {}", path.display()))?;
        files += 1;
    }
    Ok(Generated {
        services,
        pods: services * ENDPOINTS_PER_SERVICE,
        endpoint_slices: services,
        files,
    })
}

/// The one-endpoint edit: Service 0 gets an 11th pod (and slice entry). Written to a hidden
/// temp name and renamed into place, so the watcher never reads a half-written file.
/// Returns the Workload resource name the edit adds.
pub fn add_one_endpoint(dir: &Path, services: usize) -> anyhow::Result<String> {
    let last = SERVICES_PER_NAMESPACE.min(services);
    let text = namespace_yaml(0, last, &[(0, ENDPOINTS_PER_SERVICE + 1)]);
    let target = namespace_file(dir, 0);
    let temp = dir.join(".edit.tmp");
    std::fs::write(&temp, text).context("write the edit")?;
    std::fs::rename(&temp, &target).context("rename the edit into place")?;
    Ok(workload_resource_name(0, ENDPOINTS_PER_SERVICE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert_eq!(namespace_of(0), "ns-0000");
        assert_eq!(namespace_of(49_999), "ns-0499");
        assert_eq!(
            workload_resource_name(123, 4),
            "Kubernetes//Pod/ns-0001/svc-00123-04"
        );
        assert_eq!(cluster_ip(0), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(pod_ip(0, 0), Ipv4Addr::new(10, 128, 0, 1));
        assert_eq!(pod_ip(49_999, 9), Ipv4Addr::new(10, 135, 161, 32));
        assert_eq!(pod_ip(0, 10), Ipv4Addr::new(10, 192, 0, 11));
    }

    #[test]
    fn yaml_is_deterministic_and_the_edit_adds_one_pod() {
        let plain = namespace_yaml(0, 3, &[]);
        assert_eq!(plain, namespace_yaml(0, 3, &[]));
        assert_eq!(plain.matches("kind: Service\n").count(), 3);
        assert_eq!(plain.matches("kind: Pod\n").count(), 30);
        assert_eq!(plain.matches("kind: EndpointSlice\n").count(), 3);
        let edited = namespace_yaml(0, 3, &[(0, 11)]);
        assert_eq!(edited.matches("kind: Pod\n").count(), 31);
        assert!(edited.contains("name: svc-00000-10,"));
        assert!(edited.contains("\"10.192.0.11\""));
    }
}
