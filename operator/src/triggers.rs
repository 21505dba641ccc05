//! Reading an ElastiService's `prometheus` triggers with KubeElasti's semantics: first a
//! health gate (`up{uptimeFilter}` must be 1 for every series), then each query's single
//! value against its threshold. Any failure reads as [`Idleness::Unknown`], which never
//! scales anything down.
use std::time::Duration;

use bytes::Bytes;
use elasti_api::{PrometheusTrigger, ScaleTrigger};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, header::HeaderName, header::HeaderValue};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::scale::verdict::Idleness;

/// KubeElasti's default health filter when a trigger gives none.
pub const DEFAULT_UPTIME_FILTER: &str = r#"container="prometheus""#;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `threshold` is not a number (admission validation normally stops this).
    #[error("threshold {0:?} is not a number")]
    Threshold(String),
    /// `serverAddress` is not an http:// URL this operator can query.
    #[error("serverAddress {0:?}: only http:// URLs are supported")]
    Address(String),
    /// A header name or value from `metadata.headers` is not valid HTTP.
    #[error("header {0:?} is not valid HTTP")]
    Header(String),
    /// Prometheus could not be reached or did not answer in time.
    #[error("querying {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// Prometheus answered with an error status or an unexpected body.
    #[error("query {query:?}: {reason}")]
    BadAnswer { query: String, reason: String },
}

/// Queries Prometheus servers over HTTP.
#[derive(Clone)]
pub struct Prometheus {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Prometheus {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// Reads every trigger: idle only if all are healthy and under their thresholds.
    pub async fn idleness(&self, triggers: &[ScaleTrigger]) -> Idleness {
        let mut busy = Vec::new();
        for t in triggers {
            let Some(p) = t.prometheus() else {
                // TODO(issue 15): the agents' activity reports decide `activity` triggers.
                return Idleness::Unknown {
                    detail: "activity triggers are not evaluated yet".into(),
                };
            };
            match self.read(p).await {
                Ok(Reading { value, threshold }) if value >= threshold => {
                    busy.push(format!("{} = {value} >= {threshold}", p.query));
                }
                Ok(_) => {}
                Err(e) => {
                    return Idleness::Unknown {
                        detail: e.to_string(),
                    };
                }
            }
        }
        if busy.is_empty() {
            Idleness::Idle
        } else {
            Idleness::Busy {
                detail: busy.join("; "),
            }
        }
    }

    async fn read(&self, t: &PrometheusTrigger) -> Result<Reading, Error> {
        let threshold: f64 = t
            .threshold
            .trim()
            .parse()
            .map_err(|_| Error::Threshold(t.threshold.clone()))?;
        let filter = t.uptime_filter.as_deref().unwrap_or(DEFAULT_UPTIME_FILTER);
        let up_query = format!("up{{{filter}}}");
        let up = self.query(t, &up_query).await?;
        if !healthy(&up) {
            return Err(Error::BadAnswer {
                query: up_query,
                reason: "Prometheus is not healthy (no series, or a series is not 1)".into(),
            });
        }
        let samples = self.query(t, &t.query).await?;
        let value = single_value(&samples).map_err(|reason| Error::BadAnswer {
            query: t.query.clone(),
            reason,
        })?;
        Ok(Reading { value, threshold })
    }

    /// `GET /api/v1/query`, returning the samples' values.
    async fn query(&self, t: &PrometheusTrigger, query: &str) -> Result<Vec<f64>, Error> {
        let base = t.server_address.trim_end_matches('/');
        if !base.starts_with("http://") {
            return Err(Error::Address(t.server_address.clone()));
        }
        let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let mut req = Request::get(format!("{base}/api/v1/query?query={encoded}"));
        for (k, v) in t.headers.iter().flatten() {
            let name = HeaderName::try_from(k.as_str()).map_err(|_| Error::Header(k.clone()))?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|_| Error::Header(k.clone()))?;
            req = req.header(name, value);
        }
        let req = req
            .body(Empty::new())
            .map_err(|_| Error::Address(t.server_address.clone()))?;
        let unreachable = |reason: String| Error::Unreachable {
            server: base.to_string(),
            reason,
        };
        let body = tokio::time::timeout(self.timeout, async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, Error>((status, body))
        })
        .await
        .map_err(|_| unreachable(format!("no answer in {:?}", self.timeout)))??;
        parse_samples(&body.1).map_err(|reason| Error::BadAnswer {
            query: query.to_string(),
            reason: format!("HTTP {}: {reason}", body.0),
        })
    }
}

struct Reading {
    value: f64,
    threshold: f64,
}

/// The sample values of a Prometheus query API answer (`vector` or `scalar`).
pub fn parse_samples(body: &[u8]) -> Result<Vec<f64>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        let error = v["error"].as_str().unwrap_or("no error message");
        return Err(format!("status {}: {error}", v["status"]));
    }
    let number = |pair: &serde_json::Value| -> Result<f64, String> {
        pair[1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| format!("sample {pair} has no numeric value"))
    };
    match v["data"]["resultType"].as_str() {
        Some("vector") => v["data"]["result"]
            .as_array()
            .map(|r| r.iter().map(|s| number(&s["value"])).collect())
            .unwrap_or_else(|| Err("vector without result".into())),
        Some("scalar") => number(&v["data"]["result"]).map(|n| vec![n]),
        other => Err(format!("result type {other:?}; expected vector or scalar")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_and_scalar_answers_parse() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.25"]}]}}"#;
        assert_eq!(parse_samples(vector), Ok(vec![0.25]));
        let scalar =
            br#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"3"]}}"#;
        assert_eq!(parse_samples(scalar), Ok(vec![3.0]));
    }

    #[test]
    fn errors_are_explained() {
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        let err = parse_samples(bad).err().unwrap_or_default();
        assert!(err.contains("parse error"), "{err}");
        assert!(parse_samples(b"<html>").is_err());
        assert!(single_value(&[]).is_err());
        assert!(single_value(&[1.0, 2.0]).is_err());
        assert_eq!(single_value(&[2.0]), Ok(2.0));
    }

    #[test]
    fn health_needs_every_up_series_at_one() {
        assert!(healthy(&[1.0, 1.0]));
        assert!(!healthy(&[1.0, 0.0]));
        assert!(!healthy(&[]));
    }
}
