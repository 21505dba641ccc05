//! Forwarding: from a held connection or request straight to a Ready pod
//! (`podIP:targetPort`), never through the ClusterIP, so nothing waits for kube-proxy.
//!
//! - [`endpoints`]: choosing an endpoint and failing over when one refuses (pure order).
//! - [`tcp`]: raw TCP, spliced both ways.
//! - [`http`]: HTTP/1.1 (with `Upgrade`, so websockets) and h2c/gRPC, through hyper.
pub mod endpoints;
pub mod http;
pub mod tcp;
