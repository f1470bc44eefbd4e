# Shared by the container tests (scripts/test-cluster.sh, scripts/test-nemesis.sh): a
# Docker image FROM scratch holding the tessera binary, a bridge network of the test's own
# (--internal: no route out), keys and node.toml files, containers with a RocksDB volume
# each, polling helpers, and the cleanup of everything the test created. Source it after
# setting TEST (the name in messages) and N (the number of nodes); it sets `set -euo
# pipefail` and the traps.
#
# With CLIENT_NETWORK=1 (set before sourcing) the nodes get two networks: members talk to
# each other on the first (the one partitions cut), clients on the host reach them on the
# second, whose containers cannot reach one another (inter-container traffic off), so a
# node cut off from its peers still hears its clients, as a real partition allows.
#
# Environment: CARGO (default cargo), CARGO_TARGET_DIR (honoured), TESSERA_BIN (use this
# binary, built with the mock-attestation feature, instead of building one),
# TESSERA_TEST_SUBNET (a /24, default 172.31.250.0/24; the client network, when there is
# one, takes the next /24), TESSERA_TEST_DEADLINE (seconds per wait, default 90),
# TESSERA_TEST_KEEP=1 (keep what was created, for a look), TESSERA_TEST_LOG (the nodes'
# log_level, a tracing filter; default info, e.g. "info,tessera::groups=debug").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARGO=${CARGO:-cargo}
SUBNET=${TESSERA_TEST_SUBNET:-172.31.250.0/24}
DEADLINE=${TESSERA_TEST_DEADLINE:-90}
KEEP=${TESSERA_TEST_KEEP:-0}
NODE_LOG=${TESSERA_TEST_LOG:-info}
PREFIX=${PREFIX:-tessera-test}
IMAGE=$PREFIX:local
NET=$PREFIX-net
CLIENT_NETWORK=${CLIENT_NETWORK:-0}
CLIENT_NET=$PREFIX-clients
PORT=7000

STEP="setup"
STARTED=$SECONDS
FAILED=0
WORK=""
NET_CREATED=0
CLIENT_NET_CREATED=0
IMAGE_CREATED=0
CREATED_CONTAINERS=()
CREATED_VOLUMES=()
# Background processes of the test (killed at exit).
CHILD_PIDS=()
# Files copied next to the failure report when the test fails (histories, schedules).
KEEP_ON_FAILURE=()
# IP: where clients reach node i; MEMBER_IP: where members reach it (the same address
# without a client network).
declare -a C IP MEMBER_IP ID PEER
declare -A IDX_OF_SHORT

say() { printf '%s: %s\n' "$TEST" "$*"; }

# Node i (0-based) is called nodeN (1-based) in messages.
name() { printf 'node%d' $(($1 + 1)); }

dump_logs() {
    local c
    for c in "${CREATED_CONTAINERS[@]}"; do
        echo "----- docker logs $c (last 80 lines; state: $(docker inspect -f '{{.State.Status}} exit={{.State.ExitCode}}' "$c" 2>/dev/null || echo gone)) -----"
        docker logs --tail 80 "$c" 2>&1 || true
    done
}

# Saves the members' full logs and KEEP_ON_FAILURE files in FAILURE_DIR (when set).
save_failure() {
    [[ -n ${FAILURE_DIR:-} ]] || return 0
    mkdir -p "$FAILURE_DIR"
    local c f
    for c in "${CREATED_CONTAINERS[@]}"; do
        docker logs "$c" >"$FAILURE_DIR/$c.log" 2>&1 || true
    done
    for f in "${KEEP_ON_FAILURE[@]}"; do
        [[ -e $f ]] && cp "$f" "$FAILURE_DIR/" || true
    done
    echo "$TEST: the members' logs and the run's files are in $FAILURE_DIR" >&2
}

fail() {
    FAILED=1
    echo "$TEST: FAIL at step '$STEP': $*" >&2
    dump_logs >&2
    save_failure
    echo "FAIL $TEST: step '$STEP': $(head -n1 <<<"$*")" >&2
    exit 1
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${CHILD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ $rc -ne 0 && $FAILED -eq 0 ]]; then
        echo "$TEST: FAIL at step '$STEP': exited with status $rc" >&2
        dump_logs >&2
        save_failure
        echo "FAIL $TEST: step '$STEP': exited with status $rc" >&2
    fi
    if [[ $KEEP == 1 ]]; then
        say "TESSERA_TEST_KEEP=1: leaving containers ${CREATED_CONTAINERS[*]:-none}, volumes ${CREATED_VOLUMES[*]:-none}, networks $NET $CLIENT_NET, image $IMAGE, files in $WORK"
        exit "$rc"
    fi
    local c v
    for c in "${CREATED_CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    for v in "${CREATED_VOLUMES[@]}"; do docker volume rm -f "$v" >/dev/null 2>&1 || true; done
    if [[ $NET_CREATED == 1 ]]; then docker network rm "$NET" >/dev/null 2>&1 || true; fi
    if [[ $CLIENT_NET_CREATED == 1 ]]; then docker network rm "$CLIENT_NET" >/dev/null 2>&1 || true; fi
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
# progress every 5 s from PROGRESS, which the status checks keep up to date. Sets WAITED
# (seconds it took).
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
    WAITED=$((SECONDS - start))
    say "  $what (${WAITED}s)"
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
    local logs
    # Read whole first: `docker logs | grep -q` under pipefail fails when grep stops early.
    logs=$(docker logs --since "$since" "${C[$1]}" 2>/dev/null) || true
    grep -q '^tessera node: ready' <<<"$logs" && return 0
    PROGRESS="no ready line from $(name "$1") yet"
    return 1
}

distinct() { printf '%s\n' "$@" | sort -u | wc -l; }

# all_nodes: the indexes 0..N-1.
all_nodes() { seq 0 $((N - 1)); }

# healthy [same-applied]: all N answer; one leader, the others follow, one term, each
# bonded with all others (and, with same-applied, all applied up to the same index). Sets
# LEADER, TERM_NOW and APPLIED_NOW.
healthy() {
    # shellcheck disable=SC2046
    query $(all_nodes) || return 1
    local i role term commit applied bonds leaders=0 followers=0 bonded=0 n=0
    local terms=() applieds=()
    while read -r i role term commit applied bonds; do
        [[ -n $i ]] || continue
        n=$((n + 1))
        case $role in
            leader) leaders=$((leaders + 1)) LEADER=$i ;;
            follower) followers=$((followers + 1)) ;;
        esac
        [[ $bonds == $((N - 1)) ]] && bonded=$((bonded + 1))
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

# Clients verify the nodes' tickets against the policy the nodes run.
kv() { timeout 60 "$BIN" kv --key-file "$WORK/client.key" --policy "$ROOT/policies/mock.toml" "$@"; }

# ---------------------------------------------------------------------------------------
# Set-up steps.

preflight() {
    STEP="preflight"
    command -v docker >/dev/null || fail "docker is not installed"
    docker info >/dev/null 2>&1 || fail "cannot talk to the Docker daemon (docker info failed)"
    local tool i
    for tool in ldd tar awk timeout; do
        command -v "$tool" >/dev/null || fail "$tool is needed"
    done
    [[ $SUBNET =~ ^([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})\.0/24$ ]] ||
        fail "TESSERA_TEST_SUBNET must be a /24 written a.b.c.0/24, got '$SUBNET'"
    BASE=${BASH_REMATCH[1]}
    local subnets=("$BASE.0") net
    CLIENT_BASE=$BASE
    if [[ $CLIENT_NETWORK == 1 ]]; then
        local third=${BASE##*.}
        ((third < 255)) || fail "TESSERA_TEST_SUBNET: no next /24 for the client network after $SUBNET"
        CLIENT_BASE=${BASE%.*}.$((third + 1))
        subnets+=("$CLIENT_BASE.0")
    fi
    for net in "$NET" "$CLIENT_NET"; do
        if docker network inspect "$net" >/dev/null 2>&1; then
            fail "a Docker network named $net already exists (left by an earlier run? docker network rm $net)"
        fi
    done
    for i in $(all_nodes); do
        C[i]=$PREFIX-$((i + 1))
        MEMBER_IP[i]=$BASE.$((11 + i))
        IP[i]=$CLIENT_BASE.$((11 + i))
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
        for net in "${subnets[@]}"; do
        if ip -4 route show | awk -v net="$net" '
            function addr(text, parts) { split(text, parts, "."); return ((parts[1] * 256 + parts[2]) * 256 + parts[3]) * 256 + parts[4] }
            $1 != "default" {
                n = split($1, cidr, "/"); len = n == 2 ? cidr[2] : 32; if (len > 24) len = 24
                block = 2 ^ (32 - len)
                if (int(addr(cidr[1]) / block) == int(addr(net) / block)) found = 1
            }
            END { exit !found }'; then
            fail "subnet $net/24 is already routed on this host (ip route): set TESSERA_TEST_SUBNET to a free /24"
        fi
        done
    fi
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$TEST.XXXXXX")
}

build_binary() {
    STEP="build"
    if [[ -n ${TESSERA_BIN:-} ]]; then
        BIN=$TESSERA_BIN
        say "using $BIN (TESSERA_BIN)"
    else
        # The nodes are mock-attested: the binary needs the mock-attestation feature.
        say "building the release binary (cargo build --release --features mock-attestation --bin tessera)"
        (cd "$ROOT" && "$CARGO" build --release --locked --features mock-attestation --bin tessera)
        local target_dir
        target_dir=$(cd "$ROOT" && "$CARGO" metadata --format-version 1 --no-deps |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
        [[ -n $target_dir ]] || fail "cannot find cargo's target directory"
        BIN=$target_dir/release/tessera
    fi
    [[ -x $BIN ]] || fail "no executable at $BIN"
}

build_image() {
    STEP="image"
    local rootfs=$WORK/rootfs line lib dir lib_dirs=() ld_path
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/tessera/policies" "$rootfs/var/lib/tessera" \
        "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
    chmod 1777 "$rootfs/tmp"
    if command -v strip >/dev/null; then
        strip --strip-debug -o "$rootfs/usr/local/bin/tessera" "$BIN"
    else
        cp "$BIN" "$rootfs/usr/local/bin/tessera"
    fi
    cp "$ROOT/policies/mock.toml" "$rootfs/etc/tessera/policies/mock.toml"
    while read -r line; do
        case $line in
            *"not found"*) fail "ldd: a library of $BIN is missing: $line" ;;
            *"=> /"*) lib=${line#*=> } ;;
            /*) lib=$line ;;
            *) continue ;; # linux-vdso, or a static binary
        esac
        lib=${lib%% (*}
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
        dir=$(dirname "$lib")
        [[ " ${lib_dirs[*]} " == *" $dir "* ]] || lib_dirs+=("$dir")
    done < <(ldd "$BIN" 2>&1 || true)
    ld_path=$(
        IFS=:
        echo "${lib_dirs[*]}"
    )
    say "image $IMAGE from scratch: tessera + $(find "$rootfs" -name '*.so*' | wc -l) libraries ($(du -sh "$rootfs" | cut -f1))"
    IMAGE_CREATED=1
    tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -cf - . |
        docker import \
            --change "ENV LD_LIBRARY_PATH=$ld_path" \
            --change 'ENTRYPOINT ["/usr/local/bin/tessera"]' \
            --change 'CMD ["node", "--config", "/etc/tessera/node.toml"]' \
            - "$IMAGE" >/dev/null
    docker run --rm --network none "$IMAGE" --version >/dev/null 2>"$WORK/version.err" ||
        fail "the image does not run: $(cat "$WORK/version.err")"
}

create_network() {
    STEP="network"
    local out
    if ! out=$(docker network create --driver bridge --subnet "$SUBNET" --gateway "$BASE.1" \
        --internal --label tessera-test=1 "$NET" 2>&1); then
        fail "cannot create network $NET with subnet $SUBNET (taken? set TESSERA_TEST_SUBNET to a free /24): $out"
    fi
    NET_CREATED=1
    say "network $NET ($SUBNET, internal: no route out)"
    if [[ $CLIENT_NETWORK == 1 ]]; then
        if ! out=$(docker network create --driver bridge --subnet "$CLIENT_BASE.0/24" \
            --gateway "$CLIENT_BASE.1" --internal -o com.docker.network.bridge.enable_icc=false \
            --label tessera-test=1 "$CLIENT_NET" 2>&1); then
            fail "cannot create network $CLIENT_NET with subnet $CLIENT_BASE.0/24: $out"
        fi
        CLIENT_NET_CREATED=1
        say "network $CLIENT_NET ($CLIENT_BASE.0/24, clients only: containers cannot reach each other on it)"
    fi
}

# new_node_key I: a fresh key for node I in $WORK/nodeI/node.key; sets ID, PEER and the
# short-id index for it.
new_node_key() {
    local i=$1
    # The previous identity of this slot is gone: its rows no longer count as this node.
    [[ -n ${ID[$i]:-} ]] && unset "IDX_OF_SHORT[${ID[$i]:0:10}]"
    rm -f "$WORK/node$i/node.key"
    ID[i]=$("$BIN" keygen --out "$WORK/node$i/node.key" 2>"$WORK/keygen.err") ||
        fail "keygen: $(cat "$WORK/keygen.err")"
    [[ ${ID[$i]} =~ ^[0-9a-f]{64}$ ]] || fail "keygen printed '${ID[$i]}', not a node id"
    PEER[i]=${ID[$i]}@${IP[$i]}:$PORT
    IDX_OF_SHORT[${ID[$i]:0:10}]=$i
}

# write_keys_and_configs [by-address] [EXTRA_TIMERS]: the group key, the client key and, per
# node, a node key and node.toml (mock attestation, RocksDB, the others as bootstrap peers:
# by id, or by bare address with `by-address` so that nodes may come back as new
# identities). EXTRA_TIMERS (lines) is added to every node.toml's [timers].
write_keys_and_configs() {
    STEP="keys"
    local by_address=${1:-} extra=${2:-} i j bootstrap
    # keygen prints the node id on stdout and what it wrote on stderr.
    "$BIN" keygen --group --out "$WORK/group.key" >/dev/null 2>"$WORK/keygen.err" ||
        fail "keygen --group: $(cat "$WORK/keygen.err")"
    CLIENT_ID=$("$BIN" keygen --out "$WORK/client.key" 2>"$WORK/keygen.err") ||
        fail "keygen: $(cat "$WORK/keygen.err")"
    for i in $(all_nodes); do
        mkdir "$WORK/node$i"
        new_node_key "$i"
    done
    for i in $(all_nodes); do
        bootstrap=""
        for j in $(all_nodes); do
            [[ $j == "$i" ]] && continue
            if [[ $by_address == by-address ]]; then
                bootstrap+="${bootstrap:+, }\"${MEMBER_IP[$j]}:$PORT\""
            else
                bootstrap+="${bootstrap:+, }\"${ID[$j]}@${MEMBER_IP[$j]}:$PORT\""
            fi
        done
        # Listen on every address: a node may have to start with no network at all, where
        # its bridge address does not exist.
        cat >"$WORK/node$i/node.toml" <<EOF
# $(name "$i") of $TEST (scripts/lib/cluster.sh)
data_dir = "/var/lib/tessera"
listen = "0.0.0.0:$PORT"
bootstrap = [$bootstrap]
bootstrap_expect = $N
group_key_file = "group.key"
policies = ["policies/mock.toml"]
attestation = "mock"
secret_key_file = "node.key"
network_id = "$TEST"
storage = "rocksdb"
log_level = "$NODE_LOG"

[timers]
tick_ms = 50
election_ticks = 10
heartbeat_ticks = 2
$extra

[client]
allow = ["$CLIENT_ID"]
EOF
    done
}

# run_node I: creates (first time: with its volume) and starts node I's container.
run_node() {
    local i=$1
    if ! docker volume inspect "${C[$i]}-data" >/dev/null 2>&1; then
        docker volume create --label tessera-test=1 "${C[$i]}-data" >/dev/null
        CREATED_VOLUMES+=("${C[$i]}-data")
    fi
    [[ " ${CREATED_CONTAINERS[*]} " == *" ${C[$i]} "* ]] || CREATED_CONTAINERS+=("${C[$i]}")
    docker run -d --name "${C[$i]}" --hostname "$(name "$i")" --label tessera-test=1 \
        --network "$NET" --ip "${MEMBER_IP[$i]}" \
        --read-only --tmpfs /tmp \
        -v "${C[$i]}-data:/var/lib/tessera" \
        -v "$WORK/node$i/node.toml:/etc/tessera/node.toml:ro" \
        -v "$WORK/node$i/node.key:/etc/tessera/node.key:ro" \
        -v "$WORK/group.key:/etc/tessera/group.key:ro" \
        -v "$WORK/client.key:/etc/tessera/client.key:ro" \
        "$IMAGE" >/dev/null
    local clients=""
    if [[ $CLIENT_NETWORK == 1 ]]; then
        docker network connect --ip "${IP[$i]}" "$CLIENT_NET" "${C[$i]}"
        clients=" (clients: ${IP[$i]})"
    fi
    say "started ${C[$i]}: $(name "$i") ${ID[$i]:0:10} at ${MEMBER_IP[$i]}:$PORT$clients"
}

# start_all: every node's container, then their ready lines.
start_all() {
    STEP="start"
    local i
    for i in $(all_nodes); do
        run_node "$i"
        RUNNING+=("$i")
    done
    for i in "${RUNNING[@]}"; do
        wait_for "$(name "$i") ready" ready "$i"
    done
}
