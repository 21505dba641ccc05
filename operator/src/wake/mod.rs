//! `POST /v1/wake` (design §2.5): agents ask for a scale-up.
//!
//! - [`auth`]: TokenReview of the agent's projected token, cached.
//! - [`server`]: the HTTP endpoint; 202, 404, 401/403 as the contract says.
pub mod auth;
pub mod server;
