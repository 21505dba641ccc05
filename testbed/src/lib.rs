//! elasti's one test bed, used by `xtask`, the cluster suites (`tests/`) and the bench:
//!
//! - [`kind`]: the cluster of record (kind, one control plane and two workers), its nodes'
//!   network namespaces and cgroups, teardown and the proof that nothing is left;
//! - [`kube`]: typed objects through `kube::Client`, from blocking code, and the waits;
//! - [`objects`]: the workloads, clients and ElastiServices the suites deploy;
//! - [`elasti`]: elasti's install from its chart, and its agents' metrics;
//! - [`prometheus`]: a real Prometheus beside the cluster;
//! - [`stats`]: min / median / p99 / max of samples; [`wrk`]: the HTTP load generator;
//!   [`procs`]: what a process costs (memory, CPU time);
//! - [`netns`], [`cmd`], [`paths`]: the cluster's network namespace, running tools with
//!   progress, and where everything lives.
//!
//! This is test infrastructure: errors are `anyhow`, as in xtask.
pub mod cmd;
pub mod elasti;
pub mod kind;
pub mod kube;
pub mod netns;
pub mod objects;
pub mod paths;
pub mod procs;
pub mod prometheus;
pub mod stats;
pub mod wrk;
