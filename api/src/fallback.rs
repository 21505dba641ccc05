//! The fallback EndpointSlice (design §2.4): while a Service is in proxy mode the operator
//! publishes a slice for it whose endpoints are the agents' node IPs at the proxy ports, so
//! traffic that never calls `connect()` on the ClusterIP (NodePort, ingress controllers
//! dialing endpoints) reaches an agent too. Readiness must never count it.
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The EndpointSlice label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value on the fallback slices elasti's operator publishes.
pub const MANAGED_BY: &str = "elasti-operator.elasti.truefoundry.com";

/// Whether `slice` is one of elasti's fallback slices (its endpoints are agents, not pods).
pub fn is_fallback_slice(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}
