//! A private `scripts/infra` instance (Kafka + four MariaDB shards) on free ports and its own
//! state directory, so faults never reach the shared instance other tests run on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The shared instance's Kafka port; a private instance must never use it.
const SHARED_KAFKA_PORT: u16 = 19092;
/// The shared instance's first MariaDB port.
const SHARED_MYSQL_BASE_PORT: u16 = 13306;
/// Longest time one `scripts/infra` command may take (a broker restart takes ~20 s).
const COMMAND_LIMIT: Duration = Duration::from_secs(240);

/// Where a private instance lives: its state directory and ports. Cheap to clone into tasks.
#[derive(Debug, Clone)]
pub struct InfraAddress {
    pub state: PathBuf,
    pub kafka_port: u16,
    pub mysql_base_port: u16,
}

impl InfraAddress {
    /// `host:port` of the private broker.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// `mysql://root:…@host:port` of private shard `index` (no database).
    pub fn mysql_server(&self, index: usize) -> String {
        format!(
            "mysql://root:sluice@127.0.0.1:{}",
            self.mysql_base_port + index as u16
        )
    }

    /// Where Sluice process logs of the fault runs go (kept with the state on failure).
    pub fn log_dir(&self) -> PathBuf {
        let dir = self.state.join("sluice-logs");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Points a services test topology (at the shared instance) at this instance.
    pub fn retarget(&self, topology: &mut sluice::topology::Topology) {
        let shared = crate::common::infra();
        let kafka = topology
            .log
            .kafka
            .as_mut()
            .expect("a services topology has [log.kafka]");
        assert_eq!(kafka.brokers, shared.brokers);
        kafka.brokers = self.brokers();
        for (index, shard) in topology.shards.iter_mut().enumerate() {
            let server = &shared.mysql_servers[index];
            let database = shard
                .url
                .strip_prefix(&format!("{server}/"))
                .expect("a services shard is on the shared server");
            shard.url = format!("{}/{database}", self.mysql_server(index));
        }
        assert!(
            !kafka_names_port(&topology.log.kafka, SHARED_KAFKA_PORT),
            "the private topology still names the shared broker"
        );
    }

    /// Runs `scripts/infra ARGS…` on this instance (bounded in time); stderr on failure.
    pub fn run(&self, args: &[&str]) -> Result<(), String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/infra");
        let output = Command::new("timeout")
            .arg("--kill-after=10")
            .arg(COMMAND_LIMIT.as_secs().to_string())
            .arg("bash")
            .arg(&script)
            .args(args)
            .env("SLUICE_INFRA_STATE", &self.state)
            .env("SLUICE_KAFKA_PORT", self.kafka_port.to_string())
            .env("SLUICE_MYSQL_BASE_PORT", self.mysql_base_port.to_string())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`scripts/infra {}` failed ({}) for {}:\n{}",
                args.join(" "),
                output.status,
                self.state.display(),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// `run` from async code.
    pub async fn exec(&self, args: &[&str]) -> Result<(), String> {
        let address = self.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            address.run(&args)
        })
        .await
        .map_err(|e| format!("scripts/infra task failed: {e}"))?
    }
}

/// One private infrastructure instance. Dropping it stops it; its state directory is deleted
/// when the run passed and kept (with the path printed) when it failed.
pub struct PrivateInfra {
    pub address: InfraAddress,
    failed: bool,
}

impl PrivateInfra {
    /// Picks free ports, runs `scripts/infra up` for a new state directory and waits for it.
    pub fn up() -> Self {
        let (kafka_port, mysql_base_port) = free_port_blocks();
        let state = std::env::temp_dir().join(format!(
            "sluice-faults-{}",
            crate::common::unique("infra").trim_start_matches("t_")
        ));
        let infra = PrivateInfra {
            address: InfraAddress {
                state,
                kafka_port,
                mysql_base_port,
            },
            failed: false,
        };
        if let Err(error) = infra.address.run(&["up"]) {
            panic!("the private fault-injection infrastructure did not start: {error}");
        }
        infra
    }

    /// Marks the run failed: the state directory (data, service and Sluice logs) is kept.
    pub fn keep_for_inspection(&mut self) {
        self.failed = true;
    }
}

impl Drop for PrivateInfra {
    fn drop(&mut self) {
        let keep = self.failed || std::thread::panicking();
        let args: &[&str] = if keep {
            &["down"]
        } else {
            &["down", "--purge"]
        };
        match self.address.run(args) {
            Ok(()) if !keep => {
                let mut lock = self.address.state.clone().into_os_string();
                lock.push(".lock");
                let _ = std::fs::remove_file(lock);
            }
            Ok(()) => {}
            Err(error) => eprintln!("{error}"),
        }
        if keep {
            eprintln!(
                "fault-injection infrastructure stopped; its state and logs are kept in {}",
                self.address.state.display()
            );
        }
    }
}

/// A Kafka port with its controller (+1) and SASL_SSL (+2) ports and four consecutive MariaDB ports, all free,
/// below the ephemeral range so no outgoing connection takes them meanwhile.
fn free_port_blocks() -> (u16, u16) {
    use rand::Rng;
    let mut rng = rand::rng();
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let mut pick = |count: u16| loop {
        let base: u16 = rng.random_range(20_000..32_000);
        let range = base..base + count;
        if !range.contains(&SHARED_KAFKA_PORT)
            && !range.contains(&SHARED_MYSQL_BASE_PORT)
            && range.clone().all(free)
        {
            return base;
        }
    };
    loop {
        let kafka = pick(3);
        let mysql = pick(4);
        if mysql > kafka + 2 || mysql + 4 <= kafka {
            return (kafka, mysql);
        }
    }
}

fn kafka_names_port(kafka: &Option<sluice_log_kafka::KafkaLogConfig>, port: u16) -> bool {
    kafka
        .as_ref()
        .is_some_and(|k| k.brokers.ends_with(&format!(":{port}")))
}
