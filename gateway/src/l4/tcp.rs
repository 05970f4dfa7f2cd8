//! TCP listeners: every connection goes to the port's TCPRoute.

use mesh_registry::L4Routes;
use mesh_runtime::Accepted;

use super::L4Handler;

pub async fn serve(handler: &L4Handler, conn: Accepted, routes: &L4Routes) {
    let _ = conn.stream.set_nodelay(true);
    let route = routes.route(None).map(|r| &**r);
    handler
        .proxy("tcp", conn.stream, conn.peer, route, Vec::new())
        .await;
}
