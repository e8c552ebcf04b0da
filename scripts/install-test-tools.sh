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
#   - Chromium and its chromedriver (Debian chromium, chromium-driver), the browser the
#     dashboard test drives over WebDriver,
#   - curl, the admin API tests' HTTP client (Debian), prometheus-client's parser of the
#     Prometheus text format and schemathesis, which checks the server against its OpenAPI
#     document (PyPI, pinned below),
#   - dtls_cid_coap (interop-tests/c/), a CoAP over DTLS client that negotiates RFC 9146
#     connection ids, which no packaged client does: compiled with gcc against Mbed TLS
#     3.6 from Debian trixie's libmbedtls-dev, whose .deb is fetched from the trixie archive
#     (its Release file's signature checked with gpgv against debian-archive-keyring, then
#     each SHA256 down to the .deb), unpacked under target/test-tools/mbedtls and linked
#     statically into target/test-tools/bin/dtls_cid_coap (bookworm's own libmbedtls-dev
#     is 2.28, without connection ids, and trixie's packages are not installed on it),
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
PROMETHEUS_CLIENT_VERSION=0.26.0
SCHEMATHESIS_VERSION=4.32.5
JUNITPARSER_VERSION=5.0.3
# The Mbed TLS series dtls_cid_coap is built against: whatever 3.6.x trixie ships now.
MBEDTLS_SERIES=3.6
DEBIAN_MIRROR=${GATEWAY_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
js_dir="$root/interop-tests/js"
python=${GATEWAY_TEST_PYTHON:-python3}

# shellcheck source=scripts/quietly.sh
source "$(dirname "${BASH_SOURCE[0]}")/quietly.sh"

for tool in "$python" node npm stdbuf; do
    command -v "$tool" >/dev/null || fail "$tool is required but not installed"
done

# --- Debian packages ----------------------------------------------------------------
installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}
missing=()
for pkg in mosquitto-clients mosquitto openssl haproxy libcoap3-bin curl chromium chromium-driver; do
    installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]} > 0)); then
    quietly apt-get update
    quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    # The tests run their own Mosquitto brokers on free ports; the package's service would
    # hold 1883 for nothing. Only a service this script just installed is stopped.
    if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null \
        && systemctl is-enabled --quiet mosquitto 2>/dev/null; then
        quietly systemctl disable --now mosquitto
    fi
fi

# --- dtls_cid_coap on Mbed TLS 3.6 ------------------------------------------------
# Inside target/ (ignored by git, per checkout, found there by interop-tests/src/cid_client.rs);
# `cargo clean` removes it and the next run of this script puts it back. This script runs
# as root: what it makes there is given to the checkout's owner, whose cargo writes target/.
tools_dir="$root/target/test-tools"
owner=$(stat -c %u:%g "$root")
mbedtls_dir="$tools_dir/mbedtls"
cid_src="$root/interop-tests/c/dtls_cid_coap.c"
cid_bin="$tools_dir/bin/dtls_cid_coap"

# Unpacks trixie's current libmbedtls-dev (headers and static libraries) into $mbedtls_dir.
# Nothing is trusted that the archive's signature does not cover: InRelease is checked
# with gpgv, Packages.xz against InRelease's SHA256, the .deb against Packages'.
fetch_mbedtls() {
    local deps=() work arch index_sha record version filename deb_sha
    for pkg in curl xz-utils gpgv debian-archive-keyring; do
        installed "$pkg" || deps+=("$pkg")
    done
    if ((${#deps[@]} > 0)); then
        quietly apt-get update
        quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y "${deps[@]}"
    fi
    work=$(mktemp -d)
    arch=$(dpkg --print-architecture)
    quietly curl -fsSL --retry 3 -o "$work/InRelease" "$DEBIAN_MIRROR/dists/trixie/InRelease"
    quietly gpgv --keyring /usr/share/keyrings/debian-archive-keyring.gpg \
        --output "$work/Release" "$work/InRelease"
    index_sha=$(awk -v file="main/binary-$arch/Packages.xz" \
        '/^SHA256:/ { in_list = 1; next } /^[^ ]/ { in_list = 0 } in_list && $3 == file { print $1 }' \
        "$work/Release")
    [[ -n "$index_sha" ]] || fail "trixie's Release lists no main/binary-$arch/Packages.xz"
    quietly curl -fsSL --retry 3 -o "$work/Packages.xz" "$DEBIAN_MIRROR/dists/trixie/main/binary-$arch/Packages.xz"
    echo "$index_sha  $work/Packages.xz" | sha256sum --check --status ||
        fail "trixie's Packages.xz does not match the SHA256 its signed Release gives"
    # awk reads to the end: leaving early would kill xz with SIGPIPE, a failure to pipefail.
    record=$(xz -dc "$work/Packages.xz" | awk -v RS= '!found && /(^|\n)Package: libmbedtls-dev(\n|$)/ { print; found = 1 }')
    version=$(sed -n 's/^Version: //p' <<<"$record")
    filename=$(sed -n 's/^Filename: //p' <<<"$record")
    deb_sha=$(sed -n 's/^SHA256: //p' <<<"$record")
    [[ -n "$filename" && -n "$deb_sha" ]] || fail "trixie's Packages has no libmbedtls-dev for $arch"
    [[ "$version" == "$MBEDTLS_SERIES".* ]] ||
        fail "trixie's libmbedtls-dev is $version, not Mbed TLS $MBEDTLS_SERIES (change MBEDTLS_SERIES after checking dtls_cid_coap against it)"
    quietly curl -fsSL --retry 3 -o "$work/libmbedtls-dev.deb" "$DEBIAN_MIRROR/$filename"
    echo "$deb_sha  $work/libmbedtls-dev.deb" | sha256sum --check --status ||
        fail "$filename does not match the SHA256 in trixie's Packages"
    rm -rf "$mbedtls_dir"
    mkdir -p "$mbedtls_dir"
    quietly dpkg-deb -x "$work/libmbedtls-dev.deb" "$mbedtls_dir"
    # Connection ids are a build option; the client's #error would say so too, later.
    grep -q '^#define MBEDTLS_SSL_DTLS_CONNECTION_ID$' "$mbedtls_dir/usr/include/mbedtls/mbedtls_config.h" ||
        fail "trixie's Mbed TLS $version is built without MBEDTLS_SSL_DTLS_CONNECTION_ID"
    echo "$version" >"$mbedtls_dir/.version"
    rm -rf "$work"
}

mbedtls_version=$(cat "$mbedtls_dir/.version" 2>/dev/null || true)
if [[ "$mbedtls_version" != "$MBEDTLS_SERIES".* ]]; then
    fetch_mbedtls
    mbedtls_version=$(cat "$mbedtls_dir/.version")
fi
# Rebuilt when the source or the library changed since the last build.
cid_want="$(sha256sum "$cid_src" | cut -d' ' -f1) $mbedtls_version"
if [[ ! -x "$cid_bin" || "$(cat "$cid_bin.stamp" 2>/dev/null || true)" != "$cid_want" ]]; then
    build_deps=()
    for pkg in gcc libc6-dev; do
        installed "$pkg" || build_deps+=("$pkg")
    done
    if ((${#build_deps[@]} > 0)); then
        quietly apt-get update
        quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y "${build_deps[@]}"
    fi
    libdir=$(dirname "$(find "$mbedtls_dir/usr/lib" -name libmbedtls.a -print -quit)")
    mkdir -p "$(dirname "$cid_bin")"
    # Static: the binary needs nothing from the unpacked package to run, and bookworm's
    # own Mbed TLS 2.28 libraries, if installed, can never be loaded in its place.
    quietly gcc -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -O2 \
        -I"$mbedtls_dir/usr/include" -o "$cid_bin.new" "$cid_src" \
        "$libdir/libmbedtls.a" "$libdir/libmbedx509.a" "$libdir/libmbedcrypto.a"
    mv "$cid_bin.new" "$cid_bin"
    echo "$cid_want" >"$cid_bin.stamp"
    chown "$owner" "$root/target"
    chown -R "$owner" "$tools_dir"
fi
# Without arguments it prints its usage and exits 1: proof that it starts.
cid_status=0
"$cid_bin" >/dev/null 2>&1 || cid_status=$?
((cid_status == 1)) || fail "$cid_bin does not start (exit status $cid_status without arguments)"

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
pip_pinned prometheus-client "$PROMETHEUS_CLIENT_VERSION"
pip_pinned schemathesis "$SCHEMATHESIS_VERSION"
pip_pinned junitparser "$JUNITPARSER_VERSION"

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
