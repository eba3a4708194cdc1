# Build: the same pinned toolchain as development (rustc 1.95).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin spellhost

# Run: a small image with the binary only.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /data spellhost
COPY --from=build /src/target/release/spellhost /usr/local/bin/spellhost
USER spellhost
EXPOSE 8080
ENTRYPOINT ["spellhost"]
CMD ["serve"]
