#!/usr/bin/env bash
# make image-smoke: boots the image's smoke variant (enclave-image/out/smoke, built by
# `VARIANT=smoke enclave-image/build.sh`) under QEMU software emulation, without TDX, as a
# one-member group, and waits until the node inside serves: `tessera status` answers with
# the node as leader, and a `tessera kv put` is read back.
#
# Same recipe as the production image (firmware, kernel, command line, init, modules); only
# the binary differs (mock attestation: there is no TDX here), so no production policy
# admits it. The configuration goes in through fw_cfg, as on a TDX host (run-tdx.sh).
#
# Needs qemu-system-x86_64 >= 10.0 (Debian bookworm: from bookworm-backports; `make
# image-deps`). Settings: SMOKE_TIMEOUT (seconds, default 600), SMOKE_PORT (host port, UDP
# and TCP; default: a free one), QEMU (default qemu-system-x86_64), SMOKE_KEEP=1 keeps the
# work directory. Networking: QEMU's user-mode network, forwarded from 127.0.0.1 only. Not
# `restrict=on`: it drops the guest's UDP replies to forwarded QUIC packets. The node is
# configured with no relay and no discovery, so nothing in the guest dials out.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
image="$here/out/smoke"
QEMU="${QEMU:-qemu-system-x86_64}"
TIMEOUT="${SMOKE_TIMEOUT:-600}"
client="$image/tessera"
started=$SECONDS

say() { printf 'image-smoke %4ds  %s\n' $((SECONDS - started)) "$*" >&2; }
for artifact in firmware.fd vmlinuz initrd.gz cmdline; do
  [ -f "$image/$artifact" ] || { echo "image-smoke: $image/$artifact missing: run VARIANT=smoke enclave-image/build.sh" >&2; exit 1; }
done
command -v "$QEMU" >/dev/null || { echo "image-smoke: $QEMU not found (make image-deps)" >&2; exit 1; }
# The smoke build's tessera is static and mock-capable: it is the client here as well.
[ -x "$client" ] && "$client" kv --help >/dev/null 2>&1 || { echo "image-smoke: no client at $client" >&2; exit 1; }

work="$(mktemp -d)"
qemu_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
  if [ "${SMOKE_KEEP:-0}" = 1 ]; then echo "image-smoke: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

port="${SMOKE_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
guest_port=7000
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/group.key"
cp "$repo/policies/mock.toml" "$work/mock.toml"
printf 'address 10.0.2.15/24\ngateway 10.0.2.2\n' >"$work/network"
cat >"$work/node.toml" <<EOF
# The smoke boot's node: one member, mock attestation, memory only.
data_dir = "/run/tessera/data"
listen = "0.0.0.0:$guest_port"
bootstrap = []
bootstrap_expect = 1
group_key_file = "group.key"
policies = ["mock.toml"]
attestation = "mock"
network_id = "tessera-smoke"
storage = "memory"
log_level = "info"

[client]
allow = "any"
EOF

say "booting $image under QEMU (TCG, no TDX), node at 127.0.0.1:$port"
"$QEMU" -machine q35 -accel tcg -cpu max -smp 2 -m 1024 \
  -display none -monitor none -no-reboot -serial "file:$work/console.log" \
  -bios "$image/firmware.fd" -kernel "$image/vmlinuz" -initrd "$image/initrd.gz" \
  -append "$(cat "$image/cmdline")" \
  -netdev "user,id=net0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:$port-10.0.2.15:$guest_port,hostfwd=udp:127.0.0.1:$port-10.0.2.15:$guest_port" \
  -device virtio-net-pci,netdev=net0 \
  -fw_cfg "name=opt/tessera/node.toml,file=$work/node.toml" \
  -fw_cfg "name=opt/tessera/network,file=$work/network" \
  -fw_cfg "name=opt/tessera/group.key,file=$work/group.key" \
  -fw_cfg "name=opt/tessera/mock.toml,file=$work/mock.toml" &
qemu_pid=$!

client_args=(--policy "$repo/policies/mock.toml" --network tessera-smoke --node "127.0.0.1:$port")
last=""
while :; do
  if ! kill -0 "$qemu_pid" 2>/dev/null; then
    echo "image-smoke: FAIL: the VM stopped; its console:" >&2
    cat "$work/console.log" >&2
    exit 1
  fi
  if ((SECONDS - started > TIMEOUT)); then
    echo "image-smoke: FAIL: no serving node within ${TIMEOUT}s (last answer: $last); console:" >&2
    cat "$work/console.log" >&2
    exit 1
  fi
  if status="$(timeout 20 "$client" status "${client_args[@]}" 2>&1)" && grep -q leader <<<"$status"; then
    break
  fi
  last="$(tail -n1 <<<"$status")"
  stage="$(grep -a 'tessera-init\|tessera node' "$work/console.log" 2>/dev/null | tail -n1 || true)"
  say "waiting: ${stage:-firmware and kernel}"
  sleep 5
done
say "the node serves:"
sed 's/^/  /' <<<"$status" >&2
value="smoke-$(date +%s)"
timeout 60 "$client" kv "${client_args[@]}" put smoke "$value" >/dev/null
read_back="$(timeout 60 "$client" kv "${client_args[@]}" get smoke)"
[ "$read_back" = "$value" ] || { echo "image-smoke: FAIL: wrote $value, read $read_back" >&2; exit 1; }
say "PASS: booted, attested (mock), leader elected, a write read back (boot to serving: $((SECONDS - started)) s)"
