#!/usr/bin/env bash
# RF 1 vs RF 3 on a local 3-node cluster (deploy/local-cluster.sh), interleaved rounds.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=${SLUICE_BENCH:-$REPO/target/release/sluice-bench}
export SLUICE_BIN=${SLUICE_BIN:-$REPO/target/release/sluice}
DATA=${DATA_DIR:?set DATA_DIR to a directory on the disk to measure}
export SLUICE_CLUSTER_DIR=$DATA/cluster
OUT=${OUT:-$DATA/results}
rm -rf "$SLUICE_CLUSTER_DIR"; mkdir -p "$OUT"
$B limits --data-dir "$DATA" --json > $OUT/limits.json
bash $REPO/deploy/local-cluster.sh start
BROKERS=$(bash $REPO/deploy/local-cluster.sh brokers)
sleep 5
for round in 1 2 3; do
  for rf in 1 3; do
    $B produce --brokers "$BROKERS" --topic rf$rf-r$round --replication-factor $rf \
      --partitions 16 --producers 4 --record-bytes 1KiB --batch-records 100 --acks all \
      --total-bytes 256MiB --json --quiet > $OUT/p-rf$rf-r$round.json
    echo "round $round rf $rf: $(python3 -c "import json;d=json.load(open('$OUT/p-rf$rf-r$round.json'));print(round(d['mb_per_s'],1),'MB/s p99',d['p99_us'],'errors',d['errors'])")"
  done
done
for round in 1 2 3; do
  for rf in 1 3; do
    $B e2e --brokers "$BROKERS" --topic e2e-rf$rf-r$round --replication-factor $rf \
      --partitions 16 --producers 1 --consumers 1 --record-bytes 1KiB --acks all \
      --rate 20000 --duration 15 --warmup 3 --json --quiet > $OUT/e-rf$rf-r$round.json
    echo "e2e round $round rf $rf: $(python3 -c "import json;d=json.load(open('$OUT/e-rf$rf-r$round.json'));print('p50',d['p50_us'],'p99',d['p99_us'],'p999',d['p999_us'],'e2e p99',d['e2e_p99_us'],'errors',d['errors'])")"
  done
done
bash $REPO/deploy/local-cluster.sh stop
