# syntax=docker/dockerfile:1
# likes-api, likes-worker, likes-dlq and likes-admin in one small image, run as a
# non-root user. Which binary runs is the container's command:
#   docker build -t likes .
#   docker run likes likes-api      (the default)
#   docker run likes likes-worker
# protoc comes from the protoc-bin-vendored crate: no system protoc needed.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin likes-api --bin likes-worker --bin likes-dlq \
      --bin likes-admin \
 && mkdir /out \
 && cp target/release/likes-api target/release/likes-worker target/release/likes-dlq \
      target/release/likes-admin /out/

FROM debian:bookworm-slim
# The system's root certificates, which amqps:// and sslmode=verify-full
# trust when no CA file is set.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin likes
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
# Listen beyond the container's loopback; everything else comes from
# LIKES__* variables (see the README's configuration table).
ENV LIKES__API__LISTEN=0.0.0.0:50051 \
    LIKES__API__METRICS_LISTEN=0.0.0.0:9464 \
    LIKES__WORKER__METRICS_LISTEN=0.0.0.0:9465
EXPOSE 50051 9464 9465
CMD ["likes-api"]
