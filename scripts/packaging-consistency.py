#!/usr/bin/env python3
"""What the container image, the systemd unit and the Debian package say about the
gateway must agree with each other and with config/default.toml: the ports the image
EXPOSEs, where the configuration file and the store are, the files the package takes.
Prints each disagreement and exits 1; silent when there is none. Run from the
repository root (scripts/packaging-check.sh does)."""

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

CONFIG_FILE = "/etc/gateway/gateway.toml"
SHIPPED_CONFIG = "packaging/gateway.toml"
STATE_DIR = "/var/lib/gateway"
# Listener kinds carried over UDP; every other kind is TCP.
UDP_KINDS = {"udp", "dtls", "quic"}

problems = []


def problem(text):
    problems.append(text)


def enabled_listener_ports(config):
    """(port, "tcp" | "udp") of every table with a `bind` that neither it nor a table
    above it disables: a new listener, an adapter's or the admin API's, is found without
    being named here."""
    found = {}

    def walk(table, path, enabled):
        if table.get("enable") is False:
            enabled = False
        bind = table.get("bind")
        if isinstance(bind, str) and enabled:
            port = int(bind.rsplit(":", 1)[1])
            proto = "udp" if UDP_KINDS & set(path) else "tcp"
            found[(port, proto)] = ".".join(path)
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, path + [key], enabled)

    walk(config, [], True)
    return found


def dockerfile_instructions(text):
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        instruction, _, args = current.partition(" ")
        lines.append((instruction.upper(), args.strip()))
        current = ""
    return lines


def check_image():
    dockerfile = Path("Dockerfile").read_text()
    instructions = dockerfile_instructions(dockerfile)
    exposed = set()
    for instruction, args in instructions:
        if instruction == "EXPOSE":
            for token in args.split():
                port, _, proto = token.partition("/")
                exposed.add((int(port), proto or "tcp"))
    health = [args for instruction, args in instructions if instruction == "HEALTHCHECK"]
    health_port = None
    if len(health) != 1:
        problem(f"Dockerfile: {len(health)} HEALTHCHECK instructions, expected one")
    else:
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", health[0])
        if match is None:
            problem("Dockerfile: the HEALTHCHECK asks no http://127.0.0.1:PORT/ URL")
        else:
            health_port = (int(match.group(1)), "tcp")

    config = tomllib.loads(Path("config/default.toml").read_text())
    listeners = enabled_listener_ports(config)
    expected = set(listeners) | ({health_port} if health_port else set())
    for port, proto in sorted(expected - exposed):
        where = listeners.get((port, proto), "the health check")
        problem(f"Dockerfile: EXPOSE {port}/{proto} missing ({where} in config/default.toml)")
    for port, proto in sorted(exposed - expected):
        problem(
            f"Dockerfile: EXPOSE {port}/{proto} is neither an enabled listener of "
            "config/default.toml nor the health check's port"
        )

    copies = [args.split() for instruction, args in instructions if instruction == "COPY"]
    if [SHIPPED_CONFIG, CONFIG_FILE] not in copies:
        problem(f"Dockerfile: no COPY {SHIPPED_CONFIG} {CONFIG_FILE}")
    command = [args for instruction, args in instructions if instruction == "CMD"]
    if not command or CONFIG_FILE not in command[-1]:
        problem(f"Dockerfile: CMD does not pass --config {CONFIG_FILE}")
    workdir = [args for instruction, args in instructions if instruction == "WORKDIR"]
    if not workdir or workdir[-1] != STATE_DIR:
        problem(f"Dockerfile: the runtime WORKDIR is not {STATE_DIR}")
    if ("VOLUME", f'["{STATE_DIR}"]') not in instructions:
        problem(f"Dockerfile: no VOLUME [\"{STATE_DIR}\"]")
    users = [args for instruction, args in instructions if instruction == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problem("Dockerfile: the image runs as root")


def check_unit():
    unit = {}
    for line in Path("packaging/gateway.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            unit.setdefault(key.strip(), []).append(value.strip())
    exec_start = shlex.split(unit.get("ExecStart", [""])[0])
    if exec_start != ["/usr/bin/gateway", "--config", CONFIG_FILE]:
        problem(f"packaging/gateway.service: ExecStart is not /usr/bin/gateway --config {CONFIG_FILE}")
    if unit.get("Type") != ["notify"]:
        problem("packaging/gateway.service: not Type=notify")
    if unit.get("WorkingDirectory") != [STATE_DIR] or unit.get("StateDirectory") != ["gateway"]:
        problem(f"packaging/gateway.service: the store is not in StateDirectory {STATE_DIR}")


def check_shipped_config():
    shipped = tomllib.loads(Path(SHIPPED_CONFIG).read_text())
    data_dir = shipped.get("storage", {}).get("data_dir", "data")
    if not Path(STATE_DIR, data_dir).as_posix().startswith(STATE_DIR + "/"):
        problem(f"{SHIPPED_CONFIG}: storage.data_dir {data_dir!r} is outside {STATE_DIR}")


def check_package():
    manifest = tomllib.loads(Path("gateway/Cargo.toml").read_text())
    deb = manifest.get("package", {}).get("metadata", {}).get("deb", {})
    assets = {(source, target) for source, target, _mode in deb.get("assets", [])}
    for source, _target in assets:
        if not source.startswith("target/") and not Path("gateway", source).is_file():
            problem(f"gateway/Cargo.toml: the package asset {source} does not exist")
    if ("../" + SHIPPED_CONFIG, CONFIG_FILE.lstrip("/")) not in assets:
        problem(f"gateway/Cargo.toml: {SHIPPED_CONFIG} is not packaged as {CONFIG_FILE}")
    if CONFIG_FILE not in deb.get("conf-files", []):
        problem(f"gateway/Cargo.toml: {CONFIG_FILE} is not a conffile")
    scripts = Path("gateway", deb.get("maintainer-scripts", "")).resolve()
    units = Path("gateway", deb.get("systemd-units", {}).get("unit-scripts", "")).resolve()
    if units != Path("packaging").resolve():
        problem("gateway/Cargo.toml: systemd-units does not take the unit from packaging/")
    for script in sorted(scripts.glob("*")):
        text = script.read_text()
        if "#DEBHELPER#" not in text:
            problem(f"{script}: no #DEBHELPER# line for the systemd scripts to go in")
        syntax = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        if syntax.returncode != 0:
            problem(f"{script}: {syntax.stderr.strip()}")
    workspace = tomllib.loads(Path("Cargo.toml").read_text())
    if workspace["workspace"]["package"].get("license") != "Apache-2.0 OR MIT":
        problem("Cargo.toml: the licence is not Apache-2.0 OR MIT")


check_image()
check_unit()
check_shipped_config()
check_package()
for text in problems:
    print(text, file=sys.stderr)
sys.exit(1 if problems else 0)
