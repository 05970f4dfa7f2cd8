//! Routes of the admin (15000), metrics (15020) and ready (15021) servers.

use crate::control::ControlState;
use crate::http_responder::{Request, Response};

/// Admin: `/config_dump`, `/status`, `/quitquitquit`, `/healthz/ready`, `/logging`.
pub(crate) fn admin(state: &ControlState, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/config_dump") if state.config_dump.is_some() => {
            let dump = state.config_dump.as_ref().expect("checked by the guard");
            match serde_json::to_string_pretty(&dump()) {
                Ok(json) => Response::json(json),
                Err(e) => Response::text(500, format!("cannot serialize the config dump: {e}\n")),
            }
        }
        ("GET", "/config_dump") => match serde_json::to_string_pretty(&**state.snapshots.load()) {
            Ok(json) => Response::json(json),
            Err(e) => Response::text(500, format!("cannot serialize the snapshot: {e}\n")),
        },
        ("GET", "/status") => match serde_json::to_string_pretty(&state.snapshots.load().status) {
            Ok(json) => Response::json(json),
            Err(e) => Response::text(500, format!("cannot serialize the status: {e}\n")),
        },
        ("GET" | "POST", "/quitquitquit") => {
            let mut response = Response::text(200, "OK\n");
            response.after = Some(|state| {
                state.shutdown.trigger("/quitquitquit");
            });
            response
        }
        ("GET", "/healthz/ready") => ready(state, req),
        ("GET" | "POST", "/logging") => logging(state, req),
        ("GET", "/") => Response::text(
            200,
            "ringmesh admin\n  /config_dump\n  /status\n  /healthz/ready\n  /quitquitquit (POST)\n  /logging (GET; POST ?level=FILTER)\n",
        ),
        (_, "/config_dump" | "/status" | "/quitquitquit" | "/healthz/ready" | "/logging") => {
            Response::text(405, "method not allowed\n")
        }
        _ => Response::not_found(),
    }
}

/// `GET /logging`: the log filter; `POST /logging?level=F`: set it (RUST_LOG syntax).
fn logging(state: &ControlState, req: &Request) -> Response {
    let Some(control) = &state.log_control else {
        return Response::text(404, "log control not enabled in this program\n");
    };
    let level = match (req.method.as_str(), req.param("level")) {
        ("POST", Some(level)) => Some(level),
        ("POST", None) => return Response::text(400, "usage: POST /logging?level=debug\n"),
        _ => None,
    };
    match control(level) {
        Ok(now) => {
            if let Some(level) = level {
                tracing::info!(filter = %now, requested = level, "log filter changed");
            }
            Response::text(200, format!("{now}\n"))
        }
        Err(e) => Response::text(400, format!("{e}\n")),
    }
}

/// Metrics: `/metrics` (also `/stats/prometheus`, Envoy's path).
pub(crate) fn metrics(state: &ControlState, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/metrics" | "/stats/prometheus") => {
            let mut r = Response::text(200, crate::metrics::render_all(state));
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r
        }
        _ => Response::not_found(),
    }
}

/// Ready: `/healthz/ready` 200 once every worker bound every listener port of
/// the current snapshot, 503 before that and while draining.
pub(crate) fn ready(state: &ControlState, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz/ready") => {
            if state.is_ready() {
                Response::text(200, "ready\n")
            } else if state.shutdown.is_requested() {
                Response::text(503, "draining\n")
            } else {
                Response::text(503, "not ready: listeners not bound yet\n")
            }
        }
        _ => Response::not_found(),
    }
}
