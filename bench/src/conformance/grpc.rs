//! gRPC cases (`request.grpc_method`): one unary call through the gateway with tonic's
//! client over cleartext HTTP/2 (prior knowledge, the upstream harness's `h2c-grpc`
//! scheme), then the harness's checks: `grpc_status`, and on OK the serving pod from
//! `EchoResponse.assertions.context` like HTTP's backend/backend_namespace.
//!
//! A gateway that cannot speak HTTP/2 fails these cases (connection or protocol error),
//! it does not skip them.

use std::str::FromStr;
use std::time::Duration;

use http::uri::PathAndQuery;
use serde_yaml_ng::Value;
use tonic::metadata::{MetadataKey, MetadataValue};

use super::vectors::Case;
use crate::echo::proto::{EchoRequest, EchoResponse};

/// The outcome of one call.
#[derive(Debug)]
pub struct GrpcReply {
    pub code: tonic::Code,
    pub message: String,
    pub response: Option<EchoResponse>,
    /// Response metadata (headers, plus trailers on success), lower-case names.
    pub metadata: Vec<(String, String)>,
}

/// `/service/method` from the vector: a string, or `{service, method}`.
pub fn method_path(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) if s.starts_with('/') => Ok(s.clone()),
        Value::String(s) => Ok(format!("/{s}")),
        Value::Mapping(m) => {
            let field = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let (service, method) = (field("service"), field("method"));
            if service.is_empty() || method.is_empty() {
                return Err(format!("grpc_method {value:?} needs service and method"));
            }
            Ok(format!("/{service}/{method}"))
        }
        other => Err(format!("grpc_method {other:?} is not a string or mapping")),
    }
}

/// One HTTP/2 connection to the gateway, for several calls (distribution samples).
pub struct GrpcClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl GrpcClient {
    pub async fn connect(port: u16, host: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let address = if port == 80 {
            "http://127.0.0.1".to_string()
        } else {
            format!("http://127.0.0.1:{port}")
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(address)
            .map_err(|e| format!("endpoint: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout);
        if let Some(host) = host {
            let origin = http::Uri::from_str(&format!("http://{host}"))
                .map_err(|e| format!("host {host:?}: {e}"))?;
            endpoint = endpoint.origin(origin);
        }
        let channel = endpoint.connect().await.map_err(|e| {
            format!(
                "connecting to the gateway on port {port} (h2c): {}",
                chain(&e)
            )
        })?;
        Ok(GrpcClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One unary call of `path` with `metadata`.
    pub async fn call(
        &self,
        path: &str,
        metadata: &[(String, String)],
    ) -> Result<GrpcReply, String> {
        // A Channel clone shares the connection.
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| format!("gRPC channel not ready: {}", chain(&e)))?;
        let mut request = tonic::Request::new(EchoRequest {});
        for (name, value) in metadata {
            let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|e| format!("metadata name {name:?}: {e}"))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|e| format!("metadata value {value:?}: {e}"))?;
            request.metadata_mut().append(key, value);
        }
        let path = PathAndQuery::from_str(path).map_err(|e| format!("method {path:?}: {e}"))?;
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
        Ok(match grpc.unary(request, path, codec).await {
            Ok(response) => GrpcReply {
                code: tonic::Code::Ok,
                message: String::new(),
                metadata: metadata_pairs(response.metadata()),
                response: Some(response.into_inner()),
            },
            Err(status) => GrpcReply {
                code: status.code(),
                message: status.message().to_string(),
                metadata: metadata_pairs(status.metadata()),
                response: None,
            },
        })
    }
}

/// Calls `path` on the gateway's `port` with `metadata` on a new connection; `host`
/// overrides `:authority`.
pub fn call(
    port: u16,
    host: Option<&str>,
    path: &str,
    metadata: &[(String, String)],
    timeout: Duration,
) -> Result<GrpcReply, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(call_async(port, host, path, metadata, timeout))
}

async fn call_async(
    port: u16,
    host: Option<&str>,
    path: &str,
    metadata: &[(String, String)],
    timeout: Duration,
) -> Result<GrpcReply, String> {
    GrpcClient::connect(port, host, timeout)
        .await?
        .call(path, metadata)
        .await
}

fn metadata_pairs(map: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    map.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// An error with its sources ("transport error: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// tonic's name for a status code, as the vectors write it (`OK`, `UNIMPLEMENTED`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The harness's gRPC checks for one reply.
pub fn check(case: &Case, reply: &GrpcReply) -> Result<(), String> {
    let expect = &case.expect;
    let want = expect.grpc_status.as_deref().unwrap_or("OK");
    let got = code_name(reply.code);
    if !want.eq_ignore_ascii_case(got) && want != (reply.code as i32).to_string() {
        let detail = if reply.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", reply.message)
        };
        return Err(format!("expected gRPC status {want}, got {got}{detail}"));
    }
    if reply.code != tonic::Code::Ok {
        return Ok(());
    }
    let context = reply
        .response
        .as_ref()
        .and_then(|r| r.assertions.as_ref())
        .and_then(|a| a.context.clone())
        .unwrap_or_default();
    if let Some(ns) = &expect.backend_namespace {
        if &context.namespace != ns {
            return Err(format!(
                "expected namespace {ns:?}, got {:?} (pod {:?})",
                context.namespace, context.pod
            ));
        }
    }
    if let Some(backend) = &expect.backend {
        if !context.pod.starts_with(backend.as_str()) {
            return Err(format!(
                "expected backend {backend}, got pod {:?}",
                context.pod
            ));
        }
    }
    for (name, value) in &expect.response_headers {
        let got: Vec<&str> = reply
            .metadata
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        if got.join(",") != *value {
            return Err(format!(
                "expected response metadata {name}: {value:?}, got {:?}",
                got.join(",")
            ));
        }
    }
    for name in &expect.response_absent_headers {
        if reply
            .metadata
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            return Err(format!("response metadata {name} should be absent"));
        }
    }
    if let Some(upstream) = &expect.upstream {
        let headers = reply
            .response
            .as_ref()
            .and_then(|r| r.assertions.as_ref())
            .map(|a| a.headers.clone())
            .unwrap_or_default();
        for (name, value) in &upstream.headers {
            let got: Vec<&str> = headers
                .iter()
                .filter(|h| h.key.eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str())
                .collect();
            if got.join(",") != *value {
                return Err(format!(
                    "expected upstream metadata {name}: {value:?}, got {:?}",
                    got.join(",")
                ));
            }
        }
        for name in &upstream.absent_headers {
            if headers.iter().any(|h| h.key.eq_ignore_ascii_case(name)) {
                return Err(format!("upstream metadata {name} should be absent"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::proto::{Assertions, Context};

    fn case(yaml: &str) -> Case {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn reply(code: tonic::Code, pod: &str) -> GrpcReply {
        GrpcReply {
            code,
            message: String::new(),
            metadata: vec![("x-resp".into(), "a".into())],
            response: (code == tonic::Code::Ok).then(|| EchoResponse {
                assertions: Some(Assertions {
                    context: Some(Context {
                        namespace: "infra".into(),
                        pod: pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
        }
    }

    #[test]
    fn method_paths_from_strings_and_mappings() {
        let v: Value = serde_yaml_ng::from_str("/a.B/C").unwrap();
        assert_eq!(method_path(&v).unwrap(), "/a.B/C");
        let v: Value = serde_yaml_ng::from_str("{service: a.B, method: C}").unwrap();
        assert_eq!(method_path(&v).unwrap(), "/a.B/C");
        let v: Value = serde_yaml_ng::from_str("{service: a.B}").unwrap();
        assert!(method_path(&v).is_err());
    }

    #[test]
    fn status_backend_and_metadata_checks() {
        let ok = case(
            "{id: 0, request: {grpc_method: /a.B/C}, expect: {grpc_status: OK, backend: v1, backend_namespace: infra, response_headers: {X-Resp: a}}}",
        );
        assert!(check(&ok, &reply(tonic::Code::Ok, "v1-abc-def")).is_ok());
        let err = check(&ok, &reply(tonic::Code::Ok, "v2-abc-def")).unwrap_err();
        assert!(err.contains("expected backend v1"), "{err}");
        let err = check(&ok, &reply(tonic::Code::Unimplemented, "")).unwrap_err();
        assert_eq!(err, "expected gRPC status OK, got UNIMPLEMENTED");
        let unimplemented =
            case("{id: 1, request: {grpc_method: /a.B/C}, expect: {grpc_status: UNIMPLEMENTED}}");
        assert!(check(&unimplemented, &reply(tonic::Code::Unimplemented, "")).is_ok());
        assert!(check(&unimplemented, &reply(tonic::Code::Ok, "v1")).is_err());
    }
}
