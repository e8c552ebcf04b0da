#!/usr/bin/env bash
# Installs the reference clients that interop-tests/ drives, when they are missing:
#   - mosquitto_pub / mosquitto_sub and the mosquitto broker (Debian packages),
#   - openssl, which makes the TLS tests' certificates and asks TLS listeners what they
#     present (s_client), and haproxy, the PROXY protocol
#     tests' load balancer (Debian packages),
#   - paho-mqtt for Python (PyPI, pinned below),
#   - the MQTT-SN client mqtt-sn-12 for Python (PyPI, pinned below),
#   - aioquic, the QUIC implementation under the MQTT over QUIC test client (PyPI, pinned below),
#   - libcoap's coap-client (Debian libcoap3-bin: coap-client-notls, and coap-client-openssl
#     and coap-client-gnutls for CoAP over DTLS) and aiocoap (PyPI, pinned below) with
#     websockets (PyPI, pinned below) for its CoAP over WebSocket transport, and DTLSSocket
#     (PyPI, pinned below), the tinydtls binding under its CoAP over DTLS transport, built
#     from source (with autoconf, automake and a C compiler from Debian),
#   - cbor2, the CBOR encoder of the LwM2M Send test's SenML (PyPI, pinned below),
#   - the STOMP client stomp.py (PyPI, pinned below),
#   - MQTT.js, @stomp/stompjs, ws and the LwM2M client libraries lwm2m-node-lib and
#     coap-node (npm ci from interop-tests/js/package-lock.json, all pinned there).
# Meant for a Debian machine that has Rust, Python 3.11+ with pip and Node 20+ with
# npm; run as root. Idempotent; silent when there is nothing to do or all went well,
# and prints the failing command's output otherwise.
set -euo pipefail

PAHO_VERSION=2.2.0
MQTTSN_VERSION=1.0.9
AIOQUIC_VERSION=1.7.2
AIOCOAP_VERSION=0.4.17
WEBSOCKETS_VERSION=15.0.1
# aiocoap asks for DTLSSocket >= 0.1.18; 0.2.3 is the one its DTLS tests run with. It is
# published as source only: these pin what pip builds it with.
DTLSSOCKET_VERSION=0.2.3
CYTHON_VERSION=3.2.4
SETUPTOOLS_VERSION=80.9.0
WHEEL_VERSION=0.45.1
STOMP_PY_VERSION=9.0.0
CBOR2_VERSION=5.6.5

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
js_dir="$root/interop-tests/js"
python=${GATEWAY_TEST_PYTHON:-python3}

fail() {
    echo "install-test-tools: $*" >&2
    exit 1
}

# Runs a command with its output kept aside, shown only if it fails.
quietly() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        echo "install-test-tools: failed: $*" >&2
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}

for tool in "$python" node npm stdbuf; do
    command -v "$tool" >/dev/null || fail "$tool is required but not installed"
done

# --- Debian packages ----------------------------------------------------------------
installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}
missing=()
for pkg in mosquitto-clients mosquitto openssl haproxy libcoap3-bin; do
    installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
    quietly apt-get update
    quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# --- Python packages, each pinned --------------------------------------------------
installed_version() {
    "$python" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null || true
}
pip_pinned() {
    local package=$1 version=$2
    [[ "$(installed_version "$package")" == "$version" ]] && return
    # A Debian-managed Python refuses pip installs unless told otherwise (PEP 668);
    # the variables are ignored by a pip that does not know them.
    quietly env PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$python" -m pip install --quiet "$package==$version"
    [[ "$(installed_version "$package")" == "$version" ]] || fail "$package $version not importable by $python after install"
}
pip_pinned paho-mqtt "$PAHO_VERSION"
pip_pinned mqtt-sn-12 "$MQTTSN_VERSION"
pip_pinned aioquic "$AIOQUIC_VERSION"
pip_pinned aiocoap "$AIOCOAP_VERSION"
pip_pinned websockets "$WEBSOCKETS_VERSION"
pip_pinned stomp-py "$STOMP_PY_VERSION"
pip_pinned cbor2 "$CBOR2_VERSION"

# DTLSSocket's build runs autoreconf and configure on the tinydtls sources it bundles and
# compiles a Cython extension against the Python headers. Cython, setuptools and wheel are
# installed by pip into the build's own environment, held to the pins by a constraints
# file (pip applies PIP_CONSTRAINT there too).
if [[ "$(installed_version DTLSSocket)" != "$DTLSSOCKET_VERSION" ]]; then
    build_deps=()
    for pkg in autoconf automake gcc libc6-dev; do
        installed "$pkg" || build_deps+=("$pkg")
    done
    # A Debian Python's headers are in python3-dev; other builds ship their own.
    "$python" -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
        build_deps+=(python3-dev)
    if ((${#build_deps[@]} > 0)); then
        quietly apt-get update
        quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y "${build_deps[@]}"
    fi
    constraints=$(mktemp)
    printf 'Cython==%s\nsetuptools==%s\nwheel==%s\n' \
        "$CYTHON_VERSION" "$SETUPTOOLS_VERSION" "$WHEEL_VERSION" >"$constraints"
    PIP_CONSTRAINT=$constraints pip_pinned DTLSSocket "$DTLSSOCKET_VERSION"
    rm -f "$constraints"
fi
"$python" -c 'from DTLSSocket import dtls' 2>/dev/null || fail "DTLSSocket is installed but its tinydtls extension does not load in $python"

# --- MQTT.js, @stomp/stompjs and lwm2m-node-lib ------------------------------------
# npm ci wipes and rebuilds node_modules, so it runs only when the lock file changed
# since the last install (recorded in a stamp inside node_modules).
stamp="$js_dir/node_modules/.lock-sha256"
want=$(sha256sum "$js_dir/package-lock.json" | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    (cd "$js_dir" && quietly npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
fi
(cd "$js_dir" && node -e 'require("mqtt"); require("@stomp/stompjs"); require("ws")') ||
    fail "MQTT.js, @stomp/stompjs or ws is not loadable from $js_dir"
(cd "$js_dir" && node -e 'require("lwm2m-node-lib")' 2>/dev/null) || fail "lwm2m-node-lib is not loadable from $js_dir"
(cd "$js_dir" && node -e 'require("coap-node"); require("smartobject")' 2>/dev/null) ||
    fail "coap-node or smartobject is not loadable from $js_dir"
