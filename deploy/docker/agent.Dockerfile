# Builds the same image as `cargo xtask images` (elasti.local/elasti-agent), for users with Docker.
# Run from the repository root: docker build -f deploy/docker/agent.Dockerfile -t elasti.local/elasti-agent:0.1.0 .
# The eBPF object must be built first: cargo xtask build-ebpf (the agent embeds it).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p elasti-agent

FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/elasti-agent /usr/local/bin/elasti-agent
USER 0:0
ENTRYPOINT ["/usr/local/bin/elasti-agent"]
