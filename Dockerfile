# syntax=docker/dockerfile:1
#
# The gateway in a container: built with the Rust toolchain the project is developed on,
# run on Debian's slim image (the binary links glibc) as an unprivileged user.
#
#   docker build -t gateway .
#   docker run -d --name gateway -v gateway-data:/var/lib/gateway \
#       -p 1883:1883 -p 8083:8083 -p 1884:1884/udp -p 5683:5683/udp gateway
#
# The store is in the volume /var/lib/gateway; the configuration is
# /etc/gateway/gateway.toml (packaging/gateway.toml), which a mounted file replaces.
# Arguments after the image name replace the default ones: `docker run --rm gateway
# config print-default` prints the embedded defaults.

# The Rust release the project is built and tested with (its minimum is in Cargo.toml).
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
# "perf" adds thin link-time optimisation (see Cargo.toml), at the price of a longer build.
ARG PROFILE=release
WORKDIR /src
COPY . .
# The registry and target caches outlive the build, so a rebuild compiles what changed;
# the binary is copied out of the cache in the same step. Its line tables (some 90 MB)
# stay behind; its symbols stay in, so a backtrace still names functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile "${PROFILE}" -p gateway \
    && mkdir -p /out \
    && objcopy --strip-debug "target/${PROFILE}/gateway" /out/gateway

FROM debian:bookworm-slim
# busybox's wget for the health check: the slim image has no HTTP client. Debian's own
# version of it, whatever bookworm's security updates made it, is the one to have.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends busybox \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway \
        --no-create-home --shell /usr/sbin/nologin gateway \
    && install -d -o gateway -g gateway -m 0750 /var/lib/gateway
COPY --from=build /out/gateway /usr/bin/gateway
COPY packaging/gateway.toml /etc/gateway/gateway.toml
COPY LICENSE-APACHE LICENSE-MIT /usr/share/doc/gateway/
WORKDIR /var/lib/gateway
VOLUME ["/var/lib/gateway"]

# The listeners config/default.toml enables (scripts/packaging-check.sh holds this list to
# it): those with TLS or DTLS start once the configuration gives them credentials.
# MQTT: TCP, TLS, WebSocket, WebSocket over TLS, QUIC.
EXPOSE 1883 8883 8083 8084 14567/udp
# MQTT-SN: UDP, DTLS.
EXPOSE 1884/udp 1885/udp
# CoAP: UDP, DTLS, TCP, TLS.
EXPOSE 5683/udp 5684/udp 5683 5684
# LwM2M: UDP, DTLS.
EXPOSE 5783/udp 5784/udp
# STOMP: TCP, TLS.
EXPOSE 61613 61614
# The admin HTTP API, whose /status answers 200 while the gateway runs.
EXPOSE 18083

# wget exits 1 on a refused connection and on any answer but 2xx. HEALTHCHECK's --timeout
# bounds a hung request (bookworm's busybox 1.35 crashes with wget's own -T).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:18083/status"]

# Numeric, so that a runtime can tell without the image's /etc/passwd that it is not root.
USER 10001:10001
ENTRYPOINT ["/usr/bin/gateway"]
CMD ["--config", "/etc/gateway/gateway.toml"]
