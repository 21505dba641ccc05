//! Raw TCP: once the service is Ready, connect to a pod and copy both ways until either
//! side closes. The bytes the client already sent (peeked, never consumed) go first.
use std::time::Duration;

use tokio::net::TcpStream;

use super::endpoints::{self, Balancer};
use crate::hold::{HeldService, HoldError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection was not admitted or timed out while held; it is closed.
    #[error(transparent)]
    Hold(#[from] HoldError),
    /// No endpoint accepted the connection.
    #[error("connecting to an endpoint failed")]
    Connect(#[from] endpoints::Error),
    /// The spliced connection broke (a reset by either side mid-stream).
    #[error("copying between client and pod failed")]
    Copy(#[source] std::io::Error),
}

/// Bytes copied client→pod and pod→client.
pub type Copied = (u64, u64);

/// Holds until `service` is Ready, then connects to one of its pods. Returns the pod
/// connection and how long the hold took.
pub async fn connect(
    service: &HeldService,
    balancer: &Balancer,
) -> Result<(TcpStream, Duration), Error> {
    let ready = service.acquire().await?;
    let (upstream, _) = balancer.connect(&ready.endpoints).await?;
    Ok((upstream, ready.waited))
}

/// Copies both ways until either side closes.
pub async fn copy(mut client: TcpStream, mut upstream: TcpStream) -> Result<Copied, Error> {
    tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .map_err(Error::Copy)
}
