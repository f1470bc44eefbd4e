#!/usr/bin/env bash
# `make test-cluster`: three `tessera node` containers on a Docker bridge network of their
# own, with real network isolation between them (issue 5). The network is `--internal`: the
# containers reach each other and the host, nothing beyond.
#
# Needs only a running Docker Engine: no registry, nothing is pulled. The image is built
# `FROM scratch` by `docker import` of a root filesystem holding the release binary, the
# shared libraries `ldd` lists for it and the mock policy. Then:
#   1. three nodes (mock attestation, RocksDB storage on a Docker volume each) elect a
#      leader and bond fully; keys written through `tessera kv put` read back from each;
#   2. the leader is cut off (`docker network disconnect`): the other two elect a new
#      leader and accept writes; reconnected, the old leader catches up;
#   3. a follower is stopped (SIGTERM), a key written while it is down, and it is started
#      again with no network at all: from inside its container it serves the earlier keys
#      from its own RocksDB (and not the new one); reconnected, it catches up.
# Every wait polls a condition under a deadline. Whatever happens, the containers, volumes,
# network and image (tessera-test:local, replaced if present) this script created are
# removed on exit (TESSERA_TEST_KEEP=1 keeps them for a look). The last line is `PASS ...`,
# or `FAIL test-cluster: step ...` after the containers' logs.
#
# Environment: CARGO (default cargo), CARGO_TARGET_DIR (honoured), TESSERA_BIN (use this
# binary, built with --features mock-attestation, instead of building one),
# TESSERA_TEST_SUBNET (a /24, default 172.31.250.0/24),
# TESSERA_TEST_DEADLINE (seconds per wait, default 90), TESSERA_TEST_KEEP.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}
SUBNET=${TESSERA_TEST_SUBNET:-172.31.250.0/24}
DEADLINE=${TESSERA_TEST_DEADLINE:-90}
KEEP=${TESSERA_TEST_KEEP:-0}
PREFIX=tessera-test
IMAGE=$PREFIX:local
NET=$PREFIX-net
PORT=7000
N=3

STEP="setup"
STARTED=$SECONDS
FAILED=0
WORK=""
NET_CREATED=0
IMAGE_CREATED=0
CREATED_CONTAINERS=()
CREATED_VOLUMES=()
declare -a C IP ID PEER
declare -A IDX_OF_SHORT

say() { printf 'test-cluster: %s\n' "$*"; }

# Node i (0-based) is called nodeN (1-based) in messages.
name() { printf 'node%d' $(($1 + 1)); }

dump_logs() {
    local c
    for c in "${CREATED_CONTAINERS[@]}"; do
        echo "----- docker logs $c (last 80 lines; state: $(docker inspect -f '{{.State.Status}} exit={{.State.ExitCode}}' "$c" 2>/dev/null || echo gone)) -----"
        docker logs --tail 80 "$c" 2>&1 || true
    done
}

fail() {
    FAILED=1
    echo "test-cluster: FAIL at step '$STEP': $*" >&2
    dump_logs >&2
    echo "FAIL test-cluster: step '$STEP': $(head -n1 <<<"$*")" >&2
    exit 1
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ $rc -ne 0 && $FAILED -eq 0 ]]; then
        echo "test-cluster: FAIL at step '$STEP': exited with status $rc" >&2
        dump_logs >&2
        echo "FAIL test-cluster: step '$STEP': exited with status $rc" >&2
    fi
    if [[ $KEEP == 1 ]]; then
        say "TESSERA_TEST_KEEP=1: leaving containers ${CREATED_CONTAINERS[*]:-none}, volumes ${CREATED_VOLUMES[*]:-none}, network $NET, image $IMAGE, files in $WORK"
        exit "$rc"
    fi
    local c v
    for c in "${CREATED_CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    for v in "${CREATED_VOLUMES[@]}"; do docker volume rm -f "$v" >/dev/null 2>&1 || true; done
    if [[ $NET_CREATED == 1 ]]; then docker network rm "$NET" >/dev/null 2>&1 || true; fi
    if [[ $IMAGE_CREATED == 1 ]]; then docker rmi -f "$IMAGE" >/dev/null 2>&1 || true; fi
    if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------
# Polling.

# wait_for DESCRIPTION COMMAND...: runs COMMAND every half second until it succeeds; fails
# after DEADLINE seconds (or at once if a container that should run has stopped), printing
# progress every 5 s from PROGRESS, which the status checks keep up to date.
wait_for() {
    local what=$1
    shift
    local start=$SECONDS last=$SECONDS
    PROGRESS="no answer yet"
    LAST=""
    until "$@"; do
        if ((SECONDS - start >= DEADLINE)); then
            fail "$what: not within ${DEADLINE}s; last seen: $PROGRESS
$LAST"
        fi
        expect_running
        if ((SECONDS - last >= 5)); then
            say "  ... waiting for $what ($((SECONDS - start))s): $PROGRESS"
            last=$SECONDS
        fi
        sleep 0.5
    done
    say "  $what ($((SECONDS - start))s)"
}

# Containers that must be running now (indexes); the others are stopped on purpose.
RUNNING=()
expect_running() {
    local i state
    for i in "${RUNNING[@]}"; do
        state=$(docker inspect -f '{{.State.Running}}' "${C[$i]}" 2>/dev/null || echo gone)
        [[ $state == true ]] || fail "container ${C[$i]} ($(name "$i")) is not running ($state)"
    done
}

# query I...: `tessera status` from the host, asking nodes I...; ROWS gets one line
# "<index> <role> <term> <commit> <applied> <bonds>" per node that answered.
query() {
    local args=() i rc=0
    for i in "$@"; do args+=(--node "${PEER[$i]}"); done
    STATUS=$(timeout 60 "$BIN" status --key-file "$WORK/client.key" --policy "$ROOT/policies/mock.toml" "${args[@]}" 2>"$WORK/status.err") || rc=$?
    LAST="$STATUS
$(cat "$WORK/status.err")"
    ROWS=""
    local short role term commit applied bonds
    while read -r short role term commit applied bonds; do
        [[ -n ${IDX_OF_SHORT[$short]:-} ]] || continue
        ROWS+="${IDX_OF_SHORT[$short]} $role $term $commit $applied $bonds"$'\n'
    done < <(awk '/^MEMBER/ { t = 1; next } t && !/STOPPED/ && NF >= 6 && $3 != "-" { print $1, $2, $3, $4, $5, $6 }' <<<"$STATUS")
    PROGRESS=$(awk 'NF { printf "%snode%d %s term %s applied %s bonds %s", sep, $1 + 1, $2, $3, $5, $6; sep = "; " }' <<<"$ROWS")
    [[ -n $PROGRESS ]] || PROGRESS="no answer ($(tail -n1 "$WORK/status.err" 2>/dev/null))"
    return $rc
}

# ready I: node I printed its ready line (since its last start).
ready() {
    local since
    since=$(docker inspect -f '{{.State.StartedAt}}' "${C[$1]}")
    docker logs --since "$since" "${C[$1]}" 2>/dev/null | grep -q '^tessera node: ready' && return 0
    PROGRESS="no ready line from $(name "$1") yet"
    return 1
}

distinct() { printf '%s\n' "$@" | sort -u | wc -l; }

# healthy [same-applied]: all three answer; one leader, two followers, one term, each bonded
# with both others (and, with same-applied, all applied up to the same index). Sets LEADER,
# TERM_NOW and APPLIED_NOW.
healthy() {
    query 0 1 2 || return 1
    local i role term commit applied bonds leaders=0 followers=0 bonded=0 n=0
    local terms=() applieds=()
    while read -r i role term commit applied bonds; do
        [[ -n $i ]] || continue
        n=$((n + 1))
        case $role in
            leader) leaders=$((leaders + 1)) LEADER=$i ;;
            follower) followers=$((followers + 1)) ;;
        esac
        [[ $bonds == 2 ]] && bonded=$((bonded + 1))
        terms+=("$term")
        applieds+=("$applied")
    done <<<"$ROWS"
    ((n == N && leaders == 1 && followers == N - 1 && bonded == N)) || return 1
    (($(distinct "${terms[@]}") == 1)) || return 1
    TERM_NOW=${terms[0]}
    APPLIED_NOW=${applieds[0]}
    if [[ ${1:-} == same-applied ]]; then
        (($(distinct "${applieds[@]}") == 1)) || return 1
    fi
}

# new_leader_among I J: of the nodes I and J (the leader cut off), one leads in a term after
# OLD_TERM and the other follows it. Sets LEADER and TERM_NOW.
new_leader_among() {
    query "$@" || return 1
    local i role term commit applied bonds leaders=0 followers=0 n=0 terms=()
    while read -r i role term commit applied bonds; do
        [[ -n $i ]] || continue
        n=$((n + 1))
        case $role in
            leader) leaders=$((leaders + 1)) LEADER=$i ;;
            follower) followers=$((followers + 1)) ;;
        esac
        [[ $bonds -ge 1 ]] || return 1
        terms+=("$term")
    done <<<"$ROWS"
    ((n == 2 && leaders == 1 && followers == 1)) || return 1
    (($(distinct "${terms[@]}") == 1 && terms[0] > OLD_TERM)) || return 1
    TERM_NOW=${terms[0]}
}

# ---------------------------------------------------------------------------------------
# Clients: from the host over the bridge, or from inside a container over its loopback.

# Clients verify the nodes' tickets against the policy the nodes run.
kv() { timeout 60 "$BIN" kv --key-file "$WORK/client.key" --policy "$ROOT/policies/mock.toml" "$@"; }

kv_inside() {
    local i=$1
    shift
    timeout 60 docker exec "${C[$i]}" /usr/local/bin/tessera kv \
        --key-file /etc/tessera/client.key --policy /etc/tessera/policies/mock.toml --node "${ID[$i]}@127.0.0.1:$PORT" "$@"
}

# put_ok I KEY VALUE: a put through node I answered OK.
put_ok() {
    local out
    out=$(kv put "$2" "$3" --node "${PEER[$1]}" 2>&1) && [[ $out == OK ]] && return 0
    PROGRESS="put $2 through $(name "$1"): $out"
    return 1
}

# put I KEY VALUE: writes through node I, retried under the deadline (a put is idempotent).
put() {
    wait_for "put $2 through $(name "$1")" put_ok "$@"
    WRITTEN+=("$2=$3")
}

# expect_get I KEY VALUE [--weak]: node I reads KEY as VALUE (linearizable unless --weak).
expect_get() {
    local out rc=0
    out=$(kv get "$2" --node "${PEER[$1]}" ${4:+"$4"} 2>&1) || rc=$?
    [[ $rc -eq 0 && $out == "$3" ]] ||
        fail "$(name "$1") read $2${4:+ ($4)}: expected \"$3\", got \"$out\" (exit $rc)"
}

# weak_get_is I KEY VALUE: polled form of a weak read from the host (local state converging).
weak_get_is() {
    local out
    out=$(kv get "$2" --node "${PEER[$1]}" --weak 2>&1) && [[ $out == "$3" ]] && return 0
    PROGRESS="$(name "$1") has $2 = \"$out\""
    return 1
}

# stepped_down I: node I, asked from inside its container, no longer calls itself leader.
# Sets ROLE_INSIDE.
stepped_down() {
    local out
    out=$(timeout 60 docker exec "${C[$1]}" /usr/local/bin/tessera status \
        --key-file /etc/tessera/client.key --policy /etc/tessera/policies/mock.toml --node "${ID[$1]}@127.0.0.1:$PORT" 2>&1) || true
    ROLE_INSIDE=$(awk -v s="${ID[$1]:0:10}" '$1 == s && $3 != "-" { print $2 }' <<<"$out")
    [[ -n $ROLE_INSIDE && $ROLE_INSIDE != leader ]] && return 0
    PROGRESS="inside $(name "$1"): role ${ROLE_INSIDE:-unknown}"
    return 1
}

# isolated_serves I: node I, reached from inside its own container, answers a weak read.
isolated_serves() {
    local out
    out=$(kv_inside "$1" get "${WRITTEN[0]%%=*}" --weak 2>&1) && return 0
    PROGRESS="inside $(name "$1"): $out"
    return 1
}

# ---------------------------------------------------------------------------------------
STEP="preflight"
command -v docker >/dev/null || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "cannot talk to the Docker daemon (docker info failed)"
for tool in ldd tar awk timeout; do
    command -v "$tool" >/dev/null || fail "$tool is needed"
done
[[ $SUBNET =~ ^([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})\.0/24$ ]] ||
    fail "TESSERA_TEST_SUBNET must be a /24 written a.b.c.0/24, got '$SUBNET'"
BASE=${BASH_REMATCH[1]}
if docker network inspect "$NET" >/dev/null 2>&1; then
    fail "a Docker network named $NET already exists (left by an earlier run? docker network rm $NET)"
fi
for i in $(seq 0 $((N - 1))); do
    C[i]=$PREFIX-$((i + 1))
    IP[i]=$BASE.$((11 + i))
    if docker container inspect "${C[$i]}" >/dev/null 2>&1; then
        fail "a container named ${C[$i]} already exists (docker rm -f ${C[$i]})"
    fi
    if docker volume inspect "${C[$i]}-data" >/dev/null 2>&1; then
        fail "a volume named ${C[$i]}-data already exists (docker volume rm ${C[$i]}-data)"
    fi
done
# The subnet must not be used on this host: Docker checks its own networks, not the
# host's routes.
if command -v ip >/dev/null; then
    if ip -4 route show | awk -v net="$BASE.0" '
        function addr(text, parts) { split(text, parts, "."); return ((parts[1] * 256 + parts[2]) * 256 + parts[3]) * 256 + parts[4] }
        $1 != "default" {
            n = split($1, cidr, "/"); len = n == 2 ? cidr[2] : 32; if (len > 24) len = 24
            block = 2 ^ (32 - len)
            if (int(addr(cidr[1]) / block) == int(addr(net) / block)) found = 1
        }
        END { exit !found }'; then
        fail "subnet $SUBNET is already routed on this host (ip route): set TESSERA_TEST_SUBNET to a free /24"
    fi
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-test-cluster.XXXXXX")

# ---------------------------------------------------------------------------------------
STEP="build"
if [[ -n ${TESSERA_BIN:-} ]]; then
    BIN=$TESSERA_BIN
    say "using $BIN (TESSERA_BIN)"
else
    # The nodes are mock-attested: the binary needs the mock-attestation feature.
    say "building the release binary (cargo build --release --features mock-attestation --bin tessera)"
    (cd "$ROOT" && "$CARGO" build --release --locked --features mock-attestation --bin tessera)
    TARGET_DIR=$(cd "$ROOT" && "$CARGO" metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [[ -n $TARGET_DIR ]] || fail "cannot find cargo's target directory"
    BIN=$TARGET_DIR/release/tessera
fi
[[ -x $BIN ]] || fail "no executable at $BIN"

# ---------------------------------------------------------------------------------------
STEP="image"
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/etc/tessera/policies" "$ROOTFS/var/lib/tessera" \
    "$ROOTFS/tmp" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev"
chmod 1777 "$ROOTFS/tmp"
if command -v strip >/dev/null; then
    strip --strip-debug -o "$ROOTFS/usr/local/bin/tessera" "$BIN"
else
    cp "$BIN" "$ROOTFS/usr/local/bin/tessera"
fi
cp "$ROOT/policies/mock.toml" "$ROOTFS/etc/tessera/policies/mock.toml"
LIB_DIRS=()
while read -r line; do
    case $line in
        *"not found"*) fail "ldd: a library of $BIN is missing: $line" ;;
        *"=> /"*) lib=${line#*=> } ;;
        /*) lib=$line ;;
        *) continue ;; # linux-vdso, or a static binary
    esac
    lib=${lib%% (*}
    mkdir -p "$ROOTFS$(dirname "$lib")"
    cp -L "$lib" "$ROOTFS$lib"
    dir=$(dirname "$lib")
    [[ " ${LIB_DIRS[*]} " == *" $dir "* ]] || LIB_DIRS+=("$dir")
done < <(ldd "$BIN" 2>&1 || true)
LD_PATH=$(
    IFS=:
    echo "${LIB_DIRS[*]}"
)
say "image $IMAGE from scratch: tessera + $(find "$ROOTFS" -name '*.so*' | wc -l) libraries ($(du -sh "$ROOTFS" | cut -f1))"
IMAGE_CREATED=1
tar -C "$ROOTFS" --numeric-owner --owner=0 --group=0 -cf - . |
    docker import \
        --change "ENV LD_LIBRARY_PATH=$LD_PATH" \
        --change 'ENTRYPOINT ["/usr/local/bin/tessera"]' \
        --change 'CMD ["node", "--config", "/etc/tessera/node.toml"]' \
        - "$IMAGE" >/dev/null
docker run --rm --network none "$IMAGE" --version >/dev/null 2>"$WORK/version.err" ||
    fail "the image does not run: $(cat "$WORK/version.err")"

# ---------------------------------------------------------------------------------------
STEP="network"
if ! out=$(docker network create --driver bridge --subnet "$SUBNET" --gateway "$BASE.1" \
    --internal --label tessera-test=1 "$NET" 2>&1); then
    fail "cannot create network $NET with subnet $SUBNET (taken? set TESSERA_TEST_SUBNET to a free /24): $out"
fi
NET_CREATED=1
say "network $NET ($SUBNET, internal: no route out)"

# ---------------------------------------------------------------------------------------
STEP="keys"
# keygen prints the node id on stdout and what it wrote on stderr.
"$BIN" keygen --group --out "$WORK/group.key" >/dev/null 2>"$WORK/keygen.err" ||
    fail "keygen --group: $(cat "$WORK/keygen.err")"
CLIENT_ID=$("$BIN" keygen --out "$WORK/client.key" 2>"$WORK/keygen.err") ||
    fail "keygen: $(cat "$WORK/keygen.err")"
for i in $(seq 0 $((N - 1))); do
    mkdir "$WORK/node$i"
    ID[i]=$("$BIN" keygen --out "$WORK/node$i/node.key" 2>"$WORK/keygen.err") ||
        fail "keygen: $(cat "$WORK/keygen.err")"
    [[ ${ID[$i]} =~ ^[0-9a-f]{64}$ ]] || fail "keygen printed '${ID[$i]}', not a node id"
    PEER[i]=${ID[$i]}@${IP[$i]}:$PORT
    IDX_OF_SHORT[${ID[$i]:0:10}]=$i
done
for i in $(seq 0 $((N - 1))); do
    bootstrap=""
    for j in $(seq 0 $((N - 1))); do
        [[ $j == "$i" ]] || bootstrap+="${bootstrap:+, }\"${PEER[$j]}\""
    done
    # Listen on every address: the node must also start with no network at all (step
    # restart), where its bridge address does not exist.
    cat >"$WORK/node$i/node.toml" <<EOF
# $(name "$i") of make test-cluster (scripts/test-cluster.sh)
data_dir = "/var/lib/tessera"
listen = "0.0.0.0:$PORT"
bootstrap = [$bootstrap]
group_key_file = "group.key"
policies = ["policies/mock.toml"]
attestation = "mock"
secret_key_file = "node.key"
network_id = "tessera-test-cluster"
storage = "rocksdb"
log_level = "info"

[timers]
tick_ms = 50
election_ticks = 10
heartbeat_ticks = 2

[client]
allow = ["$CLIENT_ID"]
EOF
done

# ---------------------------------------------------------------------------------------
STEP="start"
for i in $(seq 0 $((N - 1))); do
    docker volume create --label tessera-test=1 "${C[$i]}-data" >/dev/null
    CREATED_VOLUMES+=("${C[$i]}-data")
    CREATED_CONTAINERS+=("${C[$i]}")
    docker run -d --name "${C[$i]}" --hostname "$(name "$i")" --label tessera-test=1 \
        --network "$NET" --ip "${IP[$i]}" \
        --read-only --tmpfs /tmp \
        -v "${C[$i]}-data:/var/lib/tessera" \
        -v "$WORK/node$i/node.toml:/etc/tessera/node.toml:ro" \
        -v "$WORK/node$i/node.key:/etc/tessera/node.key:ro" \
        -v "$WORK/group.key:/etc/tessera/group.key:ro" \
        -v "$WORK/client.key:/etc/tessera/client.key:ro" \
        "$IMAGE" >/dev/null
    RUNNING+=("$i")
    say "started ${C[$i]}: $(name "$i") ${ID[$i]:0:10} at ${IP[$i]}:$PORT"
done

for i in "${RUNNING[@]}"; do
    wait_for "$(name "$i") ready" ready "$i"
done

# ---------------------------------------------------------------------------------------
STEP="elect"
wait_for "one leader, two followers, all bonded" healthy
say "$(name "$LEADER") leads in term $TERM_NOW"

# ---------------------------------------------------------------------------------------
STEP="write"
WRITTEN=()
for k in 1 2 3 4 5 6; do
    put $((k % N)) "key$k" "value $k"
done
for i in $(seq 0 $((N - 1))); do
    for kv_pair in "${WRITTEN[@]}"; do
        expect_get "$i" "${kv_pair%%=*}" "${kv_pair#*=}"
    done
done
say "${#WRITTEN[@]} keys written (through every node) and read back from every node"

# ---------------------------------------------------------------------------------------
STEP="partition"
OLD_LEADER=$LEADER
OLD_TERM=$TERM_NOW
OTHERS=()
for i in $(seq 0 $((N - 1))); do [[ $i == "$OLD_LEADER" ]] || OTHERS+=("$i"); done
say "cutting the leader $(name "$OLD_LEADER") off: docker network disconnect $NET ${C[$OLD_LEADER]}"
docker network disconnect "$NET" "${C[$OLD_LEADER]}"
wait_for "a new leader among $(name "${OTHERS[0]}") and $(name "${OTHERS[1]}")" new_leader_among "${OTHERS[@]}"
PARTITION_LEADER=$LEADER
PARTITION_TERM=$TERM_NOW
say "$(name "$PARTITION_LEADER") leads in term $PARTITION_TERM"
put "${OTHERS[0]}" during-partition "written without the old leader"
put "${OTHERS[1]}" during-partition-2 "also without it"
expect_get "${OTHERS[1]}" during-partition "written without the old leader"
expect_get "${OTHERS[0]}" during-partition-2 "also without it"
say "the majority side accepts writes"
wait_for "the cut-off $(name "$OLD_LEADER") stepping down (check-quorum)" stepped_down "$OLD_LEADER"
rc=0
out=$(kv_inside "$OLD_LEADER" put split-brain "must not be written" 2>&1) || rc=$?
[[ $rc -ne 0 ]] || fail "the cut-off $(name "$OLD_LEADER") accepted a write: $out"
say "the cut-off $(name "$OLD_LEADER") is $ROLE_INSIDE and acknowledges no write: $(head -n1 <<<"$out")"

# ---------------------------------------------------------------------------------------
STEP="heal"
docker network connect --ip "${IP[$OLD_LEADER]}" "$NET" "${C[$OLD_LEADER]}"
say "reconnected $(name "$OLD_LEADER")"
wait_for "all three bonded again and applied to the same index" healthy same-applied
wait_for "$(name "$OLD_LEADER") holding the partition's writes locally" \
    weak_get_is "$OLD_LEADER" during-partition-2 "also without it"
expect_get "$OLD_LEADER" during-partition "written without the old leader"
for i in $(seq 0 $((N - 1))); do
    rc=0
    out=$(kv get split-brain --node "${PEER[$i]}" 2>&1) || rc=$?
    [[ $rc -eq 1 ]] || fail "$(name "$i") read split-brain: exit $rc, \"$out\" (expected: not found)"
done
say "$(name "$OLD_LEADER") caught up (applied $APPLIED_NOW, term $TERM_NOW, leader $(name "$LEADER")); the refused write is nowhere"

# ---------------------------------------------------------------------------------------
STEP="restart"
F=""
for i in $(seq 0 $((N - 1))); do
    if [[ $i != "$LEADER" ]]; then
        F=$i
        break
    fi
done
query "$F" || true
APPLIED_BEFORE=$(awk -v f="$F" '$1 == f { print $5 }' <<<"$ROWS")
say "stopping follower $(name "$F") (applied ${APPLIED_BEFORE:-?})"
docker stop -t 20 "${C[$F]}" >/dev/null
RUNNING=()
for i in $(seq 0 $((N - 1))); do [[ $i == "$F" ]] || RUNNING+=("$i"); done
code=$(docker inspect -f '{{.State.ExitCode}}' "${C[$F]}")
[[ $code == 0 ]] || fail "$(name "$F") exited with status $code on SIGTERM"
docker logs "${C[$F]}" 2>&1 | grep -q 'tessera node: stopped (SIGTERM)' ||
    fail "$(name "$F") did not report a clean stop"
put "$LEADER" while-down "written while a follower was stopped"
# Start it with no network at all: what it serves now can only come from its own disk.
docker network disconnect "$NET" "${C[$F]}"
docker start "${C[$F]}" >/dev/null
RUNNING+=("$F")
wait_for "restarted $(name "$F") serving reads, isolated" isolated_serves "$F"
for kv_pair in "${WRITTEN[@]}"; do
    if [[ $kv_pair == while-down=* ]]; then
        rc=0
        out=$(kv_inside "$F" get while-down --weak 2>&1) || rc=$?
        [[ $rc -eq 1 ]] || fail "isolated $(name "$F") read while-down: exit $rc, \"$out\" (expected: not found)"
        continue
    fi
    out=$(kv_inside "$F" get "${kv_pair%%=*}" --weak 2>&1) ||
        fail "isolated $(name "$F") cannot read ${kv_pair%%=*}: $out"
    [[ $out == "${kv_pair#*=}" ]] || fail "isolated $(name "$F") read ${kv_pair%%=*} as \"$out\""
done
APPLIED_AFTER=$(timeout 60 docker exec "${C[$F]}" /usr/local/bin/tessera status \
    --key-file /etc/tessera/client.key --policy /etc/tessera/policies/mock.toml --node "${ID[$F]}@127.0.0.1:$PORT" 2>&1 |
    awk -v s="${ID[$F]:0:10}" '$1 == s && $3 != "-" { print $5 }') || true
RESTORED=$(($(printf '%s\n' "${WRITTEN[@]}" | grep -vc '^while-down=')))
say "isolated, restarted $(name "$F") serves its $RESTORED earlier keys from RocksDB, not the one written while it was down (applied ${APPLIED_AFTER:-?} after the restart, ${APPLIED_BEFORE:-?} before)"
docker network connect --ip "${IP[$F]}" "$NET" "${C[$F]}"
wait_for "all three bonded again and applied to the same index" healthy same-applied
wait_for "$(name "$F") catching up on the write it missed" \
    weak_get_is "$F" while-down "written while a follower was stopped"
for kv_pair in "${WRITTEN[@]}"; do
    expect_get "$F" "${kv_pair%%=*}" "${kv_pair#*=}"
done
say "$(name "$F") rejoined and caught up (applied $APPLIED_NOW)"

STEP="done"
echo "PASS test-cluster: 3 containers on $SUBNET; ${#WRITTEN[@]} keys replicated;" \
    "leader $(name "$OLD_LEADER") cut off -> $(name "$PARTITION_LEADER") elected (term $PARTITION_TERM)" \
    "and took writes, old leader caught up; follower $(name "$F") restarted with $RESTORED keys" \
    "from RocksDB and caught up; $((SECONDS - STARTED))s"
