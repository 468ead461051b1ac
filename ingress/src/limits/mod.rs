//! Rate limits and the other bounds that keep one client from taking what everyone shares:
//!
//! - keyed GCRA token buckets (`governor`) per principal, user name and client address
//!   ([`KeyedLimit`], here); a refusal is a [`RateLimited`], which the routes answer with a
//!   429 with `Retry-After` and `RateLimit-Limit`, `RateLimit-Remaining` and
//!   `RateLimit-Reset` headers;
//! - counts of failed logins, so that nobody can lock a user out from elsewhere
//!   ([`login_failures`]);
//! - the bound on concurrent password checks ([`password_checks`]);
//! - places held per client address, for connections and password checks
//!   ([`per_address`]).
//!
//! Memory stays bounded under a flood of distinct keys: a background sweep forgets keys whose
//! bucket is full again, and when more than [`MAX_TRACKED_KEYS`] are tracked the sweep runs at
//! once. IPv6 clients are keyed by their /64, since one host can own a whole /64.

pub mod login_failures;
pub mod password_checks;
pub mod per_address;

pub use login_failures::{FailureCount, LoginAttempt, LoginLimits, MAX_EXCESS_FAILURES};
pub use password_checks::{
    PasswordCheckFailed, PasswordCheckPermit, PasswordChecks, PasswordChecksBusy,
};
pub use per_address::{AddressPlace, PerAddressCap};

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Quota, Rate};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};

/// Past this many tracked keys, idle keys are swept at once instead of at the next tick.
pub const MAX_TRACKED_KEYS: usize = 200_000;

/// The key a client address is limited under: the address itself, or its /64 for IPv6.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// A request refused by a rate limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many requests {limit}; retry in {:.1} s", .retry_after.as_secs_f64())]
pub struct RateLimited {
    /// Which limit refused it (e.g. `per user on /order`).
    pub limit: &'static str,
    /// How long until the key has a request again.
    pub retry_after: Duration,
    /// The limit's burst.
    pub burst: u32,
}

/// A keyed rate limit with a name for its refusals and metric label.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    name: &'static str,
    burst: u32,
    limiter: Arc<DefaultKeyedRateLimiter<K>>,
    last_forced_sweep: AtomicU64,
    refused: metrics::Counter,
}

fn governor_quota(quota: Quota) -> GovernorQuota {
    let base = match quota.rate {
        Rate::PerSecond(per_second) => GovernorQuota::per_second(per_second),
        Rate::PerMinute(per_minute) => GovernorQuota::per_minute(per_minute),
    };
    base.allow_burst(quota.burst)
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyedLimit<K> {
    /// A limit of `quota` per key. Keys idle long enough to be full again are forgotten by a
    /// background sweep, so memory follows the number of recently active keys.
    pub fn new(name: &'static str, quota: Quota) -> Self {
        let limiter = Arc::new(RateLimiter::keyed(governor_quota(quota)));
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
        KeyedLimit {
            name,
            burst: quota.burst.get(),
            limiter,
            last_forced_sweep: AtomicU64::new(0),
            refused: metrics::counter!(sluice_core::telemetry::RATE_LIMITED, "limit" => name),
        }
    }

    /// Takes one request for `key`, or says when to retry.
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.bound_memory();
        self.limiter.check_key(key).map_err(|not_until| {
            self.refused.increment(1);
            RateLimited {
                limit: self.name,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                burst: self.burst,
            }
        })
    }

    /// Sweeps idle keys at once when too many are tracked (at most once a second).
    fn bound_memory(&self) {
        if self.limiter.len() <= MAX_TRACKED_KEYS {
            return;
        }
        let now = sluice_core::order::now_ms() as u64;
        let last = self.last_forced_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000
            && self
                .last_forced_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    /// Number of keys currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }

    /// Forgets keys whose bucket is full again (the background sweep, on demand).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[tokio::test]
    async fn burst_then_429_with_retry_after_and_ratelimit_headers() {
        let limit = KeyedLimit::new(
            "per user",
            Quota::per_second(NonZeroU32::new(1).unwrap(), NonZeroU32::new(3).unwrap()),
        );
        for _ in 0..3 {
            limit.check(&"alice".to_string()).unwrap();
        }
        let error = limit.check(&"alice".to_string()).unwrap_err();
        assert_eq!((error.limit, error.burst), ("per user", 3));
        let retry = error.retry_after;
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(1),
            "{retry:?}"
        );
        let response = warp::Reply::into_response(crate::error::ApiError::from(error));
        assert_eq!(response.status(), warp::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
        assert_eq!(response.headers()["ratelimit-remaining"], "0");
        assert_eq!(response.headers()["ratelimit-reset"], "1");
        // Another key has its own bucket.
        limit.check(&"bob".to_string()).unwrap();
        assert_eq!(limit.tracked_keys(), 2);
    }

    #[tokio::test]
    async fn per_minute_quotas_refill_slowly() {
        let limit = KeyedLimit::new(
            "per user name",
            Quota::per_minute(NonZeroU32::new(10).unwrap(), NonZeroU32::new(2).unwrap()),
        );
        limit.check(&"alice".to_string()).unwrap();
        limit.check(&"alice".to_string()).unwrap();
        let retry = limit.check(&"alice".to_string()).unwrap_err().retry_after;
        assert!(
            retry > Duration::from_secs(4) && retry <= Duration::from_secs(6),
            "{retry:?}"
        );
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), v4);
    }
}
