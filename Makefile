# One entry per habit. `make test` starts the real infrastructure it needs first.
.PHONY: run run-services test chaos lint fmt bench infra-up infra-down check

# The whole pipeline on its embedded defaults (no Kafka, no MySQL): same as `cargo run --release`.
run:
	cargo run --release

# The same binary on Kafka and four MariaDB shards started by scripts/infra.
run-services: infra-up
	eval "$$(bash scripts/infra env)" && SLUICE_LOG_BACKEND=kafka cargo run --release

test: infra-up
	eval "$$(bash scripts/infra env)" && cargo test --workspace --all-targets

# The long fault-injection run (release build): every fault on a private Kafka + MariaDB
# instance and on the embedded log, with more load, longer faults at random moments and
# several rounds. SLUICE_CHAOS_SEED=<seed> replays a printed seed, SLUICE_CHAOS_ONLY=a,b picks
# faults, SLUICE_CHAOS_ROUNDS and SLUICE_CHAOS_CLIENTS set the rounds and the load.
chaos: infra-up
	eval "$$(bash scripts/infra env)" && cargo test --release --test integration faults::chaos -- --ignored --nocapture --test-threads=1

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	bash scripts/deny

fmt:
	cargo fmt --all

bench: infra-up
	eval "$$(bash scripts/infra env)" && cargo bench --bench pipeline --bench limiter --bench users --bench scale_out

check:
	cargo run --quiet -- check topology.toml

infra-up:
	bash scripts/infra up

infra-down:
	bash scripts/infra down
