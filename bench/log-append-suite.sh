#!/usr/bin/env bash
# The storage benchmark of docs/BENCHMARKS.md: sluice-bench log-append beside fio on the same
# filesystem, interleaved round by round so both see the same (noisy, shared) machine, with
# medians and ratios at the end.
#
#   bench/log-append-suite.sh [DIR]        (DIR defaults to ./bench-data; ROUNDS=5 by default)
#
# Needs fio, python3 and a release build (built here). Prints a Markdown table; raw JSON of
# every run goes to $OUT (default target/bench/log-append).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-./bench-data}
ROUNDS=${ROUNDS:-5}
OUT=${OUT:-target/bench/log-append}
for tool in fio python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (Debian: apt-get install -y $tool)" >&2; exit 2; }
done
mkdir -p "$DIR" "$OUT"
rm -f "$OUT"/*.json
cargo build --release -q -p sluice-bench
BENCH=target/release/sluice-bench

fio_run() { # name, extra fio args...
  local name=$1; shift
  rm -f "$DIR/fio.dat"
  fio --name="$name" --filename="$DIR/fio.dat" --direct=1 --output-format=json "$@" >>"$OUT/fio-$name.json.tmp"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d["jobs"][0]))' "$OUT/fio-$name.json.tmp" >>"$OUT/fio-$name.json"
  rm -f "$OUT/fio-$name.json.tmp" "$DIR/fio.dat"
}
bench_run() { # name, args...
  local name=$1; shift
  "$BENCH" log-append --dir "$DIR" --json "$@" >>"$OUT/bench-$name.json"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  fio_run seq-write --rw=write --bs=1M --iodepth=8 --ioengine=io_uring --size=1G --fallocate=native
  fio_run write-fdatasync --rw=write --bs=64k --iodepth=1 --ioengine=sync --fdatasync=1 --size=64M --fallocate=native
  bench_run interval-1m-8 --total-bytes 1GiB --batch-bytes 1MiB --durability interval --appenders 8
  bench_run interval-1m-16 --total-bytes 1GiB --batch-bytes 1MiB --durability interval --appenders 16
  bench_run every-64k-16 --total-bytes 512MiB --batch-bytes 64KiB --durability every-batch --appenders 16
  bench_run every-64k-1 --total-bytes 64MiB --batch-bytes 64KiB --durability every-batch --appenders 1
  bench_run every-1m-1 --total-bytes 256MiB --batch-bytes 1MiB --durability every-batch --appenders 1
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys, os, platform
out, rounds = sys.argv[1], sys.argv[2]
def lines(name): return [json.loads(l) for l in open(os.path.join(out, name))]
med = statistics.median
fio_seq = med(j["write"]["bw_bytes"] / 1e6 for j in lines("fio-seq-write.json"))
fio_sync = lines("fio-write-fdatasync.json")
fio_sync_p50 = med(j["sync"]["lat_ns"]["percentile"]["50.000000"] / 1e3 for j in fio_sync)
fio_sync_p99 = med(j["sync"]["lat_ns"]["percentile"]["99.000000"] / 1e3 for j in fio_sync)
fio_sync_bw = med(j["write"]["bw_bytes"] / 1e6 for j in fio_sync)
b = {n: lines(f"bench-{n}.json") for n in ["interval-1m-8", "interval-1m-16", "every-64k-16", "every-64k-1", "every-1m-1"]}
m = {n: {k: med(r[k] for r in runs) for k in ["mb_per_s", "appends_per_s", "p50_us", "p99_us", "p999_us", "max_us"]} for n, runs in b.items()}
print(f"Medians of {rounds} interleaved rounds; MB = 10^6 bytes.\n")
print("| run | MB/s | appends/s | p50 µs | p99 µs | p99.9 µs | max µs |")
print("|---|---:|---:|---:|---:|---:|---:|")
print(f"| fio seq write 1 MiB, O_DIRECT, iodepth 8 | {fio_seq:.0f} | | | | | |")
print(f"| fio 64 KiB write + fdatasync, depth 1 | {fio_sync_bw:.0f} | | fdatasync {fio_sync_p50:.0f} | fdatasync {fio_sync_p99:.0f} | | |")
names = {"interval-1m-8": "log-append 1 MiB, interval, 8 appenders",
         "interval-1m-16": "log-append 1 MiB, interval, 16 appenders",
         "every-64k-16": "log-append 64 KiB, every-batch, 16 appenders",
         "every-64k-1": "log-append 64 KiB, every-batch, 1 appender",
         "every-1m-1": "log-append 1 MiB, every-batch, 1 appender"}
for n, v in m.items():
    print(f"| {names[n]} | {v['mb_per_s']:.0f} | {v['appends_per_s']:.0f} | {v['p50_us']:.0f} | {v['p99_us']:.0f} | {v['p999_us']:.0f} | {v['max_us']:.0f} |")
print()
r1 = m["interval-1m-16"]["mb_per_s"] / fio_seq
r1_8 = m["interval-1m-8"]["mb_per_s"] / fio_seq
r2 = m["every-64k-16"]["mb_per_s"] / m["every-64k-1"]["mb_per_s"]
print(f"- 1 MiB interval appends, 16 appenders / fio sequential direct bandwidth (iodepth 8): **{r1:.2f}x** (target >= 0.9x); with 8 appenders: {r1_8:.2f}x")
print(f"- group commit, 16 appenders / 1 appender (64 KiB, every-batch): **{r2:.1f}x** (target >= 10x)")
print(f"- per-round values: interval-1m-16 MB/s {[round(r['mb_per_s']) for r in b['interval-1m-16']]}, interval-1m-8 MB/s {[round(r['mb_per_s']) for r in b['interval-1m-8']]}, fio seq MB/s {[round(j['write']['bw_bytes']/1e6) for j in lines('fio-seq-write.json')]}")
print(f"- per-round values: every-64k-16 MB/s {[round(r['mb_per_s']) for r in b['every-64k-16']]}, every-64k-1 MB/s {[round(r['mb_per_s']) for r in b['every-64k-1']]}")
PY
