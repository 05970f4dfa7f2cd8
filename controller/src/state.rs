//! Load → translate → publish. One [`Controller::reload`] is one xDS batch:
//! `replace_type` per type URL, so removed objects are removed and unchanged
//! ones cost nothing (content versions are hashes, stable across restarts).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use mesh_api::type_url;
use mesh_config::Resources;
use mesh_registry::status::StatusReport;
use mesh_registry::workloads::WorkloadRegistry;
use mesh_registry::xds::{l7, XdsResources};
use mesh_registry::TranslateOptions;
use mesh_xds::XdsServer;

#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub config: PathBuf,
    pub trust_domain: String,
    /// GatewayClass whose Gateways' status we report.
    pub gateway_class: String,
}

/// What the last successful load produced (what is being served).
#[derive(Debug, Default)]
pub struct State {
    /// Successful loads so far (0: nothing loaded yet).
    pub generation: u64,
    pub registry: Arc<WorkloadRegistry>,
    /// Gateway API status, including every rejected document in `config_errors`.
    pub status: StatusReport,
    pub addresses: usize,
    pub authorizations: usize,
    /// `ringmesh.l7.v1.Proxy` resources, one per served Gateway.
    pub proxies: usize,
    /// Set when the config path itself could not be read; the previous state keeps serving.
    pub last_reload_error: Option<String>,
    /// Node name → bootstrap token, from the Secret `istio-system/ringmesh-node-tokens`
    /// (`None` without that Secret).
    pub node_tokens: Option<BTreeMap<String, String>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Published; `config_errors` documents were rejected and left out.
    Published { config_errors: usize },
    /// The path could not be read: nothing changed.
    Kept(String),
}

pub struct Controller {
    options: ControllerOptions,
    xds: XdsServer,
    state: ArcSwap<State>,
    /// What the last publish was built from (for last-good retention per file).
    published: Mutex<Resources>,
    /// Wall time of the last publishing reload: reading + parsing the files, and translating +
    /// handing the batch to the xDS server (µs; also in the "config published" log line,
    /// which `bench controller-scale` reads).
    last_load_micros: AtomicU64,
    last_translate_micros: AtomicU64,
}

impl Controller {
    pub fn new(options: ControllerOptions, xds: XdsServer) -> Self {
        Self {
            options,
            xds,
            state: ArcSwap::from_pointee(State::default()),
            published: Mutex::new(Resources::default()),
            last_load_micros: AtomicU64::new(0),
            last_translate_micros: AtomicU64::new(0),
        }
    }

    pub fn options(&self) -> &ControllerOptions {
        &self.options
    }

    pub fn xds(&self) -> &XdsServer {
        &self.xds
    }

    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// (load, translate) µs of the last reload that published.
    pub fn last_reload_micros(&self) -> (u64, u64) {
        (
            self.last_load_micros.load(Ordering::Relaxed),
            self.last_translate_micros.load(Ordering::Relaxed),
        )
    }

    /// Reads the config path and publishes what it holds.
    pub fn reload(&self) -> ReloadOutcome {
        let started = Instant::now();
        let mut loaded = match mesh_config::load_path(&self.options.config) {
            Ok(loaded) => loaded,
            Err(e) => {
                let message = format!("{e:#}");
                tracing::warn!("config reload failed, keeping the last state: {message}");
                let previous = self.state.load();
                self.state.store(Arc::new(State {
                    generation: previous.generation,
                    registry: previous.registry.clone(),
                    status: previous.status.clone(),
                    addresses: previous.addresses,
                    authorizations: previous.authorizations,
                    proxies: previous.proxies,
                    last_reload_error: Some(message.clone()),
                    node_tokens: previous.node_tokens.clone(),
                }));
                return ReloadOutcome::Kept(message);
            }
        };
        let loaded_at = Instant::now();
        for error in &loaded.errors {
            tracing::warn!("config document rejected: {error}");
        }
        let broken: HashSet<PathBuf> = loaded.errors.iter().map(|e| e.file.clone()).collect();
        {
            let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            retain_last_good(&mut loaded.resources, &published, &broken);
            *published = loaded.resources.clone();
        }
        let registry = WorkloadRegistry::build(&loaded.resources, &self.options.trust_domain);
        let resources = XdsResources::build(&loaded.resources, &registry);
        let translate_options = TranslateOptions {
            gateway_class: self.options.gateway_class.clone(),
            gateway: None,
        };
        let mut status = mesh_registry::translate_loaded(&loaded, &translate_options).status;
        // Mesh VirtualServices, as each waypoint applies them (parent: the waypoint).
        status
            .routes
            .extend(mesh_registry::translate::mesh_virtual_service_statuses(
                &loaded.resources,
                &registry.waypoints,
            ));
        let mut proxies = self.gateway_proxies(&loaded, &status);
        proxies.extend(self.waypoint_proxies(&loaded.resources, &registry));
        let (addresses, authorizations) =
            (resources.address_anys(), resources.authorization_anys());
        let counts = (addresses.len(), authorizations.len(), proxies.len());
        self.xds.update(|batch| {
            batch.replace_type(type_url::ADDRESS, addresses);
            batch.replace_type(type_url::AUTHORIZATION, authorizations);
            batch.replace_type(type_url::L7_PROXY, proxies);
        });
        let load_us = (loaded_at - started).as_micros() as u64;
        let translate_us = loaded_at.elapsed().as_micros() as u64;
        self.last_load_micros.store(load_us, Ordering::Relaxed);
        self.last_translate_micros
            .store(translate_us, Ordering::Relaxed);
        let generation = self.state.load().generation + 1;
        tracing::info!(
            generation,
            addresses = counts.0,
            authorizations = counts.1,
            proxies = counts.2,
            config_errors = loaded.errors.len(),
            load_us,
            translate_us,
            "config published"
        );
        self.state.store(Arc::new(State {
            generation,
            registry: Arc::new(registry),
            status,
            addresses: counts.0,
            authorizations: counts.1,
            proxies: counts.2,
            last_reload_error: None,
            node_tokens: node_tokens(&loaded.resources),
        }));
        ReloadOutcome::Published {
            config_errors: loaded.errors.len(),
        }
    }
}

impl Controller {
    /// One `ringmesh.l7.v1.Proxy` per Gateway we serve (those in `status`),
    /// translated exactly as `gateway --config .. --gateway NS/NAME` would.
    /// A Gateway that cannot be encoded keeps its last published resource.
    fn gateway_proxies(
        &self,
        loaded: &mesh_config::Loaded,
        status: &StatusReport,
    ) -> Vec<(String, mesh_api::prost_types::Any)> {
        let mut out = Vec::new();
        for gateway in status.gateways.iter().map(|g| &g.gateway) {
            let name = l7::resource_name(gateway);
            let options = TranslateOptions {
                gateway_class: self.options.gateway_class.clone(),
                gateway: Some(gateway.clone()),
            };
            let snapshot = mesh_registry::translate(&loaded.resources, &options);
            match l7::proxy_of(&snapshot, gateway, &loaded.resources) {
                Ok(proxy) => out.push((name, l7::to_any(&proxy))),
                Err(e) => {
                    tracing::error!(gateway = %name, error = %e, "cannot publish the gateway's L7 config; keeping the last one");
                    if let Some(last) = self.xds.get(type_url::L7_PROXY, &name) {
                        out.push((name, last.resource));
                    }
                }
            }
        }
        out
    }
}

impl Controller {
    /// One `ringmesh.l7.v1.Proxy` per waypoint (kind WAYPOINT), translated exactly as
    /// `waypoint --config .. --name NS/NAME` would. A waypoint that cannot be encoded (its
    /// L7 AuthorizationPolicies do not travel yet) is withdrawn, not kept at its last
    /// version: serving the old routes without the new policies would fail open.
    fn waypoint_proxies(
        &self,
        resources: &Resources,
        registry: &WorkloadRegistry,
    ) -> Vec<(String, mesh_api::prost_types::Any)> {
        let mut out = Vec::new();
        for waypoint in registry.waypoints.waypoints.values() {
            let waypoint = mesh_registry::ObjectRef {
                namespace: waypoint.namespace.clone(),
                name: waypoint.name.clone(),
            };
            let name = l7::resource_name(&waypoint);
            let snapshot =
                mesh_registry::translate_waypoint(resources, &registry.waypoints, &waypoint);
            match l7::waypoint_proxy_of(&snapshot, &waypoint, resources) {
                Ok(proxy) => out.push((name, l7::to_any(&proxy))),
                Err(e) => {
                    tracing::error!(waypoint = %name, error = %e, "cannot publish the waypoint's L7 config; withdrawn (it serves no Service until this is fixed)");
                }
            }
        }
        out
    }
}

/// The bootstrap tokens of the Secret named by [`crate::ca::NODE_TOKENS_SECRET`];
/// `stringData` wins over `data`, values are trimmed, empty ones ignored.
fn node_tokens(resources: &Resources) -> Option<BTreeMap<String, String>> {
    let (namespace, name) = crate::ca::NODE_TOKENS_SECRET;
    let secret = &resources
        .secrets
        .get(&(namespace.to_string(), name.to_string()))?
        .spec;
    let mut tokens = BTreeMap::new();
    for (node, value) in secret.data.iter().flatten() {
        if let Ok(text) = std::str::from_utf8(&value.0) {
            tokens.insert(node.clone(), text.trim().to_string());
        }
    }
    for (node, value) in secret.string_data.iter().flatten() {
        tokens.insert(node.clone(), value.trim().to_string());
    }
    tokens.retain(|_, token| !token.is_empty());
    Some(tokens)
}

/// A file with a rejected document keeps serving what it held in the last
/// publish (objects its new text no longer yields), so a broken edit changes
/// nothing until it is fixed; objects from healthy files follow their files.
fn retain_last_good(new: &mut Resources, previous: &Resources, broken: &HashSet<PathBuf>) {
    if broken.is_empty() {
        return;
    }
    macro_rules! keep {
        ($($kind:ident),*) => {$(
            for (key, object) in &previous.$kind {
                if broken.contains(&object.meta.file) && !new.$kind.contains_key(key) {
                    new.$kind.insert(key.clone(), object.clone());
                }
            }
        )*};
    }
    keep!(
        gateway_classes,
        gateways,
        http_routes,
        grpc_routes,
        tls_routes,
        tcp_routes,
        reference_grants,
        namespaces,
        services,
        endpoint_slices,
        secrets,
        service_entries,
        pods,
        authorization_policies,
        peer_authentications,
        destination_rules,
        local_rate_limits,
        virtual_services
    );
}

/// `controller status`: the Gateway API status of a config path, without serving.
pub fn status_of(options: &ControllerOptions) -> anyhow::Result<StatusReport> {
    let loaded = mesh_config::load_path(&options.config)?;
    let translate_options = TranslateOptions {
        gateway_class: options.gateway_class.clone(),
        gateway: None,
    };
    let mut status = mesh_registry::translate_loaded(&loaded, &translate_options).status;
    let registry = WorkloadRegistry::build(&loaded.resources, &options.trust_domain);
    status
        .routes
        .extend(mesh_registry::translate::mesh_virtual_service_statuses(
            &loaded.resources,
            &registry.waypoints,
        ));
    Ok(status)
}
