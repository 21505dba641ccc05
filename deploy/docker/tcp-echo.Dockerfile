# Builds the same image as `cargo xtask images` (elasti.local/elasti-tcp-echo), for users with Docker.
# Run from the repository root: docker build -f deploy/docker/tcp-echo.Dockerfile -t elasti.local/elasti-tcp-echo:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p elasti-workloads

FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/tcp-echo /usr/local/bin/tcp-echo
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tcp-echo"]
