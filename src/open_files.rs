//! The open-files limit of a `sluice run` process.
//!
//! Every connection, log segment and shard connection is a file descriptor, and the soft
//! limit most systems start a process with (1024) is far below what one ingress serves. As
//! Go's runtime does, Sluice raises its soft limit to the hard limit at start; raising the
//! hard limit is the operator's (`LimitNOFILE=` in systemd, `ulimit -Hn`, `--ulimit`).

/// Raises the soft open-files limit to the hard limit and logs both; a failure is only
/// logged, since the process can still serve within the old limit.
pub fn raise_to_hard_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(
            open_files = limit,
            "open-files limit raised to the hard limit"
        ),
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-files limit; connections beyond the current soft limit will be refused")
        }
    }
}
