# syntax=docker/dockerfile:1
#
# piqchat-inbox: one binary on Debian slim, as an unprivileged user, with all
# state (SQLite database and attachment files) in the /data volume.
#
#   docker build -t piqchat-inbox .
#   docker run -d --name piqchat-inbox -p 127.0.0.1:8080:8080 \
#     -v piqchat-inbox-data:/data -e PUSH_VAPID_CONTACT=mailto:admin@example.org \
#     piqchat-inbox
#   docker logs piqchat-inbox        # shows the sign-up invite link on first start
#
# Plain HTTP unless TLS_CERT_PATH and TLS_KEY_PATH name mounted files; usually
# a TLS reverse proxy goes in front (deploy/Caddyfile), see also compose.yml. A bind mount instead of a named volume must be writable by
# uid 10001.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Only what the build reads: build.rs compiles proto/ with protox (no protoc
# needed), the migrations are embedded in the binary. SQLite is compiled
# from source by libsqlite3-sys, for which the slim image's gcc suffices.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
# The registry and target folders are BuildKit cache mounts, so a rebuild
# after a source change recompiles only this crate; the binary is copied
# out of the cache within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
 && install -D -m 0755 target/release/piqchat-inbox /out/piqchat-inbox

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: outgoing HTTPS to the browsers' push services.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 piqchat \
 && useradd --system --uid 10001 --gid piqchat --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin piqchat \
 && install -d -o piqchat -g piqchat -m 0750 /data
COPY --from=build /out/piqchat-inbox /usr/local/bin/piqchat-inbox

# BIND_ADDRESS and PORT are what the container needs; publish the port with
# -p rather than changing them. The paths keep all state in the volume.
ENV BIND_ADDRESS=0.0.0.0 \
    PORT=8080 \
    DATABASE_PATH=/data/inbox.sqlite \
    PARCEL_ATTACHMENTS_UPLOAD_PATH=/data/attachments
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8080

# The server finishes in-flight requests on SIGTERM for up to 30 s: give it
# that long (`docker stop -t 40`, compose's stop_grace_period).
STOPSIGNAL SIGTERM
# `healthcheck` sends GET /healthz to the local listener and exits 0 on 200;
# the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/piqchat-inbox", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/piqchat-inbox"]
CMD ["serve"]
