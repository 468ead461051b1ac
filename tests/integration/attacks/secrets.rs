//! No public secret ever signs a token Sluice accepts: the shipped topology sets no token
//! secret, so a development run generates one (owner-only, kept across restarts, read by
//! `sluice token`), and every secret ever published is refused in every mode.

use std::process::Command;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use sluice_ingress::generated_secret::PUBLISHED_SECRETS;

use super::{claims, hs256, now_secs, order, shipped_copy, sluice};
use crate::common::*;

/// `sluice run` on `topology` listening on one free loopback port, without SLUICE_JWT_SECRET.
fn run_without_secret(
    topology: &std::path::Path,
    log: &std::path::Path,
) -> (std::process::Child, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--topology"])
        .arg(topology)
        .env_remove("SLUICE_JWT_SECRET")
        .envs([
            ("SLUICE_LOGIN_LISTEN", listen.as_str()),
            ("SLUICE_ORDER_LISTEN", listen.as_str()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    (child, format!("http://{listen}"))
}

async fn login_token(client: &reqwest::Client, base: &str) -> String {
    let response = client
        .post(format!("{base}/login"))
        .body(r#"{"username":"alice","password":"wonderland"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_defaults_no_public_secret_signs_a_token() {
    let (dir, topology) = shipped_copy();
    let secret_file = dir.path().join("data/jwt-secret");

    // `sluice token` before any run: it never generates the secret, it says how to get one.
    let early = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["token", "--user", "alice", "--topology"])
        .arg(&topology)
        .env_remove("SLUICE_JWT_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success(), "{stderr}");
    assert!(stderr.contains("sluice run"), "{stderr}");
    assert!(
        !secret_file.exists(),
        "`sluice token` created the secret file"
    );

    let (mut child, base) = run_without_secret(&topology, &dir.path().join("first.log"));
    wait_ready(&base, &mut child).await;
    let client = reqwest::Client::new();

    // The generated secret: 32 random bytes in hex, readable by its owner only.
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert_eq!(secret.trim().len(), 64, "{secret:?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret file must be owner-only");
    }

    // Tokens signed with any published secret are refused, with or without a key id.
    let now = now_secs();
    for published in PUBLISHED_SECRETS {
        let forged_claims = claims("alice", None, now, now, now + 600);
        let key = EncodingKey::from_secret(published.as_bytes());
        let with_kid = hs256("default", published.as_bytes(), &forged_claims);
        let without_kid = encode(&Header::new(Algorithm::HS256), &forged_claims, &key).unwrap();
        for forged in [with_kid, without_kid] {
            assert_eq!(
                order(&client, &base, &forged).await.0,
                401,
                "a token signed with the published secret {published:?} must be refused"
            );
        }
    }

    // Logins and `sluice token` sign with the generated secret.
    let from_login = login_token(&client, &base).await;
    assert_eq!(order(&client, &base, &from_login).await.0, 202);
    let minted = sluice(&["token", "--user", "alice"], &topology, &[]);
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let from_cli = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    assert_eq!(order(&client, &base, &from_cli).await.0, 202);

    // A reload that would bring a published secret in, as the shorthand or as a key of the
    // ring, is refused: the running keys stay in force.
    let shipped_text = std::fs::read_to_string(&topology).unwrap();
    let published = PUBLISHED_SECRETS[0];
    let with_published_key = format!(
        "{shipped_text}\n[[ingress.auth.keys]]\nkid = \"old\"\nalgorithm = \"HS256\"\nsecret = \"{published}\"\n"
    );
    let with_published_shorthand = shipped_text.replace(
        r#"jwt_secret = "${SLUICE_JWT_SECRET:-}""#,
        &format!(r#"jwt_secret = "{published}""#),
    );
    assert_ne!(with_published_shorthand, shipped_text);
    let log_file = dir.path().join("first.log");
    for (round, text) in [with_published_key, with_published_shorthand]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&topology, text).unwrap();
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        eventually(
            std::time::Duration::from_secs(10),
            "the reload to be refused",
            || async {
                std::fs::read_to_string(&log_file)
                    .unwrap()
                    .matches("is a published secret")
                    .count()
                    > round
            },
        )
        .await;
        assert_eq!(order(&client, &base, &from_login).await.0, 202);
        let forged = hs256(
            "old",
            published.as_bytes(),
            &claims("alice", None, now, now, now + 600),
        );
        assert_eq!(order(&client, &base, &forged).await.0, 401);
    }
    assert!(!std::fs::read_to_string(&log_file)
        .unwrap()
        .contains(published));
    std::fs::write(&topology, &shipped_text).unwrap();
    assert!(terminate(child).success());

    // A restart keeps the secret, so tokens keep working.
    let (mut child, base) = run_without_secret(&topology, &dir.path().join("second.log"));
    wait_ready(&base, &mut child).await;
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret);
    assert_eq!(order(&client, &base, &from_login).await.0, 202);
    assert!(terminate(child).success());

    // A published secret set by hand is refused in development mode too, and production
    // mode refuses to start without any key.
    for published in PUBLISHED_SECRETS {
        let output = sluice(
            &["run"],
            &topology,
            &[
                ("SLUICE_JWT_SECRET", published),
                ("SLUICE_LOGIN_LISTEN", "127.0.0.1:0"),
                ("SLUICE_ORDER_LISTEN", "127.0.0.1:0"),
            ],
        );
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is a published secret"), "{stderr}");
        assert!(
            !stderr.contains(published),
            "the error must not repeat the secret"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--topology"])
        .arg(&topology)
        .env_remove("SLUICE_JWT_SECRET")
        .env("SLUICE_MODE", "production")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("production mode needs a token key"),
        "{stderr}"
    );
}
