#!/usr/bin/env bash
# Compares the gateway with Mosquitto on this machine, with gateway-bench as the client.
#
# Each broker runs pinned to core 0 and the generator to core 1, so a broker gets exactly
# one core, as Mosquitto (single-threaded) uses. Every scenario runs REPS times; the order
# of the brokers alternates between repetitions, and each run gets a freshly started broker
# on a new loopback port, so no run inherits another's sessions or memory. The gateway is
# then run again on both cores (generator still on core 1, so it shares that core) to show
# how it scales. Prints, per scenario, the median and min-max of each broker and the ratio
# gateway/Mosquitto of the medians, and every run's QoS 1/2 loss and duplicate counts.
#
# Usage: bench/compare.sh [--defaults] [--quick] [--reps N] [--duration SECONDS] [--only LABELS] [--out DIR]
#        bench/compare.sh --summarize DIR [DIR...]
#   --defaults    both brokers on their shipped defaults: Mosquitto with only a listener
#                 (and allow_anonymous, which Mosquitto 2 needs to serve it) added, the
#                 gateway with its embedded configuration (only its listeners' ports moved
#                 or turned off); without it, both run tuned (queue and in-flight limits
#                 raised, $SYS and persistence off), as a capacity measurement
#   --quick       3 s runs, one repetition, 2,000 connections: a smoke run
#   --reps N      repetitions per scenario and broker (default 3)
#   --duration S  publishing seconds per throughput run (default 10)
#   --only LABELS comma-separated scenarios to run (fanin-q0,fanin-q1,fanin-q1-durable,
#                 fanout-q0,p2p-q1,latency-q1,conn; default all)
#   --out DIR     where raw results go (default bench/results/DATE)
#   --summarize   print the summary of earlier runs (several result folders are pooled)
#
# fanin-q1-durable is fanin-q1 with a persistent-session subscriber, so every message is
# written to the store before its PUBACK; it runs the gateway with storage = "memory" (as
# every other scenario does) and again with storage = "disk" (a fresh data directory per
# run, fsync = batch), and the summary gives disk/memory.
#
# Other work on the machine distorts every figure. Before each run the script waits (up
# to QUIET_WAIT=90 s) for the machine to be nearly idle; a run during which other processes
# used more than MAX_OTHERS=25 % of a core, or that failed, is run once more, and the
# summary leaves such runs out (and says how many).
#
# Needs: cargo, python3, taskset; installs mosquitto (Debian package) if it is missing,
# without starting its service (scripts/debian-packages.sh).
# Only loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=3
DURATION=10
CONFIGURATION=tuned
CONNS=20000
OUT=""
QUICK=0
ONLY=""
SUMMARIZE=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --summarize) shift; SUMMARIZE=("$@"); break ;;
        --quick) QUICK=1; REPS=1; DURATION=3; CONNS=2000; shift ;;
        --defaults) CONFIGURATION=defaults; shift ;;
        --reps) REPS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

# summarize RUNS.jsonl...: the tables, from runs no other work disturbed.
summarize() {
    python3 - "$MAX_OTHERS" "$@" <<'EOF'
import json, statistics, sys
from collections import defaultdict

max_others = float(sys.argv[1])
runs = [json.loads(line) for path in sys.argv[2:] for line in open(path) if line.strip()]
by = defaultdict(list)
failed = defaultdict(int)
disturbed = defaultdict(int)
for run in runs:
    report = run["report"]
    if report is None:
        failed[(run["label"], run["broker"])] += 1
    elif (report.get("others_cpu_pct") or 0) > max_others or report.get("broker_cpu_pct") is None:
        disturbed[(run["label"], run["broker"])] += 1
    else:
        by[(run["label"], run["broker"])].append(report)

def get(report, path):
    value = report
    for key in path.split("."):
        value = (value or {}).get(key) if isinstance(value, dict) else None
    return value

# (label, metric name, JSON path, unit, higher is better, target on the shipped defaults,
# target tuned)
METRICS = [
    ("fanin-q0", "delivered msg/s", "out_rate", "", True, ">= 10x", ">= 10x"),
    ("fanin-q1", "delivered msg/s", "out_rate", "", True, ">= 5x", ">= 15x"),
    ("fanin-q1-durable", "delivered msg/s", "out_rate", "", True, "", ""),
    ("fanout-q0", "deliveries/s", "out_rate", "", True, ">= 10x", ">= 20x"),
    ("fanout-q0", "slowest/fastest subscriber", "fairness", "", True, ">= 0.90", ">= 0.90"),
    ("p2p-q1", "delivered msg/s", "out_rate", "", True, ">= 12x", ">= 12x"),
    ("latency-q1", "p99 latency us", "latency_us.p99", "", False, "<= 1x", "<= 1x"),
    ("latency-q1", "p50 latency us", "latency_us.p50", "", False, "", ""),
    ("conn", "RSS per idle connection B", "rss_per_conn_bytes", "", False, "<= 1946 B", "<= 2048 B"),
    ("conn", "connections/s", "conn_rate", "", True, ">= 1x", ">= 1x"),
]

def fmt(x):
    if x is None:
        return "-"
    if abs(x) >= 1e6:
        return f"{x/1e6:.2f}M"
    if abs(x) >= 1e4:
        return f"{x/1e3:.0f}k"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"

def stats(label, broker, path):
    values = [v for v in (get(r, path) for r in by[(label, broker)]) if v is not None]
    if not values:
        return None, "-"
    med = statistics.median(values)
    return med, f"{fmt(med)} ({fmt(min(values))}-{fmt(max(values))})"

configurations = sorted({run.get("configuration", "tuned") for run in runs})
print(f"Configuration: {', '.join(configurations)} "
      "(defaults: both brokers as shipped; tuned: queue and in-flight limits raised)")
print()

def lost(label, broker):
    counted = [r for r in by[(label, broker)] if "lost" in r]
    if not counted:
        return "-"
    return f"{sum(r['lost'] for r in counted)} of {sum(r['expected'] for r in counted)}"

print("| scenario | metric | gateway, 1 core: median (min-max) | Mosquitto: median (min-max) | ratio gateway/Mosquitto | target | gateway, 2 cores |")
print("|---|---|---|---|---|---|---|")
defaults_only = configurations == ["defaults"]
for label, name, path, _, higher, target_defaults, target_tuned in METRICS:
    target = target_defaults if defaults_only else target_tuned
    g, gs = stats(label, "gateway", path)
    m, ms = stats(label, "mosquitto", path)
    g2, g2s = stats(label, "gateway-2cores", path)
    ratio = f"{g / m:.2f}x" if g is not None and m else "-"
    print(f"| {label} | {name} | {gs} | {ms} | {ratio} | {target} | {g2s} |")

# What each broker took in against what it delivered: one that accepts more than it
# delivers loses the difference (QoS 0 dropped, or QoS 1 acknowledged and then dropped).
print()
print("| scenario | broker | accepted msg/s | delivered msg/s | lost (all counted runs) |")
print("|---|---|---|---|---|")
for label in ["fanin-q0", "fanin-q1", "fanin-q1-durable", "fanout-q0", "p2p-q1"]:
    for broker in ["gateway", "gateway-disk", "mosquitto", "gateway-2cores"]:
        if by[(label, broker)]:
            _, accepted = stats(label, broker, "in_rate")
            _, delivered = stats(label, broker, "out_rate")
            print(f"| {label} | {broker} | {accepted} | {delivered} | {lost(label, broker)} |")

disk, disk_s = stats("fanin-q1-durable", "gateway-disk", "out_rate")
memory, _ = stats("fanin-q1-durable", "gateway", "out_rate")
if disk is not None:
    ratio = f"{disk / memory:.2f}" if memory else "-"
    print()
    print("| scenario | gateway storage = disk: median (min-max) | ratio disk/memory | target |")
    print("|---|---|---|---|")
    print(f"| fanin-q1-durable | {disk_s} | {ratio} | >= 0.5 |")

print()
print("| scenario | broker | generator CPU % | broker CPU % | everything else CPU % |")
print("|---|---|---|---|---|")
for label in ["fanin-q0", "fanin-q1", "fanin-q1-durable", "fanout-q0", "p2p-q1", "latency-q1", "conn"]:
    for broker in ["gateway", "gateway-disk", "mosquitto", "gateway-2cores"]:
        if by[(label, broker)]:
            _, gen = stats(label, broker, "cpu_pct")
            _, brk = stats(label, broker, "broker_cpu_pct")
            _, oth = stats(label, broker, "others_cpu_pct")
            print(f"| {label} | {broker} | {gen} | {brk} | {oth} |")

print()
print("| run | broker | rep | others CPU % | QoS | sent | expected | received | lost | duplicated | reordered | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for run in runs:
    r = run["report"]
    if r is None:
        print(f"| {run['label']} | {run['broker']} | {run['rep']} | - | - | FAILED | | | | | | |")
        continue
    if "sent" not in r:
        continue
    print(f"| {run['label']} | {run['broker']} | {run['rep']} | {r.get('others_cpu_pct')} | {r['qos']} | {r['sent']} | {r['expected']} "
          f"| {r['received']} | {r['lost']} | {r['duplicated']} | {r['reordered']} | {r['errors']} |")
print()
counted = {key: len(value) for key, value in by.items()}
print("Runs counted per scenario and broker: " + ", ".join(
    f"{label} {broker} {n}" for (label, broker), n in sorted(counted.items()) if n))
for (label, broker), n in sorted(disturbed.items()):
    print(f"- left out: {n} run(s) of {label} against {broker} during which other processes "
          f"used more than {max_others:g} % of a core (or the broker vanished)")
for (label, broker), n in sorted(failed.items()):
    print(f"- left out: {n} failed run(s) of {label} against {broker}")
EOF
}

MAX_OTHERS=${MAX_OTHERS:-25}
if [[ ${#SUMMARIZE[@]} -gt 0 ]]; then
    files=()
    for dir in "${SUMMARIZE[@]}"; do files+=("$dir/runs.jsonl"); done
    summarize "${files[@]}"
    exit 0
fi

BROKER_CORE=0
GEN_CORE=1
BOTH_CORES=0,1
if [[ $(nproc) -lt 2 ]]; then
    echo "warning: fewer than 2 cores; broker and generator share core 0" >&2
    GEN_CORE=0
    BOTH_CORES=0
fi
# A run that takes longer than this is killed and reported as failed.
RUN_LIMIT=$((DURATION + 120))

# The `perf` profile: release plus thin LTO, the build to deploy.
cargo build --profile perf -p gateway -p gateway-bench
GATEWAY=target/perf/gateway
BENCH=target/perf/gateway-bench
MOSQUITTO=/usr/sbin/mosquitto
# shellcheck source=scripts/quietly.sh
source scripts/quietly.sh
# shellcheck source=scripts/debian-packages.sh
source scripts/debian-packages.sh
# Installed without its service: 1883 stays free.
debian_packages mosquitto

# Both the broker and the generator hold one descriptor per connection.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if [[ $NOFILE != unlimited && $NOFILE -lt $((CONNS + 100)) ]]; then
    echo "warning: open-file limit is $NOFILE and cannot be raised; conn runs use $((NOFILE - 100)) connections instead of $CONNS" >&2
    CONNS=$((NOFILE - 100))
fi

OUT=${OUT:-bench/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RUNS=$OUT/runs.jsonl
: >"$RUNS"

BROKER_PID=""
GEN_PID=""
# shellcheck source=bench/machine.sh
source bench/machine.sh
cleanup() {
    stop_pid "$GEN_PID"
    GEN_PID=""
    stop_pid "$BROKER_PID"
    BROKER_PID=""
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

wait_listening() {
    local port=$1
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# start_broker NAME CORES: starts a fresh broker; sets BROKER_PID and PORT.
start_broker() {
    local name=$1 cores=$2
    PORT=$(free_port)
    case $name in
        mosquitto)
            if [[ $CONFIGURATION == defaults ]]; then
                cat >"$OUT/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
EOF
            else
                cat >"$OUT/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 100000
max_queued_bytes 0
max_inflight_messages 0
max_connections -1
memory_limit 0
sys_interval 0
log_dest none
EOF
            fi
            taskset -c "$cores" "$MOSQUITTO" -c "$OUT/mosquitto.conf" >>"$OUT/mosquitto.log" 2>&1 &
            ;;
        gateway*)
            # Where it listens is all the two configurations share: the other listeners
            # are off so that no default port clashes with anything else on the machine.
            local tuning=()
            if [[ $CONFIGURATION == tuned ]]; then
                local storage=memory
                if [[ $name == gateway-disk ]]; then storage=disk; fi
                tuning=(
                    GATEWAY_STORAGE__BACKEND=$storage
                    GATEWAY_MQTT__MAX_QUEUED_MESSAGES=100000
                    GATEWAY_MQTT__MAX_QUEUED_BYTES=0
                    GATEWAY_MQTT__MAX_INFLIGHT=65535
                    GATEWAY_SYS__ENABLE=false
                    GATEWAY_LOG__LEVEL=warn
                )
            fi
            env "${tuning[@]}" \
            GATEWAY_STORAGE__DATA_DIR="$(mktemp -d "$OUT/store.XXXXXX")" \
            GATEWAY_LISTENERS__TCP__DEFAULT__BIND=127.0.0.1:$PORT \
            GATEWAY_LISTENERS__WS__DEFAULT__ENABLE=false \
            GATEWAY_LISTENERS__QUIC__DEFAULT__ENABLE=false \
            GATEWAY_GATEWAY__MQTTSN__ENABLE=false \
            GATEWAY_GATEWAY__COAP__ENABLE=false \
            GATEWAY_GATEWAY__LWM2M__ENABLE=false \
            GATEWAY_GATEWAY__STOMP__ENABLE=false \
                taskset -c "$cores" "$GATEWAY" >>"$OUT/gateway.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    if ! wait_listening "$PORT"; then
        echo "error: $name did not start listening on $PORT (see $OUT/$name.log)" >&2
        exit 1
    fi
}


# run_one LABEL BROKER CORES REP ARGS...: a run, and a second one if the first failed or
# other work disturbed it (both are recorded; the summary skips the disturbed one).
run_one() {
    attempt_one "$@"
    if [[ $LAST_OK -eq 0 ]]; then
        echo "  (running it again)" >&2
        attempt_one "$@"
    fi
}

# attempt_one LABEL BROKER CORES REP ARGS...: one generator run against a fresh broker;
# sets LAST_OK to 1 if it finished undisturbed.
attempt_one() {
    local label=$1 broker=$2 cores=$3 rep=$4
    shift 4
    local idle_before
    idle_before=$(wait_for_quiet)
    start_broker "$broker" "$cores"
    local base="$OUT/$label.$broker.$rep"
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    local status=0
    # In the background, so that an interrupt reaches the trap at once.
    timeout "$RUN_LIMIT" taskset -c "$GEN_CORE" "$BENCH" "$@" \
        --size 64 --version 3.1.1 --port "$PORT" --broker-pid "$BROKER_PID" --quiet \
        >"$base.out" 2>"$base.err" &
    GEN_PID=$!
    wait "$GEN_PID" || status=$?
    GEN_PID=""
    cleanup
    local line
    line=$(grep '^{"scenario":' "$base.out" || true)
    LAST_OK=0
    if [[ $status -ne 0 || -z $line ]]; then
        echo "  $label $broker rep $rep: FAILED (exit $status, see $base.err)" >&2
        line=null
    else
        if python3 -c 'import json, sys; r = json.loads(sys.argv[1]); sys.exit(0 if (r.get("others_cpu_pct") or 0) <= float(sys.argv[2]) and r.get("broker_cpu_pct") is not None else 1)' "$line" "$MAX_OTHERS"; then
            LAST_OK=1
        fi
        python3 - "$line" "$label" "$broker" <<'EOF' >&2
import json, sys
r, label, broker = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
if "conn_rate" in r:
    what = f"{r['conn_rate']:.0f} conn/s, {r.get('rss_per_conn_bytes')} B/conn"
elif label.startswith("latency"):
    lat = r.get("latency_us") or {}
    what = f"p99 {lat.get('p99')} us"
else:
    what = f"out {r['out_rate']:.0f} msg/s, lost {r['lost']}, dup {r['duplicated']}"
print(f"  {label:<11} {broker:<14} {what}  (CPU % of a core: generator {r.get('cpu_pct')}, "
      f"broker {r.get('broker_cpu_pct')}, everything else {r.get('others_cpu_pct')})")
EOF
    fi
    printf '{"label":"%s","broker":"%s","configuration":"%s","rep":%s,"load":%s,"busy_before":%s,"report":%s}\n' \
        "$label" "$broker" "$CONFIGURATION" "$rep" "$load" "$idle_before" "$line" >>"$RUNS"
}

D=$DURATION
declare -A ARGS=(
    [fanin-q0]="fanin --qos 0 --publishers 10 --subscribers 1 --duration $D"
    [fanin-q1]="fanin --qos 1 --publishers 10 --subscribers 1 --duration $D"
    [fanin-q1-durable]="fanin --qos 1 --publishers 10 --subscribers 1 --persistent-subscribers --duration $D"
    [fanout-q0]="fanout --qos 0 --publishers 1 --subscribers 100 --duration $D"
    [p2p-q1]="p2p --qos 1 --pairs 100 --duration $D"
    [latency-q1]="latency --qos 1 --total-rate 5000 --pairs 10 --duration $D"
    [conn]="conn --connections $CONNS --conn-concurrency 100 --hold 3"
)
ORDER=(fanin-q0 fanin-q1 fanin-q1-durable fanout-q0 p2p-q1 latency-q1 conn)
SCALING=(fanin-q0 fanin-q1 fanout-q0 p2p-q1)
if [[ -n "$ONLY" ]]; then
    IFS=, read -r -a wanted <<<"$ONLY"
    for label in "${wanted[@]}"; do
        [[ -n "${ARGS[$label]:-}" ]] || { echo "unknown scenario $label" >&2; exit 2; }
    done
    keep() { local label; for label in "$@"; do [[ ",$ONLY," == *",$label,"* ]] && echo "$label"; done; }
    mapfile -t ORDER < <(keep "${ORDER[@]}")
    mapfile -t SCALING < <(keep "${SCALING[@]}")
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "memory: $(grep MemTotal /proc/meminfo | awk '{printf "%.1f GiB", $2/1048576}')"
    echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1)"
    echo "gateway: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "open-file limit: $NOFILE (conn runs: $CONNS connections)"
    echo "configuration: $CONFIGURATION"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

for rep in $(seq 1 "$REPS"); do
    if (( rep % 2 == 1 )); then brokers=(gateway mosquitto); else brokers=(mosquitto gateway); fi
    echo "== repetition $rep of $REPS (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/machine.txt"
    top -bn1 | sed -n '8,10p' | sed 's/^/   busiest now: /' >>"$OUT/machine.txt"
    for label in "${ORDER[@]}"; do
        for broker in "${brokers[@]}"; do
            # shellcheck disable=SC2086
            run_one "$label" "$broker" "$BROKER_CORE" "$rep" ${ARGS[$label]}
        done
        if [[ $label == fanin-q1-durable ]]; then
            # shellcheck disable=SC2086
            run_one "$label" gateway-disk "$BROKER_CORE" "$rep" ${ARGS[$label]}
        fi
    done
    for label in "${SCALING[@]}"; do
        # shellcheck disable=SC2086
        run_one "$label" gateway-2cores "$BOTH_CORES" "$rep" ${ARGS[$label]}
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

summarize "$RUNS" | tee "$OUT/summary.md"
echo "raw results: $OUT"
