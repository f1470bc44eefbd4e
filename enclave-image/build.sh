#!/usr/bin/env bash
# make image: builds the tessera enclave image into enclave-image/out/<variant>/:
#
#   firmware.fd   TDX-capable OVMF (TDVF) from Debian's ovmf package
#   vmlinuz       Debian's 6.12 cloud kernel (INTEL_TDX_GUEST=y; TSM reports as modules)
#   initrd.gz     /init (tessera-init), /bin/tessera, the kernel modules it loads
#   cmdline       the kernel command line
#   SHA256SUMS    of the four
#   tessera       the initrd's /bin/tessera, for use on the host (static)
#
# and measurements.txt/.json from `tessera measure` (for MEASURE_MEMORY, default 2G);
# for the production variant also policies/tessera-enclave.toml, the policy that admits it.
#
# Variants (VARIANT=…):
#   production  the node without the mock-attestation feature: it refuses attestation =
#               "mock"; the TDX guest driver is a required module (default)
#   smoke       the same recipe with a mock-attestation binary, for booting under QEMU
#               without TDX (make image-smoke). Its binary differs, so it measures
#               differently and no production policy admits it.
#
# Reproducible: the same commit gives byte-identical artifacts in any directory at any
# time (enclave-image/repro.sh checks it). Debian packages come pinned from
# packages.lock (refresh: enclave-image/lock.sh) and are checked against their SHA-256.
#
# Settings: MIRROR (Debian mirror; a snapshot.debian.org URL once deb.debian.org drops the
# pinned versions), TESSERA_IMAGE_CACHE (downloaded packages; default ~/.cache/tessera-image),
# CARGO, SOURCE_DATE_EPOCH (default: a fixed 2025-01-01).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
VARIANT="${VARIANT:-production}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
CARGO="${CARGO:-cargo}"
cache="${TESSERA_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera-image}"
out="$here/out/$VARIANT"
work="$here/out/.work-$VARIANT"
target_dir="$repo/target/enclave-image"
triple=x86_64-unknown-linux-gnu
# The VM shape the measurements are computed for (run-tdx.sh's defaults).
MEASURE_MEMORY="${MEASURE_MEMORY:-2G}"
MEASURE_CPUS="${MEASURE_CPUS:-2}"
started=$SECONDS

case "$VARIANT" in
  production) features=(--no-default-features); tdx_module=required ;;
  smoke) features=(--no-default-features --features mock-attestation); tdx_module=optional ;;
  *) echo "image: unknown VARIANT=$VARIANT (production or smoke)" >&2; exit 2 ;;
esac
# One fixed time for every file of the initrd. Not the commit's time: the commit that
# records the image's policy would change the image it describes.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1735689600}" # 2025-01-01T00:00:00Z
export SOURCE_DATE_EPOCH

step() { printf 'image [%s] %-10s %3ds  %s\n' "$VARIANT" "$1" $((SECONDS - started)) "$2" >&2; }
fail() { echo "image: $*" >&2; exit 1; }
for tool in curl dpkg-deb sha256sum xz gzip python3; do
  command -v "$tool" >/dev/null || fail "needs $tool (Debian: apt-get install curl dpkg xz-utils gzip python3)"
done

rm -rf "$work" "$out"
mkdir -p "$work/debs" "$work/root" "$out" "$cache"

# 1. The pinned packages, downloaded once into the cache and checked every time.
step fetch "Debian packages from packages.lock"
debs=()
while read -r package version sha256 size path; do
  case "$package" in ''|'#'*) continue ;; esac
  file="$cache/$(basename "$path")"
  if [ ! -f "$file" ] || ! echo "$sha256  $file" | sha256sum --check --status; then
    step fetch "$package $version ($((size / 1048576)) MiB)"
    curl --fail --silent --show-error --location --output "$file.part" "$MIRROR/$path" ||
      fail "downloading $MIRROR/$path failed (set MIRROR to a mirror or snapshot that has $package $version)"
    mv "$file.part" "$file"
  fi
  actual="$(sha256sum "$file" | cut -d' ' -f1)"
  [ "$actual" = "$sha256" ] || { rm -f "$file"; fail "$package $version: SHA-256 $actual, the lock says $sha256"; }
  debs+=("$file")
done <"$here/packages.lock"
[ ${#debs[@]} -eq 2 ] || fail "packages.lock must pin the firmware and the kernel (found ${#debs[@]} packages)"
for deb in "${debs[@]}"; do dpkg-deb --extract "$deb" "$work/debs"; done

firmware="$work/debs/usr/share/ovmf/OVMF.fd"
[ -f "$firmware" ] || fail "the ovmf package has no usr/share/ovmf/OVMF.fd"
kernels=("$work"/debs/boot/vmlinuz-*)
[ ${#kernels[@]} -eq 1 ] && [ -f "${kernels[0]}" ] || fail "expected one kernel in the kernel package"
kernel_release="${kernels[0]##*/vmlinuz-}"
modules_dir="$work/debs/usr/lib/modules/$kernel_release"
cp "$firmware" "$out/firmware.fd"
cp "${kernels[0]}" "$out/vmlinuz"

# 2. The binaries: static, stripped, with every build path mapped to a fixed name.
step build "tessera (${features[*]}) and tessera-init, static, for $triple"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
remap="--remap-path-prefix=$repo=/tessera --remap-path-prefix=$cargo_home=/cargo"
export RUSTFLAGS="-C target-feature=+crt-static $remap"
export CFLAGS="-ffile-prefix-map=$repo=/tessera -ffile-prefix-map=$cargo_home=/cargo"
export CXXFLAGS="$CFLAGS"
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_INCREMENTAL=0
# --target keeps RUSTFLAGS off build scripts and proc macros (they run on the build host).
(cd "$repo" && "$CARGO" build --release --locked --target "$triple" --target-dir "$target_dir" \
  -p tessera --bin tessera "${features[@]}")
(cd "$repo" && "$CARGO" build --release --locked --target "$triple" --target-dir "$target_dir" \
  -p tessera-init --bin tessera-init)
bin_dir="$target_dir/$triple/release"

# 3. The initrd: init, the node, the modules (decompressed, dependencies first).
step initrd "kernel modules of $kernel_release"
root="$work/root"
mkdir -p "$root"/{bin,dev,etc/tessera,lib/modules,proc,run,sys,tmp}
install -m 0755 "$bin_dir/tessera-init" "$root/init"
install -m 0755 "$bin_dir/tessera" "$root/bin/tessera"
# The same binary beside the artifacts, for the host side (smoke.sh's client, run-tdx.sh's
# config id); not an artifact of the image itself.
install -m 0755 "$bin_dir/tessera" "$out/tessera"

# module_file <name>: the .ko.xz of a module name (names use _ where files may use -).
module_file() {
  local name="$1" found
  found="$(find "$modules_dir/kernel" \( -name "$name.ko.xz" -o -name "${name//_/-}.ko.xz" \) | sort | head -1)"
  [ -n "$found" ] || fail "kernel module $name is not in $kernel_release"
  echo "$found"
}
declare -A loaded=()
order=()
# add_module <name>: its dependencies first (from its own modinfo), then itself.
add_module() {
  local name="${1//-/_}" file dep
  [ -n "${loaded[$name]:-}" ] && return
  loaded[$name]=1
  file="$(module_file "$name")"
  xz --decompress --stdout "$file" >"$root/lib/modules/$name.ko"
  for dep in $(tr '\0' '\n' <"$root/lib/modules/$name.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
    add_module "$dep"
  done
  order+=("$name")
}
# configfs and tsm: the TSM reports interface; tdx_guest: its TDX provider; qemu_fw_cfg:
# the host's configuration; virtio_net: the network.
for module in configfs tsm tdx_guest qemu_fw_cfg virtio_net; do add_module "$module"; done
{
  echo "# Kernel modules tessera-init loads, in order: <path> required|optional."
  for name in "${order[@]}"; do
    kind=required
    [ "$name" = tdx_guest ] && kind="$tdx_module"
    echo "/lib/modules/$name.ko $kind"
  done
} >"$root/etc/tessera/modules"
step initrd "archive: ${order[*]}"
python3 "$here/mkcpio.py" "$root" "$work/initrd.cpio"
gzip -n -9 --stdout "$work/initrd.cpio" >"$out/initrd.gz"

# 4. The command line, measured into RTMR2 with the initrd.
printf '%s' "console=ttyS0 net.ifnames=0 panic=-1 oops=panic" >"$out/cmdline"

(cd "$out" && sha256sum firmware.fd vmlinuz initrd.gz cmdline >SHA256SUMS)

# 5. The measurements a boot of these artifacts shows, from the binary just built; for the
# production image, its policy too (policies/tessera-enclave.toml, committed).
step measure "MRTD, RTMR1, RTMR2 for ${MEASURE_MEMORY} of memory, ${MEASURE_CPUS} vCPUs"
# Run from the output directory with bare file names: the policy names its inputs, and a
# path of this machine in it would differ between two builds.
measure=("$bin_dir/tessera" measure --firmware firmware.fd --kernel vmlinuz
  --initrd initrd.gz --cmdline-file cmdline
  --memory "$MEASURE_MEMORY" --cpus "$MEASURE_CPUS")
(cd "$out" && "${measure[@]}" >measurements.txt && "${measure[@]}" --json >measurements.json)
if [ "$VARIANT" = production ]; then
  (cd "$out" && "${measure[@]}" --policy-out "$repo/policies/tessera-enclave.toml" >/dev/null)
  step measure "wrote policies/tessera-enclave.toml"
fi
sed -n 's/^\(MRTD\|RTMR[0-3]\) .*/&/p' "$out/measurements.txt" | sed 's/^/  /' >&2
step done "artifacts in $out:"
sed 's/^/  /' "$out/SHA256SUMS" >&2
rm -rf "$work"
