# syntax=docker/dockerfile:1
# keysync's container image: a release build in a Rust image, copied into a small Debian
# runtime that runs as a non-root numeric user and works with a read-only root filesystem
# (all it writes goes to the mounted /keys and /run/keysync). Used by compose/; not built in
# this project's CI (no Docker engine there): hadolint and tests/packaging.rs check it.

FROM rust:1.95-slim-bookworm AS build
# aws-lc-sys (rustls' crypto) compiles C; cmake for its build script's fallback path.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin keysync \
    && install -D -m 0755 target/release/keysync /out/keysync

FROM debian:bookworm-slim
# ca-certificates: Vault and provider APIs over TLS (the platform verifier reads the system store).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 keysync \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin keysync \
    && install -d -o 10001 -g 10001 -m 0750 /keys /run/keysync /run/operator
COPY --from=build /out/keysync /usr/local/bin/keysync
COPY compose/operator.sh /usr/local/share/keysync/operator.sh
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/keysync"]
CMD ["run"]
