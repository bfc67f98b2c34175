# m3u-proxy: a drop-in backend for m3u-editor. Build: docker build -t m3u-proxy-rs .
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin m3u-proxy

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data m3u \
    && mkdir -p /data && chown m3u /data
COPY --from=build /src/target/release/m3u-proxy /usr/local/bin/m3u-proxy
USER m3u
VOLUME /data
ENV PORT=38085 M3U_PROXY_DATA_DIR=/data
EXPOSE 38085
HEALTHCHECK --interval=30s --timeout=2s --start-period=10s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${M3U_PROXY_PORT:-$PORT}/health" || exit 1
ENTRYPOINT ["/usr/local/bin/m3u-proxy"]
