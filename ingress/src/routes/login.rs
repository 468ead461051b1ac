//! `POST /login {"username","password"}` → `{"token","tokenType","expiresIn"}`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use sluice_core::log::OutRecord;
use sluice_core::order::{now_ms, LoginEvent};
use sluice_core::telemetry;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::error::ApiError;
use crate::State;

/// The login request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    username: String,
    password: String,
}

/// Handles one login: rate limit per client address and per user name, verify the password
/// (on a blocking thread), record the attempt, answer.
pub async fn handle(
    state: &State,
    client: Option<SocketAddr>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let address = client.map(|a| a.ip());
    if let Some(ip) = address {
        state
            .limits
            .logins_per_address
            .check(&crate::limits::address_key(ip))?;
    }
    let request: LoginRequest = crate::body::parse_json(body)?;
    state.limits.logins_per_user.check(&request.username)?;
    let users = state.users();
    let (name, password) = (request.username.clone(), request.password);
    let checked = users.clone();
    let success = {
        // At most a few argon2id checks at once: each takes ~19 MiB and a core.
        let _permit = state
            .password_checks
            .acquire()
            .await
            .map_err(|_| ApiError::unavailable("shutting down"))?;
        tokio::task::spawn_blocking(move || checked.verify(&name, &password))
            .await
            .map_err(|_| ApiError::unavailable("password check failed"))?
    };
    metrics::counter!(telemetry::LOGINS, "outcome" => if success { "success" } else { "failure" })
        .increment(1);

    let event = LoginEvent {
        username: request.username.clone(),
        success,
        client_addr: address.map(|ip| ip.to_string()),
        at_ms: now_ms(),
    };
    let payload = serde_json::to_vec(&event).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let timeout = Duration::from_millis(state.config.ack_timeout_ms);
    state
        .log
        .send(
            &state.config.logins_topic,
            OutRecord::new(request.username.as_bytes(), payload),
            timeout,
        )
        .await
        .map_err(|error| {
            tracing::warn!(%error, "login event not acknowledged");
            ApiError::unavailable("the event log is not accepting records; try again")
        })?;

    if !success {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "unknown user or wrong password",
        ));
    }
    // `success` means the user exists with this hash (or a newer one, after a reload: then
    // the token ends with the next request, as it should).
    let password_hash = users.hash_of(&request.username).unwrap_or_default();
    let token = state
        .tokens
        .issue(&request.username, password_hash)
        .map_err(|error| {
            tracing::error!(%error, "a login succeeded but no token can be issued");
            ApiError::from(error)
        })?;
    Ok(warp::reply::json(&json!({
        "token": token,
        "tokenType": "Bearer",
        "expiresIn": state.tokens.ttl_secs(),
    }))
    .into_response())
}
