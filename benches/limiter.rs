//! `cargo bench --bench limiter`: memory of the rate limiter when a million distinct keys hit
//! it (a flood of spoofed user names or addresses), with the sweeps that bound it.
#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use sluice_ingress::config::Quota;
use sluice_ingress::limits::{KeyedLimit, MAX_TRACKED_KEYS};

/// Resident memory of this process, in MiB (Linux).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let keys: usize = std::env::var("SLUICE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let limit = KeyedLimit::new("per user on /order", Quota::per_second(NonZeroU32::new(200).unwrap(), NonZeroU32::new(400).unwrap()));
        let before = rss_mib();
        let started = Instant::now();
        let (mut peak_keys, mut peak_rss) = (0usize, before);
        for n in 0..keys {
            let _ = limit.check(&format!("flood-user-{n:08}"));
            if n % 50_000 == 0 {
                peak_keys = peak_keys.max(limit.tracked_keys());
                peak_rss = peak_rss.max(rss_mib());
                tokio::task::yield_now().await;
            }
        }
        let elapsed = started.elapsed();
        peak_keys = peak_keys.max(limit.tracked_keys());
        peak_rss = peak_rss.max(rss_mib());
        tokio::time::sleep(Duration::from_millis(50)).await; // every bucket refills
        limit.sweep();
        println!("Sluice rate limiter under {keys} distinct keys (forced sweep above {MAX_TRACKED_KEYS} keys)");
        println!("  checks/s                      {:>10.0}", keys as f64 / elapsed.as_secs_f64());
        println!("  keys tracked at peak          {peak_keys:>10}");
        println!("  resident memory before        {before:>10.1} MiB");
        println!("  resident memory at peak       {peak_rss:>10.1} MiB");
        println!("  keys tracked after the sweep  {:>10}", limit.tracked_keys());
        println!("  resident memory after sweep   {:>10.1} MiB", rss_mib());
    });
}
