//! Authentication of a request: its `Authorization: Bearer <token>` header, a JWT or a
//! biscuit capability token, becomes the [`Principal`] the request speaks for.

use warp::http::{header, HeaderMap};

use crate::auth::TokenError;
use crate::capability::CapabilityError;

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
