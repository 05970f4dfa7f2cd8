//! The gateway's per-connection dispatcher: TLS passthrough and TCP ports go
//! to the L4 proxy, HTTP and HTTPS ports to the HTTP engine. The port's
//! protocol is read from the current snapshot when the connection arrives.

use std::rc::Rc;

use mesh_runtime::{Accepted, ConnectionHandler};

use crate::l4::L4Handler;

pub struct GatewayHandler {
    pub http: Rc<mesh_http::HttpHandler>,
    pub l4: Rc<L4Handler>,
}

impl ConnectionHandler for GatewayHandler {
    async fn handle(self: Rc<Self>, conn: Accepted) {
        if let Some(port) = self.l4.l4_port(conn.port) {
            self.l4.clone().handle(conn, port).await
        } else {
            self.http.clone().handle(conn).await
        }
    }
}
