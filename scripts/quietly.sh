# Sourced by the scripts that install and check things, so that they are silent when all
# goes well: `fail MESSAGE` stops with the message, `quietly COMMAND...` runs a command with
# its output kept aside and shown only if it fails. Messages start with the script's name.

script_name=$(basename "$0" .sh)

fail() {
    echo "$script_name: $*" >&2
    exit 1
}

quietly() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        echo "$script_name: failed: $*" >&2
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}
