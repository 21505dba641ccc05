//! The agent's authenticated client of the operator's agent API: wakes
//! (`crate::wake::notify`) and reports (`crate::report`). Every request carries the agent's
//! projected ServiceAccount token (audience `elasti-operator`), re-read on every attempt
//! because the kubelet rotates it, and has a timeout.
use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// Where and how to reach the operator.
#[derive(Clone, Debug)]
pub struct Config {
    /// Base URL of the operator's agent API, e.g. `http://elasti-operator.elasti-system:8080`.
    pub operator_url: String,
    /// The projected ServiceAccount token file.
    pub token_path: PathBuf,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token file could not be read.
    #[error("reading the ServiceAccount token {path} failed")]
    NoToken {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The body could not be encoded.
    #[error("encoding the request body failed")]
    Encode(#[source] serde_json::Error),
    /// The URL or a header was not valid.
    #[error("building the request failed")]
    Request(#[source] hyper::http::Error),
    /// No answer: connection refused, reset, or the request failed on the way.
    #[error("the operator did not answer")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// No answer within the timeout.
    #[error("the operator did not answer within {0:?}")]
    Timeout(Duration),
}

/// The shared client (one connection pool for wakes and reports).
#[derive(Clone)]
pub struct OperatorClient {
    config: Config,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl OperatorClient {
    pub fn new(config: Config) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            config,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// `POST <operator>{path}` with `body` as JSON; the answer's status.
    ///
    /// # Errors
    /// When there is no token, or no answer within `timeout`.
    pub async fn post<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<StatusCode, Error> {
        let token = tokio::fs::read_to_string(&self.config.token_path)
            .await
            .map_err(|source| Error::NoToken {
                path: self.config.token_path.display().to_string(),
                source,
            })?;
        let body = serde_json::to_vec(body).map_err(Error::Encode)?;
        let url = format!("{}{path}", self.config.operator_url.trim_end_matches('/'));
        let req = Request::post(url)
            .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(Error::Request)?;
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp.status()),
            Ok(Err(e)) => Err(Error::Unreachable(e)),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }
}
