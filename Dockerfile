# spaceroute in a container: built on Debian with the Rust toolchain, run on distroless (glibc,
# CA certificates, nothing else: no shell, no package manager) as the non-root user 65532.
#
#   docker build -t spaceroute .
#   docker run --rm -p 5353:5353/udp -p 5353:5353 -p 8080:8080 \
#       -v "$PWD/zones:/zones:ro" spaceroute
#
# Unprivileged ports inside; map 53 and 80 outside. Mount the space files at /zones (read
# only): edits are picked up without a restart. contrib/kubernetes/ runs it from a ConfigMap.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY tests tests
RUN cargo build --release --locked --bin spaceroute

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/spaceroute /spaceroute
COPY zones /zones
USER 65532:65532
EXPOSE 5353/udp 5353/tcp 8080/tcp 9153/tcp
ENTRYPOINT ["/spaceroute"]
CMD ["serve", "--zones", "/zones", "--dns", "0.0.0.0:5353", "--http", "0.0.0.0:8080", "--metrics", "0.0.0.0:9153"]
