# The example binaries (user-rpc, gateway) in a small image, built the same way as
# `cargo build --release -p switchboard-examples`.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p switchboard-examples --bin user-rpc --bin gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/user-rpc /src/target/release/gateway /usr/local/bin/
