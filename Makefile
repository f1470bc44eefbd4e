# tessera — common tasks. `make demo` and `make test` are the two set-up commands.
SHELL := /bin/bash
CARGO ?= cargo
SEEDS ?= 300
SEED ?=
NODES ?=

.PHONY: deps build build-production check-production test test-cluster test-nemesis test-nemesis-reference demo sim soak lint fmt bench-core bench clean image image-smoke image-repro image-deps

## deps: install the system packages the build needs (Debian/Ubuntu), when missing.
## RocksDB's bindings are generated with libclang (clang, libclang-dev). Without apt-get
## it only says what it found missing (install the equivalents by hand).
deps:
	@missing=""; \
	command -v cc >/dev/null || missing="$$missing gcc"; \
	command -v c++ >/dev/null || missing="$$missing g++"; \
	command -v clang >/dev/null || missing="$$missing clang"; \
	compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null || missing="$$missing libclang-dev"; \
	if [ -z "$$missing" ]; then echo "deps: nothing to install"; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $$missing; \
	else echo "deps: not found:$$missing (no apt-get here; install them by hand)"; fi

## build: release build of the workspace (default features: RocksDB, no mock attestation)
build:
	$(CARGO) build --release --workspace

## build-production: the binary the enclave image ships, target/release/tessera: RocksDB,
## and none of the mock-attestation feature (no mock provider, test PKI or mock root), so
## it refuses attestation = "mock" and trust_root = "mock"
build-production:
	$(CARGO) build --release --locked --no-default-features --features rocksdb --bin tessera

## check-production: build tessera without the mock-attestation feature and check that the
## binary refuses every way of asking for mock attestation, naming the setting
check-production:
	CARGO="$(CARGO)" scripts/check-production-build.sh

## test: everything CI runs (unit, simulator seeds, attestation vectors, integration, with
## mock attestation), the library example (examples/counter.rs), then the production
## build's refusal of mock attestation (check-production);
## installs the build's system packages first when they are missing (see deps)
test: deps
	$(CARGO) test --workspace --locked
	$(CARGO) run --locked --profile test --example counter
	CARGO="$(CARGO)" scripts/check-production-build.sh

## test-cluster: the container tests, long version; needs Docker (fails without it). First
## three nodes on a bridge network of their own (image FROM scratch, nothing pulled) with a
## fixed script: partition the leader, restart a follower from RocksDB
## (scripts/test-cluster.sh). Then the seeded nemesis on 3 and on 5 members (test-nemesis,
## one seed for both: TESSERA_NEMESIS_SEED, printed).
test-cluster:
	CARGO="$(CARGO)" scripts/test-cluster.sh
	seed=$${TESSERA_NEMESIS_SEED:-$$(od -An -N3 -tu4 /dev/urandom | tr -d ' ')}; \
	CARGO="$(CARGO)" TESSERA_NEMESIS_SEED=$$seed TESSERA_NEMESIS_NODES=3 scripts/test-nemesis.sh && \
	CARGO="$(CARGO)" TESSERA_NEMESIS_SEED=$$seed TESSERA_NEMESIS_NODES=5 scripts/test-nemesis.sh

## test-nemesis: a seeded nemesis (kill, pause, partitions, new identities) against node
## containers while concurrent clients record a history that must be linearizable; needs
## Docker. TESSERA_NEMESIS_SEED, _NODES (3|5), _ROUNDS, _FAULT_SECS: see the script.
test-nemesis:
	CARGO="$(CARGO)" scripts/test-nemesis.sh

## test-nemesis-reference: the nemesis must fail a build with the reference runtime's
## quorum rule (test-only feature dangerous-reference-quorum): passes when it does.
test-nemesis-reference:
	CARGO="$(CARGO)" scripts/test-nemesis-reference.sh

## demo: the embedded default. It keeps everything in memory, so it is built without the
## RocksDB store: no C++ build and no libclang needed, only the Rust toolchain and cc. Its
## members are mock-attested: it asks for the mock-attestation feature.
demo:
	$(CARGO) run --release --locked --no-default-features --features mock-attestation --bin tessera -- demo

## image: the enclave image in enclave-image/out/production (firmware, kernel, initrd,
## command line; pinned Debian packages, reproducible) and the SHA-256 of each artifact.
## Needs curl, dpkg-deb, xz, gzip and python3; see enclave-image/README.md
image:
	VARIANT=production CARGO="$(CARGO)" enclave-image/build.sh

## image-smoke: builds the smoke variant (mock attestation) and boots it under QEMU without
## TDX as a one-member group, until the node serves a write (needs QEMU >= 10: image-deps)
image-smoke:
	VARIANT=smoke CARGO="$(CARGO)" enclave-image/build.sh
	enclave-image/smoke.sh

## image-repro: builds the image twice from clones of HEAD in different directories and
## compares the artifacts byte for byte
image-repro:
	CARGO="$(CARGO)" enclave-image/repro.sh

## image-deps: QEMU 10 for image-smoke (Debian bookworm: from bookworm-backports)
image-deps:
	enclave-image/deps.sh

## sim: run the deterministic simulator. SEED=<n> replays one seed; SEEDS=<n> runs n seeds.
sim:
	@if [ -n "$(SEED)" ]; then \
	  $(CARGO) run --release --locked --bin tessera -- sim --seed $(SEED) $(if $(NODES),--nodes $(NODES),) --verbose; \
	else \
	  $(CARGO) run --release --locked --bin tessera -- sim --seeds $(SEEDS) $(if $(NODES),--nodes $(NODES),); \
	fi

## soak: thousands of simulator seeds, and 200 SIGKILLs of a process writing to RocksDB
soak:
	$(CARGO) run --release --locked --bin tessera -- sim --seeds 5000
	TESSERA_CRASH_ROUNDS=200 $(CARGO) test --release --locked --test storage_crash

## lint: formatting and clippy with warnings as errors, also on the production build (no
## mock-attestation; test targets always have it, through tessera's dev-dependency)
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --lib --bins -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench-core: committed entries per CPU-second of the raft core (3 nodes, zero delay)
bench-core:
	$(CARGO) bench --locked --bench core

## bench: the raft core's figure, then one table of the group figures (load at the leader
## and through a follower, sequential latency, RocksDB, crash and graceful failover) beside
## the previous run's (docs/bench-previous.json; BENCH_SAVE=1 replaces it) and the targets
bench: bench-core
	CARGO="$(CARGO)" scripts/bench.sh

clean:
	$(CARGO) clean
