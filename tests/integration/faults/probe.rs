//! Background probes during a fault: `/readyz` of the ingress and the resident memory of a
//! Sluice process, sampled with timestamps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// One `/readyz` sample: when it was sent, when it ended, and the status (`None`: no answer).
pub type ReadySample = (Instant, Instant, Option<u16>);

/// Samples `/readyz` every 200 ms and the RSS of the process whose pid is in `pid` every 200 ms.
pub struct Probes {
    pub ready: Arc<Mutex<Vec<ReadySample>>>,
    pub rss_kib: Arc<Mutex<Vec<(Instant, u64)>>>,
    /// The body of the latest `/readyz` answer other than 200 (it names the reason).
    pub last_not_ready: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
}

impl Probes {
    /// Starts both probes.
    pub fn start(order_base: String, pid: Arc<AtomicU32>) -> Self {
        let stop = CancellationToken::new();
        let ready = Arc::new(Mutex::new(Vec::new()));
        let rss_kib = Arc::new(Mutex::new(Vec::new()));
        let last_not_ready = Arc::new(Mutex::new(None));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(4))
            .build()
            .unwrap();
        {
            let (ready, stop, last) = (ready.clone(), stop.clone(), last_not_ready.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let at = Instant::now();
                    let response = client.get(format!("{order_base}/readyz")).send().await;
                    let status = match response {
                        Ok(response) if response.status() == 200 => Some(200),
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let body = response.text().await.unwrap_or_default();
                            *last.lock().unwrap() = Some(format!(
                                "{status} {}",
                                body.chars().take(300).collect::<String>()
                            ));
                            Some(status)
                        }
                        Err(_) => None,
                    };
                    ready.lock().unwrap().push((at, Instant::now(), status));
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            });
        }
        {
            let (rss_kib, stop) = (rss_kib.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let pid = pid.load(Ordering::SeqCst);
                    if let Some(kib) = (pid != 0).then(|| vm_rss_kib(pid)).flatten() {
                        rss_kib.lock().unwrap().push((Instant::now(), kib));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            });
        }
        Probes {
            ready,
            rss_kib,
            last_not_ready,
            stop,
        }
    }

    /// The time from `from` until the first `/readyz` 200 at or after it, if any.
    pub fn ready_after(&self, from: Instant) -> Option<Duration> {
        self.ready
            .lock()
            .unwrap()
            .iter()
            .find(|(at, _, status)| *at >= from && *status == Some(200))
            .map(|(at, _, _)| *at - from)
    }

    /// `/readyz` samples sent and answered (or given up) within `[from, to]`.
    pub fn ready_between(&self, from: Instant, to: Instant) -> Vec<ReadySample> {
        self.ready
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, ended, _)| *at >= from && *ended <= to)
            .copied()
            .collect()
    }

    /// Highest RSS (MiB) sampled within `[from, to]`.
    pub fn rss_peak_mib(&self, from: Instant, to: Instant) -> u64 {
        self.rss_kib
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, kib)| kib / 1024)
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `VmRSS` of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}
