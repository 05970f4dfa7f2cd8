//! Golden encodings: messages built with hand-picked values must encode to bytes written by
//! hand from the contract's field numbers (tag = number << 3 | wire type). A wrong field
//! number, type or packing in the .proto files fails here. The decode direction checks bytes
//! in field-number order (how Go's protobuf, i.e. istiod, writes them) decode to the same value.

use mesh_api::envoy::config::core::v3::Node;
use mesh_api::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use mesh_api::google::rpc::Status;
use mesh_api::istio::security as sec;
use mesh_api::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use mesh_api::istio::workload as wl;
use mesh_api::prost::Message;
use std::collections::BTreeMap;

/// A length-delimited field: `tag` bytes (written by hand), then the body's length, then body.
fn ld(tag: &[u8], body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128, "test bodies stay under one length byte");
    let mut out = tag.to_vec();
    out.push(body.len() as u8);
    out.extend_from_slice(body);
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn port_80_8080() -> Vec<u8> {
    // service_port=1 varint 80; target_port=2 varint 8080 = 0x90 0x3F
    vec![0x08, 0x50, 0x10, 0x90, 0x3F]
}

fn workload() -> wl::Workload {
    let mut services = BTreeMap::new();
    services.insert(
        "ns/h".to_string(),
        wl::PortList {
            ports: vec![wl::Port {
                service_port: 80,
                target_port: 8080,
            }],
        },
    );
    wl::Workload {
        uid: "u1".into(),
        name: "p".into(),
        namespace: "ns".into(),
        addresses: vec![vec![10, 0, 0, 1]],
        hostname: "h".into(),
        network: "n1".into(),
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        trust_domain: "td".into(),
        service_account: "sa".into(),
        waypoint: Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Address(
                wl::NetworkAddress {
                    network: String::new(),
                    address: vec![10, 0, 0, 9],
                },
            )),
            hbone_mtls_port: 15008,
        }),
        node: "nd".into(),
        canonical_name: "cn".into(),
        workload_type: wl::WorkloadType::Pod as i32,
        services,
        status: wl::WorkloadStatus::Unhealthy as i32,
        cluster_id: "c1".into(),
        locality: Some(wl::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: String::new(),
        }),
        ..Default::default()
    }
}

// Each field of the workload, hand-encoded, keyed by field number.
fn workload_fields() -> Vec<(u32, Vec<u8>)> {
    let waypoint_addr = ld(&[0x12], &[0x0A, 0, 0, 9]); // NetworkAddress.address=2
    let waypoint = cat(&[ld(&[0x12], &waypoint_addr), vec![0x18, 0xA0, 0x75]]); // address=2, hbone_mtls_port=3 15008
    let port_list = ld(&[0x0A], &port_80_8080()); // PortList.ports=1
    let entry = cat(&[ld(&[0x0A], b"ns/h"), ld(&[0x12], &port_list)]); // map key=1, value=2
    vec![
        (20, ld(&[0xA2, 0x01], b"u1")),   // uid=20
        (1, ld(&[0x0A], b"p")),           // name=1
        (2, ld(&[0x12], b"ns")),          // namespace=2
        (3, ld(&[0x1A], &[10, 0, 0, 1])), // addresses=3 (bytes)
        (21, ld(&[0xAA, 0x01], b"h")),    // hostname=21
        (4, ld(&[0x22], b"n1")),          // network=4
        (5, vec![0x28, 0x01]),            // tunnel_protocol=5 HBONE
        (6, ld(&[0x32], b"td")),          // trust_domain=6
        (7, ld(&[0x3A], b"sa")),          // service_account=7
        (8, ld(&[0x42], &waypoint)),      // waypoint=8
        (9, ld(&[0x4A], b"nd")),          // node=9
        (10, ld(&[0x52], b"cn")),         // canonical_name=10
        (12, vec![0x60, 0x02]),           // workload_type=12 POD
        (22, ld(&[0xB2, 0x01], &entry)),  // services=22
        (17, vec![0x88, 0x01, 0x01]),     // status=17 UNHEALTHY
        (18, ld(&[0x92, 0x01], b"c1")),   // cluster_id=18
        (
            24,
            ld(&[0xC2, 0x01], &cat(&[ld(&[0x0A], b"r"), ld(&[0x12], b"z")])),
        ), // locality=24
    ]
}

fn in_number_order(mut fields: Vec<(u32, Vec<u8>)>) -> Vec<u8> {
    fields.sort_by_key(|(n, _)| *n);
    fields.into_iter().flat_map(|(_, b)| b).collect()
}

#[test]
fn workload_encodes_with_istio_field_numbers() {
    // prost, like Go's protobuf, writes fields in field-number order.
    assert_eq!(
        workload().encode_to_vec(),
        in_number_order(workload_fields())
    );
}

#[test]
fn workload_decodes_from_number_ordered_bytes() {
    let bytes = in_number_order(workload_fields());
    assert_eq!(wl::Workload::decode(bytes.as_slice()).unwrap(), workload());
}

#[test]
fn address_wraps_workload_as_field_1_and_service_as_field_2() {
    let w = wl::Address {
        r#type: Some(wl::address::Type::Workload(wl::Workload {
            uid: "u".into(),
            ..Default::default()
        })),
    };
    assert_eq!(w.encode_to_vec(), ld(&[0x0A], &ld(&[0xA2, 0x01], b"u")));
    let s = wl::Address {
        r#type: Some(wl::address::Type::Service(wl::Service {
            name: "s".into(),
            ..Default::default()
        })),
    };
    assert_eq!(s.encode_to_vec(), ld(&[0x12], &ld(&[0x0A], b"s")));
    assert_eq!(mesh_api::address_resource_name(&w).as_deref(), Some("u"));
}

#[test]
fn service_encodes_with_istio_field_numbers() {
    let service = wl::Service {
        name: "s".into(),
        namespace: "ns".into(),
        hostname: "s.ns.svc.cluster.local".into(),
        addresses: vec![wl::NetworkAddress {
            network: "n1".into(),
            address: vec![10, 96, 0, 1],
        }],
        ports: vec![wl::Port {
            service_port: 80,
            target_port: 8080,
        }],
        subject_alt_names: vec!["spiffe://x".into()],
        waypoint: Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Hostname(
                wl::NamespacedHostname {
                    namespace: "ns".into(),
                    hostname: "wp".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        load_balancing: Some(wl::LoadBalancing {
            routing_preference: vec![
                wl::load_balancing::Scope::Node as i32,
                wl::load_balancing::Scope::Zone as i32,
            ],
            mode: wl::load_balancing::Mode::Failover as i32,
            health_policy: 0,
        }),
        ip_families: wl::IpFamilies::Dual as i32,
        extensions: vec![],
        canonical: true,
    };
    let net_addr = cat(&[ld(&[0x0A], b"n1"), ld(&[0x12], &[10, 96, 0, 1])]); // network=1, address=2
    let ns_host = cat(&[ld(&[0x0A], b"ns"), ld(&[0x12], b"wp")]); // namespace=1, hostname=2
    let waypoint = cat(&[ld(&[0x0A], &ns_host), vec![0x18, 0xA0, 0x75]]); // hostname=1, port=3
    let lb = cat(&[ld(&[0x0A], &[0x04, 0x02]), vec![0x10, 0x02]]); // packed routing_preference=1, mode=2
    let expected = cat(&[
        ld(&[0x0A], b"s"),                      // name=1
        ld(&[0x12], b"ns"),                     // namespace=2
        ld(&[0x1A], b"s.ns.svc.cluster.local"), // hostname=3
        ld(&[0x22], &net_addr),                 // addresses=4
        ld(&[0x2A], &port_80_8080()),           // ports=5
        ld(&[0x32], b"spiffe://x"),             // subject_alt_names=6
        ld(&[0x3A], &waypoint),                 // waypoint=7
        ld(&[0x42], &lb),                       // load_balancing=8
        vec![0x48, 0x03],                       // ip_families=9 DUAL
        vec![0x58, 0x01],                       // canonical=11
    ]);
    assert_eq!(service.encode_to_vec(), expected);
    assert_eq!(wl::Service::decode(expected.as_slice()).unwrap(), service);
}

#[test]
fn authorization_encodes_with_istio_field_numbers() {
    let exact = |s: &str| sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(s.into())),
    };
    let policy = sec::Authorization {
        name: "deny-x".into(),
        namespace: "ns".into(),
        scope: sec::Scope::Namespace as i32,
        action: sec::Action::Deny as i32,
        groups: vec![sec::Group {
            rules: vec![sec::Rules {
                matches: vec![sec::Match {
                    namespaces: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Prefix("te".into())),
                    }],
                    principals: vec![exact("spiffe://td/ns/a/sa/b")],
                    not_principals: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Presence(())),
                    }],
                    source_ips: vec![sec::Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    destination_ports: vec![80, 443],
                    ..Default::default()
                }],
            }],
        }],
    };
    let matched = cat(&[
        ld(&[0x0A], &ld(&[0x12], b"te")), // namespaces=1 {prefix=2}
        ld(&[0x1A], &ld(&[0x0A], b"spiffe://td/ns/a/sa/b")), // principals=3 {exact=1}
        ld(&[0x22], &[0x22, 0x00]),       // not_principals=4 {presence=4 Empty}
        ld(&[0x2A], &[0x0A, 0x04, 10, 0, 0, 0, 0x10, 0x08]), // source_ips=5 {address=1, length=2}
        ld(&[0x4A], &[0x50, 0xBB, 0x03]), // destination_ports=9 packed
    ]);
    let rules = ld(&[0x12], &matched); // Rules.matches=2
    let group = ld(&[0x0A], &rules); // Group.rules=1
    let expected = cat(&[
        ld(&[0x0A], b"deny-x"), // name=1
        ld(&[0x12], b"ns"),     // namespace=2
        vec![0x18, 0x01],       // scope=3 NAMESPACE
        vec![0x20, 0x01],       // action=4 DENY
        ld(&[0x2A], &group),    // groups=5
    ]);
    assert_eq!(policy.encode_to_vec(), expected);
    assert_eq!(
        sec::Authorization::decode(expected.as_slice()).unwrap(),
        policy
    );
    assert_eq!(mesh_api::authorization_resource_name(&policy), "ns/deny-x");
}

#[test]
fn ca_messages_encode_with_istio_field_numbers() {
    let request = IstioCertificateRequest {
        csr: "CSR".into(),
        validity_duration: 86400,
        metadata: None,
    };
    // csr=1; validity_duration=3 varint 86400 = 0x80 0xA3 0x05
    let expected = cat(&[ld(&[0x0A], b"CSR"), vec![0x18, 0x80, 0xA3, 0x05]]);
    assert_eq!(request.encode_to_vec(), expected);
    let response = IstioCertificateResponse {
        cert_chain: vec!["a".into(), "b".into()],
    };
    assert_eq!(
        response.encode_to_vec(),
        cat(&[ld(&[0x0A], b"a"), ld(&[0x0A], b"b")])
    );
}

#[test]
fn delta_discovery_messages_encode_with_envoy_field_numbers() {
    let request = DeltaDiscoveryRequest {
        node: Some(Node {
            id: "n".into(),
            ..Default::default()
        }),
        type_url: "t".into(),
        resource_names_subscribe: vec!["*".into()],
        resource_names_unsubscribe: vec![],
        initial_resource_versions: [("a".to_string(), "1".to_string())].into(),
        response_nonce: "1".into(),
        error_detail: Some(Status {
            code: 3,
            message: "bad".into(),
            details: vec![],
        }),
    };
    let expected = cat(&[
        ld(&[0x0A], &ld(&[0x0A], b"n")), // node=1 {id=1}
        ld(&[0x12], b"t"),               // type_url=2
        ld(&[0x1A], b"*"),               // resource_names_subscribe=3
        ld(&[0x2A], &cat(&[ld(&[0x0A], b"a"), ld(&[0x12], b"1")])), // initial_resource_versions=5
        ld(&[0x32], b"1"),               // response_nonce=6
        ld(&[0x3A], &cat(&[vec![0x08, 0x03], ld(&[0x12], b"bad")])), // error_detail=7
    ]);
    assert_eq!(request.encode_to_vec(), expected);

    let response = DeltaDiscoveryResponse {
        system_version_info: String::new(),
        resources: vec![Resource {
            version: "v1".into(),
            resource: Some(mesh_api::prost_types::Any {
                type_url: "t".into(),
                value: vec![1],
            }),
            name: "r".into(),
            aliases: vec![],
            ttl: None,
        }],
        type_url: "t".into(),
        nonce: "7".into(),
        removed_resources: vec!["x".into()],
        control_plane: None,
    };
    let any = cat(&[ld(&[0x0A], b"t"), ld(&[0x12], &[1])]);
    let resource = cat(&[ld(&[0x0A], b"v1"), ld(&[0x12], &any), ld(&[0x1A], b"r")]); // version=1, resource=2, name=3
    let expected = cat(&[
        ld(&[0x12], &resource), // resources=2
        ld(&[0x22], b"t"),      // type_url=4
        ld(&[0x2A], b"7"),      // nonce=5
        ld(&[0x32], b"x"),      // removed_resources=6
    ]);
    assert_eq!(response.encode_to_vec(), expected);
}

#[test]
fn from_any_rejects_wrong_type_url() {
    let any = mesh_api::to_any(
        mesh_api::type_url::AUTHORIZATION,
        &sec::Authorization::default(),
    );
    let err = mesh_api::from_any::<wl::Address>(mesh_api::type_url::ADDRESS, &any).unwrap_err();
    assert!(
        err.to_string().contains("istio.security.Authorization"),
        "{err}"
    );
    let ok: sec::Authorization =
        mesh_api::from_any(mesh_api::type_url::AUTHORIZATION, &any).unwrap();
    assert_eq!(ok, sec::Authorization::default());
}

#[test]
fn l7_proxy_round_trips_and_keeps_its_field_numbers() {
    use mesh_api::ringmesh::l7::v1 as l7;
    let proxy = l7::Proxy {
        name: "gw".into(),
        namespace: "ns".into(),
        kind: l7::ProxyKind::Waypoint as i32,
        listeners: vec![l7::Listener {
            name: "http".into(),
            port: 80,
            routes: vec![l7::Route {
                name: "ns/web".into(),
                rules: vec![l7::RouteRule {
                    backends: vec![l7::WeightedBackend {
                        backend: "ns/web:8080".into(),
                        weight: 90,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let bytes = proxy.encode_to_vec();
    // name=1, namespace=2, kind=3 (WAYPOINT=1), then listeners=4.
    assert_eq!(
        &bytes[..10],
        &cat(&[ld(&[0x0A], b"gw"), ld(&[0x12], b"ns"), vec![0x18, 0x01]])[..]
    );
    assert_eq!(bytes[10], 0x22);
    let any = mesh_api::to_any(mesh_api::type_url::L7_PROXY, &proxy);
    let back: l7::Proxy = mesh_api::from_any(mesh_api::type_url::L7_PROXY, &any).unwrap();
    assert_eq!(back, proxy);
}
