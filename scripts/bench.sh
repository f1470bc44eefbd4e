#!/usr/bin/env bash
# `make bench`: one table of tessera's group figures (load at the leader and through a
# follower, one client in sequence, durable load, failover after a crash and after a
# graceful shutdown), beside the previous figures (docs/bench-previous.json) and the
# targets. Release build with the mock (and RocksDB); three members in one process over
# loopback iroh, as docs/benchmarks.md describes. Needs python3 for the table.
# BENCH_SAVE=1 writes this run's figures to docs/bench-previous.json.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
command -v python3 >/dev/null || { echo "bench: python3 is needed to print the table" >&2; exit 2; }
echo "bench: building tessera (release, mock attestation, RocksDB) …" >&2
$CARGO build --release --locked --features mock-attestation --bin tessera >&2
bin="${CARGO_TARGET_DIR:-target}/release/tessera"
run() {
  echo "bench: tessera bench $* …" >&2
  "$bin" bench "$@" --json 2>/dev/null | tail -n 1
}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run --nodes 3 --clients 1000 --duration 5 --via leader --sequential 5 >"$out/leader.json"
run --nodes 3 --clients 1000 --duration 5 --via follower --sequential 5 >"$out/follower.json"
run --nodes 3 --clients 1000 --duration 5 --via leader --sequential 0 --storage rocksdb >"$out/durable.json"
run --nodes 3 --clients 1000 --duration 2 --sequential 0 --failover >"$out/crash.json"
run --nodes 3 --clients 1000 --duration 2 --sequential 0 --handover >"$out/handover.json"
python3 - "$out" docs/bench-previous.json "${BENCH_SAVE:-0}" <<'PY'
import json, os, platform, sys
out, previous_path, save = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
r = {name: json.load(open(os.path.join(out, name + ".json")))
     for name in ("leader", "follower", "durable", "crash", "handover")}
figures = {
    "1000 clients at the leader (commands/s)": r["leader"]["commands_per_sec"],
    "1000 clients through a follower (commands/s)": r["follower"]["commands_per_sec"],
    "1000 clients at the leader, RocksDB (commands/s)": r["durable"]["commands_per_sec"],
    "sequential at the leader, p50 (ms)": r["leader"]["sequential_latency_ms"]["p50"],
    "sequential at the leader, p99 (ms)": r["leader"]["sequential_latency_ms"]["p99"],
    "sequential through a follower, p50 (ms)": r["follower"]["sequential_latency_ms"]["p50"],
    "failover, leader crashed (ms)": round(r["crash"]["failover_ms"], 1),
    "failover, leader shut down (ms)": round(r["handover"]["handover_ms"], 1),
    "elections during the load phases": sum(r[k]["elections_during_load"] for k in r),
}
targets = {
    "1000 clients at the leader (commands/s)": ">= 300000",
    "1000 clients through a follower (commands/s)": ">= 200000",
    "1000 clients at the leader, RocksDB (commands/s)": ">= 200000",
    "sequential at the leader, p50 (ms)": "<= 0.11",
    "sequential at the leader, p99 (ms)": "<= 0.25",
    "sequential through a follower, p50 (ms)": "<= 0.2",
    "failover, leader crashed (ms)": "<= 300",
    "failover, leader shut down (ms)": "one round trip",
    "elections during the load phases": "0",
}
try:
    previous = json.load(open(previous_path))
except (OSError, ValueError):
    previous = {"figures": {}, "measured": "none"}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"| measure | this run ({os.cpu_count()} CPUs, {cpu}) | previous ({previous.get('measured', '?')}) | target |")
print("| --- | --- | --- | --- |")
for name, value in figures.items():
    print(f"| {name} | {value} | {previous['figures'].get(name, '—')} | {targets[name]} |")
if save:
    import datetime
    json.dump({"measured": f"{datetime.date.today()}, {os.cpu_count()} CPUs, {cpu}", "figures": figures},
              open(previous_path, "w"), indent=1)
    print(f"bench: saved to {previous_path}", file=sys.stderr)
PY
