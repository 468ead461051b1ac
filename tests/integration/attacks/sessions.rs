//! Sessions end with the password: changing a user's password (or removing the user) and
//! reloading refuses every token issued to that user before, whether it came from
//! `POST /login` or from `sluice token`; other users' tokens live on.

use std::process::Command;
use std::time::Duration;

use super::users_add;
use crate::common::*;

/// A new password for alice, strong enough for `sluice users add`.
const NEW_PASSWORD: &str = "a brand new passphrase, seven rivers";

async fn login_with(client: &reqwest::Client, base: &str, user: &str, password: &str) -> u16 {
    client
        .post(format!("{base}/login"))
        .json(&serde_json::json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn order_as(client: &reqwest::Client, base: &str, user: &str, token: &str) -> (u16, String) {
    let response = client
        .post(format!("{base}/order"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "userId": user, "product": "widget", "quantity": 1 }))
        .send()
        .await
        .unwrap();
    if response.status().is_success() {
        return (response.status().as_u16(), String::new());
    }
    let (status, _, message) = error_of(response).await;
    (status, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_a_password_change_ends_the_old_sessions() {
    let ports = Ports::free();
    let test = test_topology_on(Backend::Embedded, "sessions", &["alice", "bob"], |t| {
        ports.apply(t)
    });
    let dir = test.dir.path().to_path_buf();
    let mut child = start_sluice(&test.path, &dir.join("run.log"), &[("RUST_LOG", "warn")]);
    let (login_base, order_base) = (ports.login_base(), ports.order_base());
    wait_ready(&order_base, &mut child).await;
    let client = reqwest::Client::new();

    let from_login = login(&client, &login_base, "alice").await;
    let minted = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["token", "--user", "alice", "--topology"])
        .arg(&test.path)
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let from_cli = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    let bobs = login(&client, &login_base, "bob").await;
    for token in [&from_login, &from_cli] {
        assert_eq!(order_as(&client, &order_base, "alice", token).await.0, 202);
    }

    // alice changes her password; the running process reloads its users.
    let users_file = test
        .topology()
        .resolve_path(&test.topology().ingress.auth.users_file);
    let added = users_add(&users_file, "alice", NEW_PASSWORD, &[]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "alice's old session to end",
        || async { order_as(&client, &order_base, "alice", &from_login).await.0 == 401 },
    )
    .await;
    for token in [&from_login, &from_cli] {
        let (status, message) = order_as(&client, &order_base, "alice", token).await;
        assert_eq!(
            status, 401,
            "a token issued before the change must be refused"
        );
        assert!(message.contains("password changed"), "{message}");
    }
    assert_eq!(
        login_with(&client, &login_base, "alice", PASSWORD).await,
        401
    );
    assert_eq!(
        login_with(&client, &login_base, "alice", NEW_PASSWORD).await,
        200
    );
    let fresh = {
        let response = client
            .post(format!("{login_base}/login"))
            .json(&serde_json::json!({ "username": "alice", "password": NEW_PASSWORD }))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    };
    assert_eq!(order_as(&client, &order_base, "alice", &fresh).await.0, 202);
    assert_eq!(
        order_as(&client, &order_base, "bob", &bobs).await.0,
        202,
        "another user's session must live on"
    );

    // Removing bob ends his session too.
    assert!(sluice_ingress::users::remove_user(&users_file, "bob").unwrap());
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    eventually(Duration::from_secs(10), "bob's session to end", || async {
        order_as(&client, &order_base, "bob", &bobs).await.0 == 401
    })
    .await;
    assert!(terminate(child).success());
}
