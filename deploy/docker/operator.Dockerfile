# Builds the same image as `cargo xtask images` (elasti.local/elasti-operator), for users with Docker.
# Run from the repository root: docker build -f deploy/docker/operator.Dockerfile -t elasti.local/elasti-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p elasti-operator

FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/elasti-operator /usr/local/bin/elasti-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/elasti-operator"]
