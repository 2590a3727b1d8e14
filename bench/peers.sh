#!/usr/bin/env bash
# Cassini side by side with NATS and Mosquitto, mutual TLS everywhere, on loopback, in one run;
# and Cassini's MQTT gateway beside Mosquitto, measured with the same MQTT client (rumqttc).
#
# Installs nats-server and mosquitto from the distribution's packages when missing (apt-get),
# makes certificates with `cassini certs init`, starts each broker on 127.0.0.1 with mutual TLS,
# then runs the same scenarios (throughput, latency at two rates, fan-out, request/reply where
# the broker has it; NATS plain text: throughput, latency, fan-out) against every broker, alternating brokers inside each repetition, and
# prints the medians and the Cassini/peer ratios (`cassini-bench-peers summary`). The gateway
# (`cassini serve --mqtt`, in the same Cassini process, mutual TLS with the same certificates)
# runs throughput and latency at QoS 0 and 1, as `cassini-mqtt-qos0`/`-qos1`.
#
# Knobs (environment): REPS (3), COUNT (500000, throughput messages), DURATION (5, seconds per
# latency/request run), RATES ("5000 20000"), SUBSCRIBERS (100), FANOUT_COUNT (20000, as `cassini bench fanout`),
# OUT (target/peers-bench), and the ports CASSINI_PORT (17700), NATS_PORT (14222),
# NATS_PLAIN_PORT (14223), MQTT_PORT (18883), CASSINI_MQTT_PORT (18884); BROKERS, the brokers
# to measure (default all: "cassini nats nats-plain mosquitto-qos0 mosquitto-qos1
# cassini-mqtt-qos0 cassini-mqtt-qos1"). See docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
COUNT=${COUNT:-500000}
DURATION=${DURATION:-5}
RATES=${RATES:-"5000 20000"}
SUBSCRIBERS=${SUBSCRIBERS:-100}
FANOUT_COUNT=${FANOUT_COUNT:-20000}
CASSINI_PORT=${CASSINI_PORT:-17700}
NATS_PORT=${NATS_PORT:-14222}
NATS_PLAIN_PORT=${NATS_PLAIN_PORT:-14223}
MQTT_PORT=${MQTT_PORT:-18883}
CASSINI_MQTT_PORT=${CASSINI_MQTT_PORT:-18884}
BROKERS=${BROKERS:-"cassini nats nats-plain mosquitto-qos0 mosquitto-qos1 cassini-mqtt-qos0 cassini-mqtt-qos1"}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/peers-bench}

say() { printf '== %s\n' "$*" >&2; }

# --- the peer brokers, from the distribution's packages -------------------------------------
find_tool() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }
NATS_SERVER=$(find_tool nats-server)
MOSQUITTO=$(find_tool mosquitto)
if [ -z "$NATS_SERVER" ] || [ -z "$MOSQUITTO" ]; then
    say "installing nats-server and mosquitto (apt-get)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server mosquitto >/dev/null
    NATS_SERVER=$(find_tool nats-server)
    MOSQUITTO=$(find_tool mosquitto)
fi
[ -n "$NATS_SERVER" ] && [ -n "$MOSQUITTO" ] || { echo "nats-server or mosquitto missing" >&2; exit 1; }

say "building (release)"
cargo build --release -q -p cassini -p cassini-bench-peers
CASSINI="$TARGET/release/cassini"
PEERS="$TARGET/release/cassini-bench-peers"

mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

CERTS="$WORK/certs"
"$CASSINI" certs init --dir "$CERTS" --client dev >/dev/null

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_tcp() {
    for _ in $(seq 1 100); do port_busy "$1" && return 0; sleep 0.1; done
    echo "nothing listens on 127.0.0.1:$1 after 10 s" >&2; return 1
}
for port in "$NATS_PORT" "$NATS_PLAIN_PORT" "$MQTT_PORT" "$CASSINI_MQTT_PORT"; do
    if port_busy "$port"; then echo "port $port is taken; set another (see the header)" >&2; exit 1; fi
done

# --- start the three brokers ----------------------------------------------------------------
say "starting cassini on udp 127.0.0.1:$CASSINI_PORT, its MQTT gateway on tcp 127.0.0.1:$CASSINI_MQTT_PORT (mutual TLS)"
# The per-subscription queue cap raised to NATS's max_pending below (256 MB), so a subscriber
# that falls behind in the throughput and fan-out runs is measured, not dropped. MQTT clients
# cannot ask for a queue bound: the default bound is raised to the same (and to Mosquitto's
# max_queued_messages below) for the gateway's subscriptions.
CASSINI_QUEUE_MAX_BYTES=268435456 CASSINI_QUEUE_DEFAULT_BYTES=268435456 CASSINI_QUEUE_DEFAULT_MESSAGES=1000000 \
    RUST_LOG=warn,cassini=info "$CASSINI" serve --listen "127.0.0.1:$CASSINI_PORT" --certs "$CERTS" \
    --mqtt "127.0.0.1:$CASSINI_MQTT_PORT" >"$WORK/cassini.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q "cassini listening" "$WORK/cassini.log" && break; sleep 0.1; done
grep -q "cassini listening" "$WORK/cassini.log" || { cat "$WORK/cassini.log" >&2; exit 1; }
wait_tcp "$CASSINI_MQTT_PORT"

say "starting nats-server on 127.0.0.1:$NATS_PORT (mutual TLS) and :$NATS_PLAIN_PORT (plain text)"
cat >"$WORK/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
max_payload: 1MB
max_pending: 256MB
write_deadline: "10s"
tls {
  cert_file: "$CERTS/server.crt"
  key_file: "$CERTS/server.key"
  ca_file: "$CERTS/ca.crt"
  verify: true
  timeout: 5
}
CONF
cat >"$WORK/nats-plain.conf" <<CONF
listen: 127.0.0.1:$NATS_PLAIN_PORT
max_payload: 1MB
max_pending: 256MB
write_deadline: "10s"
CONF
"$NATS_SERVER" -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
"$NATS_SERVER" -c "$WORK/nats-plain.conf" >"$WORK/nats-plain.log" 2>&1 &
PIDS+=($!)
wait_tcp "$NATS_PORT"
wait_tcp "$NATS_PLAIN_PORT"

say "starting mosquitto on 127.0.0.1:$MQTT_PORT (mutual TLS, TCP_NODELAY)"
cat >"$WORK/mosquitto.conf" <<CONF
user $(id -un)
persistence false
log_dest stderr
log_type error
log_type warning
set_tcp_nodelay true
max_inflight_messages 100
max_queued_messages 1000000
listener $MQTT_PORT 127.0.0.1
cafile $CERTS/ca.crt
certfile $CERTS/server.crt
keyfile $CERTS/server.key
require_certificate true
use_identity_as_username true
CONF
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
wait_tcp "$MQTT_PORT"

# --- the runs ---------------------------------------------------------------------------------
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
FAILED=0
run() { # run BROKER SCENARIO ARGS...: one scenario against one broker, its JSON report appended
    local broker=$1 scenario=$2; shift 2
    case " $BROKERS " in *" $broker "*) ;; *) return 0 ;; esac
    local command
    case $broker in
        cassini) command=("$CASSINI" bench "$scenario" --server "127.0.0.1:$CASSINI_PORT" --certs "$CERTS" --name dev) ;;
        nats) command=("$PEERS" nats --server "127.0.0.1:$NATS_PORT" --certs "$CERTS" "$scenario") ;;
        nats-plain) command=("$PEERS" nats --plain --server "127.0.0.1:$NATS_PLAIN_PORT" --certs "$CERTS" "$scenario") ;;
        mosquitto-qos0) command=("$PEERS" mosquitto --qos 0 --server "127.0.0.1:$MQTT_PORT" --certs "$CERTS" "$scenario") ;;
        mosquitto-qos1) command=("$PEERS" mosquitto --qos 1 --server "127.0.0.1:$MQTT_PORT" --certs "$CERTS" "$scenario") ;;
        cassini-mqtt-qos0) command=("$PEERS" mosquitto --qos 0 --label cassini-mqtt-qos0 --server "127.0.0.1:$CASSINI_MQTT_PORT" --certs "$CERTS" "$scenario") ;;
        cassini-mqtt-qos1) command=("$PEERS" mosquitto --qos 1 --label cassini-mqtt-qos1 --server "127.0.0.1:$CASSINI_MQTT_PORT" --certs "$CERTS" "$scenario") ;;
    esac
    say "  $scenario $* [$broker]"
    if ! timeout 600 "${command[@]}" "$@" --json >>"$RESULTS" 2>"$WORK/last.err"; then
        FAILED=$((FAILED + 1))
        echo "   failed: $scenario [$broker]: $(tail -3 "$WORK/last.err")" >&2
    fi
}

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc --version)"
    echo "nats-server: $("$NATS_SERVER" --version 2>&1 | head -1)"
    echo "mosquitto: $("$MOSQUITTO" -h 2>&1 | head -1)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "repetitions: $REPS; throughput $COUNT × 64 B; latency ${DURATION}s at $RATES msg/s; fan-out 1→$SUBSCRIBERS × $FANOUT_COUNT; request ${DURATION}s"
    echo "brokers: $BROKERS"
} | tee "$OUT/conditions.txt" >&2

for rep in $(seq 1 "$REPS"); do
    say "repetition $rep of $REPS"
    for broker in cassini nats nats-plain mosquitto-qos0 mosquitto-qos1 cassini-mqtt-qos0 cassini-mqtt-qos1; do
        run "$broker" throughput --count "$COUNT" --size 64
    done
    for rate in $RATES; do
        for broker in cassini nats nats-plain mosquitto-qos0 mosquitto-qos1 cassini-mqtt-qos0 cassini-mqtt-qos1; do
            run "$broker" latency --rate "$rate" --duration "$DURATION" --size 64
        done
    done
    for broker in cassini nats nats-plain mosquitto-qos0 mosquitto-qos1; do
        run "$broker" fanout --count "$FANOUT_COUNT" --subscribers "$SUBSCRIBERS" --size 64
    done
    for broker in cassini nats; do
        run "$broker" request --count 1000000 --duration "$DURATION" --size 64
    done
done

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/conditions.txt" >&2
"$PEERS" summary "$RESULTS" | tee "$OUT/summary.md"
echo
echo "reports: $RESULTS; summary: $OUT/summary.md; conditions: $OUT/conditions.txt; failed runs: $FAILED"
