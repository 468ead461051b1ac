//! `POST /login {"username","password"}` → `{"token","tokenType","expiresIn"}`.
//!
//! Each step is cheap before the expensive one, and nobody can lock a user out from elsewhere:
//!
//! 1. every attempt takes one from `logins_per_address` before its body is read (429 past
//!    it: [`charge`]), as `/order` charges its address before reading anything;
//! 2. the body is read and parsed, and the user name checked against the rule of the users
//!    file (422 past it: no limiter key, event or log line is made of a name that breaks it);
//! 3. an address with too many recent failures (settled or in flight) for this name, or for
//!    any names, gets 429 ([`LoginLimits::admit`](crate::limits::LoginLimits::admit)); other
//!    addresses do not. The attempt counts as a failure from here until its password proves
//!    right;
//! 4. a name with too many recent failures from anywhere waits a growing delay first;
//! 5. the login waits for a password check in a bounded queue, for a bounded time (503 past
//!    either), holding at most `password_checks.per_address` places per address (429 past
//!    it);
//! 6. the check runs on a password-check thread, holding its slot, and the outcome is counted
//!    and recorded in the logins topic by a task of its own: a client that disconnects can
//!    neither free the slot early nor skip the count.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use sluice_core::log::OutRecord;
use sluice_core::order::{now_ms, LoginEvent};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::error::ApiError;
use crate::limits::{LoginAttempt, PasswordCheckPermit};
use crate::users::check_user_name;
use crate::State;

/// The login request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    username: String,
    password: String,
}

/// Step 1: charges a login attempt from `address` to `logins_per_address`, before its body is
/// read.
pub fn charge(state: &State, address: Option<IpAddr>) -> Result<(), ApiError> {
    if let Some(ip) = address {
        state
            .limits
            .logins_per_address
            .check(&crate::limits::address_key(ip))?;
    }
    Ok(())
}

/// Handles one login whose attempt was [`charge`]d (the module's steps from 2 on) and answers
/// with a token, 401, 422, 429 or 503.
pub async fn handle(
    state: &Arc<State>,
    address: Option<IpAddr>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let LoginRequest { username, password } = crate::body::parse_json(body)?;
    // The error never repeats the name: it may be anything a client sent.
    check_user_name(&username).map_err(|bad| {
        ApiError::invalid_body(format!("invalid value for field `username`: {bad}"))
    })?;
    // Counted as a failure from here until its password is checked (a success gives it
    // back); dropped before that (no check free, client gone), it is given back.
    let admitted = state.limits.login_failures.admit(&username, address)?;
    if !admitted.delay().is_zero() {
        tokio::time::sleep(admitted.delay()).await;
    }
    let permit = state.password_checks.acquire(address).await?;
    let verified = tokio::spawn(attempt(
        state.clone(),
        permit,
        admitted,
        username.clone(),
        password,
        address,
    ))
    .await
    .map_err(|_| ApiError::unavailable("the password check failed"))??;
    let Some(password_hash) = verified else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "unknown user or wrong password",
        ));
    };
    let token = state
        .tokens
        .issue(&username, &password_hash)
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

/// Checks the password on a password-check thread that holds `permit`, counts the outcome and
/// records the login event; returns the user's password hash when the password was right (the
/// token is bound to that hash, even if a reload replaces it meanwhile). Runs as a task of its
/// own, so it finishes even when the client has gone.
async fn attempt(
    state: Arc<State>,
    permit: PasswordCheckPermit,
    admitted: LoginAttempt,
    username: String,
    password: String,
    address: Option<IpAddr>,
) -> Result<Option<String>, ApiError> {
    let users = state.users();
    let name = username.clone();
    let verified = permit
        .run(move || {
            users
                .verify(&name, &password)
                .then(|| users.hash_of(&name).map(str::to_string))
                .flatten()
        })
        .await
        .map_err(|failed| ApiError::unavailable(failed.to_string()))?;
    let success = verified.is_some();
    if success {
        admitted.succeeded();
    } else {
        admitted.failed();
    }

    let event = LoginEvent {
        username,
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
            OutRecord::new(event.username.as_bytes(), payload),
            timeout,
        )
        .await
        .map_err(|error| {
            tracing::warn!(%error, "login event not acknowledged");
            ApiError::unavailable("the event log is not accepting records; try again")
        })?;
    Ok(verified)
}
