# One entry per habit. `make test` starts the real infrastructure it needs first.
.PHONY: run test lint fmt bench infra-up infra-down check

run: infra-up
	eval "$$(bash scripts/infra env)" && cargo run --release -- run

test: infra-up
	eval "$$(bash scripts/infra env)" && cargo test --workspace --all-targets

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

bench: infra-up
	eval "$$(bash scripts/infra env)" && cargo bench --bench pipeline

check:
	cargo run --quiet -- check topology.toml

infra-up:
	bash scripts/infra up

infra-down:
	bash scripts/infra down
