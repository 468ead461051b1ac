//! JWT issuing and verification (HS256, with `iss`, `sub`, `iat` and `exp` required).
//!
//! The algorithm is pinned: tokens signed with any other algorithm, including `none`, fail.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use warp::http::HeaderMap;

use crate::error::ApiError;

/// Claims of a Sluice token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user the token speaks for.
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Issued at (seconds since the Unix epoch).
    pub iat: u64,
    /// Expires at (seconds since the Unix epoch).
    pub exp: u64,
}

/// Issues and verifies tokens with one HMAC secret.
#[derive(Clone)]
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    ttl_secs: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenAuthority {
    /// An authority for `secret`, issuing tokens from `issuer` valid for `ttl_secs`.
    pub fn new(secret: &str, issuer: &str, ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
        validation.leeway = 30;
        TokenAuthority {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            issuer: issuer.to_string(),
            ttl_secs,
        }
    }

    /// Lifetime of issued tokens, in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// A token for `subject`.
    pub fn issue(&self, subject: &str) -> Result<String, ApiError> {
        let iat = now_secs();
        let claims = Claims {
            sub: subject.to_string(),
            iss: self.issuer.clone(),
            iat,
            exp: iat + self.ttl_secs,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::unavailable(format!("could not sign a token: {e}")))
    }

    /// The claims of a valid token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired; log in again",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "the token's algorithm is not accepted"
                    }
                    ErrorKind::InvalidIssuer => "the token was not issued by this service",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                };
                ApiError::unauthorized(why)
            })
    }

    /// The claims of the `Authorization: Bearer <token>` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let value = headers
            .get(warp::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization header; send `Authorization: Bearer <token>` from POST /login"))?;
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        self.verify(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgeries() {
        let authority = TokenAuthority::new("secret-one-secret-one-secret-one!", "sluice", 60);
        let token = authority.issue("alice").unwrap();
        assert_eq!(authority.verify(&token).unwrap().sub, "alice");

        let other = TokenAuthority::new("another-secret-another-secret-xx", "sluice", 60);
        assert_eq!(
            other.verify(&token).unwrap_err().message,
            "the token's signature is not valid"
        );

        let wrong_issuer =
            TokenAuthority::new("secret-one-secret-one-secret-one!", "elsewhere", 60);
        assert_eq!(
            authority
                .verify(&wrong_issuer.issue("alice").unwrap())
                .unwrap_err()
                .message,
            "the token was not issued by this service"
        );

        // alg: none — header {"alg":"none","typ":"JWT"}, no signature.
        let unsigned = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            token.split('.').nth(1).unwrap()
        );
        assert_eq!(
            authority.verify(&unsigned).unwrap_err().status,
            warp::http::StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn expired_tokens_fail() {
        let authority = TokenAuthority::new("secret-one-secret-one-secret-one!", "sluice", 60);
        let claims = Claims {
            sub: "alice".into(),
            iss: "sluice".into(),
            iat: 1_000,
            exp: 2_000,
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret-one-secret-one-secret-one!"),
        )
        .unwrap();
        assert_eq!(
            authority.verify(&token).unwrap_err().message,
            "the token has expired; log in again"
        );
    }
}
