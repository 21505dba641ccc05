//! `POST /v1/wake` (design §2.5): an agent asks the operator to scale a Service's target up.
//! Authenticated with a projected ServiceAccount token of audience [`AUDIENCE`].
use serde::{Deserialize, Serialize};

/// The request path on the operator's Service.
pub const PATH: &str = "/v1/wake";
/// The audience of the agent's projected token; the operator's TokenReview checks it.
pub const AUDIENCE: &str = "elasti-operator";

/// The request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeRequest {
    pub namespace: String,
    /// The Service's name (`spec.service` of its ElastiService).
    pub service: String,
}
