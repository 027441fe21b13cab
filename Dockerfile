# The backflow image: one binary for every role of the Helm chart
# (helm/backflow): `backflow serve` (a node), `backflow source` (feeds only),
# `backflow subscribe` (subscriptions only).
#
#   docker build -t backflow:0.1.0 .
#   docker run --rm -p 8480:8480 -e BACKFLOW_HTTP__LISTEN=0.0.0.0:8480 backflow:0.1.0
#       (a node on the embedded broker; backflow listens on 127.0.0.1 unless
#       told otherwise: the chart sets http.listen in the config file, and an
#       image-wide BACKFLOW_HTTP__LISTEN would override that)
#   docker run --rm -v "$PWD/node.toml:/etc/backflow/backflow.toml:ro" \
#     backflow:0.1.0 --config /etc/backflow/backflow.toml serve

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------- build
FROM rust:${RUST_VERSION}-bookworm AS build
# rdkafka builds its bundled librdkafka (configure + make, C and C++, perl)
# with zlib; rusqlite builds its bundled SQLite.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential perl pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: Cargo.toml names every member (tests included).
COPY Cargo.toml Cargo.lock ./
COPY schemas schemas
COPY connectors connectors
COPY bus bus
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p backflow --bin backflow --locked \
 && install -m 0755 target/release/backflow /usr/local/bin/backflow

# -------------------------------------------------------------- runtime
FROM debian:bookworm-slim
# CA certificates for https registry URLs; zlib1g (librdkafka's compression)
# is part of the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 backflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin backflow
COPY --from=build /usr/local/bin/backflow /usr/local/bin/backflow
USER 10001:10001
EXPOSE 8480
ENTRYPOINT ["backflow"]
CMD ["serve"]
