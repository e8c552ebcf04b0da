#!/usr/bin/env bash
# Installs the reference clients that interop-tests/ drives, when they are missing:
#   - mosquitto_pub / mosquitto_sub and the mosquitto broker (Debian packages),
#   - openssl, which makes the TLS tests' certificates and asks TLS listeners what they
#     present (s_client), and haproxy, the PROXY protocol
#     tests' load balancer (Debian packages),
#   - libcoap's coap-client (Debian libcoap3-bin: coap-client-notls, and coap-client-openssl
#     and coap-client-gnutls for CoAP over DTLS),
#   - Chromium and its chromedriver (Debian chromium, chromium-driver), the browser the
#     dashboard test drives over WebDriver,
#   - curl, the admin API tests' HTTP client (Debian),
#   - the Python clients of interop-tests/py/requirements.txt (paho-mqtt, mqtt-sn-12,
#     aioquic, aiocoap with websockets and DTLSSocket, the tinydtls binding under its CoAP
#     over DTLS transport, built from source, stomp.py, cbor2, prometheus-client,
#     schemathesis, junitparser), every package pinned by interop-tests/py/constraints.txt, in a virtual
#     environment of their own, target/test-venv, whose python the tests run
#     (interop-tests/src/tools.rs),
#   - dtls_cid_coap (interop-tests/c/), a CoAP over DTLS client that negotiates RFC 9146
#     connection ids, which no packaged client does: compiled with gcc against Mbed TLS
#     3.6 from Debian trixie's libmbedtls-dev, whose .deb is fetched from the trixie archive
#     (its Release file's signature checked with gpgv against debian-archive-keyring, then
#     each SHA256 down to the .deb), unpacked under target/test-tools/mbedtls and linked
#     statically into target/test-tools/bin/dtls_cid_coap (bookworm's own libmbedtls-dev
#     is 2.28, without connection ids, and trixie's packages are not installed on it),
#   - MQTT.js, @stomp/stompjs, ws and the LwM2M client libraries lwm2m-node-lib and
#     coap-node (npm ci from interop-tests/js/package-lock.json, all pinned there).
# Meant for a Debian machine that has Rust, Python 3.11+ and Node 20+ with npm. Only the
# Debian packages need root: when some are missing it installs them as root, or with
# `sudo -n` when that works, and otherwise stops with the apt-get line to run; the rest
# goes into the checkout (target/, interop-tests/js/node_modules) as the user running it.
# Idempotent; silent when there is nothing to do or all went well, and prints the
# failing command's output otherwise.
set -euo pipefail

# The Mbed TLS series dtls_cid_coap is built against: whatever 3.6.x trixie ships now.
MBEDTLS_SERIES=3.6
DEBIAN_MIRROR=${GATEWAY_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Every Debian package the tests and this script use, the only things it installs that
# need root (scripts/debian-packages.sh), named in the README's apt-get line too:
# python3-venv and python3-dev make the virtual environment and build DTLSSocket on
# Debian's Python (harmless beside another one), autoconf, automake, gcc and libc6-dev
# build DTLSSocket and dtls_cid_coap, and xz-utils, gpgv and debian-archive-keyring fetch
# and check the Mbed TLS package.
DEBIAN_PACKAGES=(
    mosquitto mosquitto-clients openssl haproxy libcoap3-bin curl chromium chromium-driver
    python3-venv python3-dev autoconf automake gcc libc6-dev xz-utils gpgv debian-archive-keyring
)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
js_dir="$root/interop-tests/js"
py_dir="$root/interop-tests/py"
# The interpreter the virtual environment is made from.
base_python=python3

# shellcheck source=scripts/quietly.sh
source "$(dirname "${BASH_SOURCE[0]}")/quietly.sh"

# shellcheck source=scripts/debian-packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/debian-packages.sh"

# --- Debian packages -------------------------------------------------------------------
debian_packages "${DEBIAN_PACKAGES[@]}"
for tool in "$base_python" node npm stdbuf; do
    command -v "$tool" >/dev/null || fail "$tool is required but not installed"
done

# --- dtls_cid_coap on Mbed TLS 3.6 ------------------------------------------------
# Inside target/ (ignored by git, per checkout, found there by interop-tests/src/cid_client.rs);
# `cargo clean` removes it and the next run of this script puts it back.
tools_dir="$root/target/test-tools"
mbedtls_dir="$tools_dir/mbedtls"
cid_src="$root/interop-tests/c/dtls_cid_coap.c"
cid_bin="$tools_dir/bin/dtls_cid_coap"

# Unpacks trixie's current libmbedtls-dev (headers and static libraries) into $mbedtls_dir.
# Nothing is trusted that the archive's signature does not cover: InRelease is checked
# with gpgv, Packages.xz against InRelease's SHA256, the .deb against Packages'.
fetch_mbedtls() {
    local work arch index_sha record version filename deb_sha
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
    libdir=$(dirname "$(find "$mbedtls_dir/usr/lib" -name libmbedtls.a -print -quit)")
    mkdir -p "$(dirname "$cid_bin")"
    # Static: the binary needs nothing from the unpacked package to run, and bookworm's
    # own Mbed TLS 2.28 libraries, if installed, can never be loaded in its place.
    quietly gcc -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -O2 \
        -I"$mbedtls_dir/usr/include" -o "$cid_bin.new" "$cid_src" \
        "$libdir/libmbedtls.a" "$libdir/libmbedx509.a" "$libdir/libmbedcrypto.a"
    mv "$cid_bin.new" "$cid_bin"
    echo "$cid_want" >"$cid_bin.stamp"
fi
# Without arguments it prints its usage and exits 1: proof that it starts.
cid_status=0
"$cid_bin" >/dev/null 2>&1 || cid_status=$?
((cid_status == 1)) || fail "$cid_bin does not start (exit status $cid_status without arguments)"

# --- Python packages, in target/test-venv ----------------------------------------
# Made again from scratch when requirements.txt, constraints.txt or the interpreter
# changed since it was made (recorded in a stamp inside it), so that it holds exactly what
# they name. pip applies PIP_CONSTRAINT to DTLSSocket's isolated build environment too.
venv="$root/target/test-venv"
python="$venv/bin/python"
venv_want="$(cat "$py_dir/requirements.txt" "$py_dir/constraints.txt" | sha256sum | cut -d' ' -f1) $("$base_python" -c 'import sys; print(sys.version.split()[0], sys.base_prefix)')"
if [[ ! -x "$python" || "$(cat "$venv/.stamp" 2>/dev/null || true)" != "$venv_want" ]]; then
    rm -rf "$venv"
    quietly "$base_python" -m venv "$venv"
    quietly env PIP_CONSTRAINT="$py_dir/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$python" -m pip install --quiet --requirement "$py_dir/requirements.txt"
    echo "$venv_want" >"$venv/.stamp"
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

# Run as root (CI) on a checkout someone else owns, what was made in it goes to the owner,
# whose cargo and npm write there next.
if ((EUID == 0)); then
    owner=$(stat -c %u:%g "$root")
    chown "$owner" "$root/target"
    chown -R "$owner" "$tools_dir" "$venv" "$js_dir/node_modules"
fi
