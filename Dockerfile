# syntax=docker/dockerfile:1
# Build both binaries, then copy them into a slim runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, for layer caching: manifests, then a dummy build.
COPY Cargo.toml Cargo.lock ./
COPY data-pipeline/Cargo.toml data-pipeline/
COPY bench/Cargo.toml bench/
COPY loadtests/Cargo.toml loadtests/
RUN mkdir -p src data-pipeline/src bench/src bench/benches loadtests/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > data-pipeline/src/main.rs && touch data-pipeline/src/lib.rs \
 && touch bench/src/lib.rs && echo 'fn main() {}' > bench/benches/pipeline.rs \
 && echo 'fn main() {}' > loadtests/src/main.rs \
 && cargo build --release --locked -p nca-portal -p nca-pipeline || true
COPY . .
RUN touch src/main.rs src/lib.rs data-pipeline/src/main.rs data-pipeline/src/lib.rs \
 && cargo build --release --locked -p nca-portal -p nca-pipeline

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/nca nca
COPY --from=build /src/target/release/nca-portal /src/target/release/nca-pipeline /usr/local/bin/
COPY config /etc/nca/config
USER nca
WORKDIR /var/lib/nca
ENV NCA_PIPELINE_STORE=/var/lib/nca/store \
    NCA_ADMIN__LISTEN=0.0.0.0:9464 \
    NCA_SERVER__JSON_LOGS=true
# 8443: the portal (HTTPS); 9464: Prometheus metrics (keep it on a private network).
EXPOSE 8443 9464
ENTRYPOINT ["nca-portal"]
CMD ["serve", "--config-dir", "/etc/nca/config", "--data-dir", "/var/lib/nca", "--listen", "0.0.0.0:8443"]
