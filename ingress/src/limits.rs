//! Rate limits: keyed GCRA token buckets (`governor`) per principal and per client address.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use sluice_core::topology::Quota;

use crate::error::ApiError;

/// A keyed rate limit with a name for its 429 message and metric label.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    name: &'static str,
    limiter: Arc<DefaultKeyedRateLimiter<K>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedLimit<K> {
    /// A limit of `quota` per key. Keys idle long enough to be full again are forgotten by a
    /// background sweep, so memory follows the number of recently active keys.
    pub fn new(name: &'static str, quota: Quota) -> Self {
        let per_second = NonZeroU32::new(quota.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(quota.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(RateLimiter::keyed(
            GovernorQuota::per_second(per_second).allow_burst(burst),
        ));
        let sweeper = Arc::downgrade(&limiter);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tick.tick().await;
                    let Some(limiter) = sweeper.upgrade() else {
                        break;
                    };
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            });
        }
        KeyedLimit { name, limiter }
    }

    /// Takes one request for `key`, or a 429 saying when to retry.
    pub fn check(&self, key: &K) -> Result<(), ApiError> {
        self.limiter.check_key(key).map_err(|not_until| {
            metrics::counter!(sluice_core::telemetry::RATE_LIMITED, "limit" => self.name)
                .increment(1);
            ApiError::rate_limited(
                self.name,
                not_until.wait_time_from(DefaultClock::default().now()),
            )
        })
    }

    /// Number of keys currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn burst_then_429_with_retry_after() {
        let limit = KeyedLimit::new(
            "per user",
            Quota {
                per_second: 1,
                burst: 3,
            },
        );
        for _ in 0..3 {
            limit.check(&"alice".to_string()).unwrap();
        }
        let error = limit.check(&"alice".to_string()).unwrap_err();
        assert_eq!(error.status, warp::http::StatusCode::TOO_MANY_REQUESTS);
        let retry = error.retry_after.unwrap();
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(1),
            "{retry:?}"
        );
        // Another key has its own bucket.
        limit.check(&"bob".to_string()).unwrap();
        assert_eq!(limit.tracked_keys(), 2);
    }
}
