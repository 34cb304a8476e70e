#!/usr/bin/env bash
# The standard benchmark suite of docs/BENCHMARKS.md, in one command:
#
#   bench/suite.sh [OUT_DIR]      (default target/bench/suite)
#
# Builds sluice and sluice-bench in release mode, then runs `sluice-bench suite`: the limits
# of this machine (fio, iperf3: install with `apt-get install fio iperf3`; a missing tool is
# reported, not installed), then every standard run, each against a broker of its own started
# with a temporary data directory under $DATA_DIR (default ./bench-data: put it on the disk to
# measure). Writes each run's JSON, table.md (figures with ratios to the limits) and
# latency.png to OUT_DIR.
#
# Sizes: SUITE_TOTAL (bytes of values per closed-loop run, default 1GiB), SUITE_ROUNDS (3),
# SUITE_OPEN_SECS (20), SUITE_FIO_SIZE (1GiB), SUITE_SHARDS (the broker's default),
# SUITE_OPEN_LINGER_MS (linger of the open-loop runs, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench/suite}
DATA_DIR=${DATA_DIR:-./bench-data}
cargo build --release -q -p sluice-bench -p sluice-broker
TARGET=${CARGO_TARGET_DIR:-target}
exec "$TARGET/release/sluice-bench" suite --out "$OUT" --data-dir "$DATA_DIR" \
  --sluice-bin "$TARGET/release/sluice"
