# The example binaries (user-rpc, gateway) in a small image, built the same way as
# `cargo build --release -p switchboard-examples`.
#
# The base images are build arguments, the official images by default. Where no registry can be
# reached, scripts/docker-images.sh builds stand-ins from Debian's packages and prints the values
# to set (docker-compose.yml passes RUST_IMAGE and DEBIAN_IMAGE on from the environment).
ARG RUST_IMAGE=rust:1-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# protoc and protobuf's well-known types, unless the image has them (the stand-in has).
RUN command -v protoc >/dev/null && [ -f /usr/include/google/protobuf/descriptor.proto ] \
    || { apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
         && rm -rf /var/lib/apt/lists/*; }
WORKDIR /src
COPY . .
# With a vendor/ directory (scripts/docker-images.sh vendors the crates where build containers
# cannot fetch from crates.io), the crates come from it and nothing is fetched.
RUN if [ -d vendor ]; then set -- --offline \
        --config 'source.crates-io.replace-with="vendored-sources"' \
        --config 'source.vendored-sources.directory="vendor"'; fi \
    && cargo build --release -p switchboard-examples --bin user-rpc --bin gateway "$@"

FROM ${DEBIAN_IMAGE}
# ca-certificates and curl, unless the image has them (the stand-in has).
RUN command -v curl >/dev/null && [ -f /etc/ssl/certs/ca-certificates.crt ] \
    || { apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
         && rm -rf /var/lib/apt/lists/*; }
COPY --from=build /src/target/release/user-rpc /src/target/release/gateway /usr/local/bin/
