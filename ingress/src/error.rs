//! The HTTP error model: every error is `{"error": {"code": "...", "message": "..."}}` with
//! the status that fits it. Messages never contain passwords, tokens or secrets.
//!
//! The domain modules return their own errors ([`TokenError`], [`CapabilityError`],
//! [`RateLimited`], [`IdempotencyError`], …); the `From` impls here are the one place where
//! they become HTTP statuses and codes.

use std::convert::Infallible;
use std::time::Duration;

use serde_json::json;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::auth::{IssueError, TokenError};
use crate::capability::CapabilityError;
use crate::idempotency::IdempotencyError;
use crate::limits::{PasswordChecksBusy, RateLimited};
use crate::principal::AuthenticationError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// For 429 and 503: when to try again.
    pub retry_after: Option<Duration>,
    /// For 429: the limit's burst, sent as `RateLimit-Limit`.
    pub rate_limit: Option<u32>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            rate_limit: None,
        }
    }

    /// 400 for a body that is not JSON.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// 422 for JSON of the wrong shape or types.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
    }

    /// 401 for a missing, malformed, expired or forged credential.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 for a valid credential that does not allow the request.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 429 with a retry hint.
    pub fn rate_limited(what: &str, retry_after: Duration, limit: u32) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            rate_limit: Some(limit),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests {what}; retry later"),
            )
        }
    }

    /// 503: a dependency cannot take the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(retry_after) = self.retry_after {
            let seconds =
                (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            if let Some(limit) = self.rate_limit {
                headers.insert("ratelimit-limit", HeaderValue::from(limit));
                headers.insert("ratelimit-remaining", HeaderValue::from(0u32));
                headers.insert("ratelimit-reset", HeaderValue::from(seconds));
            }
        }
        response
    }
}

/// 401: the bearer token is not valid.
impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        ApiError::unauthorized(error.to_string())
    }
}

/// 503: the ingress cannot issue tokens now (its key settings need fixing).
impl From<IssueError> for ApiError {
    fn from(error: IssueError) -> Self {
        match error {
            IssueError::NoKeys
            | IssueError::UnknownSigningKey { .. }
            | IssueError::CannotSign { .. } => {
                ApiError::unavailable("no signing key is configured")
            }
            IssueError::Sign { source, .. } => {
                ApiError::unavailable(format!("could not sign a token: {source}"))
            }
        }
    }
}

/// 401 for a bad capability token, 403 for a genuine one that does not allow the request,
/// 500 for a configuration or tooling error (which a request should never cause).
impl From<CapabilityError> for ApiError {
    fn from(error: CapabilityError) -> Self {
        if error.is_unauthenticated() {
            ApiError::unauthorized(error.to_string())
        } else if error.is_forbidden() {
            ApiError::forbidden(error.to_string())
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "capability verification is misconfigured",
            )
        }
    }
}

/// 401, or what a refused capability token maps to; 429 for an exhausted client address, 503
/// when capability tokens cannot be checked now.
impl From<AuthenticationError> for ApiError {
    fn from(error: AuthenticationError) -> Self {
        match error {
            AuthenticationError::Jwt(error) => error.into(),
            AuthenticationError::Capability(error) => error.into(),
            AuthenticationError::AddressLimited(refused) => refused.into(),
            busy @ AuthenticationError::CapabilityBusy(_) => {
                ApiError::unavailable(busy.to_string())
            }
            other => ApiError::unauthorized(other.to_string()),
        }
    }
}

/// 429 with `Retry-After` and the `RateLimit-*` headers.
impl From<RateLimited> for ApiError {
    fn from(refused: RateLimited) -> Self {
        ApiError::rate_limited(refused.limit, refused.retry_after, refused.burst)
    }
}

/// 503 with `Retry-After`: the password checks are all busy and the wait queue is full or
/// waited too long.
impl From<PasswordChecksBusy> for ApiError {
    fn from(busy: PasswordChecksBusy) -> Self {
        match busy {
            // The client's own share is taken: 429, like any limit on that address.
            PasswordChecksBusy::PerAddress(share) => ApiError::rate_limited(
                "of password checks per client address",
                Duration::from_secs(1),
                u32::try_from(share).unwrap_or(u32::MAX),
            ),
            _ => ApiError::unavailable(format!("{busy}; retry after Retry-After")),
        }
    }
}

/// 400 for a malformed key, 422 for a key reused on a different body.
impl From<IdempotencyError> for ApiError {
    fn from(error: IdempotencyError) -> Self {
        let (status, code) = match error {
            IdempotencyError::InvalidKey => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            IdempotencyError::KeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
        };
        ApiError::new(status, code, error.to_string())
    }
}

/// Turns warp's own rejections (no route, wrong method…) into the JSON error model.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request could not be understood",
        )
    };
    Ok(error.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_errors_map_to_401_403_or_500() {
        let api: ApiError = CapabilityError::BadSignature(biscuit_auth::error::Token::Format(
            biscuit_auth::error::Format::UnknownPublicKey,
        ))
        .into();
        assert_eq!(
            (api.status, api.code),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        let api: ApiError =
            CapabilityError::ChecksFailed(vec!["block 1: check if x".into()]).into();
        assert_eq!((api.status, api.code), (StatusCode::FORBIDDEN, "forbidden"));
        assert!(api.message.contains("check if x"));
        let api: ApiError = CapabilityError::InvalidKey("x".into()).into();
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn authentication_errors_keep_their_status_and_message() {
        let api: ApiError = AuthenticationError::MissingHeader.into();
        assert_eq!(
            (api.status, api.code),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        assert!(api.message.starts_with("missing Authorization header"));
        let api: ApiError = AuthenticationError::Capability(CapabilityError::Denied).into();
        assert_eq!(api.status, StatusCode::FORBIDDEN);
        let api: ApiError = AuthenticationError::Jwt(TokenError::UnknownKey).into();
        assert_eq!(
            (api.status, api.message.as_str()),
            (StatusCode::UNAUTHORIZED, "the token's key id is not known")
        );
    }

    #[test]
    fn busy_password_checks_are_503_with_retry_after() {
        for busy in [
            PasswordChecksBusy::QueueFull,
            PasswordChecksBusy::WaitedTooLong(Duration::from_secs(2)),
        ] {
            let response = ApiError::from(busy).into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
    }

    #[test]
    fn idempotency_and_issuing_errors_keep_their_codes() {
        let api: ApiError = IdempotencyError::InvalidKey.into();
        assert_eq!(
            (api.status, api.code),
            (StatusCode::BAD_REQUEST, "invalid_idempotency_key")
        );
        let api: ApiError = IdempotencyError::KeyReused.into();
        assert_eq!(
            (api.status, api.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
        );
        let api: ApiError = IssueError::CannotSign { kid: "ed-1".into() }.into();
        assert_eq!(
            (api.status, api.code, api.message.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "no signing key is configured"
            )
        );
    }
}
