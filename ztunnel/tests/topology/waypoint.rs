//! A waypoint process inside its (uncaptured) pod, killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{http_get, in_netns, Pod};

pub struct Waypoint {
    child: Child,
    pod: &'static Pod,
}

impl Waypoint {
    /// Starts `bin --config CONFIG --name NAME --ca-dir CA` in `pod` and
    /// waits until it is ready.
    pub fn start(bin: &Path, pod: &'static Pod, config: &Path, name: &str, ca_dir: &Path) -> Self {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", pod.netns().display()))
            .arg(bin)
            .args(["--config", &config.display().to_string()])
            .args(["--name", name])
            .args(["--ca-dir", &ca_dir.display().to_string()])
            .args(["--workers", "2"])
            .args(["--metrics-addr", "127.0.0.1:15020"])
            .args(["--ready-addr", "127.0.0.1:15021"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .spawn()
            .expect("start waypoint");
        let w = Waypoint { child, pod };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !w
            .local_get(15021, "/healthz/ready")
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            assert!(Instant::now() < deadline, "the waypoint never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn local_get(&self, port: u16, path: &'static str) -> Option<String> {
        in_netns(&self.pod.netns(), move || {
            http_get(SocketAddr::from(([127, 0, 0, 1], port)), path)
        })
        .join()
        .unwrap()
    }

    pub fn metrics(&self) -> String {
        self.local_get(15020, "/metrics").expect("scrape waypoint")
    }
}

impl Drop for Waypoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
