#!/usr/bin/env bash
# Checks a production build of tessera: built without the `mock-attestation` feature, the
# binary must carry no mock quote provider, test PKI or mock root, and refuse every way of
# asking for them with a message that names the setting (never a panic, never silence).
#
# `cargo test` cannot check this: its builds always have the feature (tessera's
# dev-dependency on itself turns it on, so that the tests can run mock-attested members).
# So this script builds the binary with production's features and runs it. RocksDB is left
# out only to spare its C++ build (mock attestation does not depend on it), and the build
# uses the test profile so that it reuses the dependencies `cargo test` compiled: only
# tessera and tessera-attestation are compiled again, without the mock.
#
# Environment: CARGO (default cargo), CARGO_TARGET_DIR (honoured), TESSERA_BIN (check this
# binary instead of building one).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARGO=${CARGO:-cargo}

fail() {
    echo "check-production-build: FAILED: $*" >&2
    exit 1
}

if [[ -n ${TESSERA_BIN:-} ]]; then
    BIN=$TESSERA_BIN
else
    echo "check-production-build: cargo build --profile test --locked --no-default-features --bin tessera"
    (cd "$ROOT" && "$CARGO" build --profile test --locked --no-default-features --bin tessera)
    TARGET_DIR=$(cd "$ROOT" && "$CARGO" metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [[ -n $TARGET_DIR ]] || fail "cannot find cargo's target directory"
    BIN=$TARGET_DIR/debug/tessera # the test profile's directory
fi
[[ -x $BIN ]] || fail "no executable at $BIN"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-production-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# expect NAME STATUS PATTERN... -- COMMAND...: COMMAND exits with STATUS and its stderr
# contains every PATTERN (fixed strings) and no panic.
expect() {
    local name=$1 status=$2
    shift 2
    local patterns=()
    while [[ $1 != -- ]]; do
        patterns+=("$1")
        shift
    done
    shift
    local got=0
    "$@" >"$WORK/out" 2>"$WORK/err" </dev/null || got=$?
    if [[ $got -ne $status ]]; then
        cat "$WORK/out" "$WORK/err" >&2
        fail "$name: exit status $got, expected $status"
    fi
    if grep -q 'panicked' "$WORK/err"; then
        cat "$WORK/err" >&2
        fail "$name: panicked"
    fi
    for p in "${patterns[@]}"; do
        if ! grep -qF -- "$p" "$WORK/err"; then
            cat "$WORK/out" "$WORK/err" >&2
            fail "$name: stderr does not say: $p"
        fi
    done
    echo "check-production-build: ok: $name: $(head -n 1 "$WORK/err")"
}

# The mock provider's code is not in the binary (its symbols would name the module).
if grep -qa 'provider4mock' "$BIN"; then
    fail "$BIN contains tessera_attestation::provider::mock"
fi
echo "check-production-build: ok: no tessera_attestation::provider::mock code in $BIN"
# Nor the test-only unsafe quorum rule (its start-up warning would be in the binary).
if grep -qa 'dangerous-reference-quorum: quorums' "$BIN"; then
    fail "$BIN was built with the test-only feature dangerous-reference-quorum"
fi
echo "check-production-build: ok: $BIN counts quorums over the whole configuration"

cp "$ROOT/policies/mock.toml" "$WORK/mock.toml"
"$BIN" keygen --group --out "$WORK/group.key" >/dev/null
echo '{}' >"$WORK/collateral.json"
node_config() { # ATTESTATION EXTRA_LINE
    cat <<EOF
data_dir = "data"
listen = "127.0.0.1:0"
bootstrap_expect = 1
group_key_file = "group.key"
policies = ["mock.toml"]
attestation = "$1"
network_id = "production-check"
storage = "memory"
$2
EOF
}

node_config mock "" >"$WORK/node-mock.toml"
expect 'node with attestation = "mock"' 2 \
    'attestation: "mock" refused' 'mock-attestation' -- \
    "$BIN" node --config "$WORK/node-mock.toml"

# With tdx the group key is provisioned ([provision]), never read from a file.
PROVISIONER=$("$BIN" keygen --out "$WORK/provisioner.key")
node_config tdx 'collateral_file = "collateral.json"' | sed '/^group_key_file = /d' >"$WORK/node-tdx.toml"
printf '\n[provision]\nallow = ["%s"]\n' "$PROVISIONER" >>"$WORK/node-tdx.toml"
expect 'node with a policy of trust_root = "mock"' 2 \
    'policies[0]' 'trust_root = "mock" refused' 'mock-attestation' -- \
    "$BIN" node --config "$WORK/node-tdx.toml"

# A real quote, checked against a mock-root policy: refused at the trust root, before DCAP.
VECTORS=$ROOT/tests/vectors/tdx
expect 'verify under trust_root = "mock"' 1 \
    'trust_root = "mock" is not in this build' -- \
    sh -c '"$0" verify --quote "$1" --collateral "$2" --policy "$3" --now 1752919234 1>&2' \
    "$BIN" "$VECTORS/quote_uptodate.bin" "$VECTORS/quote_uptodate.collateral.json" \
    "$WORK/mock.toml"

expect 'quote --provider mock' 2 \
    '--provider mock' 'mock-attestation' -- \
    "$BIN" quote --provider mock --report-data "$(printf '00%.0s' {1..64})" --out "$WORK/q.bin"

expect 'demo' 2 'mock-attestation' -- "$BIN" demo
expect 'bench' 2 'mock-attestation' -- "$BIN" bench --nodes 3

echo "check-production-build: $BIN carries no mock attestation and refuses every request for it"
