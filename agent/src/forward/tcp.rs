//! Raw TCP: once the service is Ready and a pod accepted, copy both ways until either side
//! closes. The bytes the client already sent (peeked, never consumed) go first. A splice
//! goes on after the hand-back until the client closes it.
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spliced connection broke (a reset by either side mid-stream).
    #[error("copying between client and pod failed")]
    Copy(#[source] std::io::Error),
}

/// Bytes copied client→pod and pod→client.
pub type Copied = (u64, u64);

/// Copies both ways until either side closes.
pub async fn copy(mut client: TcpStream, mut upstream: TcpStream) -> Result<Copied, Error> {
    tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .map_err(Error::Copy)
}
