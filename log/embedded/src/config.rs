//! `[log.embedded]`: the embedded log's settings, their checks, and opening the log from them.

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::log::LogError;
use sluice_core::topology::{resolve_relative, Issues};

use crate::{EmbeddedLog, Options, Retention};

/// `[log.embedded]`: the embedded log (one local file, no services, one process).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedLogConfig {
    /// File of the log, relative to the topology file.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Records older than this many hours are deleted (default 168, one week).
    #[serde(default = "default_retention_hours")]
    pub retention_hours: NonZeroU64,
    /// At most this many records are kept per partition (oldest go first); leave out for no
    /// limit.
    #[serde(default)]
    pub retention_records: Option<NonZeroU64>,
    /// When less than this many MiB are free on the log's filesystem, the ingress refuses new
    /// orders (503, and `/readyz` answers 503 with the reason) while the stages go on writing
    /// their outputs, so the log can still commit what it holds and the pipeline drains
    /// before the disk is actually full; orders are taken again once free space is 1/16 of
    /// the watermark (at least 1 MiB) above it. `0` turns the check off.
    #[serde(default = "default_min_free_mib")]
    pub min_free_mib: u64,
    /// Most records waiting to be written at once. When the queue is full, new orders get 503
    /// with `Retry-After` at once, and stage outputs wait for room, so memory stays bounded
    /// while the disk is slow.
    #[serde(default = "default_max_pending_appends")]
    pub max_pending_appends: usize,
    /// MiB of the log file kept cached in memory (default 64). The stages and sinks read
    /// records moments after they are written, so a small cache serves them; most of the
    /// resident memory of a process on the embedded log is this cache once it has filled.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: usize,
}

fn default_cache_mib() -> usize {
    crate::DEFAULT_CACHE_BYTES >> 20
}

fn default_path() -> PathBuf {
    "data/log.redb".into()
}

fn default_retention_hours() -> NonZeroU64 {
    NonZeroU64::new(168).expect("168 is not zero")
}

fn default_min_free_mib() -> u64 {
    64
}

fn default_max_pending_appends() -> usize {
    8192
}

impl Default for EmbeddedLogConfig {
    fn default() -> Self {
        EmbeddedLogConfig {
            path: default_path(),
            retention_hours: default_retention_hours(),
            retention_records: None,
            min_free_mib: default_min_free_mib(),
            max_pending_appends: default_max_pending_appends(),
            cache_mib: default_cache_mib(),
        }
    }
}

impl EmbeddedLogConfig {
    /// Checks the settings; `at` is where the table is, e.g. `log.embedded`.
    pub fn validate(&self, at: &str, issues: &mut Issues) {
        if self.path.as_os_str().is_empty() {
            issues.push(
                format!("{at}.path"),
                "the embedded log needs a file, e.g. \"data/log.redb\"",
            );
        }
        if self.max_pending_appends == 0 {
            issues.push(format!("{at}.max_pending_appends"), "must be at least 1");
        }
        if self.cache_mib == 0 {
            issues.push(
                format!("{at}.cache_mib"),
                "must be at least 1 (MiB of the log file kept in memory)",
            );
        }
    }

    /// [`open`](Self::open), waiting while another process holds the file: a process taking
    /// over from the one that runs now (see `scripts/restart`) has its listeners already and
    /// gets the log when the old process has drained and let go of it. Logs once that it
    /// waits, naming the holder's pid, then every minute; tries again every `retry`, with no
    /// time limit (stop it by dropping the future). Other errors return at once.
    pub async fn open_when_free(
        &self,
        base_dir: &Path,
        retry: Duration,
    ) -> Result<EmbeddedLog, LogError> {
        let path = resolve_relative(base_dir, &self.path);
        let started = std::time::Instant::now();
        let mut reported: Option<std::time::Instant> = None;
        loop {
            // Opening reads the file: off the async workers.
            let (config, dir) = (self.clone(), base_dir.to_path_buf());
            let opened = tokio::task::spawn_blocking(move || config.open(&dir))
                .await
                .map_err(|e| LogError::backend("opening the embedded log was interrupted", e))?;
            match opened {
                Err(error) if crate::held_by_another_process(&error) => {
                    if reported.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        let holder = crate::holder_pid(&path)
                            .map_or_else(|| "unknown".to_string(), |pid| pid.to_string());
                        tracing::info!(
                            log = %path.display(),
                            waited = ?started.elapsed(),
                            "waiting for the embedded log held by pid {holder}"
                        );
                        reported = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(retry).await;
                }
                Err(error) => return Err(error),
                Ok(log) => {
                    if reported.is_some() {
                        tracing::info!(log = %path.display(), waited = ?started.elapsed(), "embedded log obtained");
                    }
                    return Ok(log);
                }
            }
        }
    }

    /// Opens the log; a relative `path` resolves against `base_dir` (the topology file's
    /// folder). Within a Tokio runtime, the retention sweeper starts too.
    pub fn open(&self, base_dir: &Path) -> Result<EmbeddedLog, LogError> {
        let path = resolve_relative(base_dir, &self.path);
        let retention = Retention {
            max_age: Some(Duration::from_secs(self.retention_hours.get() * 3600)),
            max_records: self.retention_records.map(NonZeroU64::get),
        };
        let log = EmbeddedLog::open_with(
            &path,
            Options {
                min_free_bytes: self.min_free_mib.saturating_mul(1 << 20),
                max_pending_appends: self.max_pending_appends,
                cache_bytes: self.cache_mib.saturating_mul(1 << 20),
                ..Options::new(retention)
            },
        )?;
        if tokio::runtime::Handle::try_current().is_ok() {
            log.spawn_retention(Duration::from_secs(60));
        }
        Ok(log)
    }
}
