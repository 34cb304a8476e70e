#!/usr/bin/env bash
# A local 3-node Sluice cluster on 127.0.0.1, for development and tests.
#
#   deploy/local-cluster.sh start          start every node that is not running (certificates
#                                          made on first use), wait until each listens
#   deploy/local-cluster.sh stop           SIGTERM every node, SIGKILL after 30 s
#   deploy/local-cluster.sh kill NODE      SIGKILL one node (a crash)
#   deploy/local-cluster.sh restart NODE   stop the node if it runs (SIGTERM), start it again
#   deploy/local-cluster.sh status         one line per node; exit 0 when all run, 1 otherwise
#   deploy/local-cluster.sh brokers        the client addresses, comma-separated
#
# Environment:
#   SLUICE_CLUSTER_DIR        where everything lives (default ./sluice-cluster): certs/,
#                             node-N/ (data), node-N.log (stderr), node-N.out (stdout),
#                             node-N.pid
#   SLUICE_BIN                the sluice binary (default: target/release/sluice of this
#                             repository, else `sluice` on PATH)
#   SLUICE_CLUSTER_BASE_PORT  node N uses ports BASE+20N .. BASE+20N+19 (default 19092):
#                             client BASE+20N (shard s: +1+s), metrics BASE+20N+9,
#                             peer (controller QUIC) BASE+20N+10 (shard s replicates on +11+s)
#   SLUICE_CLUSTER_SHARDS     shards per node (default 1, at most 8)
#   SLUICE_SERVE_ARGS         more `sluice serve` arguments for every node
set -euo pipefail

NODES=3
DIR=${SLUICE_CLUSTER_DIR:-./sluice-cluster}
BASE=${SLUICE_CLUSTER_BASE_PORT:-19092}
SHARDS=${SLUICE_CLUSTER_SHARDS:-1}
HOST=127.0.0.1
# Seconds to wait for a node to listen, and for a SIGTERMed node to exit.
START_TIMEOUT=60
STOP_TIMEOUT=30

die() {
    echo "local-cluster: $*" >&2
    exit 2
}

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $SHARDS =~ ^[1-8]$ ]] || die "SLUICE_CLUSTER_SHARDS must be 1 to 8, not '$SHARDS'"
[[ $BASE =~ ^[0-9]+$ ]] && ((BASE >= 1024 && BASE + 20 * NODES <= 65535)) ||
    die "SLUICE_CLUSTER_BASE_PORT must leave room for $NODES blocks of 20 ports, not '$BASE'"

find_bin() {
    if [[ -n ${SLUICE_BIN:-} ]]; then
        [[ -x $SLUICE_BIN ]] || die "SLUICE_BIN=$SLUICE_BIN is not an executable"
        echo "$SLUICE_BIN"
        return
    fi
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [[ -x $repo/target/release/sluice ]]; then
        echo "$repo/target/release/sluice"
    elif command -v sluice >/dev/null 2>&1; then
        command -v sluice
    else
        die "no sluice binary: build it (cargo build --release --bin sluice), put it on PATH or set SLUICE_BIN"
    fi
}

client_port() { echo $((BASE + 20 * $1)); }
metrics_port() { echo $((BASE + 20 * $1 + 9)); }
peer_port() { echo $((BASE + 20 * $1 + 10)); }

cluster_arg() {
    local i list=()
    for ((i = 0; i < NODES; i++)); do list+=("$i@$HOST:$(peer_port "$i")"); done
    (IFS=,; echo "${list[*]}")
}

brokers() {
    local i list=()
    for ((i = 0; i < NODES; i++)); do list+=("$HOST:$(client_port "$i")"); done
    (IFS=,; echo "${list[*]}")
}

check_node() {
    [[ $1 =~ ^[0-9]+$ ]] && (($1 < NODES)) || die "NODE must be 0 to $((NODES - 1)), not '$1'"
}

# The pid of node $1 if it runs (a pid file naming a live sluice process), else nothing.
node_pid() {
    local file="$DIR/node-$1.pid" pid
    [[ -f $file ]] || return 0
    pid=$(<"$file")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "serve --node-id $1 "; then
        echo "$pid"
    fi
}

# Waits until process $1 is gone, at most $2 seconds; returns 1 if it is still there.
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        # A zombie (our own child in a shell that has not reaped it) counts as gone.
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && return 0
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

listening_lines() {
    local file="$DIR/node-$1.out"
    if [[ -f $file ]]; then
        grep -c '^listening on ' "$file" || true
    else
        echo 0
    fi
}

# Starts node $1 in the background (not waiting for it).
spawn_node() {
    local i=$1 bin
    bin=$(find_bin)
    mkdir -p "$DIR/node-$i"
    echo "=== $(date -u +%FT%TZ) start node $i ===" >>"$DIR/node-$i.log"
    # shellcheck disable=SC2086 # SLUICE_SERVE_ARGS is a list of words.
    nohup "$bin" serve --node-id "$i" --cluster "$(cluster_arg)" --cert-dir "$DIR/certs" \
        --data-dir "$DIR/node-$i" --listen "$HOST:$(client_port "$i")" --shards "$SHARDS" \
        --metrics-listen "$HOST:$(metrics_port "$i")" ${SLUICE_SERVE_ARGS:-} \
        </dev/null >>"$DIR/node-$i.out" 2>>"$DIR/node-$i.log" &
    echo $! >"$DIR/node-$i.pid"
}

# Waits until node $1 prints a `listening on` line beyond the $2 it had.
await_node() {
    local i=$1 before=$2 deadline=$((SECONDS + START_TIMEOUT)) pid
    pid=$(<"$DIR/node-$i.pid")
    while (($(listening_lines "$i") <= before)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "local-cluster: node $i exited during start-up; the end of $DIR/node-$i.log:" >&2
            tail -n 20 "$DIR/node-$i.log" >&2
            rm -f "$DIR/node-$i.pid"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "local-cluster: node $i did not listen within ${START_TIMEOUT}s; see $DIR/node-$i.log" >&2
            exit 1
        fi
        sleep 0.1
    done
}

ensure_certs() {
    mkdir -p "$DIR"
    if [[ ! -f $DIR/certs/ca.pem ]]; then
        local nodes
        nodes=$(seq -s, 0 $((NODES - 1)))
        "$(find_bin)" cert dev --dir "$DIR/certs" --nodes "$nodes" >/dev/null
    fi
}

start_nodes() {
    ensure_certs
    local i before=() started=()
    # Spawn every node first: the controller needs a quorum before any node is of use.
    for i in "$@"; do
        if [[ -n $(node_pid "$i") ]]; then
            echo "node $i already running (pid $(node_pid "$i"))"
            continue
        fi
        before[i]=$(listening_lines "$i")
        spawn_node "$i"
        started+=("$i")
    done
    for i in "${started[@]+"${started[@]}"}"; do
        await_node "$i" "${before[i]}"
        echo "node $i started (pid $(<"$DIR/node-$i.pid"), client $HOST:$(client_port "$i"))"
    done
}

stop_node() {
    local i=$1 pid
    pid=$(node_pid "$i")
    if [[ -z $pid ]]; then
        rm -f "$DIR/node-$i.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
        echo "local-cluster: node $i did not stop within ${STOP_TIMEOUT}s: SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "node $i (pid $pid) survived SIGKILL"
    fi
    rm -f "$DIR/node-$i.pid"
    echo "node $i stopped"
}

kill_node() {
    local i=$1 pid
    pid=$(node_pid "$i")
    [[ -n $pid ]] || die "node $i is not running"
    kill -KILL "$pid"
    wait_gone "$pid" 10 || die "node $i (pid $pid) survived SIGKILL"
    rm -f "$DIR/node-$i.pid"
    echo "node $i killed (SIGKILL, pid $pid)"
}

status() {
    local i pid down=0
    for ((i = 0; i < NODES; i++)); do
        pid=$(node_pid "$i")
        if [[ -n $pid ]]; then
            echo "node $i running pid $pid client $HOST:$(client_port "$i") peer $HOST:$(peer_port "$i") data $DIR/node-$i"
        else
            echo "node $i stopped client $HOST:$(client_port "$i") peer $HOST:$(peer_port "$i") data $DIR/node-$i"
            down=$((down + 1))
        fi
    done
    ((down == 0))
}

all_nodes() { seq 0 $((NODES - 1)); }

case ${1:-} in
start)
    [[ $# -eq 1 ]] || usage
    # shellcheck disable=SC2046 # one word per node id.
    start_nodes $(all_nodes)
    echo "brokers: $(brokers)"
    ;;
stop)
    [[ $# -eq 1 ]] || usage
    for i in $(all_nodes); do stop_node "$i"; done
    ;;
kill)
    [[ $# -eq 2 ]] || usage
    check_node "$2"
    kill_node "$2"
    ;;
restart)
    [[ $# -eq 2 ]] || usage
    check_node "$2"
    stop_node "$2"
    start_nodes "$2"
    ;;
status)
    [[ $# -eq 1 ]] || usage
    status
    ;;
brokers)
    [[ $# -eq 1 ]] || usage
    brokers
    ;;
*)
    usage
    ;;
esac
