//! The agents' endpoints: `POST /v1/wake` (`elasti_api::wake`) and `POST /v1/report`
//! (`elasti_api::report`).
//!
//! - [`precheck`]: a token's claims read locally (pure);
//! - [`auth`]: the token check, cached and rate-limited per client;
//! - [`limits`]: connections per client address;
//! - [`server`]: the HTTP endpoint, bounded.
pub mod auth;
pub mod limits;
pub mod precheck;
pub mod server;
