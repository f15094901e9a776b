# atrium: one image, every role (`atrium control-plane`, `data-plane`, `agent`, …).
# Build:  docker build -t ghcr.io/atrium-dev/atrium:0.1.0 .
# The runtime image is distroless (glibc, CA certificates, no shell) and runs as the
# non-root user 65532; the deploy/ manifests mount what it writes (state, cache) and run it
# with a read-only root filesystem.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY proto proto
COPY routing routing
COPY model model
COPY data-plane data-plane
COPY k8s k8s
COPY provider provider
COPY portal portal
COPY control-plane control-plane
COPY agent agent
COPY up up
COPY deploy deploy
COPY src src
RUN cargo build --release --locked --bin atrium \
    && install -D -m 0755 target/release/atrium /out/atrium

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/atrium /usr/local/bin/atrium
USER 65532:65532
EXPOSE 8000 8443 9000 9090 9903 9443/udp
ENTRYPOINT ["/usr/local/bin/atrium"]
CMD ["--help"]
