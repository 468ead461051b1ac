//! Rate limits: keyed GCRA token buckets (`governor`) per principal, user name and client
//! address; counts of failed logins; and the bound on concurrent password checks. A refusal
//! by a limit is a [`RateLimited`], which the routes answer with a 429 with `Retry-After` and
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers; a login that finds
//! no password check free in time is [`PasswordChecksBusy`] (503 with `Retry-After`).
//!
//! `POST /login` is defended so that nobody can lock a user out from elsewhere
//! ([`LoginLimits`]): failures are counted per user name and address and per address, from
//! an attempt's admission (a success gives its count back), and only the guessing address is
//! refused; failures for a name from anywhere slow that name's logins down but never refuse
//! them.
//!
//! Memory stays bounded under a flood of distinct keys: a background sweep forgets keys whose
//! bucket is full again, and when more than [`MAX_TRACKED_KEYS`] are tracked the sweep runs at
//! once. Failure counts only keep what admitted attempts left (failures; attempts in flight,
//! which `logins_per_address`, the connection caps and [`PasswordChecks`] bound), and forget
//! keys once their failures have drained. IPv6 clients are keyed by their /64, since
//! one host can own a whole /64.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{PasswordChecksConfig, Quota, Rate, RateLimitsConfig};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use sluice_core::telemetry::{LOGINS_DELAYED, PASSWORD_CHECKS_REFUSED};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Past this many tracked keys, idle keys are swept at once instead of at the next tick.
pub const MAX_TRACKED_KEYS: usize = 200_000;

/// Failures remembered per key beyond a failure quota's burst: the most a slow-down can grow
/// by, and how long a key stays tracked after its last failure (burst plus this many
/// intervals).
pub const MAX_EXCESS_FAILURES: u32 = 32;

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

/// Failed attempts per key, in a bucket that drains at a [`Quota`]'s rate: a key "has" as
/// many recent failures as the bucket holds, counting one partly drained as whole. Unlike a
/// [`KeyedLimit`], looking costs nothing: only [`record`](Self::record) adds a failure, so a
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
/// - [`logins_per_address`](RateLimitsConfig::logins_per_address) (a [`KeyedLimit`] in
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

/// No password check could start: too many logins are waiting for one, or the wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordChecksBusy {
    /// As many logins as allowed are already waiting.
    #[error("too many logins are waiting for a password check")]
    QueueFull,
    /// No check became free within the wait.
    #[error("no password check became free within {0:?}")]
    WaitedTooLong(Duration),
    /// The client address has this many logins waiting for or running a password check
    /// already (answered 429).
    #[error("this client address has {0} logins waiting for or running a password check already")]
    PerAddress(usize),
}

/// The password-check threads died (a check panicked, or the process is going down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password check did not complete")]
pub struct PasswordCheckFailed;

/// A password check sent to the checking threads.
type Job = Box<dyn FnOnce() + Send>;

/// Bounds the argon2id password checks (~19 MiB and one core each): at most `at_once` run,
/// each on one of `at_once` threads of their own; at most `waiting` more logins wait for one,
/// each for at most `wait`. A check holds its [`PasswordCheckPermit`] on its thread until it
/// ends, so a client that disconnects cannot start more checks than that. Keeping the checks
/// on their own threads also keeps their memory in those threads' allocator arenas, instead
/// of in one arena for each blocking thread a check ever ran on.
///
/// One client address (IPv6: its /64) holds at most `per_address` of the places, waiting or
/// running, so that a few addresses cannot fill the queue everyone shares.
pub struct PasswordChecks {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    per_address: PerAddressCap,
    at_once: usize,
    wait: Duration,
    jobs: std::sync::mpsc::Sender<Job>,
    queue_full: metrics::Counter,
    wait_timeout: metrics::Counter,
    address_full: metrics::Counter,
}

/// Places (connections, password checks) held per client address (IPv6: per /64), capped:
/// one client cannot take what everyone shares.
#[derive(Clone)]
pub struct PerAddressCap {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    cap: usize,
}

/// One place of a client address; dropping it frees the place.
pub struct AddressPlace {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl PerAddressCap {
    /// At most `cap` places per address.
    pub fn new(cap: usize) -> Self {
        PerAddressCap {
            held: Arc::default(),
            cap,
        }
    }

    /// A place for `address`, unless it holds `cap` already (then how many it holds).
    pub fn take(&self, address: IpAddr) -> Result<AddressPlace, usize> {
        let key = address_key(address);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key).or_insert(0);
        if *count >= self.cap {
            return Err(*count);
        }
        *count += 1;
        Ok(AddressPlace {
            held: self.held.clone(),
            key,
        })
    }

    /// Addresses holding a place now.
    pub fn addresses(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// The right to run one password check; [`run`](Self::run) keeps it until the check ends.
pub struct PasswordCheckPermit {
    jobs: std::sync::mpsc::Sender<Job>,
    _running: OwnedSemaphorePermit,
    _admitted: OwnedSemaphorePermit,
    _place: Option<AddressPlace>,
}

impl PasswordChecks {
    /// The bound that `config` describes, on a machine with `cores` cores; starts its threads,
    /// which end once it and its permits are dropped.
    pub fn new(config: &PasswordChecksConfig, cores: usize) -> std::io::Result<Self> {
        let at_once = config.at_once_on(cores);
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..at_once {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("sluice-password-{index}"))
                .spawn(move || loop {
                    let job = match queue.lock().unwrap_or_else(PoisonError::into_inner).recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    };
                    // Jobs catch their checks' panics: the thread goes on serving.
                    job();
                })?;
        }
        let refused =
            |reason: &'static str| metrics::counter!(PASSWORD_CHECKS_REFUSED, "reason" => reason);
        // Validation bounds both; the clamp only keeps `Semaphore::new` from panicking.
        let at_once_sem = at_once.min(Semaphore::MAX_PERMITS);
        let admitted = at_once_sem
            .saturating_add(config.waiting)
            .min(Semaphore::MAX_PERMITS);
        Ok(PasswordChecks {
            running: Arc::new(Semaphore::new(at_once_sem)),
            admitted: Arc::new(Semaphore::new(admitted)),
            per_address: PerAddressCap::new(config.per_address.get()),
            at_once: at_once_sem,
            wait: Duration::from_millis(config.wait_ms.get()),
            jobs,
            queue_full: refused("queue_full"),
            wait_timeout: refused("wait_timeout"),
            address_full: refused("per_address"),
        })
    }

    /// Waits for a password check to be free for a login from `client`: refuses at once when
    /// the client address holds its share of the queue already or the queue is full, and
    /// after the wait when none became free. Dropping the future leaves the queue.
    pub async fn acquire(
        &self,
        client: Option<IpAddr>,
    ) -> Result<PasswordCheckPermit, PasswordChecksBusy> {
        let place = match client.map(|ip| self.per_address.take(ip)).transpose() {
            Ok(place) => place,
            Err(held) => {
                self.address_full.increment(1);
                return Err(PasswordChecksBusy::PerAddress(held));
            }
        };
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            self.queue_full.increment(1);
            return Err(PasswordChecksBusy::QueueFull);
        };
        match tokio::time::timeout(self.wait, self.running.clone().acquire_owned()).await {
            Ok(Ok(running)) => Ok(PasswordCheckPermit {
                jobs: self.jobs.clone(),
                _running: running,
                _admitted: admitted,
                _place: place,
            }),
            // The semaphores are never closed; a closed one would mean no check can start.
            Ok(Err(_)) | Err(_) => {
                self.wait_timeout.increment(1);
                Err(PasswordChecksBusy::WaitedTooLong(self.wait))
            }
        }
    }

    /// Password checks running now (permits handed out and not yet released).
    pub fn running(&self) -> usize {
        self.at_once - self.running.available_permits()
    }

    /// The most password checks that run at once.
    pub fn at_once(&self) -> usize {
        self.at_once
    }

    /// Client addresses (IPv6: /64s) with a login waiting for or running a check now.
    pub fn addresses_waiting(&self) -> usize {
        self.per_address.addresses()
    }
}

impl PasswordCheckPermit {
    /// Starts `check` on a password-check thread at once (a free one: the permit guarantees
    /// it), holding the permit until `check` returns, even when nobody awaits its answer any
    /// more.
    pub fn run<T: Send + 'static>(
        self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, PasswordCheckFailed>> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let jobs = self.jobs.clone();
        let job: Job = Box::new(move || {
            let permit = self;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
            // The slot is free before the answer arrives; a panicked check has no answer.
            drop(permit);
            if let Ok(value) = outcome {
                let _ = answer.send(value);
            }
        });
        // The threads outlive every permit, which holds a sender: sending cannot fail while
        // they run, and a lost job is answered `PasswordCheckFailed`.
        let _ = jobs.send(job);
        async move { answered.await.map_err(|_| PasswordCheckFailed) }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn an_address_holds_at_most_its_cap_and_gets_places_back() {
        let per_address = PerAddressCap::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = per_address.take(a).unwrap();
        let _second = per_address.take(a).unwrap();
        assert!(per_address.take(a).is_err(), "a third connection of a");
        assert!(per_address.take(b).is_ok(), "b has its own places");
        drop(first);
        assert!(
            per_address.take(a).is_ok(),
            "a closed one, so one more fits"
        );
        // One IPv6 /64 counts as one address.
        let per_address = PerAddressCap::new(1);
        let _held = per_address.take("2001:db8::1".parse().unwrap()).unwrap();
        assert!(per_address.take("2001:db8::ffff".parse().unwrap()).is_err());
        assert!(per_address.addresses() == 1);
    }
    use crate::config::Backoff;

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

    fn checks(at_once: usize, waiting: usize, wait_ms: u64) -> PasswordChecks {
        PasswordChecks::new(
            &PasswordChecksConfig {
                at_once: Some(at_once.try_into().unwrap()),
                waiting,
                wait_ms: wait_ms.try_into().unwrap(),
                per_address: 1_000.try_into().unwrap(),
            },
            8,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn password_checks_queue_a_bounded_number_for_a_bounded_time() {
        let checks = checks(1, 1, 50);
        let running = checks.acquire(None).await.unwrap();
        // One may wait; the next is refused at once.
        let waiting = checks.acquire(None);
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        assert_eq!(
            checks.acquire(None).await.err(),
            Some(PasswordChecksBusy::QueueFull)
        );
        // The waiter gives up after the wait, and its place is free again.
        assert_eq!(
            waiting.await.err(),
            Some(PasswordChecksBusy::WaitedTooLong(Duration::from_millis(50)))
        );
        assert_eq!(
            checks.acquire(None).await.err(),
            Some(PasswordChecksBusy::WaitedTooLong(Duration::from_millis(50)))
        );
        drop(running);
        assert!(checks.acquire(None).await.is_ok());
    }

    #[tokio::test]
    async fn an_abandoned_check_keeps_its_permit_until_it_ends() {
        let checks = checks(1, 4, 50);
        let (release, released) = std::sync::mpsc::channel::<()>();
        let job = checks
            .acquire(None)
            .await
            .unwrap()
            .run(move || released.recv().is_ok());
        // Nobody waits for the check any more (its client went away)…
        drop(job);
        assert_eq!(checks.running(), 1);
        // …yet it holds its place until it ends.
        assert!(matches!(
            checks.acquire(None).await,
            Err(PasswordChecksBusy::WaitedTooLong(_))
        ));
        release.send(()).unwrap();
        let permit = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(permit) = checks.acquire(None).await {
                    return permit;
                }
            }
        })
        .await
        .expect("the permit comes back when the check ends");
        drop(permit);
        assert_eq!(checks.running(), 0);
    }

    #[tokio::test]
    async fn a_panicking_check_fails_alone_and_frees_its_thread() {
        let checks = checks(1, 0, 1_000);
        let panicked = checks
            .acquire(None)
            .await
            .unwrap()
            .run(|| -> bool { panic!("a check that panics") })
            .await;
        assert_eq!(panicked, Err(PasswordCheckFailed));
        let answer = checks.acquire(None).await.unwrap().run(|| 42).await;
        assert_eq!(answer, Ok(42));
        assert_eq!(checks.running(), 0);
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_of_the_password_checks() {
        let checks = PasswordChecks::new(
            &PasswordChecksConfig {
                at_once: Some(1.try_into().unwrap()),
                waiting: 64,
                wait_ms: 60_000.try_into().unwrap(),
                per_address: 2.try_into().unwrap(),
            },
            2,
        )
        .unwrap();
        let greedy: IpAddr = "192.0.2.1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        // The greedy address runs one check and queues one more…
        let running = checks.acquire(Some(greedy)).await.unwrap();
        let mut queued = Box::pin(checks.acquire(Some(greedy)));
        assert!(futures::poll!(&mut queued).is_pending());
        // …and is refused a third at once, while others still queue behind it.
        assert_eq!(
            checks.acquire(Some(greedy)).await.err(),
            Some(PasswordChecksBusy::PerAddress(2))
        );
        let mut other = Box::pin(checks.acquire(Some(neighbour)));
        assert!(futures::poll!(&mut other).is_pending());
        let mut other_again = Box::pin(checks.acquire(Some(same_64)));
        assert!(futures::poll!(&mut other_again).is_pending());
        assert_eq!(
            checks.acquire(Some(same_64)).await.err(),
            Some(PasswordChecksBusy::PerAddress(2)),
            "one /64 is one address"
        );
        assert_eq!(checks.addresses_waiting(), 2);
        let error = crate::error::ApiError::from(PasswordChecksBusy::PerAddress(2));
        assert_eq!(error.status, warp::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error.retry_after, Some(Duration::from_secs(1)));
        // A place held by a check comes back when it ends.
        drop(running);
        let second = queued.await.unwrap();
        let mut third = Box::pin(checks.acquire(Some(greedy)));
        assert!(futures::poll!(&mut third).is_pending(), "a place again");
        drop(second);
        drop(third);
        drop(other);
        drop(other_again);
        assert_eq!(checks.addresses_waiting(), 0, "no address left behind");
    }

    #[test]
    fn password_checks_default_to_half_the_cores() {
        let config = PasswordChecksConfig::default();
        assert_eq!(config.at_once_on(1), 1);
        assert_eq!(config.at_once_on(2), 1);
        assert_eq!(config.at_once_on(16), 8);
        assert_eq!(PasswordChecks::new(&config, 2).unwrap().at_once(), 1);
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
