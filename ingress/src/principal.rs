//! Authentication of a request: its `Authorization: Bearer <token>` header, a JWT or a
//! biscuit capability token, becomes the [`Principal`] the request speaks for.
//!
//! Every route that needs a principal takes it from the one filter [`authenticated`], so a
//! request's token is verified exactly once; [`AUTH_VERIFICATIONS`] counts the
//! verifications. The filter first charges the request to its client address's `/order` rate
//! limit, so that refused credentials cost their sender as much as accepted ones.
//!
//! JWTs are verified inline (one signature check). Capability tokens are verified and later
//! authorized on blocking threads, through the [`CapabilityGate`]: at most a few at once, a
//! bounded wait for a turn and a hard time limit on the answer, so that no token can hold an
//! async worker or the whole ingress.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use warp::http::{header, HeaderMap};
use warp::Filter;

use crate::auth::{Claims, TokenError};
use crate::capability::{CapabilityError, VerifiedCapability};
use crate::limits::RateLimited;
use crate::State;

pub use sluice_core::telemetry::AUTH_VERIFICATIONS;

/// Who a request speaks for, and how it proved it.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A user authenticated by a JWT.
    Jwt(Claims),
    /// A user holding a verified biscuit capability token, whose checks are still to be
    /// authorized against the request ([`VerifiedCapability::authorize`], through
    /// [`State::authorize_capability`]).
    Capability(Arc<VerifiedCapability>),
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

/// The one filter that authenticates a request to an `/order` route: it charges the request to
/// its client address's limit (`orders_per_address`) before looking at its credential, then
/// extracts the principal (see [`State::authenticate`]), or why there is none, for the handler
/// to answer. It never rejects, so the handler's response and metrics cover refused
/// credentials too.
pub fn authenticated(
    state: &Arc<State>,
) -> impl Filter<Extract = (Authentication,), Error = Infallible> + Clone {
    let state = state.clone();
    crate::server::client_addr()
        .and(warp::header::headers_cloned())
        .then(move |client: Option<IpAddr>, headers: HeaderMap| {
            let state = state.clone();
            async move {
                if let Some(client) = client {
                    let address = crate::limits::address_key(client);
                    state.limits.orders_per_address.check(&address)?;
                }
                state.authenticate(&headers).await
            }
        })
}

/// How many capability-token jobs (verification or authorization) run at once, per core.
pub const CAPABILITY_JOBS_PER_CORE: usize = 2;

/// How long a request waits for a capability-token job slot before it is answered `503`.
pub const CAPABILITY_SLOT_WAIT: Duration = Duration::from_millis(100);

/// How long a capability-token job may take before its request is answered `503` (the job
/// itself runs on, and holds its slot, until it ends).
///
/// A backstop, not a budget: only tokens of Sluice's vocabulary reach evaluation, and a job
/// takes about a millisecond even in a debug build. It is generous because on a starved
/// machine a blocking thread can wait tens of milliseconds for a core, and the timer itself
/// fires late: genuine tokens must not be refused for that.
pub const CAPABILITY_JOB_DEADLINE: Duration = Duration::from_millis(250);

/// Runs capability-token work (signature checks, block reading, Datalog) on blocking threads,
/// never on the async workers: at most `slots` jobs at once, each request waiting at most a
/// bounded time for a slot and for its answer.
///
/// A job's slot (a semaphore permit) moves into the job, so it is released when the job really
/// ends, even when its request was answered already (deadline passed) or its client went away:
/// whatever requests do, no more than `slots` jobs ever run.
#[derive(Debug)]
pub struct CapabilityGate {
    slots: Arc<Semaphore>,
    wait: Duration,
    deadline: Duration,
}

/// Why the [`CapabilityGate`] did not give a job's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    /// No slot came free within the wait.
    #[error("every capability check slot is busy")]
    Busy,
    /// The job did not end within the deadline (it runs on, holding its slot).
    #[error("the capability check took too long")]
    TooSlow,
    /// The runtime is shutting down.
    #[error("the ingress is shutting down")]
    ShuttingDown,
}

impl CapabilityGate {
    /// A gate of `slots` concurrent jobs (at least one), waiting at most `wait` for a slot and
    /// `deadline` for a job's result.
    pub fn new(slots: usize, wait: Duration, deadline: Duration) -> Self {
        CapabilityGate {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            wait,
            deadline,
        }
    }

    /// The gate the ingress uses: [`CAPABILITY_JOBS_PER_CORE`] per core (at least two),
    /// [`CAPABILITY_SLOT_WAIT`], [`CAPABILITY_JOB_DEADLINE`].
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(
            (CAPABILITY_JOBS_PER_CORE * cores).max(2),
            CAPABILITY_SLOT_WAIT,
            CAPABILITY_JOB_DEADLINE,
        )
    }

    /// Slots free now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Runs `job` on a blocking thread once a slot is free, and returns its result if it ends
    /// within the deadline. A panic in `job` resumes here.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, GateRefusal> {
        let slot = match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_closed)) => return Err(GateRefusal::ShuttingDown),
            Err(_elapsed) => {
                // Refusals come in floods when they come: not logged one by one.
                tracing::debug!(wait = ?self.wait, "no capability check slot came free; answering 503");
                return Err(GateRefusal::Busy);
            }
        };
        let handle = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            job()
        });
        match tokio::time::timeout(self.deadline, handle).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Ok(Err(_cancelled)) => Err(GateRefusal::ShuttingDown),
            // Dropping the handle detaches the job: it ends on its own and frees its slot then.
            // Slow jobs keep their slots, so these come at most a few per deadline.
            Err(_elapsed) => {
                tracing::warn!(
                    deadline = ?self.deadline,
                    "a capability token check overran its deadline; answering 503 (the check runs on, holding its slot)"
                );
                Err(GateRefusal::TooSlow)
            }
        }
    }
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
    /// The client address has used up its `/order` requests (checked before the credential).
    #[error(transparent)]
    AddressLimited(#[from] RateLimited),
    /// The capability token could not be checked now (see [`CapabilityGate`]).
    #[error("capability tokens cannot be checked now: {0}; retry later")]
    CapabilityBusy(#[from] GateRefusal),
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Polls `condition` every 10 ms for up to 10 s.
    async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        for _ in 0..1000 {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Runs `job` through `gate` until it is answered: on a loaded machine a quick job may miss
    /// a short deadline, or find the slot still held by its own late predecessor. Gives up
    /// after 10 s.
    async fn answered<T: Send + 'static>(
        gate: &CapabilityGate,
        job: impl Fn() -> T + Clone + Send + 'static,
    ) -> T {
        for _ in 0..1000 {
            match gate.run(job.clone()).await {
                Ok(value) => return value,
                Err(GateRefusal::TooSlow | GateRefusal::Busy) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(other) => panic!("the gate refused: {other}"),
            }
        }
        panic!("no answer from the gate in 10 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_keeps_its_slot_until_it_really_ends() {
        // A short deadline, so that the stuck job below is given up on quickly; the jobs that
        // must succeed are retried until answered instead of timed.
        let gate = CapabilityGate::new(1, Duration::from_millis(20), Duration::from_millis(20));
        assert_eq!(answered(&gate, || 7).await, 7);
        assert!(eventually(|| gate.free_slots() == 1).await);

        // A job that outlives its deadline: its request is answered, its slot stays taken.
        let (release, held) = mpsc::channel::<()>();
        let stuck = gate.run(move || held.recv().is_ok()).await;
        assert_eq!(stuck, Err(GateRefusal::TooSlow));
        assert_eq!(gate.free_slots(), 0);
        // Nobody else gets a turn meanwhile.
        assert_eq!(gate.run(|| 8).await, Err(GateRefusal::Busy));

        release.send(()).unwrap();
        assert!(eventually(|| gate.free_slots() == 1).await);
        assert_eq!(answered(&gate, || 9).await, 9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_goes_away_does_not_free_the_slot() {
        let gate = Arc::new(CapabilityGate::new(
            1,
            Duration::from_millis(20),
            Duration::from_secs(60),
        ));
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let request = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.run(move || {
                    started.send(()).unwrap();
                    held.recv().is_ok()
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || running.recv().unwrap())
            .await
            .unwrap();
        // The client goes away: its request's future is dropped, the job runs on.
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        assert_eq!(gate.free_slots(), 0);
        assert_eq!(gate.run(|| 1).await, Err(GateRefusal::Busy));
        release.send(()).unwrap();
        assert!(eventually(|| gate.free_slots() == 1).await);
    }

    #[test]
    fn refusals_are_answered_503_and_address_limits_429() {
        let api =
            crate::error::ApiError::from(AuthenticationError::CapabilityBusy(GateRefusal::Busy));
        assert_eq!(api.status.as_u16(), 503);
        assert!(api.retry_after.is_some());
        let api = crate::error::ApiError::from(AuthenticationError::AddressLimited(RateLimited {
            limit: "per client address on /order",
            retry_after: Duration::from_secs(2),
            burst: 5,
        }));
        assert_eq!((api.status.as_u16(), api.rate_limit), (429, Some(5)));
        assert_eq!(api.retry_after, Some(Duration::from_secs(2)));
    }
}
