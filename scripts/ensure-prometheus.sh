#!/usr/bin/env bash
# The metrics tests run a real Prometheus (Debian's `prometheus` package). Install it when
# it is missing; the service is never started (the tests start their own instances).
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "Prometheus is needed by the tests and is not installed: install Debian's 'prometheus' package" \
       "(apt-get install prometheus) or put a prometheus binary on PATH" >&2
  exit 1
fi
echo "Installing Debian's prometheus package for the metrics tests"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1; then
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends prometheus >/dev/null
fi
command -v prometheus >/dev/null
