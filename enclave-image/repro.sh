#!/usr/bin/env bash
# make image-repro: checks that the image build is reproducible. Clones the current commit
# twice, into directories of different names and lengths, builds the image in each, one
# after the other (so at different times, each with its own cargo target directory), and
# compares every artifact byte for byte, and the policy each writes with the committed
# policies/tessera-enclave.toml. Uncommitted changes are not part of the check.
#
# Settings: VARIANT (default production), REPRO_KEEP=1 keeps both trees.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
VARIANT="${VARIANT:-production}"
base="$(mktemp -d)"
cleanup() {
  if [ "${REPRO_KEEP:-0}" = 1 ]; then echo "image-repro: kept $base" >&2; else rm -rf "$base"; fi
}
trap cleanup EXIT

commit="$(git -C "$repo" rev-parse HEAD)"
first="$base/a"
second="$base/second-build-in-a-longer-path"
for tree in "$first" "$second"; do
  git clone --quiet --no-hardlinks "$repo" "$tree"
  git -C "$tree" checkout --quiet "$commit"
done
echo "image-repro: building $VARIANT of $commit in $first" >&2
VARIANT="$VARIANT" "$first/enclave-image/build.sh"
echo "image-repro: building it again in $second" >&2
VARIANT="$VARIANT" "$second/enclave-image/build.sh"

different=0
for artifact in firmware.fd vmlinuz initrd.gz cmdline; do
  if cmp --silent "$first/enclave-image/out/$VARIANT/$artifact" "$second/enclave-image/out/$VARIANT/$artifact"; then
    echo "image-repro: identical  $artifact  $(sha256sum <"$first/enclave-image/out/$VARIANT/$artifact" | cut -d' ' -f1)" >&2
  else
    echo "image-repro: DIFFERENT  $artifact" >&2
    different=1
  fi
done
# The committed policy must be the one this commit's image measures to.
for tree in "$first" "$second"; do
  if ! git -C "$tree" diff --quiet -- policies/tessera-enclave.toml 2>/dev/null; then
    if [ "$VARIANT" = production ]; then
      echo "image-repro: policies/tessera-enclave.toml is not the one this image measures to:" >&2
      git -C "$tree" diff -- policies/tessera-enclave.toml >&2
      different=1
    fi
  fi
done
if [ "$VARIANT" = production ] && [ "$different" = 0 ]; then
  echo "image-repro: identical  policies/tessera-enclave.toml (as committed)" >&2
fi
if [ "$different" = 1 ]; then
  echo "image-repro: FAIL: the two builds differ (REPRO_KEEP=1 keeps them for diffoscope)" >&2
  exit 1
fi
echo "image-repro: PASS: two builds of $commit are byte-identical" >&2
