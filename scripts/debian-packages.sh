# Sourced after scripts/quietly.sh by the scripts that need Debian packages, the one thing
# they install that needs root: `debian_packages PACKAGE...` installs those missing as
# root, or with `sudo -n` when that works, and otherwise stops with the apt-get line to run.
#
# The mosquitto package's service would listen on 1883, the gateway's own port, while the
# tests and benchmarks start their own Mosquitto brokers on ports of their choosing: a
# policy-rc.d refusing every start (exit 101) keeps the package from starting it, and its
# systemd unit is disabled afterwards. A policy-rc.d the machine already has is left as it is.

debian_packages() {
    local pkg missing=() as_root policy=/usr/sbin/policy-rc.d own_policy=false
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    ((${#missing[@]} > 0)) || return 0
    if ((EUID == 0)); then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        local disable=
        [[ " ${missing[*]} " == *" mosquitto "* ]] &&
            disable=" && { [ ! -d /run/systemd/system ] || systemctl disable --now mosquitto; }"
        fail "missing Debian packages: ${missing[*]}; as root, run: apt-get update && apt-get install -y $*$disable"
    fi
    if [[ " ${missing[*]} " == *" mosquitto "* && ! -e "$policy" ]]; then
        quietly "${as_root[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
        own_policy=true
    fi
    local status=0
    (
        quietly "${as_root[@]}" apt-get update
        quietly "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    ) || status=$?
    if [[ "$own_policy" == true ]]; then
        quietly "${as_root[@]}" rm -f "$policy"
    fi
    ((status == 0)) || exit "$status"
    if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null; then
        if [[ -d /run/systemd/system ]]; then
            quietly "${as_root[@]}" systemctl disable --now mosquitto
        elif systemctl is-enabled --quiet mosquitto 2>/dev/null; then
            # Not booted with systemd (a container): only the next boot is concerned.
            quietly "${as_root[@]}" systemctl disable mosquitto
        fi
    fi
}
