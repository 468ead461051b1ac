//! In production mode the public listeners say only "ok" or "not ready": `/metrics` and the
//! reasons of `/readyz` are served on `[ops] listen` alone.

use sluice_ingress::Mode;

use super::STRONG_SECRET;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_production_keeps_metrics_and_reasons_off_the_public_listeners() {
    let ports = Ports::free();
    let ops = format!("127.0.0.1:{}", free_port());
    let ops_address = ops.parse().unwrap();
    let test = test_topology_on(Backend::Embedded, "public-ops", &["alice"], |t| {
        ports.apply(t);
        t.ingress.mode = Mode::Production;
        t.ingress.auth.jwt_secret = Some(STRONG_SECRET.into());
        t.ops.listen = Some(ops_address);
    });
    let dir = test.dir.path().to_path_buf();
    let mut child = start_sluice(&test.path, &dir.join("run.log"), &[("RUST_LOG", "warn")]);
    let client = reqwest::Client::new();
    let ops_base = format!("http://{ops}");
    wait_ready(&ops_base, &mut child).await;

    for base in [ports.login_base(), ports.order_base()] {
        wait_ready(&base, &mut child).await;
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 404, "{base}/metrics must not be public");
        for route in ["healthz", "readyz"] {
            let body: serde_json::Value = client
                .get(format!("{base}/{route}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                ["status"],
                "{base}/{route} must say only its status: {body}"
            );
        }
    }
    // The operations listener has them all.
    let login = login(&client, &ports.login_base(), "alice").await;
    assert!(!login.is_empty());
    let metrics = scrape_metrics(&client, &ops_base).await;
    assert!(metrics.contains("sluice_logins_total"), "{metrics}");
    let ready = client
        .get(format!("{ops_base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(terminate(child).success());
}
