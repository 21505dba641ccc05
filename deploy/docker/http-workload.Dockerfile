# Builds the same image as `cargo xtask images` (elasti.local/elasti-http-workload), for users with Docker.
# Run from the repository root: docker build -f deploy/docker/http-workload.Dockerfile -t elasti.local/elasti-http-workload:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p elasti-workloads

FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/http-workload /usr/local/bin/http-workload
COPY --from=build /src/target/release/http-get /usr/local/bin/http-get
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/http-workload"]
