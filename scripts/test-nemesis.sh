#!/usr/bin/env bash
# `make test-nemesis`: a seeded nemesis against `tessera node` containers while concurrent
# clients record a history (issue 15; what etcd's robustness tests and Jepsen do).
#
# N nodes (3 or 5; mock attestation, RocksDB on a Docker volume each, named to each other
# by bare address so that a node may come back as a new identity) on a Docker network of
# the test's own, and a second one through which the clients on the host reach them (its
# containers cannot reach each other): partitions cut members apart, not from their
# clients, so a member that wrongly thinks it may still lead is heard by its clients. `tessera workload` runs 2N clients from the host through every node for
# the whole run, doing linearizable gets, puts and compare-and-swaps on four keys and
# recording every invocation and completion. Then ROUNDS rounds, each one fault drawn from
# the seed, held for FAULT_SECS, healed:
#   kill       SIGKILL a node, start it again (from its RocksDB);
#   pause      `docker pause` a node (frozen process; its timers jump on resume);
#   leader     cut the leader off the network;
#   minority   cut a minority (1 of 3, 2 of 5) off, leader included or not;
#   identity   replace a node by a new identity on the same disk, as a TD reboot does
#              (the old records are set aside; it joins as a new member);
#   restart    stop a node with SIGTERM (`docker stop`) and start it again at once.
# TESSERA_NEMESIS_ROLLING=1 is a rolling restart instead: one `restart` round per node, in
# order, under the same load and checks; each round's recovery time is that node's
# unavailability as the group sees it.
# Beside the group, on the member network, for the whole run, three intruders dial every
# member: a genuine (mock) quote with another group key; the group key with a quote of
# another image (another MRTD); the group key with a quote whose signature does not chain
# to the root (another mock PKI). None may bond: the members log refusing each, none lists
# one, and each intruder's own log shows the refusals.
# After each heal: the group must recover (every node answers, one leader, full bonds) and
# accept a write; the time to recover is recorded. At the end the workload stops, the
# history must be linearizable (`tessera lincheck`), and every node must converge on the
# values a linearizable read sees for every key.
#
# It fails with the seed, the schedule, the history and every member's full log saved in
# target/nemesis/seed-<seed>/ (the report is written there on a pass too). The last line
# is `PASS test-nemesis: ...` or `FAIL test-nemesis: ...`.
#
# Environment: TESSERA_NEMESIS_SEED (default random; printed: the same seed replays the
# same schedule of faults, not the same timing), TESSERA_NEMESIS_NODES (3),
# TESSERA_NEMESIS_ROUNDS (6), TESSERA_NEMESIS_FAULT_SECS (4), TESSERA_NEMESIS_CLIENTS (2N),
# TESSERA_NEMESIS_FAULTS (the kinds to draw from, default all), TESSERA_NEMESIS_ROLLING,
# and scripts/lib/cluster.sh's (TESSERA_BIN, TESSERA_TEST_SUBNET, ...).
TEST=test-nemesis
# Members talk on one network (the one partitions cut), clients reach them on another.
CLIENT_NETWORK=1
# Its own names: it may run beside `make test-cluster`.
PREFIX=tessera-nemesis
N=${TESSERA_NEMESIS_NODES:-3}
# shellcheck source=scripts/lib/cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cluster.sh"

ROUNDS=${TESSERA_NEMESIS_ROUNDS:-6}
# The faults to draw from (all by default).
read -r -a FAULTS <<<"${TESSERA_NEMESIS_FAULTS:-kill pause leader minority identity restart}"
for f in "${FAULTS[@]}"; do
    [[ " kill pause leader minority identity restart " == *" $f "* ]] ||
        fail "TESSERA_NEMESIS_FAULTS: unknown fault '$f' (kill, pause, leader, minority, identity, restart)"
done
ROLLING=${TESSERA_NEMESIS_ROLLING:-0}
if [[ $ROLLING == 1 ]]; then
    ROUNDS=$N
    FAULTS=(restart)
fi
((${#FAULTS[@]} > 0)) || fail "TESSERA_NEMESIS_FAULTS is empty"
FAULT_SECS=${TESSERA_NEMESIS_FAULT_SECS:-4}
CLIENTS=${TESSERA_NEMESIS_CLIENTS:-$((2 * N))}
SEED=${TESSERA_NEMESIS_SEED:-$(od -An -N3 -tu4 /dev/urandom | tr -d ' ')}
KEYS=4
[[ $N == 3 || $N == 5 ]] || fail "TESSERA_NEMESIS_NODES must be 3 or 5, got '$N'"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] ||
    fail "TESSERA_NEMESIS_ROUNDS must be at least 1 (a run without faults proves nothing), got '$ROUNDS'"
[[ $FAULT_SECS =~ ^[0-9]+$ && $FAULT_SECS -ge 1 ]] || fail "TESSERA_NEMESIS_FAULT_SECS must be a whole number >= 1"
[[ $SEED =~ ^[0-9]+$ ]] || fail "TESSERA_NEMESIS_SEED must be a number, got '$SEED'"
# bash's generator, seeded: the schedule follows from the seed alone.
RANDOM=$SEED
OUT_DIR=$ROOT/target/nemesis/seed-$SEED
FAILURE_DIR=$OUT_DIR
if [[ $ROLLING == 1 ]]; then
    say "seed $SEED; rolling restart of $N nodes under $CLIENTS clients"
else
    say "seed $SEED (TESSERA_NEMESIS_SEED=$SEED replays this schedule); $N nodes, $ROUNDS rounds of ${FAULT_SECS}s, $CLIENTS clients"
fi

preflight
build_binary
build_image
create_network
# A dead identity is removed soon (its replacement waits for that before it can vote).
write_keys_and_configs by-address "removal_timeout_secs = 10"
start_all
STEP="elect"
wait_for "one leader, all bonded" healthy
say "$(name "$LEADER") leads in term $TERM_NOW"

# ---------------------------------------------------------------------------------------
STEP="intruders"
# start_intruder NAME IP GROUP_KEY [MOCK_TOML]: a node named NAME at IP on the member
# network with the group key GROUP_KEY and, when given, [mock] switches; sets
# INTRUDER_ID[NAME]. It dials every member.
declare -A INTRUDER_ID
INTRUDERS=()
start_intruder() {
    local who=$1 ip=$2 key=$3 mock=${4:-} members="" i
    local dir=$WORK/intruder-$who c=$PREFIX-intruder-$who
    mkdir "$dir"
    cp "$key" "$dir/group.key"
    INTRUDER_ID[$who]=$("$BIN" keygen --out "$dir/node.key" 2>"$WORK/keygen.err") ||
        fail "keygen: $(cat "$WORK/keygen.err")"
    for i in $(all_nodes); do members+="${members:+, }\"${MEMBER_IP[$i]}:$PORT\""; done
    sed -e "s|^bootstrap = .*|bootstrap = [$members]|" -e "s|^# .*|# intruder $who of $TEST|" \
        "$WORK/node0/node.toml" >"$dir/node.toml"
    [[ -z $mock ]] || printf '\n[mock]\n%s\n' "$mock" >>"$dir/node.toml"
    CREATED_CONTAINERS+=("$c")
    INTRUDERS+=("$who")
    docker run -d --name "$c" --hostname "intruder-$who" --label tessera-test=1 \
        --network "$NET" --ip "$ip" --read-only --tmpfs /tmp --tmpfs /var/lib/tessera:mode=700 \
        -v "$dir/node.toml:/etc/tessera/node.toml:ro" \
        -v "$dir/node.key:/etc/tessera/node.key:ro" \
        -v "$dir/group.key:/etc/tessera/group.key:ro" \
        "$IMAGE" >/dev/null
    say "started intruder $who ${INTRUDER_ID[$who]:0:10} at $ip, dialling every member"
}
"$BIN" keygen --group --out "$WORK/other-group.key" >/dev/null 2>"$WORK/keygen.err" ||
    fail "keygen --group: $(cat "$WORK/keygen.err")"
# A genuine quote, the wrong group key: refused at the group proof.
start_intruder key "$BASE.50" "$WORK/other-group.key"
# The group key, a quote of another image (another MRTD): refused at the ticket.
start_intruder measurement "$BASE.51" "$WORK/group.key" "mr_td = \"$(printf 'ee%.0s' $(seq 48))\""
# The group key, a quote signed by a PKI that does not chain to the root: refused too.
start_intruder forged "$BASE.52" "$WORK/group.key" "pki_seed = \"$(printf '11%.0s' $(seq 32))\""

# ---------------------------------------------------------------------------------------
STEP="workload"
HISTORY=$WORK/history.jsonl
SCHEDULE=$WORK/schedule.txt
KEEP_ON_FAILURE+=("$HISTORY" "$SCHEDULE" "$WORK/workload.out")
: >"$SCHEDULE"
addresses=()
for i in $(all_nodes); do addresses+=(--node "${IP[$i]}:$PORT"); done
"$BIN" workload "${addresses[@]}" --clients "$CLIENTS" --duration 86400 --keys "$KEYS" \
    --patience 3 --seed "$SEED" --history "$HISTORY" \
    --key-file "$WORK/client.key" --policy "$ROOT/policies/mock.toml" >"$WORK/workload.out" 2>&1 &
WORKLOAD_PID=$!
CHILD_PIDS+=("$WORKLOAD_PID")
workload_running() {
    kill -0 "$WORKLOAD_PID" 2>/dev/null && return 0
    fail "the workload stopped: $(tail -n 5 "$WORK/workload.out")"
}
# Wait for the first completions, so that the faults hit a loaded group.
has_completions() {
    workload_running
    [[ -s $HISTORY ]] && grep -q '"type":"ok"' "$HISTORY" && return 0
    PROGRESS="no completed operation in the history yet"
    return 1
}
wait_for "the workload's first completed operations" has_completions

# ---------------------------------------------------------------------------------------
note() {
    printf '%s\n' "$*" >>"$SCHEDULE"
    say "$*"
}

# pick_nodes K: PICKED gets K distinct random node indexes (in this shell, so that the
# seeded generator advances).
pick_nodes() {
    local pool=() k=$1 j
    mapfile -t pool < <(all_nodes)
    PICKED=()
    while ((${#PICKED[@]} < k)); do
        j=$((RANDOM % ${#pool[@]}))
        PICKED+=("${pool[$j]}")
        pool=("${pool[@]:0:j}" "${pool[@]:j+1}")
    done
}

# accepts_write KEY: a put through the leader answered OK.
accepts_write() {
    local out
    out=$(kv put "$1" "after heal" --node "${PEER[$LEADER]}" --patience 5 2>&1) && [[ $out == OK ]] && return 0
    PROGRESS="put $1 through $(name "$LEADER"): $out"
    return 1
}

# recovered: healthy, and the leader accepts a write.
recovered() {
    healthy || return 1
    accepts_write "nemesis-$ROUND"
}

RECOVERY=()
DONE_FAULTS=()
for ROUND in $(seq 1 "$ROUNDS"); do
    STEP="round $ROUND"
    workload_running
    fault=${FAULTS[$((RANDOM % ${#FAULTS[@]}))]}
    round_started=$SECONDS
    case $fault in
        restart)
            if [[ $ROLLING == 1 ]]; then v=$((ROUND - 1)); else pick_nodes 1; v=${PICKED[0]}; fi
            note "round $ROUND: restart $(name "$v") (SIGTERM, then start)"
            RUNNING=()
            docker stop -t 20 "${C[$v]}" >/dev/null
            code=$(docker inspect -f '{{.State.ExitCode}}' "${C[$v]}")
            [[ $code == 0 ]] || fail "$(name "$v") exited with status $code on SIGTERM"
            docker start "${C[$v]}" >/dev/null
            ;;
        kill)
            pick_nodes 1; v=${PICKED[0]}
            note "round $ROUND: SIGKILL $(name "$v") for ${FAULT_SECS}s"
            RUNNING=()
            docker kill -s KILL "${C[$v]}" >/dev/null
            sleep "$FAULT_SECS"
            docker start "${C[$v]}" >/dev/null
            ;;
        pause)
            pick_nodes 1; v=${PICKED[0]}
            note "round $ROUND: pause $(name "$v") for ${FAULT_SECS}s"
            docker pause "${C[$v]}" >/dev/null
            sleep "$FAULT_SECS"
            docker unpause "${C[$v]}" >/dev/null
            ;;
        leader)
            v=$LEADER
            note "round $ROUND: cut the leader $(name "$v") off for ${FAULT_SECS}s"
            docker network disconnect "$NET" "${C[$v]}"
            sleep "$FAULT_SECS"
            docker network connect --ip "${MEMBER_IP[$v]}" "$NET" "${C[$v]}"
            ;;
        minority)
            pick_nodes $(((N - 1) / 2)); cut=("${PICKED[@]}")
            names=$(for v in "${cut[@]}"; do name "$v"; printf ' '; done)
            note "round $ROUND: cut the minority ${names% } off for ${FAULT_SECS}s (the leader was $(name "$LEADER"))"
            for v in "${cut[@]}"; do docker network disconnect "$NET" "${C[$v]}"; done
            sleep "$FAULT_SECS"
            for v in "${cut[@]}"; do docker network connect --ip "${MEMBER_IP[$v]}" "$NET" "${C[$v]}"; done
            ;;
        identity)
            pick_nodes 1; v=${PICKED[0]}
            old=${ID[$v]:0:10}
            RUNNING=()
            docker rm -f "${C[$v]}" >/dev/null
            new_node_key "$v"
            note "round $ROUND: $(name "$v") reboots as a new identity (${old} -> ${ID[$v]:0:10}) after ${FAULT_SECS}s"
            sleep "$FAULT_SECS"
            run_node "$v"
            ;;
    esac
    DONE_FAULTS+=("$fault")
    mapfile -t RUNNING < <(all_nodes)
    wait_for "recovery after $fault (all answer, one leader, bonded, a write accepted)" recovered
    RECOVERY+=("$WAITED")
    note "round $ROUND: recovered in ${WAITED}s after the heal ($((SECONDS - round_started))s since the fault began): $(name "$LEADER") leads in term $TERM_NOW"
done

# ---------------------------------------------------------------------------------------
STEP="stop the workload"
kill -TERM "$WORKLOAD_PID"
rc=0
wait "$WORKLOAD_PID" || rc=$?
CHILD_PIDS=()
[[ $rc == 0 ]] || fail "the workload exited with status $rc: $(tail -n 5 "$WORK/workload.out")"
say "workload: $(grep -E '^  (get|put|cas):' "$WORK/workload.out" | tr -s ' ' | paste -sd';')"

STEP="linearizability"
rc=0
"$BIN" lincheck "$HISTORY" >"$WORK/lincheck.out" 2>&1 || rc=$?
case $rc in
    0) say "$(head -n1 "$WORK/lincheck.out")" ;;
    1) fail "the history is NOT linearizable:
$(cat "$WORK/lincheck.out")" ;;
    *) fail "the checker gave no verdict (exit $rc): $(cat "$WORK/lincheck.out")" ;;
esac

STEP="convergence"
wait_for "all applied to the same index" healthy same-applied
# value_of I KEY [--weak]: what node I reads for KEY ("<absent>" when missing).
value_of() {
    local out rc=0
    out=$(kv get "$2" --node "${PEER[$1]}" ${3:+"$3"} 2>/dev/null) || rc=$?
    case $rc in
        0) printf '%s' "$out" ;;
        1) printf '<absent>' ;;
        *) return 1 ;;
    esac
}
converged() {
    local k i want got
    for k in $(seq 0 $((KEYS - 1))); do
        want=$(value_of "$LEADER" "k$k") || { PROGRESS="no linearizable read of k$k"; return 1; }
        for i in $(all_nodes); do
            got=$(value_of "$i" "k$k" --weak) || { PROGRESS="no read of k$k from $(name "$i")"; return 1; }
            [[ $got == "$want" ]] || { PROGRESS="$(name "$i") has k$k = $got, the group $want"; return 1; }
        done
    done
}
wait_for "every node holding what a linearizable read sees, for every key" converged

STEP="intruders"
query $(all_nodes) || true
INTRUDER_REPORT=""
for who in "${INTRUDERS[@]}"; do
    short=${INTRUDER_ID[$who]:0:10}
    c=$PREFIX-intruder-$who
    # Read whole first: `docker logs | grep -q` under pipefail fails when grep stops early
    # (docker gets SIGPIPE), which would hide a match.
    logs=$(docker logs "$c" 2>&1)
    if grep -qE 'bond: bonded( |$)' <<<"$logs"; then
        fail "intruder $who ($short) bonded with a member"
    fi
    if grep -q "$short" <<<"$STATUS"; then
        fail "a member lists intruder $who ($short): $STATUS"
    fi
    refusals=0
    reasons=""
    for i in $(all_nodes); do
        lines=$(docker logs "${C[$i]}" 2>&1 | grep 'bond refused' | grep "peer=$short" || true)
        [[ -n $lines ]] || continue
        refusals=$((refusals + $(wc -l <<<"$lines")))
        reasons+=" $(grep -oE 'reason=[A-Za-z]+' <<<"$lines" | sort -u | tr '\n' ' ')"
    done
    ((refusals > 0)) || fail "no member logged refusing intruder $who ($short)"
    grep -q 'bond refused' <<<"$logs" ||
        fail "intruder $who's own log does not show its bonds refused"
    reasons=$(tr ' ' '\n' <<<"$reasons" | sed '/^$/d' | sort -u | paste -sd, -)
    say "intruder $who never bonded: $refusals refusals by the members ($reasons), none lists it"
    INTRUDER_REPORT+="  $who: never bonded, $refusals refusals ($reasons)"$'\n'
done

# ---------------------------------------------------------------------------------------
STEP="report"
mkdir -p "$OUT_DIR"
ops=$(grep -E '^tessera workload: [0-9]+ operations' "$WORK/workload.out" | awk '{print $3}')
{
    echo "test-nemesis report"
    echo "seed: $SEED"
    echo "nodes: $N, clients: $CLIENTS, keys: $KEYS, rounds: $ROUNDS, fault duration: ${FAULT_SECS}s"
    echo "operations: ${ops:-?}"
    grep -E '^  (get|put|cas):' "$WORK/workload.out"
    echo "faults (recovery after heal, seconds):"
    for r in $(seq 0 $((ROUNDS - 1))); do echo "  round $((r + 1)): ${DONE_FAULTS[$r]} ${RECOVERY[$r]}"; done
    echo "verdict: $(head -n1 "$WORK/lincheck.out")"
    echo "intruders:"
    printf '%s' "$INTRUDER_REPORT"
    echo "schedule:"
    sed 's/^/  /' "$SCHEDULE"
} >"$OUT_DIR/report.txt"
STEP="done"
max=0
for t in "${RECOVERY[@]}"; do ((t > max)) && max=$t; done
echo "PASS $TEST: seed $SEED, $N nodes, $ROUNDS faults (${DONE_FAULTS[*]}), ${ops:-?} operations linearizable," \
    "all nodes converged, ${#INTRUDERS[@]} intruders never bonded, slowest recovery ${max}s; report $OUT_DIR/report.txt; $((SECONDS - STARTED))s"
