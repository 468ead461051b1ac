//! The bound on concurrent password checks: argon2id takes ~19 MiB and a core per check, so
//! a fixed number run at once on threads of their own, each holding its slot until it ends
//! even if its client has gone; logins wait for one in a bounded queue, for a bounded time,
//! and one client address holds at most its share of the places.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::per_address::{AddressPlace, PerAddressCap};
use crate::config::PasswordChecksConfig;
use sluice_core::telemetry::PASSWORD_CHECKS_REFUSED;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    use super::*;

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
}
