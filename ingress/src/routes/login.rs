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
    let (verified, known) = permit
        .run(move || {
            let verified = users
                .verify(&name, &password)
                .then(|| users.hash_of(&name).map(str::to_string))
                .flatten();
            (verified, users.contains(&name))
        })
        .await
        .map_err(|failed| ApiError::unavailable(failed.to_string()))?;
    let success = verified.is_some();
    if success {
        admitted.succeeded();
    } else {
        admitted.failed();
    }

    // A name that is no user's may be a password typed in the wrong field: the durable
    // record holds a keyed hash of it, never the name.
    let (username, username_hash) = if known {
        (Some(username), None)
    } else {
        (None, Some(name_hash(&username)))
    };
    let key = username.clone().or_else(|| username_hash.clone());
    let event = LoginEvent {
        username,
        username_hash,
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
            OutRecord::new(key.unwrap_or_default().into_bytes(), payload),
            timeout,
        )
        .await
        .map_err(|error| {
            tracing::warn!(%error, "login event not acknowledged");
            ApiError::unavailable("the event log is not accepting records; try again")
        })?;
    Ok(verified)
}

/// A keyed hash of a name that is no user's, for [`LoginEvent::username_hash`]: the hex of
/// the first 16 bytes of SHA-256 over this process's random key and the name. Without the
/// key (never written anywhere), the name cannot be found by hashing guesses.
fn name_hash(name: &str) -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    use sha2::{Digest, Sha256};
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        key
    });
    // The key has a fixed length, so key and name cannot be shifted into each other.
    let digest = Sha256::new()
        .chain_update(key)
        .chain_update(name.as_bytes())
        .finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_hashes_are_stable_in_a_process_distinct_and_keyed() {
        use sha2::{Digest, Sha256};
        let a = name_hash("hunter2-typed-as-a-name");
        assert_eq!(a, name_hash("hunter2-typed-as-a-name"));
        assert_ne!(a, name_hash("hunter3-typed-as-a-name"));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        // Not the plain (unkeyed) hash of the name: guesses cannot be checked against it.
        let plain: String = Sha256::digest(b"hunter2-typed-as-a-name")[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(a, plain);
        assert!(!a.contains("hunter2"));
    }

    #[test]
    fn a_login_event_omits_what_it_does_not_have() {
        let unknown = LoginEvent {
            username: None,
            username_hash: Some(name_hash("mallory")),
            success: false,
            client_addr: None,
            at_ms: 1,
        };
        let json = serde_json::to_string(&unknown).unwrap();
        assert!(!json.contains("\"username\""), "{json}");
        assert!(json.contains("\"usernameHash\""), "{json}");
        assert!(!json.contains("mallory"), "{json}");
        assert_eq!(serde_json::from_str::<LoginEvent>(&json).unwrap(), unknown);
        let known: LoginEvent = serde_json::from_str(
            r#"{"username":"alice","success":true,"clientAddr":null,"atMs":2}"#,
        )
        .unwrap();
        assert_eq!(known.username.as_deref(), Some("alice"));
        assert_eq!(known.username_hash, None);
    }
}
