//! `POST /login`'s defence against guessing, built so that nobody can lock a user out from
//! elsewhere ([`LoginLimits`]): failures are counted per user name and address and per
//! address, from an attempt's admission (a success gives its count back), and only the
//! guessing address is refused; failures for a name from anywhere slow that name's logins
//! down but never refuse them. Counts only keep what admitted attempts left and forget keys
//! once their failures have drained.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{address_key, RateLimited, MAX_TRACKED_KEYS};
use crate::config::{Quota, RateLimitsConfig};
use sluice_core::telemetry::LOGINS_DELAYED;

/// Failures remembered per key beyond a failure quota's burst: the most a slow-down can grow
/// by, and how long a key stays tracked after its last failure (burst plus this many
/// intervals).
pub const MAX_EXCESS_FAILURES: u32 = 32;

/// Failed attempts per key, in a bucket that drains at a [`Quota`]'s rate: a key "has" as
/// many recent failures as the bucket holds, counting one partly drained as whole. Unlike a
/// [`KeyedLimit`](super::KeyedLimit), looking costs nothing: only [`record`](Self::record) adds a failure, so a
/// limit can count failures alone, after the outcome is known.
pub struct FailureCount<K: Hash + Eq> {
    name: &'static str,
    burst: u32,
    interval: Duration,
    state: Mutex<FailureState<K>>,
    refused: metrics::Counter,
}

struct FailureState<K> {
    /// Per key: when its bucket will be empty again.
    empty_at: HashMap<K, Instant>,
    last_sweep: Instant,
}

impl<K: Hash + Eq> FailureCount<K> {
    /// A count of failures per key that drains at `quota`'s rate; [`check`](Self::check)
    /// refuses a key with `quota.burst` recent failures.
    pub fn new(name: &'static str, quota: Quota) -> Self {
        FailureCount {
            name,
            burst: quota.burst.get(),
            interval: quota.interval(),
            state: Mutex::new(FailureState {
                empty_at: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            refused: metrics::counter!(sluice_core::telemetry::RATE_LIMITED, "limit" => name),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FailureState<K>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long until `key`'s bucket is empty, at `now`.
    fn remaining(&self, key: &K, now: Instant) -> Duration {
        self.state()
            .empty_at
            .get(key)
            .map_or(Duration::ZERO, |empty_at| {
                empty_at.saturating_duration_since(now)
            })
    }

    /// Recent failures of `key` at `now`.
    fn failures_at(&self, key: &K, now: Instant) -> u32 {
        self.failures_in(&self.state(), key, now)
    }

    /// Recent failures of `key`.
    pub fn failures(&self, key: &K) -> u32 {
        self.failures_at(key, Instant::now())
    }

    /// Refuses `key` while it has `burst` recent failures or more, saying when it will have
    /// one less. Counts nothing.
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        let now = Instant::now();
        let remaining = self.remaining(key, now);
        let allowed = self.interval * (self.burst - 1);
        if remaining <= allowed {
            return Ok(());
        }
        self.refused.increment(1);
        Err(RateLimited {
            limit: self.name,
            retry_after: remaining - allowed,
            burst: self.burst,
        })
    }

    /// How many recent failures `key` has beyond the burst: `None` below it, `Some(0)` at it.
    pub fn excess(&self, key: &K) -> Option<u32> {
        self.failures(key).checked_sub(self.burst)
    }

    /// Counts one failure of `key` (at most [`MAX_EXCESS_FAILURES`] beyond the burst are
    /// remembered).
    pub fn record(&self, key: K) {
        self.add(key);
    }

    /// Counts one failure of `key`, as [`record`](Self::record) does, and says how many it
    /// had before.
    pub fn add(&self, key: K) -> u32 {
        let now = Instant::now();
        let mut state = self.state();
        let before = self.failures_in(&state, &key, now);
        self.add_locked(&mut state, key, now);
        before
    }

    /// Counts one failure of `key` at once unless it has `burst` recent failures already
    /// (then refuses it as [`check`](Self::check) does): a check and a count that no
    /// concurrent caller can come between. [`refund`](Self::refund) gives it back.
    pub fn reserve(&self, key: &K) -> Result<(), RateLimited>
    where
        K: Clone,
    {
        let now = Instant::now();
        let mut state = self.state();
        let remaining = state.empty_at.get(key).map_or(Duration::ZERO, |empty_at| {
            empty_at.saturating_duration_since(now)
        });
        let allowed = self.interval * (self.burst - 1);
        if remaining > allowed {
            drop(state);
            self.refused.increment(1);
            return Err(RateLimited {
                limit: self.name,
                retry_after: remaining - allowed,
                burst: self.burst,
            });
        }
        self.add_locked(&mut state, key.clone(), now);
        Ok(())
    }

    /// Takes back one failure of `key` counted by [`reserve`](Self::reserve) or
    /// [`add`](Self::add) (a failure that has drained meanwhile is not taken twice).
    pub fn refund(&self, key: &K) {
        let now = Instant::now();
        let mut state = self.state();
        if let Some(empty_at) = state.empty_at.get_mut(key) {
            *empty_at = empty_at
                .checked_sub(self.interval)
                .map_or(now, |earlier| earlier.max(now));
        }
    }

    fn failures_in(&self, state: &FailureState<K>, key: &K, now: Instant) -> u32 {
        let remaining = state
            .empty_at
            .get(key)
            .map_or(Duration::ZERO, |empty_at| {
                empty_at.saturating_duration_since(now)
            })
            .as_nanos();
        let interval = self.interval.as_nanos().max(1);
        u32::try_from(remaining.div_ceil(interval)).unwrap_or(u32::MAX)
    }

    fn add_locked(&self, state: &mut FailureState<K>, key: K, now: Instant) {
        let remembered = self.burst.saturating_add(MAX_EXCESS_FAILURES);
        let ceiling = now + self.interval.saturating_mul(remembered);
        let empty_at = state.empty_at.entry(key).or_insert(now);
        *empty_at = ((*empty_at).max(now) + self.interval).min(ceiling);
        let due = now.saturating_duration_since(state.last_sweep) >= Duration::from_secs(10);
        if due || state.empty_at.len() > MAX_TRACKED_KEYS {
            state.empty_at.retain(|_, empty_at| *empty_at > now);
            state.empty_at.shrink_to_fit();
            state.last_sweep = now;
        }
    }

    /// Forgets `key`'s failures.
    pub fn forget(&self, key: &K) {
        self.state().empty_at.remove(key);
    }

    /// Number of keys currently tracked (keys whose failures have drained are forgotten at
    /// the next sweep).
    pub fn tracked_keys(&self) -> usize {
        self.state().empty_at.len()
    }
}

/// The defences of `POST /login`, keyed by user name and client address (IPv6: its /64).
///
/// - [`logins_per_address`](RateLimitsConfig::logins_per_address) (a [`KeyedLimit`](super::KeyedLimit) in
///   [`crate::Limits`]) takes every attempt, so one address cannot ask for unbounded password
///   checks;
/// - [`admit`](Self::admit) refuses an address that has failed too often for this user name,
///   or for any user names; other addresses are not affected. An admitted attempt counts as a
///   failure at once ([`LoginAttempt`]), so that concurrent guesses cannot all be admitted
///   before the first of them fails; a success gives it back;
/// - it also says how long the attempt must wait when the name itself has too many recent
///   failures from anywhere: `base × 2^k` for the `k`-th failure past the burst, capped. The
///   right password still succeeds from an address that has not been guessing;
/// - [`LoginAttempt::succeeded`] and [`LoginAttempt::failed`] settle the outcome once the
///   password has been checked: a failure keeps its three counts, a success gives them back
///   and forgets the address's failures for the name. An attempt dropped unsettled (no
///   password was checked: no check was free, or the check failed) gives its counts back.
pub struct LoginLimits {
    counts: Arc<LoginCounts>,
    delay: sluice_core::retry::Backoff,
    delayed: metrics::Counter,
}

/// The failure counts of [`LoginLimits`], shared with the attempts they admitted.
struct LoginCounts {
    per_user_address: FailureCount<(String, IpAddr)>,
    per_address: FailureCount<IpAddr>,
    per_user: FailureCount<String>,
    successes: metrics::Counter,
    failures: metrics::Counter,
}

/// One admitted login attempt, counted as a failure until it is settled: call
/// [`succeeded`](Self::succeeded) or [`failed`](Self::failed) once its password has been
/// checked. Dropping it unsettled gives its counts back (no password was checked).
#[must_use = "an attempt is counted as a failure until it is settled"]
pub struct LoginAttempt {
    counts: Arc<LoginCounts>,
    user: String,
    address: Option<IpAddr>,
    delay: Duration,
    settled: bool,
}

impl LoginLimits {
    /// The login defences that `config` describes.
    pub fn new(config: &RateLimitsConfig) -> Self {
        let outcome = |outcome: &'static str| metrics::counter!(sluice_core::telemetry::LOGINS, "outcome" => outcome);
        LoginLimits {
            counts: Arc::new(LoginCounts {
                per_user_address: FailureCount::new(
                    "after failed logins for this user name from this address",
                    config.login_failures_per_user_address,
                ),
                per_address: FailureCount::new(
                    "after failed logins from this address",
                    config.login_failures_per_address,
                ),
                per_user: FailureCount::new(
                    "after failed logins for this user name",
                    config.login_failures_per_user,
                ),
                successes: outcome("success"),
                failures: outcome("failure"),
            }),
            delay: config.login_failure_delay.into(),
            delayed: metrics::counter!(LOGINS_DELAYED),
        }
    }

    /// Before the password check of `user` (a valid user name) from `client`: refuses an
    /// address with too many recent failures (settled or in flight) for this name or overall;
    /// else counts the attempt as a failure until it is settled, and says how long it must
    /// wait first ([`LoginAttempt::delay`]: zero unless the name has too many recent
    /// failures).
    pub fn admit(&self, user: &str, client: Option<IpAddr>) -> Result<LoginAttempt, RateLimited> {
        let counts = &self.counts;
        let address = client.map(address_key);
        if let Some(address) = address {
            let key = (user.to_string(), address);
            counts.per_user_address.reserve(&key)?;
            if let Err(refused) = counts.per_address.reserve(&address) {
                counts.per_user_address.refund(&key);
                return Err(refused);
            }
        }
        // The name's failures before this attempt: the `k` of its delay.
        let before = counts.per_user.add(user.to_string());
        let delay = match before.checked_sub(counts.per_user.burst) {
            Some(k) => {
                self.delayed.increment(1);
                self.delay.nominal(k)
            }
            None => Duration::ZERO,
        };
        Ok(LoginAttempt {
            counts: counts.clone(),
            user: user.to_string(),
            address,
            delay,
            settled: false,
        })
    }

    /// Recent failures for `user` from anywhere (attempts in flight included).
    pub fn failures_for(&self, user: &str) -> u32 {
        self.counts.per_user.failures(&user.to_string())
    }

    /// Keys tracked by the three failure counts (per user name and address, per address, per
    /// user name).
    pub fn tracked_keys(&self) -> (usize, usize, usize) {
        let counts = &self.counts;
        (
            counts.per_user_address.tracked_keys(),
            counts.per_address.tracked_keys(),
            counts.per_user.tracked_keys(),
        )
    }
}

impl LoginAttempt {
    /// How long the attempt must wait before its password is checked.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The password was wrong (or the user unknown): the failure counted at admission stays.
    pub fn failed(mut self) {
        self.settled = true;
        self.counts.failures.increment(1);
    }

    /// The password was right: gives the counted failure back, and forgets the address's
    /// failures for the name.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.counts.successes.increment(1);
        self.refund();
        if let Some(address) = self.address {
            self.counts
                .per_user_address
                .forget(&(self.user.clone(), address));
        }
    }

    fn refund(&self) {
        let counts = &self.counts;
        if let Some(address) = self.address {
            counts
                .per_user_address
                .refund(&(self.user.clone(), address));
            counts.per_address.refund(&address);
        }
        counts.per_user.refund(&self.user);
    }
}

impl Drop for LoginAttempt {
    fn drop(&mut self) {
        if !self.settled {
            self.refund();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::config::Backoff;

    fn quota_per_minute(per_minute: u32, burst: u32) -> Quota {
        Quota::per_minute(
            NonZeroU32::new(per_minute).unwrap(),
            NonZeroU32::new(burst).unwrap(),
        )
    }

    #[test]
    fn failures_are_counted_only_when_recorded_and_refuse_at_the_burst() {
        let count = FailureCount::new("of failures", quota_per_minute(1, 3));
        let key = "alice".to_string();
        for _ in 0..10 {
            count.check(&key).unwrap();
        }
        assert_eq!(count.tracked_keys(), 0, "checking counts nothing");
        for expected in 1..=2 {
            count.record(key.clone());
            assert_eq!(count.failures(&key), expected);
            count.check(&key).unwrap();
        }
        assert_eq!(count.excess(&key), None);
        count.record(key.clone());
        let refused = count.check(&key).unwrap_err();
        assert_eq!((refused.limit, refused.burst), ("of failures", 3));
        // One failure drains a minute: the third one is a minute (less a moment) from gone.
        assert!(
            refused.retry_after > Duration::from_secs(59)
                && refused.retry_after <= Duration::from_secs(60),
            "{:?}",
            refused.retry_after
        );
        assert_eq!(count.excess(&key), Some(0));
        count.check(&"bob".to_string()).unwrap();
        count.forget(&key);
        count.check(&key).unwrap();
        assert_eq!(count.failures(&key), 0);
    }

    #[test]
    fn failures_beyond_the_burst_are_remembered_up_to_a_ceiling() {
        let count = FailureCount::new("of failures", quota_per_minute(1, 2));
        let key = "alice".to_string();
        for _ in 0..1_000 {
            count.record(key.clone());
        }
        assert_eq!(count.failures(&key), 2 + MAX_EXCESS_FAILURES);
        assert_eq!(count.excess(&key), Some(MAX_EXCESS_FAILURES));
    }

    #[test]
    fn drained_failures_are_forgotten_by_the_sweep() {
        // 1000 a second: a failure drains in a millisecond.
        let count = FailureCount::new(
            "of failures",
            Quota::per_second(NonZeroU32::new(1_000).unwrap(), NonZeroU32::new(1).unwrap()),
        );
        for i in 0..1_000 {
            count.record(format!("user{i}"));
        }
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(count.failures(&"user0".to_string()), 0);
        // The next sweep is due 10 s after the last; force it by pretending it is late.
        count.state().last_sweep -= Duration::from_secs(11);
        count.record("last".to_string());
        assert_eq!(count.tracked_keys(), 1);
    }

    fn login_config() -> RateLimitsConfig {
        RateLimitsConfig {
            login_failures_per_user_address: quota_per_minute(1, 3),
            login_failures_per_address: quota_per_minute(1, 5),
            login_failures_per_user: quota_per_minute(1, 4),
            login_failure_delay: Backoff {
                base_ms: 100.try_into().unwrap(),
                max_ms: 1_000.try_into().unwrap(),
            },
            ..RateLimitsConfig::default()
        }
    }

    /// One admitted attempt of `user` from `address` that fails.
    fn fail(limits: &LoginLimits, user: &str, address: IpAddr) {
        limits.admit(user, Some(address)).unwrap().failed();
    }

    #[test]
    fn guesses_from_one_address_refuse_that_address_only() {
        let limits = LoginLimits::new(&login_config());
        let guesser: IpAddr = "192.0.2.1".parse().unwrap();
        let owner: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..3 {
            let attempt = limits.admit("alice", Some(guesser)).unwrap();
            assert_eq!(attempt.delay(), Duration::ZERO);
            attempt.failed();
        }
        let refused = limits.admit("alice", Some(guesser)).err().unwrap();
        assert_eq!(
            refused.limit,
            "after failed logins for this user name from this address"
        );
        limits.admit("alice", Some(owner)).unwrap().succeeded();
        // Another name from the guessing address, until the address has 5 failures in all.
        limits.admit("bob", Some(guesser)).unwrap().succeeded();
        fail(&limits, "mallory", guesser);
        fail(&limits, "mallory", guesser);
        let refused = limits.admit("bob", Some(guesser)).err().unwrap();
        assert_eq!(refused.limit, "after failed logins from this address");
        limits.admit("bob", Some(owner)).unwrap().succeeded();
        assert_eq!(limits.tracked_keys().1, 2);
        assert_eq!(limits.failures_for("alice"), 3);
        assert_eq!(limits.failures_for("bob"), 0, "successes are given back");
    }

    #[test]
    fn a_success_forgets_the_failures_of_its_name_and_address() {
        let limits = LoginLimits::new(&login_config());
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..2 {
            fail(&limits, "alice", address);
        }
        limits.admit("alice", Some(address)).unwrap().succeeded();
        for _ in 0..2 {
            fail(&limits, "alice", address);
        }
        limits.admit("alice", Some(address)).unwrap().succeeded();
        // The name's own count is not reset by a success: 4 failures in all.
        assert_eq!(limits.failures_for("alice"), 4);
    }

    #[test]
    fn concurrent_guesses_are_counted_before_their_checks_end() {
        let limits = Arc::new(LoginLimits::new(&login_config()));
        let guesser: IpAddr = "192.0.2.1".parse().unwrap();
        // 16 guesses at once, none settled yet: only the burst (3) is admitted.
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let admitted: Vec<Option<LoginAttempt>> = (0..16)
            .map(|_| {
                let (limits, barrier) = (limits.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    limits.admit("alice", Some(guesser)).ok()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect();
        let admitted: Vec<LoginAttempt> = admitted.into_iter().flatten().collect();
        assert_eq!(admitted.len(), 3);
        // Another address is not affected, and gets in with the right password.
        let owner: IpAddr = "198.51.100.7".parse().unwrap();
        limits.admit("alice", Some(owner)).unwrap().succeeded();
        // An attempt that ends without a check gives its place back; a failure keeps it.
        let mut admitted = admitted.into_iter();
        drop(admitted.next().unwrap());
        let again = limits.admit("alice", Some(guesser)).unwrap();
        assert!(limits.admit("alice", Some(guesser)).is_err());
        again.failed();
        for attempt in admitted {
            attempt.failed();
        }
        assert!(limits.admit("alice", Some(guesser)).is_err());
        assert_eq!(limits.failures_for("alice"), 3);
    }

    #[test]
    fn an_attempt_dropped_before_its_check_gives_its_counts_back() {
        let limits = LoginLimits::new(&login_config());
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            drop(limits.admit("alice", Some(address)).unwrap());
        }
        assert_eq!(limits.failures_for("alice"), 0);
        for _ in 0..3 {
            fail(&limits, "alice", address);
        }
        assert!(limits.admit("alice", Some(address)).is_err());
    }

    #[test]
    fn failures_for_a_name_from_anywhere_delay_it_more_and_more_but_never_refuse() {
        let limits = LoginLimits::new(&login_config());
        let mut delays = Vec::new();
        for i in 0..10u8 {
            // Each failure from a new address: no address is refused.
            let attempt = limits.admit("alice", Some(IpAddr::from([192, 0, 2, i])));
            let attempt = attempt.unwrap();
            delays.push(attempt.delay().as_millis());
            attempt.failed();
        }
        // The burst is 4: the attempt after the 4th failure waits the base delay.
        assert_eq!(delays, [0, 0, 0, 0, 100, 200, 400, 800, 1_000, 1_000]);
        let owner = IpAddr::from([198, 51, 100, 7]);
        let attempt = limits.admit("alice", Some(owner)).unwrap();
        assert_eq!(attempt.delay(), Duration::from_millis(1_000));
        attempt.succeeded();
        let attempt = limits.admit("bob", Some(owner)).unwrap();
        assert_eq!(attempt.delay(), Duration::ZERO);
    }

    #[test]
    fn ipv6_guesses_count_per_slash_64() {
        let limits = LoginLimits::new(&login_config());
        for i in 0..3u16 {
            fail(
                &limits,
                "alice",
                IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]),
            );
        }
        let neighbour = IpAddr::from([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 9]);
        assert!(limits.admit("alice", Some(neighbour)).is_err());
        let elsewhere = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(limits.admit("alice", Some(elsewhere)).is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let backoff = sluice_core::retry::Backoff::from(Backoff {
            base_ms: 250.try_into().unwrap(),
            max_ms: 4_000.try_into().unwrap(),
        });
        let delays: Vec<u128> = (0..7).map(|k| backoff.pause(k).as_millis()).collect();
        assert_eq!(delays, [250, 500, 1_000, 2_000, 4_000, 4_000, 4_000]);
        assert_eq!(backoff.pause(u32::MAX), Duration::from_millis(4_000));
    }
}
