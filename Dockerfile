# syntax=docker/dockerfile:1
# spellhost's image: built from the exact toolchain of development, run as an unprivileged
# user, with a health check. `docker build -t spellhost .`; Fly.io builds it from fly.toml.
#
# Reproducible: the toolchain is an exact tag (pin it by digest for bit-for-bit rebuilds:
# --build-arg RUST_IMAGE=rust:1.95.0-bookworm@sha256:<digest from `docker buildx imagetools
# inspect rust:1.95.0-bookworm`>), every crate is fixed by Cargo.lock (--locked), and build
# paths are remapped so the binary does not depend on where it was built.
ARG RUST_IMAGE=rust:1.95.0-bookworm
# The run stage only needs glibc and CA certificates; pin it by digest the same way.
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
ENV CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never \
    SOURCE_DATE_EPOCH=0 \
    RUSTFLAGS="--remap-path-prefix=/src=/spellhost --remap-path-prefix=/usr/local/cargo=/cargo"
COPY . .
RUN cargo build --release --locked --bin spellhost \
    && install -m 0755 target/release/spellhost /usr/local/bin/spellhost

FROM ${RUNTIME_IMAGE}
# A fixed uid/gid, so files on a volume keep their owner across image versions. /data is the
# data directory when no volume is mounted (0700, the service's own); a fresh Fly.io volume
# mounted over it is root-owned, and the entrypoint hands it to the service user.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 spellhost \
    && useradd --system --uid 10001 --gid spellhost --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin spellhost \
    && install -d -m 0700 -o spellhost -g spellhost /data
COPY --from=build /usr/local/bin/spellhost /usr/local/bin/spellhost
COPY --chmod=0755 ops/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
ENV SPELLHOST_DATA_DIR=/data \
    SPELLHOST_LISTEN=0.0.0.0:8080 \
    SPELLHOST_LOG_FORMAT=json
EXPOSE 8080
# Ready: the database answers and the sandbox has room (GET /readyz). Three misses in a row
# (90 s) mark the container unhealthy; a queue that is full for a moment does not.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["docker-entrypoint", "healthcheck"]
# The entrypoint starts as root only to give the data directory to the `spellhost` user, then
# runs spellhost as that user (or, started with --user, as that user directly).
ENTRYPOINT ["docker-entrypoint"]
CMD ["serve"]
