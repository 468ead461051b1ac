//! One cancellation tree for the whole process.
//!
//! SIGTERM or Ctrl-C cancels the root token; every component watches a child token, stops
//! taking new work, finishes what it holds (drains requests, flushes producers, commits its
//! last batch) and returns. A component that fails calls [`Shutdown::fail`], which records the
//! failure and cancels the tree so the process exits non-zero.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Shared handle to the process-wide shutdown tree.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    failed: Arc<AtomicBool>,
}

impl Shutdown {
    /// A fresh, un-cancelled tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token that is cancelled when the tree is.
    pub fn token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Begins a graceful shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Records that a component failed and begins shutting the rest down.
    pub fn fail(&self, component: &str, error: &dyn std::fmt::Display) {
        tracing::error!(component, %error, "component failed; shutting down");
        self.failed.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    /// Whether any component failed.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Cancels the tree on SIGTERM or SIGINT (Ctrl-C). Call once, from the binary.
    pub fn listen_for_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; draining");
            this.trigger();
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C will drain");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failure_cancels_children_and_is_remembered() {
        let shutdown = Shutdown::new();
        let child = shutdown.token();
        assert!(!child.is_cancelled());
        shutdown.fail("test", &"boom");
        assert!(child.is_cancelled());
        assert!(shutdown.has_failed());
    }

    #[tokio::test]
    async fn trigger_is_not_a_failure() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        shutdown.triggered().await;
        assert!(!shutdown.has_failed());
    }
}
