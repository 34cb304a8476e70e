#!/usr/bin/env bash
# The single-node end-to-end benchmark of docs/BENCHMARKS.md: a real `sluice serve` on this
# machine, loaded by `sluice-bench produce`/`consume` over loopback with 1 KiB records, beside
# the limits measured in the same run: iperf3 over loopback and fio on the broker's disk.
# Rounds are interleaved so every figure sees the same (noisy, shared) machine; medians at the end.
#
#   bench/e2e-suite.sh [DIR]     (DIR: the broker's data disk, default ./bench-data; ROUNDS=3,
#                                 SHARDS=2, TOTAL=512MiB per produce run)
#
# Needs fio, iperf3, python3 and a release build (built here). Prints a Markdown table; raw
# JSON of every run goes to $OUT (default target/bench/e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-./bench-data}
ROUNDS=${ROUNDS:-3}
SHARDS=${SHARDS:-2}
TOTAL=${TOTAL:-512MiB}
OUT=${OUT:-target/bench/e2e}
for tool in fio iperf3 python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (Debian: apt-get install -y $tool)" >&2; exit 2; }
done
mkdir -p "$DIR" "$OUT"
rm -f "$OUT"/*.json
cargo build --release -q -p sluice-bench -p sluice-broker
BENCH=${CARGO_TARGET_DIR:-target}/release/sluice-bench
SLUICE=${CARGO_TARGET_DIR:-target}/release/sluice
DATA="$DIR/sluice-e2e-$$"
PORT=${PORT:-19092}
ADDR=127.0.0.1:$PORT

"$SLUICE" serve --data-dir "$DATA" --listen "$ADDR" --shards "$SHARDS" >"$OUT/serve.out" 2>"$OUT/serve.log" &
BROKER=$!
trap 'kill $BROKER 2>/dev/null; wait $BROKER 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$OUT/serve.out" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$OUT/serve.out" || { echo "broker did not start: $(cat "$OUT/serve.log")" >&2; exit 1; }

fio_run() { # name, extra fio args...
  local name=$1; shift
  rm -f "$DIR/fio.dat"
  fio --name="$name" --filename="$DIR/fio.dat" --direct=1 --output-format=json "$@" >"$OUT/fio.tmp"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d["jobs"][0]))' "$OUT/fio.tmp" >>"$OUT/fio-$name.json"
  rm -f "$OUT/fio.tmp" "$DIR/fio.dat"
}
iperf_run() {
  iperf3 -s -1 -p $((PORT + 100)) -B 127.0.0.1 >/dev/null 2>&1 &
  local server=$!
  sleep 0.3
  iperf3 -c 127.0.0.1 -p $((PORT + 100)) -t 5 -J >"$OUT/iperf.tmp"
  wait $server || true
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({"mb_per_s": d["end"]["sum_received"]["bits_per_second"]/8e6}))' "$OUT/iperf.tmp" >>"$OUT/iperf.json"
  rm -f "$OUT/iperf.tmp"
}
produce_run() { # name, topic, partitions, acks, extra...
  local name=$1 topic=$2 partitions=$3 acks=$4; shift 4
  "$BENCH" produce --brokers "$ADDR" --topic "$topic" --partitions "$partitions" --acks "$acks" \
    --total-bytes "$TOTAL" --record-bytes 1KiB --json "$@" >>"$OUT/produce-$name.json"
}
consume_run() { # name, topic, extra...
  local name=$1 topic=$2; shift 2
  "$BENCH" consume --brokers "$ADDR" --topic "$topic" --json "$@" >>"$OUT/consume-$name.json"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  iperf_run
  fio_run seq-write --rw=write --bs=1M --iodepth=8 --ioengine=io_uring --size=1G --fallocate=native
  produce_run p1-acks1 "r$round-p1-a1" 1 1
  produce_run p1-acksall "r$round-p1-aall" 1 all
  produce_run p16-acks1 "r$round-p16-a1" 16 1
  produce_run p16-acksall "r$round-p16-aall" 16 all
  produce_run p16-acks1-fwd "r$round-p16-a1-fwd" 16 1 --no-shard-aware
  produce_run p16-acksall-fwd "r$round-p16-aall-fwd" 16 all --no-shard-aware
  consume_run p1 "r$round-p1-aall"
  consume_run p16 "r$round-p16-aall"
  consume_run p16-fwd "r$round-p16-aall-fwd" --no-shard-aware
  for t in p1-a1 p1-aall p16-a1 p16-aall p16-a1-fwd p16-aall-fwd; do
    "$SLUICE" topic delete "r$round-$t" --brokers "$ADDR" >/dev/null
  done
done

python3 - "$OUT" "$ROUNDS" "$SHARDS" "$TOTAL" <<'PY'
import json, statistics, sys, os
out, rounds, shards, total = sys.argv[1:5]
def lines(name): return [json.loads(l) for l in open(os.path.join(out, name))]
med = statistics.median
iperf = med(j["mb_per_s"] for j in lines("iperf.json"))
fio = med(j["write"]["bw_bytes"] / 1e6 for j in lines("fio-seq-write.json"))
print(f"Medians of {rounds} interleaved rounds, {shards} shards, {total} of 1 KiB records per produce run; MB = 10^6 bytes of record values.\n")
print(f"Limits in the same run: iperf3 loopback **{iperf:.0f} MB/s**, fio 1 MiB O_DIRECT sequential writes (iodepth 8) **{fio:.0f} MB/s**.\n")
print("| run | partitions | acks | routing | MB/s | records/s | p50 µs | p99 µs | p99.9 µs | / loopback | / disk |")
print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
for n, p, a, r in [("p1-acks1", 1, "1", "shard-aware"), ("p1-acksall", 1, "all", "shard-aware"),
                   ("p16-acks1", 16, "1", "shard-aware"), ("p16-acksall", 16, "all", "shard-aware"),
                   ("p16-acks1-fwd", 16, "1", "forwarded"), ("p16-acksall-fwd", 16, "all", "forwarded")]:
    runs = lines(f"produce-{n}.json")
    mb = med(x["mb_per_s"] for x in runs)
    rs = med(x["records_per_s"] for x in runs)
    lat = {k: med(x["latency"][k] for x in runs) for k in ["p50_us", "p99_us", "p999_us"]}
    print(f"| produce | {p} | {a} | {r} | {mb:.0f} | {rs:.0f} | {lat['p50_us']:.0f} | {lat['p99_us']:.0f} | {lat['p999_us']:.0f} | {mb/iperf:.2f} | {mb/fio:.2f} |")
for n, p, r in [("p1", 1, "shard-aware"), ("p16", 16, "shard-aware"), ("p16-fwd", 16, "forwarded")]:
    runs = lines(f"consume-{n}.json")
    mb = med(x["mb_per_s"] for x in runs)
    rs = med(x["records_per_s"] for x in runs)
    print(f"| consume | {p} | | {r} | {mb:.0f} | {rs:.0f} | | | | {mb/iperf:.2f} | |")
print()
for n in ["p1-acks1", "p1-acksall", "p16-acks1", "p16-acksall", "p16-acks1-fwd", "p16-acksall-fwd"]:
    print(f"- produce {n} MB/s per round: {[round(x['mb_per_s']) for x in lines(f'produce-{n}.json')]}")
for n in ["p1", "p16", "p16-fwd"]:
    print(f"- consume {n} MB/s per round: {[round(x['mb_per_s']) for x in lines(f'consume-{n}.json')]}")
print(f"- iperf3 MB/s per round: {[round(j['mb_per_s']) for j in lines('iperf.json')]}; fio MB/s per round: {[round(j['write']['bw_bytes']/1e6) for j in lines('fio-seq-write.json')]}")
PY
