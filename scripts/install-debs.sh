#!/usr/bin/env bash
# Installs the Debian packages kadapt uses when they are missing and we run as root.
# Without root, says what is missing and carries on: tests that need them skip with a reason.
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "kadapt: missing Debian packages (install them as root): ${missing[*]}" >&2
  exit 0
fi
echo "kadapt: installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
