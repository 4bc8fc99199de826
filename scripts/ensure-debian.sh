#!/usr/bin/env bash
# Debian packages the tests run for real: Prometheus (metrics analysis), SoftHSM2 (signing
# through PKCS#11), Redis (the Celery broker of the distributed stack) and Chromium (the
# cockpit's browser tests). Installs what is missing; starts nothing (tests start their own instances).
# Usage: ensure-debian.sh [PACKAGE:CHECK ...]  (CHECK: a command on PATH or a file that must exist)
set -euo pipefail
needs=("$@")
[ ${#needs[@]} -gt 0 ] || needs=("prometheus:prometheus" "softhsm2:/usr/lib/softhsm/libsofthsm2.so" "redis-server:redis-server" "chromium:chromium")
missing=()
for need in "${needs[@]}"; do
  package="${need%%:*}" check="${need#*:}"
  if [ -e "$check" ] || command -v "$check" >/dev/null 2>&1; then continue; fi
  missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "The tests need Debian's ${missing[*]} and they are not installed: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "Installing Debian's ${missing[*]} for the tests"
export DEBIAN_FRONTEND=noninteractive
# another apt or dpkg run (an unattended upgrade, a second checkout's tests) holds the lock: wait for it
lock=(-o DPkg::Lock::Timeout=600)
if ! apt-get "${lock[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  apt-get "${lock[@]}" update >/dev/null
  apt-get "${lock[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
fi
