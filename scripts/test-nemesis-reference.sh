#!/usr/bin/env bash
# `make test-nemesis-reference`: shows that `make test-nemesis` can fail. It builds tessera
# with the test-only feature `dangerous-reference-quorum` (quorums counted over the voters
# reachable now, the reference runtime's rule) and runs the nemesis with leader partitions
# long enough for the cut-off leader's bonds to time out (iroh's idle timeout is 30 s).
# That leader then keeps committing its clients' writes alone while the others elect a new
# one: split brain. This script passes only if the nemesis run fails for a safety reason
# (a node stopping on a second leader or a conflicting commit, a non-linearizable history,
# or nodes that do not converge), and says which; a nemesis run that passes, or fails for
# another reason, fails this script.
#
# Environment: TESSERA_NEMESIS_SEED (default 3), CARGO, CARGO_TARGET_DIR, and those of
# scripts/test-nemesis.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}
SEED=${TESSERA_NEMESIS_SEED:-3}

echo "test-nemesis-reference: building tessera with the test-only dangerous-reference-quorum feature"
(cd "$ROOT" && "$CARGO" build --locked --features mock-attestation,dangerous-reference-quorum --bin tessera)
target_dir=$(cd "$ROOT" && "$CARGO" metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# A copy: a later build of the normal binary must not replace it under the running test.
bin=$(mktemp "${TMPDIR:-/tmp}/tessera-reference.XXXXXX")
trap 'rm -f "$bin"' EXIT
cp "$target_dir/debug/tessera" "$bin"
chmod 755 "$bin"

log=$(mktemp "${TMPDIR:-/tmp}/tessera-reference-log.XXXXXX")
trap 'rm -f "$bin" "$log"' EXIT
saved=$ROOT/target/nemesis/seed-$SEED
# Only this run's files may be judged.
rm -rf "$saved"
rc=0
TESSERA_BIN=$bin TESSERA_NEMESIS_SEED=$SEED TESSERA_NEMESIS_ROUNDS=2 \
    TESSERA_NEMESIS_FAULT_SECS=40 TESSERA_NEMESIS_FAULTS=leader TESSERA_TEST_DEADLINE=60 \
    "$ROOT/scripts/test-nemesis.sh" >"$log" 2>&1 || rc=$?
if [[ $rc == 0 ]]; then
    tail -n 3 "$log"
    echo "FAIL test-nemesis-reference: the nemesis passed a build with the unsafe quorum rule (seed $SEED)"
    exit 1
fi
reason=""
if grep -qh "consensus safety violated" "$saved"/*.log 2>/dev/null; then
    reason="a node stopped: $(grep -h "consensus safety violated" "$saved"/*.log | head -n1)"
elif grep -q "NOT linearizable" "$log"; then
    reason="the history is not linearizable"
elif grep -q "step 'convergence'" "$log"; then
    reason="the nodes did not converge (a lost write)"
fi
if [[ -z $reason ]]; then
    tail -n 20 "$log"
    echo "FAIL test-nemesis-reference: the nemesis failed, but not for a safety reason (see above)"
    exit 1
fi
echo "PASS test-nemesis-reference: the nemesis caught the reference quorum rule (seed $SEED): $reason"
