#!/usr/bin/env bash
# Boots the enclave image as a TDX guest (a trust domain) on a TDX host with QEMU >= 10.1
# and KVM. The host-side steps are explained in enclave-image/README.md ("Booting on a
# TDX host"); this script is the command line those steps end with.
#
#   enclave-image/run-tdx.sh --config-dir DIR [--image DIR] [--memory 2G] [--cpus 2]
#                            [--port 7000] [--qgs-port 4050]
#
# DIR holds what the node reads at boot, passed through fw_cfg as opt/tessera/<file>:
# node.toml (required), network (optional: `address ip/prefix`, `gateway ip`), and the
# policy files node.toml names. Nothing secret goes there: the host reads fw_cfg.
#
# The guest's UDP and TCP port (QUIC and the address announcement) are forwarded from the
# host's --port on all addresses, so other hosts' members can reach it; use a bridge or
# macvtap instead of the user-mode network for production traffic.
#
# Not run in this repository's tests: it needs TDX hardware. `make image-smoke` boots the
# same recipe without TDX under software emulation.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
image="$here/out/production"
config_dir=""
memory=2G
cpus=2
port=7000
qgs_port=4050
QEMU="${QEMU:-qemu-system-x86_64}"
while [ $# -gt 0 ]; do
  case "$1" in
    --config-dir) config_dir="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --memory) memory="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --qgs-port) qgs_port="$2"; shift 2 ;;
    *) echo "run-tdx: unknown argument $1" >&2; exit 2 ;;
  esac
done
# The host-side tessera: the image's own static binary, which runs on the host too.
TESSERA="${TESSERA:-$image/tessera}"
[ -n "$config_dir" ] && [ -f "$config_dir/node.toml" ] ||
  { echo "run-tdx: --config-dir must name a directory holding node.toml" >&2; exit 2; }
for artifact in firmware.fd vmlinuz initrd.gz cmdline; do
  [ -f "$image/$artifact" ] || { echo "run-tdx: $image/$artifact missing (make image)" >&2; exit 1; }
done

# MRCONFIGID: the id of node.toml and its policies. The node refuses to start when its
# TD report names another id, and a provisioner's policy pins it, so the configuration
# passed below is the one the quotes vouch for.
config_id="$("$TESSERA" config-id --config "$config_dir/node.toml" --base64)" ||
  { echo "run-tdx: cannot compute the config id (TESSERA=$TESSERA)" >&2; exit 1; }
fw_cfg=()
for file in "$config_dir"/*; do
  [ -f "$file" ] && fw_cfg+=(-fw_cfg "name=opt/tessera/$(basename "$file"),file=$file")
done

# tdx-guest: the TD itself. sept-ve-disable=on is the attribute the policies expect
# (SEPT_VE_DISABLE set); mrconfigid as above. quote-generation-socket: where QEMU forwards the guest's quote
# requests (TDVMCALL GetQuote) to the host's Quote Generation Service (QGS, from Intel's
# DCAP packages), over vsock to the host (CID 2).
tdx_object="{\"qom-type\":\"tdx-guest\",\"id\":\"tdx0\",\"sept-ve-disable\":true,\"mrconfigid\":\"$config_id\",\"quote-generation-socket\":{\"type\":\"vsock\",\"cid\":\"2\",\"port\":\"$qgs_port\"}}"

# q35 with a split IRQ chip (TDX needs it); the TD's private memory comes from guest_memfd,
# which QEMU sets up for a confidential guest; direct kernel boot, so the firmware measures
# the kernel, command line and initrd into RTMR1/RTMR2 (what `tessera measure` computes).
exec "$QEMU" \
  -accel kvm -cpu host -smp "$cpus" -m "$memory" \
  -object "$tdx_object" \
  -machine q35,kernel-irqchip=split,confidential-guest-support=tdx0,hpet=off \
  -bios "$image/firmware.fd" \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.gz" -append "$(cat "$image/cmdline")" \
  -nodefaults -display none -serial stdio -no-reboot \
  -netdev "user,id=net0,hostfwd=tcp::$port-:7000,hostfwd=udp::$port-:7000" \
  -device virtio-net-pci,netdev=net0 \
  "${fw_cfg[@]}"
