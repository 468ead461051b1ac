//! `sluice_build_info` and the process metrics Prometheus clients export under their standard
//! names (`process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_cpu_seconds_total`, `process_start_time_seconds`).
//!
//! The process figures are read from `/proc/self` on Linux (in a blocking thread, every
//! [`REFRESH_INTERVAL`]); on other systems they are left out. They are kept out of the
//! metrics facade, whose counters count whole numbers: [`exposition`] writes them as text,
//! `process_cpu_seconds_total` as a counter of seconds, and
//! [`sluice_ingress::prometheus::render`] appends it to `/metrics`.

use std::fmt::Write;
use std::time::Duration;

use sluice_core::telemetry;
use tokio_util::sync::CancellationToken;

/// The git commit the binary was built from (`unknown` outside a git checkout).
pub const REVISION: &str = match option_env!("SLUICE_GIT_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// The version of the compiler that built the binary (`unknown` when it could not be asked).
pub const RUSTC_VERSION: &str = match option_env!("SLUICE_RUSTC_VERSION") {
    Some(version) => version,
    None => "unknown",
};

/// How often [`run`] reads the process figures again.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Sets `sluice_build_info{version,revision,rustc}` to 1.
pub fn record_build_info() {
    metrics::gauge!(
        telemetry::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "revision" => REVISION,
        "rustc" => RUSTC_VERSION
    )
    .set(1.0);
}

/// Records the build info, then the process figures every [`REFRESH_INTERVAL`] until `stop`.
/// `/proc` is read in a blocking thread, never on an async worker.
pub async fn run(stop: CancellationToken) {
    record_build_info();
    let mut ticks = tokio::time::interval(REFRESH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {
                if let Ok(Some(figures)) = tokio::task::spawn_blocking(read).await {
                    sluice_ingress::prometheus::set_appended(exposition(&figures));
                }
            }
        }
    }
}

/// The process figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessFigures {
    /// Resident memory, in bytes.
    pub resident_memory_bytes: u64,
    /// Virtual memory, in bytes.
    pub virtual_memory_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Soft limit on open file descriptors (`None`: unlimited).
    pub max_fds: Option<u64>,
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Start of the process, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// The text exposition of `figures`, with the `# HELP` lines of [`telemetry::HELP`]:
/// `process_cpu_seconds_total` is a counter, the others gauges (an unlimited
/// `process_max_fds` is `+Inf`).
pub fn exposition(figures: &ProcessFigures) -> String {
    let families = [
        (
            telemetry::PROCESS_CPU_SECONDS,
            "counter",
            figures.cpu_seconds,
        ),
        (
            telemetry::PROCESS_RESIDENT_MEMORY,
            "gauge",
            figures.resident_memory_bytes as f64,
        ),
        (
            telemetry::PROCESS_VIRTUAL_MEMORY,
            "gauge",
            figures.virtual_memory_bytes as f64,
        ),
        (
            telemetry::PROCESS_OPEN_FDS,
            "gauge",
            figures.open_fds as f64,
        ),
        (
            telemetry::PROCESS_MAX_FDS,
            "gauge",
            figures.max_fds.map_or(f64::INFINITY, |max| max as f64),
        ),
        (
            telemetry::PROCESS_START_TIME,
            "gauge",
            figures.start_time_seconds,
        ),
    ];
    let mut text = String::new();
    for (name, kind, value) in families {
        if let Some((_, help)) = telemetry::HELP.iter().find(|(n, _)| *n == name) {
            let _ = writeln!(text, "# HELP {name} {help}");
        }
        let _ = writeln!(text, "# TYPE {name} {kind}");
        let value = match value {
            v if v == f64::INFINITY => "+Inf".to_string(),
            v => v.to_string(),
        };
        let _ = writeln!(text, "{name} {value}");
    }
    text
}

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on every Linux architecture
/// Sluice builds for).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads the process figures (`None` where `/proc` is missing or unreadable).
#[cfg(target_os = "linux")]
pub fn read() -> Option<ProcessFigures> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let stat = parse_stat(&read("/proc/self/stat")?)?;
    let boot_time = parse_boot_time(&read("/proc/stat")?)?;
    Some(ProcessFigures {
        resident_memory_bytes: parse_resident(&read("/proc/self/status")?)?,
        virtual_memory_bytes: stat.virtual_bytes,
        open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
        max_fds: parse_max_fds(&read("/proc/self/limits")?)?,
        cpu_seconds: stat.cpu_ticks as f64 / TICKS_PER_SECOND,
        start_time_seconds: boot_time as f64 + stat.start_ticks as f64 / TICKS_PER_SECOND,
    })
}

/// Reads the process figures: not on this system.
#[cfg(not(target_os = "linux"))]
pub fn read() -> Option<ProcessFigures> {
    None
}

/// What `/proc/self/stat` says.
#[derive(Debug, PartialEq)]
struct Stat {
    /// utime + stime.
    cpu_ticks: u64,
    /// Start, in ticks after boot.
    start_ticks: u64,
    virtual_bytes: u64,
}

/// Parses `/proc/self/stat` (fields after the command name, which may hold spaces and
/// parentheses: utime and stime are the 14th and 15th fields, starttime the 22nd, vsize the
/// 23rd).
fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
    })
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn parse_resident(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`: `Some(None)` when unlimited.
fn parse_max_fds(text: &str) -> Option<Option<u64>> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(None),
        soft => soft.parse().ok().map(Some),
    }
}

/// `btime` of `/proc/stat`: boot time in seconds since the Unix epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let text = "921 (my (odd) name) R 919 919 27691 0 -1 4194304 140 0 0 0 250 50 0 0 20 0 1 0 3852812 2998272 421 18446744073709551615 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 300,
                start_ticks: 3852812,
                virtual_bytes: 2998272,
            })
        );
        assert_eq!(parse_stat("921 (cut) R 1 2"), None);
    }

    #[test]
    fn status_limits_and_boot_time_are_parsed() {
        assert_eq!(
            parse_resident("Name:\tsluice\nVmSize:\t 3892 kB\nVmRSS:\t    2204 kB\n"),
            Some(2204 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(parse_max_fds(limits), Some(Some(20000)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), Some(None));
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1795983401\nprocesses 5\n"),
            Some(1795983401)
        );
    }

    #[test]
    fn the_build_is_described_by_its_commit_and_compiler() {
        // Built from a git checkout: a short commit hash; else `unknown`.
        let in_git = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".git")
            .exists();
        let hash = REVISION.len() >= 7 && REVISION.chars().all(|c| c.is_ascii_hexdigit());
        assert_eq!(hash, in_git, "{REVISION}");
        assert!(hash || REVISION == "unknown", "{REVISION}");
        let mut parts = RUSTC_VERSION.split('.');
        assert_eq!(parts.next(), Some("1"), "{RUSTC_VERSION}");
        assert!(parts
            .next()
            .is_some_and(|minor| minor.parse::<u32>().is_ok()));
    }

    #[test]
    fn cpu_seconds_are_a_counter_and_the_rest_gauges() {
        let figures = ProcessFigures {
            resident_memory_bytes: 2048,
            virtual_memory_bytes: 4096,
            open_fds: 12,
            max_fds: None,
            cpu_seconds: 1.25,
            start_time_seconds: 1795983401.5,
        };
        let text = exposition(&figures);
        assert!(
            text.contains(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.25\n"
            ),
            "{text}"
        );
        assert!(text.contains("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"), "{text}");
        assert!(
            text.contains(
                "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 2048\n"
            ),
            "{text}"
        );
        assert!(text.contains("process_max_fds +Inf\n"), "{text}");
        assert!(
            text.contains("process_start_time_seconds 1795983401.5\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE ").count(), 6, "{text}");
        assert_eq!(text.matches("# HELP ").count(), 6, "{text}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_plausible_figures() {
        let figures = read().expect("/proc is readable");
        assert!(figures.resident_memory_bytes > 1 << 20, "{figures:?}");
        assert!(figures.virtual_memory_bytes >= figures.resident_memory_bytes);
        assert!(figures.open_fds >= 3, "{figures:?}");
        assert!(figures.max_fds.is_none_or(|max| max >= figures.open_fds));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // This test process started a little while ago.
        assert!(
            figures.start_time_seconds <= now + 1.0 && figures.start_time_seconds > now - 3600.0,
            "{figures:?}"
        );
        assert!(figures.cpu_seconds >= 0.0);
    }
}
