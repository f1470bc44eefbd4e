#!/usr/bin/env bash
# make image-deps: what building and smoke-booting the image needs on Debian: curl, dpkg,
# xz, gzip, python3, and qemu-system-x86 >= 10.0 (bookworm's 7.2 fails on this boot: on
# bookworm it comes from bookworm-backports, whose source this adds when absent).
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
release=()
if [ "$codename" = bookworm ]; then
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
      $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  fi
  release=(-t bookworm-backports)
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends curl dpkg xz-utils gzip python3
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${release[@]}" qemu-system-x86
qemu-system-x86_64 --version | head -n1
