//! Config changes on disk become new snapshots; broken ones do not take the
//! last good one away.

mod support;

use std::time::Duration;

use support::{get, Gateway, TempConfig};

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  ports:
  - name: http
    port: 80
    targetPort: {port}
"
    )
}

#[test]
fn an_edit_is_picked_up_within_a_second() {
    let config = TempConfig::new();
    config.write("svc.yaml", &service("one", 3001));
    let gw = Gateway::with_config(config.path()).start();
    let before = gw.version();

    config.write("svc.yaml", &service("one", 3002));
    let started = std::time::Instant::now();
    let after = gw.wait_version_above(before);
    assert_eq!(after, before + 1);
    // Polling every 250 ms: well inside a second (plus test slack).
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );

    // A new file in a new subfolder is seen too.
    std::fs::create_dir_all(config.path().join("more")).unwrap();
    config.write("more/svc2.yaml", &service("two", 3003));
    gw.wait_version_above(after);

    let metrics = get(gw.metrics, "/metrics").unwrap().body;
    assert!(
        metrics.contains("ringmesh_config_reloads_total 2\n"),
        "{metrics}"
    );
}

#[test]
fn a_broken_document_is_reported_and_the_rest_still_loads() {
    let config = TempConfig::new();
    config.write("svc.yaml", &service("one", 3001));
    let gw = Gateway::with_config(config.path()).start();
    let before = gw.version();

    config.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [not, a, map\n",
    );
    gw.wait_version_above(before);
    let status = get(gw.admin, "/status").unwrap().json();
    let errors = status["config_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("broken.yaml")),
        "{status}"
    );
    assert!(gw.logs().contains("broken.yaml"), "the error is logged");
    assert_eq!(get(gw.ready, "/healthz/ready").unwrap().status, 200);
}

#[test]
fn an_unreadable_path_keeps_the_last_good_snapshot() {
    let config = TempConfig::new();
    let file = config.write("all.yaml", &service("one", 3001));
    // Watch a single file: deleting it makes the path unreadable.
    let gw = Gateway::with_config(&file).start();
    let before = gw.version();

    config.remove("all.yaml");
    support::wait_for("the failed reload", Duration::from_secs(5), || {
        get(gw.metrics, "/metrics")
            .unwrap()
            .body
            .contains("ringmesh_config_reload_failures_total 1\n")
    });
    assert_eq!(gw.version(), before, "the last good snapshot keeps serving");
    assert_eq!(get(gw.ready, "/healthz/ready").unwrap().status, 200);

    // Restoring the file is a change like any other.
    config.write("all.yaml", &service("one", 3005));
    gw.wait_version_above(before);
}
