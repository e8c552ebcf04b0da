#!/usr/bin/env bash
# DTLS cost on one core: CoAP publishes per second over DTLS (with and without a connection
# ID in the clients' records) against plain UDP, and DTLS handshakes per second, the gateway on its embedded configuration (a key file added)
# pinned to one core and `coap-bench` to the other.
#
#   bench/dtls.sh [--reps N] [--duration S] [--out DIR]
#   bench/dtls.sh --summarize DIR...
#
# Each publish run has CLIENTS (default 50) CoAP clients, each with one confirmable
# POST /ps/{topic} outstanding (RFC 7252's NSTART = 1), 64-byte payloads, and one MQTT
# subscriber that counts what is delivered: accepted = answered 2.04, lost = accepted and
# never delivered. The handshake runs keep CONCURRENCY (default 32) PSK handshakes under
# way from as many sockets over 32 loopback addresses, each closed by a close_notify once
# done. The client is dimpl, which accepts one HelloVerifyRequest only, so the listener
# runs with stateless_cookies = false (its engine's own cookie exchange, one round trip
# fewer than the default's two).
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=3
DURATION=10
OUT=""
SUMMARIZE=()
CLIENTS=${CLIENTS:-50}
CONCURRENCY=${CONCURRENCY:-32}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --summarize) shift; SUMMARIZE=("$@"); break ;;
        --reps) REPS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
MAX_OTHERS=${MAX_OTHERS:-25}

summarize() {
    python3 - "$MAX_OTHERS" "$@" <<'EOF'
import json, statistics, sys
max_others = float(sys.argv[1])
runs = [json.loads(line) for path in sys.argv[2:] for line in open(path) if line.strip()]
by, skipped = {}, {}
for run in runs:
    r = run["report"]
    if r is None or (r.get("others_cpu_pct") or 0) > max_others or r.get("broker_cpu_pct") is None:
        skipped[run["label"]] = skipped.get(run["label"], 0) + 1
        continue
    by.setdefault(run["label"], []).append(r)
def cell(values, fmt):
    if not values:
        return "-"
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"
si = lambda v: f"{v/1e6:.2f}M" if v >= 1e6 else (f"{v/1e3:.1f}k" if v >= 1e3 else f"{v:.0f}")
us = lambda v: f"{v:.1f} µs"
print("| run | rate, median (range) | broker CPU, % of a core | broker CPU per operation | accepted / delivered / lost |")
print("|---|---|---|---|---|")
rates = {}
for label, key in [("coap-udp", "in_rate"), ("coap-dtls", "in_rate"), ("coap-dtls-cid", "in_rate"), ("handshake", "handshake_rate")]:
    reports = by.get(label, [])
    values = [r[key] for r in reports]
    rates[label] = statistics.median(values) if values else None
    cpu = [r["broker_cpu_pct"] for r in reports]
    per_op = [r["broker_cpu_pct"] / 100 / r[key] * 1e6 for r in reports if r[key] > 0]
    if label == "handshake":
        counts = f"{sum(r['completed'] for r in reports):,} completed, {sum(r['failed'] for r in reports)} failed"
    else:
        counts = (f"{sum(r['accepted'] for r in reports):,} / {sum(r['delivered'] for r in reports):,} / "
                  f"{sum(r['lost'] for r in reports)}")
    note = f" ({skipped[label]} disturbed left out)" if skipped.get(label) else ""
    print(f"| {label}{note} | {cell(values, si)}/s | {cell(cpu, lambda v: f'{v:.0f}')} | {cell(per_op, us)} | {counts} |")
if rates.get("coap-udp") and rates.get("coap-dtls"):
    print(f"\nCoAP publishes over DTLS / over UDP: {rates['coap-dtls'] / rates['coap-udp']:.2f}")
if rates.get("coap-dtls") and rates.get("coap-dtls-cid"):
    print(f"CoAP publishes over DTLS with a connection ID / without: {rates['coap-dtls-cid'] / rates['coap-dtls']:.2f}")
EOF
}

if ((${#SUMMARIZE[@]} > 0)); then
    files=()
    for dir in "${SUMMARIZE[@]}"; do files+=("$dir/runs.jsonl"); done
    summarize "${files[@]}"
    exit 0
fi

cargo build --profile perf -p gateway -p gateway-bench
GATEWAY=target/perf/gateway
BENCH=target/perf/coap-bench
OUT=${OUT:-bench/results/dtls-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUNS=$OUT/runs.jsonl
: >"$RUNS"
for i in $(seq 0 $((CLIENTS > CONCURRENCY ? CLIENTS : CONCURRENCY))); do
    echo "bench-$i:bench-secret-$i"
done >"$OUT/psk.txt"

BROKER_PID=""
# shellcheck source=bench/machine.sh
source bench/machine.sh
cleanup() {
    stop_pid "$BROKER_PID"
    BROKER_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# run LABEL ARGS...: a fresh gateway on core 0, coap-bench ARGS on core 1.
run() {
    local label=$1
    shift
    wait_for_quiet >/dev/null
    local mqtt coap coaps
    mqtt=$(free_port)
    coap=$(free_port)
    coaps=$(free_port)
    GATEWAY_STORAGE__DATA_DIR="$(mktemp -d "$OUT/store.XXXXXX")" \
    GATEWAY_LISTENERS__TCP__DEFAULT__BIND=127.0.0.1:$mqtt \
    GATEWAY_LISTENERS__WS__DEFAULT__ENABLE=false \
    GATEWAY_LISTENERS__QUIC__DEFAULT__ENABLE=false \
    GATEWAY_GATEWAY__MQTTSN__ENABLE=false \
    GATEWAY_GATEWAY__LWM2M__ENABLE=false \
    GATEWAY_GATEWAY__STOMP__ENABLE=false \
    GATEWAY_GATEWAY__COAP__LISTENERS__TCP__DEFAULT__ENABLE=false \
    GATEWAY_GATEWAY__COAP__LISTENERS__UDP__DEFAULT__BIND=127.0.0.1:$coap \
    GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__BIND=127.0.0.1:$coaps \
    GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__STATELESS_COOKIES=false \
    GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__DTLS_OPTIONS__PSK_FILE="$OUT/psk.txt" \
        taskset -c 0 "$GATEWAY" >>"$OUT/gateway.log" 2>&1 &
    BROKER_PID=$!
    # Ready once the MQTT listener completes a CONNECT: the adapters start before it.
    local ready=0
    for _ in $(seq 1 100); do
        if mosquitto_pub -h 127.0.0.1 -p "$mqtt" -t bench/ready -n 2>/dev/null; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [[ $ready -eq 0 ]]; then
        echo "error: the gateway did not start (see $OUT/gateway.log)" >&2
        exit 1
    fi
    local args=()
    case $label in
        coap-udp) args=(publish --port "$coap" --mqtt-port "$mqtt" --clients "$CLIENTS") ;;
        coap-dtls) args=(publish --port "$coaps" --mqtt-port "$mqtt" --clients "$CLIENTS" --psk-file "$OUT/psk.txt") ;;
        coap-dtls-cid) args=(publish --port "$coaps" --mqtt-port "$mqtt" --clients "$CLIENTS" --psk-file "$OUT/psk.txt" --connection-id) ;;
        handshake) args=(handshake --port "$coaps" --concurrency "$CONCURRENCY" --psk-file "$OUT/psk.txt") ;;
    esac
    local line
    line=$(taskset -c 1 "$BENCH" "${args[@]}" --duration "$DURATION" --broker-pid "$BROKER_PID" \
        2>>"$OUT/coap-bench.err" | grep '^{"' || echo null)
    cleanup
    echo "  $label: $line" | cut -c1-220 >&2
    printf '{"label":"%s","report":%s}\n' "$label" "$line" >>"$RUNS"
}

for rep in $(seq 1 "$REPS"); do
    echo "== repetition $rep of $REPS" >&2
    for label in coap-udp coap-dtls coap-dtls-cid handshake; do
        run "$label"
    done
done
summarize "$RUNS" | tee "$OUT/summary.md"
echo "raw results: $OUT"
