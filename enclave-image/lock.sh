#!/usr/bin/env bash
# Refreshes enclave-image/packages.lock: the Debian packages the image is built from,
# pinned by version, SHA-256 and size. It reads Debian's signed package index through a
# private apt state directory (the host's apt configuration is neither used nor changed),
# takes the newest version of each package in $SUITE, and rewrites the lock. Review the
# diff: a new firmware or kernel changes the image's measurements, so it needs a new policy.
#
#   enclave-image/lock.sh                 # Debian trixie from deb.debian.org
#   SUITE=trixie MIRROR=http://… enclave-image/lock.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
SUITE="${SUITE:-trixie}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
# What the image takes from Debian: the firmware, and the kernel the cloud metapackage
# names (its ABI version is part of the package name, so it is resolved, not listed).
FIRMWARE=ovmf
KERNEL_META=linux-image-cloud-amd64

state="$(mktemp -d)"
trap 'rm -rf "$state"' EXIT
mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
cat >"$state/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt_opts=(-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=/dev/null
  -o "Dir::Etc::SourceList=$state/debian.sources" -o "Dir::State::Lists=$state/lists"
  -o "Dir::Cache=$state/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root -o APT::Architecture=amd64)
echo "lock: reading Debian $SUITE's package index from $MIRROR" >&2
apt-get "${apt_opts[@]}" -qq update

# field <package> <field>: one field of the newest version's stanza.
field() {
  apt-cache "${apt_opts[@]}" show --no-all-versions "$1" |
    awk -v f="$2" -F': ' '$1 == f { print $2; exit }'
}

kernel="$(field "$KERNEL_META" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*-cloud-amd64\).*/\1/p' | head -1)"
[ -n "$kernel" ] || { echo "lock: $KERNEL_META names no kernel package" >&2; exit 1; }

tmp="$here/packages.lock.new"
{
  echo "# Debian packages of the enclave image, pinned: package version sha256 size path."
  echo "# Written by enclave-image/lock.sh from Debian $SUITE; refresh with it, never by hand."
  echo "# A change here changes the image's measurements: regenerate its policy (make image)."
  for package in "$FIRMWARE" "$kernel"; do
    version="$(field "$package" Version)"
    sha256="$(field "$package" SHA256)"
    size="$(field "$package" Size)"
    path="$(field "$package" Filename)"
    if [ -z "$version" ] || [ ${#sha256} -ne 64 ] || [ -z "$size" ] || [ -z "$path" ]; then
      echo "lock: incomplete index entry for $package" >&2
      exit 1
    fi
    echo "$package $version $sha256 $size $path"
  done
} >"$tmp"
mv "$tmp" "$here/packages.lock"
echo "lock: wrote $here/packages.lock" >&2
cat "$here/packages.lock" >&2
