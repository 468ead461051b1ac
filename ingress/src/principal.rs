//! Authentication of a request: its `Authorization: Bearer <token>` header, a JWT or a
//! biscuit capability token, becomes the [`Principal`] the request speaks for.
//!
//! Every route that needs a principal takes it from the one filter [`authenticated`], so a
//! request's token is verified exactly once; [`AUTH_VERIFICATIONS`] counts the
//! verifications.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::{header, HeaderMap};
use warp::Filter;

use crate::auth::{Claims, TokenError};
use crate::capability::{CapabilityError, VerifiedCapability};
use crate::State;

pub use sluice_core::telemetry::AUTH_VERIFICATIONS;

/// Who a request speaks for, and how it proved it.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A user authenticated by a JWT.
    Jwt(Claims),
    /// A user holding a verified biscuit capability token, whose checks are still to be
    /// authorized against the request ([`VerifiedCapability::authorize`]).
    Capability(Box<VerifiedCapability>),
}

impl Principal {
    /// The user the request speaks for.
    pub fn user(&self) -> &str {
        match self {
            Principal::Jwt(claims) => &claims.sub,
            Principal::Capability(capability) => capability.user(),
        }
    }
}

/// What [`authenticated`] extracts: the principal, or why the request has none.
pub type Authentication = Result<Principal, AuthenticationError>;

/// The one filter that authenticates a request (see [`State::authenticate`]): it extracts the
/// principal, or why there is none, for the handler to answer. It never rejects, so the
/// handler's response and metrics cover refused credentials too.
pub fn authenticated(
    state: &Arc<State>,
) -> impl Filter<Extract = (Authentication,), Error = Infallible> + Clone {
    let state = state.clone();
    warp::header::headers_cloned().map(move |headers: HeaderMap| state.authenticate(&headers))
}

/// Why a request could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthenticationError {
    /// The request has no `Authorization` header.
    #[error("missing Authorization header; send `Authorization: Bearer <token>` from POST /login")]
    MissingHeader,
    /// The `Authorization` header has bytes that are not visible ASCII.
    #[error("the Authorization header is not text")]
    HeaderNotText,
    /// The `Authorization` header is not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    NotBearer,
    /// The JWT was refused.
    #[error(transparent)]
    Jwt(#[from] TokenError),
    /// The capability token was refused.
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    /// The token is genuine but its user is not (or no longer) in the users file.
    #[error("the token's user is not known")]
    UnknownUser,
    /// The token was issued before its user's password changed.
    #[error("the token was issued before the password changed; log in again")]
    PasswordChanged,
}

/// The bearer token of the `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Result<&str, AuthenticationError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthenticationError::MissingHeader)?;
    let value = value
        .to_str()
        .map_err(|_| AuthenticationError::HeaderNotText)?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(AuthenticationError::NotBearer)
}
