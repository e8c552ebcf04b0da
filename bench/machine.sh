# Shell functions the benchmark scripts share: sourced, not run.

# Ends a background process started by the script, if PID is set.
stop_pid() {
    local pid=$1
    if [[ -n $pid ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

# A TCP port free on loopback now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Busy time of all cores over one second, in % of one core (steal included).
machine_busy() {
    local a b
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
    awk -v a="$a" -v b="$b" -v n="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " ");
        total = y[2] - x[2]; if (total <= 0) { print 0; exit }
        printf "%.0f", (y[1] - x[1]) / total * 100 * n }'
}

# Other work on this machine (other users' builds) distorts every figure: wait up to
# QUIET_WAIT seconds for less than QUIET_BUSY % of one core in use before each run.
QUIET_BUSY=${QUIET_BUSY:-25}
QUIET_WAIT=${QUIET_WAIT:-90}
wait_for_quiet() {
    local waited=0 busy
    busy=$(machine_busy)
    while (( busy > QUIET_BUSY && waited < QUIET_WAIT )); do
        sleep 4
        waited=$((waited + 5))
        busy=$(machine_busy)
    done
    echo "$busy"
}
