//! Reading a `prometheus` trigger with KubeElasti's semantics: first a health gate
//! (`up{uptimeFilter}` must be 1 for every series), then the query's single value against
//! its threshold.
//!
//! The server is the spec's choice, so it is treated as untrusted: an answer is read up to
//! [`MAX_ANSWER`] within the timeout, only hosts the operator allows are asked
//! (`--prometheus-allowed-hosts`), and nothing the server sends is copied into an error
//! (errors reach conditions and events, which users read as elasti's words). `https://`
//! is verified against the system's roots plus an optional CA bundle.
use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use elasti_api::PrometheusTrigger;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, Uri, header::HeaderName, header::HeaderValue};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// KubeElasti's default health filter when a trigger gives none.
pub const DEFAULT_UPTIME_FILTER: &str = r#"container="prometheus""#;
/// The largest answer read. A one-sample query answer is a few hundred bytes; an `up`
/// query over many series a few KiB.
pub const MAX_ANSWER: usize = 1 << 20;
/// Prometheus's own `errorType` values: these, and only these, are repeated in an error.
const ERROR_TYPES: &[&str] = &[
    "timeout",
    "canceled",
    "execution",
    "bad_data",
    "internal",
    "unavailable",
    "not_found",
    "not_acceptable",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `threshold` is not a number (admission validation normally stops this).
    #[error("threshold {0:?} is not a number")]
    Threshold(String),
    /// `serverAddress` is not an http:// or https:// URL.
    #[error("serverAddress {0:?} is not an http:// or https:// URL")]
    Address(String),
    /// `serverAddress` names a host the operator is not allowed to query.
    #[error("Prometheus host {0:?} is not in the operator's --prometheus-allowed-hosts")]
    HostNotAllowed(String),
    /// A header name or value is not valid HTTP.
    #[error("header {0:?} is not valid HTTP")]
    Header(String),
    /// The CA bundle could not be read.
    #[error("reading the CA bundle {path}")]
    CaBundle {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The TLS configuration could not be built.
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    /// Prometheus could not be reached.
    #[error("querying {server}")]
    Unreachable {
        server: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The answer could not be read to its end.
    #[error("reading the answer of {server}")]
    Read {
        server: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No whole answer within the timeout.
    #[error("{server} did not answer within {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    /// The answer is longer than [`MAX_ANSWER`]; it was not read further.
    #[error("the answer of {server} is longer than {MAX_ANSWER} bytes")]
    TooLarge { server: String },
    /// Prometheus answered, but not with what was asked.
    #[error("query {query:?}: {reason}")]
    BadAnswer { query: String, reason: String },
}

/// How the operator reaches Prometheus servers.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// A request (answer included) may take this long.
    pub timeout: Duration,
    /// PEM certificates trusted besides the system's roots.
    pub ca_bundle: Option<std::path::PathBuf>,
    /// `host` or `host:port` entries; empty: any host.
    pub allowed_hosts: Vec<String>,
}

/// Queries Prometheus servers over http and https.
#[derive(Clone)]
pub struct Prometheus {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    settings: Settings,
}

/// A trigger's value and threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub value: f64,
    pub threshold: f64,
}

fn tls(ca_bundle: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system root certificate was not loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates");
    if let Some(path) = ca_bundle {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|source| Error::CaBundle {
                path: path.display().to_string(),
                source,
            })?;
        roots.add_parsable_certificates(certs);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Prometheus {
    /// # Errors
    /// When the CA bundle cannot be read or the TLS configuration built.
    pub fn new(settings: Settings) -> Result<Self, Error> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.timeout));
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls(settings.ca_bundle.as_deref())?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            settings,
        })
    }

    /// Reads trigger `t`, sending `headers` (from its Secret) besides its own.
    ///
    /// # Errors
    /// Anything that keeps the trigger from being read; never a byte of the answer.
    pub async fn read(
        &self,
        t: &PrometheusTrigger,
        headers: &BTreeMap<String, String>,
    ) -> Result<Reading, Error> {
        let threshold: f64 = t
            .threshold
            .trim()
            .parse()
            .map_err(|_| Error::Threshold(t.threshold.clone()))?;
        let filter = t.uptime_filter.as_deref().unwrap_or(DEFAULT_UPTIME_FILTER);
        let up_query = format!("up{{{filter}}}");
        let up = self.query(t, headers, &up_query).await?;
        if !healthy(&up) {
            return Err(Error::BadAnswer {
                query: up_query,
                reason: "Prometheus is not healthy (no series, or a series is not 1)".into(),
            });
        }
        let samples = self.query(t, headers, &t.query).await?;
        let value = single_value(&samples).map_err(|reason| Error::BadAnswer {
            query: t.query.clone(),
            reason,
        })?;
        Ok(Reading { value, threshold })
    }

    fn allowed(&self, uri: &Uri) -> bool {
        let allowed = &self.settings.allowed_hosts;
        if allowed.is_empty() {
            return true;
        }
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(authority))
    }

    /// `GET /api/v1/query`, returning the samples' values.
    async fn query(
        &self,
        t: &PrometheusTrigger,
        headers: &BTreeMap<String, String>,
        query: &str,
    ) -> Result<Vec<f64>, Error> {
        let base = t.server_address.trim_end_matches('/');
        let bad_address = || Error::Address(t.server_address.clone());
        let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let uri: Uri = format!("{base}/api/v1/query?query={encoded}")
            .parse()
            .map_err(|_| bad_address())?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(bad_address());
        }
        if !self.allowed(&uri) {
            return Err(Error::HostNotAllowed(
                uri.authority().map(|a| a.to_string()).unwrap_or_default(),
            ));
        }
        let mut req = Request::get(uri);
        for (k, v) in t.headers.iter().flatten().chain(headers) {
            let name = HeaderName::try_from(k.as_str()).map_err(|_| Error::Header(k.clone()))?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|_| Error::Header(k.clone()))?;
            req = req.header(name, value);
        }
        let req = req.body(Empty::new()).map_err(|_| bad_address())?;
        let server = base.to_string();
        let timeout = self.settings.timeout;
        let (status, body) = tokio::time::timeout(timeout, async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|source| Error::Unreachable {
                    server: server.clone(),
                    source,
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|source| {
                    if source.is::<http_body_util::LengthLimitError>() {
                        Error::TooLarge {
                            server: server.clone(),
                        }
                    } else {
                        Error::Read {
                            server: server.clone(),
                            source,
                        }
                    }
                })?
                .to_bytes();
            Ok::<_, Error>((status, body))
        })
        .await
        .map_err(|_| Error::Timeout {
            server: base.to_string(),
            timeout,
        })??;
        parse_samples(&body).map_err(|reason| Error::BadAnswer {
            query: query.to_string(),
            reason: format!("HTTP {}: {reason}", status.as_u16()),
        })
    }
}

/// The sample values of a Prometheus query API answer (`vector` or `scalar`). The error
/// says what was wrong in elasti's words only.
pub fn parse_samples(body: &[u8]) -> Result<Vec<f64>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_string())?;
    if v["status"] != "success" {
        let kind = v["errorType"]
            .as_str()
            .filter(|t| ERROR_TYPES.contains(t))
            .unwrap_or("unknown");
        return Err(format!("Prometheus reported an error (errorType {kind})"));
    }
    let number = |pair: &serde_json::Value| -> Result<f64, String> {
        pair[1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| "a sample has no numeric value".to_string())
    };
    match v["data"]["resultType"].as_str() {
        Some("vector") => v["data"]["result"]
            .as_array()
            .map(|r| r.iter().map(|s| number(&s["value"])).collect())
            .unwrap_or_else(|| Err("a vector without result".into())),
        Some("scalar") => number(&v["data"]["result"]).map(|n| vec![n]),
        _ => Err("the result is neither a vector nor a scalar".into()),
    }
}

/// One value, as a trigger's query must give (`or vector(0)` covers "no traffic").
pub fn single_value(samples: &[f64]) -> Result<f64, String> {
    match samples {
        [v] => Ok(*v),
        [] => Err("no samples (add `or vector(0)` to the query)".into()),
        many => Err(format!("{} series; expected one", many.len())),
    }
}

/// Healthy: at least one `up` series, and all of them 1.
pub fn healthy(up: &[f64]) -> bool {
    !up.is_empty() && up.iter().all(|v| *v == 1.0)
}
