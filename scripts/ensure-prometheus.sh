#!/usr/bin/env bash
# Kept for the benchmarks: Prometheus only (see ensure-debian.sh).
exec bash "$(dirname "$0")/ensure-debian.sh" prometheus:prometheus
