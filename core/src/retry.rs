//! Retrying a failed operation: exponential backoff with jitter, until it succeeds, fails for
//! good, reaches a limit the caller set, or a cancellation token fires.
//!
//! The stage runner, the sink worker and the Kafka backend retry through [`Retry::run`] (or
//! [`Retry::run_with`]): the caller says which errors are worth another attempt
//! ([`Verdict`]), and logs or counts each retry in its `on_retry` callback, so the loops
//! differ only in what they do, not in how they wait.
//!
//! ```no_run
//! # async fn example(cancel: tokio_util::sync::CancellationToken) {
//! use std::time::Duration;
//! use sluice_core::retry::{Backoff, Retry, Verdict};
//!
//! let answer: Result<u32, _> = Retry::new(Backoff::new(
//!     Duration::from_millis(100),
//!     Duration::from_secs(5),
//! ))
//! .cancel_on(&cancel)
//! .run(
//!     || async { Err::<u32, std::io::Error>(std::io::ErrorKind::ConnectionRefused.into()) },
//!     |error| match error.kind() {
//!         std::io::ErrorKind::PermissionDenied => Verdict::Stop,
//!         _ => Verdict::Retry,
//!     },
//!     |error, next| tracing::warn!(%error, retry_in = ?next.pause, "connect failed; retrying"),
//! )
//! .await;
//! # }
//! ```

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long to pause before each retry: `initial` before the first, `factor` times longer
/// before each next one, never longer than `max`; each pause is then shortened by a random
/// part of at most `jitter` of it, so that many clients retrying the same outage spread out
/// instead of hitting the recovering service together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Pause before the first retry.
    pub initial: Duration,
    /// Longest pause.
    pub max: Duration,
    /// How much longer each pause is than the one before (`1`: always `initial`).
    pub factor: u32,
    /// Largest share of a pause that jitter takes off, from `0.0` (none) to `1.0`.
    pub jitter: f64,
}

impl Backoff {
    /// Doubling pauses from `initial` up to `max`, with up to a fifth taken off by jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            factor: 2,
            jitter: 0.2,
        }
    }

    /// The same pauses with another jitter share (clamped to `0.0..=1.0`).
    pub const fn with_jitter(self, jitter: f64) -> Self {
        Backoff { jitter, ..self }
    }

    /// The pause before retry number `retry` (0 for the first) before jitter:
    /// `initial × factor^retry`, at most `max`.
    pub fn nominal(&self, retry: u32) -> Duration {
        let mut pause = self.initial.min(self.max);
        for _ in 0..retry {
            if pause >= self.max {
                break;
            }
            pause = pause.saturating_mul(self.factor.max(1)).min(self.max);
        }
        pause
    }

    /// The pause before retry number `retry`, with jitter: between `(1 − jitter) ×` and
    /// `1 ×` [`Backoff::nominal`], so never longer than `max`.
    pub fn pause(&self, retry: u32) -> Duration {
        self.jittered(self.nominal(retry), random_unit())
    }

    /// Waits [`Backoff::pause`] for retry number `retry`, or until `cancel` fires; `false`
    /// when cancelled. For loops whose attempt is one arm of a larger `select!` (a consumer's
    /// poll beside its other events), where [`Retry::run`] cannot own the attempt.
    pub async fn wait(&self, retry: u32, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.pause(retry)) => true,
            _ = cancel.cancelled() => false,
        }
    }

    /// `nominal` shortened by `unit` (in `0.0..1.0`) of the jitter share.
    fn jittered(&self, nominal: Duration, unit: f64) -> Duration {
        let share = self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
        nominal.mul_f64(1.0 - share)
    }
}

/// A uniformly distributed number in `0.0..1.0`, good enough to spread pauses (not for
/// anything secret): the standard library's randomly keyed hasher, fresh keys on every call.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// What to do after an attempt failed with a given error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The error can go away (a lost connection, a timeout, a busy server): try again.
    Retry,
    /// Trying again cannot help (the data is refused, the request is wrong): give up now.
    Stop,
}

/// Why [`Retry::run`] gave up, with the error of the last attempt.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// The caller's classification said the error is permanent ([`Verdict::Stop`]).
    Permanent(E),
    /// The cancellation token fired (and the attempts allowed while draining failed too).
    Cancelled(E),
    /// The attempt limit set with [`Retry::max_attempts`] was reached.
    Exhausted(E),
}

impl<E> GaveUp<E> {
    /// The error of the last attempt.
    pub fn into_error(self) -> E {
        match self {
            GaveUp::Permanent(error) | GaveUp::Cancelled(error) | GaveUp::Exhausted(error) => error,
        }
    }

    /// The error of the last attempt.
    pub fn error(&self) -> &E {
        match self {
            GaveUp::Permanent(error) | GaveUp::Cancelled(error) | GaveUp::Exhausted(error) => error,
        }
    }
}

/// What [`Retry::run`] tells its `on_retry` callback about the retry it is about to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextAttempt {
    /// The number of the attempt that failed (1 for the first).
    pub failed: u32,
    /// How long it pauses before the next attempt.
    pub pause: Duration,
    /// Whether the cancellation token has fired and this is one of the few attempts made
    /// while draining (see [`Retry::drain`]).
    pub draining: bool,
}

/// A retry policy: the [`Backoff`], an optional cancellation token, an optional attempt limit,
/// and how many failures it accepts after cancellation. [`Retry::run`] applies it.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    cancel: Option<CancellationToken>,
    max_attempts: Option<u32>,
    drain_failures: u32,
    drain_max_pause: Duration,
}

impl Retry {
    /// Retries with `backoff` for as long as it takes: no limit, no cancellation.
    pub fn new(backoff: Backoff) -> Self {
        Retry {
            backoff,
            cancel: None,
            max_attempts: None,
            drain_failures: 1,
            drain_max_pause: Duration::ZERO,
        }
    }

    /// Gives up when `token` is cancelled: a pause in progress ends at once, and the next
    /// failure after it is the last (unless [`Retry::drain`] allows more).
    pub fn cancel_on(mut self, token: &CancellationToken) -> Self {
        self.cancel = Some(token.clone());
        self
    }

    /// Gives up after `attempts` attempts in all (at least one is always made).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// After cancellation, keeps trying until `failures` attempts have failed while cancelled,
    /// pausing at most `max_pause` between them: a shutdown should not wait long on a broken
    /// backend, but a brief hiccup need not lose the work in hand. A cancellation during a
    /// pause then ends the pause and tries again. The default (`1`) gives up at the first
    /// failure once cancelled, and at once when cancelled during a pause.
    pub fn drain(mut self, failures: u32, max_pause: Duration) -> Self {
        self.drain_failures = failures.max(1);
        self.drain_max_pause = max_pause;
        self
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    /// Runs `attempt` until it succeeds, or gives up ([`GaveUp`]): when `classify` answers
    /// [`Verdict::Stop`] for its error (at once, with no pause), when the attempt limit is
    /// reached, or on cancellation. Before each retry it calls `on_retry` with the error and
    /// the coming pause, where the caller logs and counts. At least one attempt is made, even
    /// when the token is already cancelled.
    pub async fn run<T, E, F: Future<Output = Result<T, E>>>(
        &self,
        mut attempt: impl FnMut() -> F,
        classify: impl FnMut(&E) -> Verdict,
        on_retry: impl FnMut(&E, &NextAttempt),
    ) -> Result<T, GaveUp<E>> {
        self.run_with(
            (),
            |()| {
                let attempt = attempt();
                async move { ((), attempt.await) }
            },
            classify,
            on_retry,
        )
        .await
    }

    /// [`Retry::run`] for attempts that change something they need again on the next one (a
    /// consumer to commit with, the records still to send): each attempt takes `state` and
    /// hands it back with its result.
    ///
    /// (A closure cannot lend its own captures to the futures it returns. An async closure
    /// can, but the compiler cannot prove its future `Send` for every lifetime it borrows, so
    /// a spawned task that awaited one through a generic helper would not compile.)
    pub async fn run_with<S, T, E, F: Future<Output = (S, Result<T, E>)>>(
        &self,
        mut state: S,
        mut attempt: impl FnMut(S) -> F,
        mut classify: impl FnMut(&E) -> Verdict,
        mut on_retry: impl FnMut(&E, &NextAttempt),
    ) -> Result<T, GaveUp<E>> {
        let mut failed = 0u32;
        let mut failed_while_cancelled = 0u32;
        loop {
            let (returned, outcome) = attempt(state).await;
            state = returned;
            let error = match outcome {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if classify(&error) == Verdict::Stop {
                return Err(GaveUp::Permanent(error));
            }
            failed = failed.saturating_add(1);
            if self.max_attempts.is_some_and(|max| failed >= max) {
                return Err(GaveUp::Exhausted(error));
            }
            let draining = self.cancelled();
            let mut pause = self.backoff.pause(failed - 1);
            if draining {
                failed_while_cancelled += 1;
                if failed_while_cancelled >= self.drain_failures {
                    return Err(GaveUp::Cancelled(error));
                }
                pause = pause.min(self.drain_max_pause);
            }
            on_retry(
                &error,
                &NextAttempt {
                    failed,
                    pause,
                    draining,
                },
            );
            match &self.cancel {
                Some(token) if !draining => {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = token.cancelled() => {
                            if self.drain_failures <= 1 {
                                return Err(GaveUp::Cancelled(error));
                            }
                        }
                    }
                }
                _ => tokio::time::sleep(pause).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::ready;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Counts attempts: the number of this one.
    fn count(attempts: &AtomicU32) -> u32 {
        attempts.fetch_add(1, Ordering::SeqCst) + 1
    }

    #[test]
    fn backoff_grows_by_its_factor_and_is_capped() {
        let backoff = Backoff::new(ms(100), ms(5_000));
        let pauses: Vec<_> = (0..10).map(|n| backoff.nominal(n)).collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000].map(ms)
        );
        assert_eq!(backoff.nominal(u32::MAX), ms(5_000), "no overflow");
        let tripling = Backoff {
            factor: 3,
            ..Backoff::new(ms(10), ms(100))
        };
        assert_eq!(
            (0..4).map(|n| tripling.nominal(n)).collect::<Vec<_>>(),
            [10, 30, 90, 100].map(ms)
        );
        let constant = Backoff {
            factor: 1,
            ..Backoff::new(ms(250), ms(250))
        };
        assert_eq!(constant.nominal(7), ms(250));
        assert_eq!(
            Backoff::new(ms(900), ms(300)).nominal(0),
            ms(300),
            "the cap holds from the first pause"
        );
    }

    #[test]
    fn jitter_stays_within_its_share_of_the_pause() {
        let backoff = Backoff::new(ms(100), ms(1_000)).with_jitter(0.5);
        assert_eq!(backoff.jittered(ms(1_000), 0.0), ms(1_000));
        assert_eq!(backoff.jittered(ms(1_000), 0.5), ms(750));
        assert_eq!(backoff.jittered(ms(1_000), 1.0), ms(500));
        let mut seen = std::collections::BTreeSet::new();
        for retry in 0..2_000 {
            let nominal = backoff.nominal(retry % 6);
            let pause = backoff.pause(retry % 6);
            assert!(
                pause <= nominal && pause >= nominal / 2,
                "retry {retry}: {pause:?} is outside [{:?}, {nominal:?}]",
                nominal / 2
            );
            if retry % 6 == 5 {
                seen.insert(pause);
            }
        }
        assert!(
            seen.len() > 50,
            "jitter should spread the pauses, got {} distinct",
            seen.len()
        );
        let none = Backoff::new(ms(100), ms(1_000)).with_jitter(0.0);
        assert!((0..100).all(|_| none.pause(2) == ms(400)));
        let too_much = Backoff::new(ms(100), ms(1_000)).with_jitter(7.0);
        assert!((0..100).all(|_| too_much.pause(0) <= ms(100)));
    }

    #[tokio::test]
    async fn wait_pauses_and_ends_at_once_when_cancelled() {
        let backoff = Backoff::new(ms(60), ms(10_000)).with_jitter(0.0);
        let cancel = CancellationToken::new();
        let started = Instant::now();
        assert!(
            backoff.wait(0, &cancel).await,
            "an uncancelled pause completes"
        );
        assert!(started.elapsed() >= ms(60));

        let started = Instant::now();
        let cancelling = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ms(30)).await;
                cancel.cancel();
            })
        };
        assert!(
            !backoff.wait(10, &cancel).await,
            "a cancelled pause says so"
        );
        assert!(started.elapsed() < ms(2_000), "{:?}", started.elapsed());
        cancelling.await.unwrap();
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success_with_growing_pauses() {
        let attempts = AtomicU32::new(0);
        let mut notices = Vec::new();
        let started = Instant::now();
        let result = Retry::new(Backoff::new(ms(20), ms(1_000)).with_jitter(0.0))
            .run(
                || {
                    let n = count(&attempts);
                    ready(if n < 4 {
                        Err(format!("failure {n}"))
                    } else {
                        Ok(n)
                    })
                },
                |_| Verdict::Retry,
                |error, next| notices.push((error.clone(), *next)),
            )
            .await;
        assert_eq!(result.unwrap(), 4);
        let pauses: Vec<_> = notices.iter().map(|(_, n)| n.pause).collect();
        assert_eq!(pauses, [ms(20), ms(40), ms(80)]);
        assert_eq!(notices[2].0, "failure 3");
        assert_eq!(notices[2].1.failed, 3);
        assert!(notices.iter().all(|(_, n)| !n.draining));
        assert!(started.elapsed() >= ms(140), "it must really pause");
    }

    #[tokio::test]
    async fn run_with_hands_each_attempt_what_the_last_one_left() {
        let mut retries = 0;
        let result = Retry::new(Backoff::new(ms(1), ms(1)))
            .run_with(
                vec![5, 3, 8],
                |mut unsent: Vec<u32>| async move {
                    // Each attempt gets one item through.
                    unsent.pop();
                    let left = unsent.len();
                    (unsent, if left == 0 { Ok(()) } else { Err(left) })
                },
                |_| Verdict::Retry,
                |_, _| retries += 1,
            )
            .await;
        assert!(result.is_ok());
        assert_eq!(retries, 2, "three items, one per attempt");
    }

    #[tokio::test]
    async fn a_permanent_error_stops_at_once() {
        let attempts = AtomicU32::new(0);
        let mut retried = 0;
        let started = Instant::now();
        let result: Result<(), _> = Retry::new(Backoff::new(ms(10_000), ms(10_000)))
            .run(
                || {
                    count(&attempts);
                    ready(Err("refused"))
                },
                |_| Verdict::Stop,
                |_, _| retried += 1,
            )
            .await;
        assert!(matches!(result, Err(GaveUp::Permanent("refused"))));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert_eq!(retried, 0, "no retry is announced");
        assert!(started.elapsed() < ms(1_000), "no pause");
    }

    #[tokio::test]
    async fn a_permanent_error_after_transient_ones_stops_without_another_pause() {
        let attempts = AtomicU32::new(0);
        let mut retried = 0;
        let started = Instant::now();
        let result: Result<(), _> = Retry::new(Backoff::new(ms(30), ms(30)).with_jitter(0.0))
            .run(
                || {
                    ready(Err(if count(&attempts) < 3 {
                        "busy"
                    } else {
                        "refused"
                    }))
                },
                |error| match *error {
                    "refused" => Verdict::Stop,
                    _ => Verdict::Retry,
                },
                |_, _| retried += 1,
            )
            .await;
        assert!(matches!(result, Err(GaveUp::Permanent("refused"))));
        assert_eq!((attempts.load(Ordering::SeqCst), retried), (3, 2));
        assert!(started.elapsed() < ms(1_000));
    }

    #[tokio::test]
    async fn cancellation_during_a_pause_returns_promptly() {
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(50)).await;
            canceller.cancel();
        });
        let attempts = AtomicU32::new(0);
        let started = Instant::now();
        let result: Result<(), _> = Retry::new(Backoff::new(ms(60_000), ms(60_000)))
            .cancel_on(&cancel)
            .run(
                || {
                    count(&attempts);
                    ready(Err("down"))
                },
                |_| Verdict::Retry,
                |_, _| {},
            )
            .await;
        assert!(matches!(result, Err(GaveUp::Cancelled("down"))));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert!(
            started.elapsed() < ms(5_000),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn once_cancelled_the_next_failure_gives_up_but_a_success_still_counts() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let attempts = AtomicU32::new(0);
        let result: Result<(), _> = Retry::new(Backoff::new(ms(60_000), ms(60_000)))
            .cancel_on(&cancel)
            .run(
                || {
                    count(&attempts);
                    ready(Err("down"))
                },
                |_| Verdict::Retry,
                |_, _| panic!("no retry after cancellation"),
            )
            .await;
        assert!(matches!(result, Err(GaveUp::Cancelled("down"))));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "one attempt is always made"
        );
        let done = Retry::new(Backoff::new(ms(1), ms(1)))
            .cancel_on(&cancel)
            .run(|| ready(Ok::<_, ()>(7)), |_| Verdict::Retry, |_, _| {})
            .await;
        assert_eq!(done.unwrap(), 7);
    }

    #[tokio::test]
    async fn draining_allows_a_few_short_attempts_after_cancellation() {
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(50)).await;
            canceller.cancel();
        });
        let attempts = AtomicU32::new(0);
        let mut notices = Vec::new();
        let started = Instant::now();
        let result: Result<(), _> = Retry::new(Backoff::new(ms(60_000), ms(60_000)))
            .cancel_on(&cancel)
            .drain(3, ms(20))
            .run(
                || {
                    count(&attempts);
                    ready(Err("down"))
                },
                |_| Verdict::Retry,
                |_, next| notices.push(*next),
            )
            .await;
        assert!(matches!(result, Err(GaveUp::Cancelled("down"))));
        // One attempt before the cancellation cut its pause short, then three that failed
        // while cancelled, the last of which gives up.
        assert_eq!(attempts.load(Ordering::SeqCst), 4);
        assert_eq!(notices.len(), 3);
        assert!(!notices[0].draining);
        assert!(notices[1..].iter().all(|n| n.draining && n.pause <= ms(20)));
        assert!(started.elapsed() < ms(5_000));
    }

    #[tokio::test]
    async fn an_attempt_limit_ends_with_the_last_error() {
        let attempts = AtomicU32::new(0);
        let result: Result<(), _> = Retry::new(Backoff::new(ms(1), ms(2)))
            .max_attempts(5)
            .run(
                || ready(Err(count(&attempts))),
                |_| Verdict::Retry,
                |_, _| {},
            )
            .await;
        assert!(matches!(result, Err(GaveUp::Exhausted(5))));
        assert_eq!(attempts.load(Ordering::SeqCst), 5);
    }
}
