//! A stand-in kube-apiserver for the operator's tests without a cluster: a `kube::Client`
//! whose transport answers the few calls the wake path makes (TokenReview, `/scale`,
//! status, events, discovery) from memory, and counts them.
#![allow(dead_code)]
use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// The token the stand-in accepts as the agent's (`system:serviceaccount:elasti-system:elasti-agent`).
pub const AGENT_USER: &str = "system:serviceaccount:elasti-system:elasti-agent";

/// What the stand-in saw and holds.
#[derive(Default)]
pub struct State {
    pub token_reviews: AtomicUsize,
    /// Tokens the stand-in's TokenReview accepts.
    pub valid_tokens: Mutex<Vec<String>>,
    /// `spec.replicas` of every Deployment's scale.
    pub replicas: Mutex<std::collections::HashMap<String, i32>>,
    /// Requests, as `METHOD path`.
    pub calls: Mutex<Vec<String>>,
}

impl State {
    pub fn reviews(&self) -> usize {
        self.token_reviews.load(Ordering::Relaxed)
    }
}

/// A client for the stand-in.
pub fn client(state: Arc<State>) -> kube::Client {
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let state = state.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let path = parts.uri.path().to_string();
            let method = parts.method.clone();
            if let Ok(mut c) = state.calls.lock() {
                c.push(format!("{method} {path}"));
            }
            let (code, answer) = route(&state, &method, &path, &body);
            let resp = http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(answer.to_string())))
                .unwrap_or_else(|e| panic!("{e}"));
            Ok::<_, Infallible>(resp)
        }
    });
    kube::Client::new(svc, "default")
}

fn route(
    state: &State,
    method: &http::Method,
    path: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        state.token_reviews.fetch_add(1, Ordering::Relaxed);
        let token = json["spec"]["token"].as_str().unwrap_or_default();
        let ok = state
            .valid_tokens
            .lock()
            .is_ok_and(|v| v.iter().any(|t| t == token));
        let status = if ok {
            serde_json::json!({"authenticated": true, "audiences": ["elasti-operator"],
                "user": {"username": AGENT_USER}})
        } else {
            serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
        };
        return (
            201,
            serde_json::json!({"apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview", "metadata": {}, "spec": json["spec"], "status": status}),
        );
    }
    if path == "/apis/apps/v1" {
        return (
            200,
            serde_json::json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "apps/v1", "resources": [
                {"name": "deployments", "singularName": "deployment", "namespaced": true,
                 "kind": "Deployment", "verbs": ["get", "list", "patch"]},
                {"name": "deployments/scale", "singularName": "", "namespaced": true,
                 "kind": "Scale", "group": "autoscaling", "version": "v1", "verbs": ["get", "patch"]}]}),
        );
    }
    if let Some(rest) = path.strip_prefix("/apis/apps/v1/namespaces/")
        && let Some((ns_name, _)) = rest.split_once("/scale")
    {
        let name = ns_name.rsplit('/').next().unwrap_or_default().to_string();
        let mut replicas = state.replicas.lock().unwrap_or_else(|e| e.into_inner());
        if *method == http::Method::PATCH
            && let Some(n) = json["spec"]["replicas"].as_i64()
        {
            replicas.insert(name.clone(), n as i32);
        }
        let Some(n) = replicas.get(&name).copied() else {
            return (
                404,
                serde_json::json!({"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "NotFound", "code": 404,
                "message": format!("deployments.apps \"{name}\" not found")}),
            );
        };
        return (
            200,
            serde_json::json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": name}, "spec": {"replicas": n}, "status": {"replicas": n}}),
        );
    }
    if path.contains("/elastiservices/") {
        return (
            200,
            serde_json::json!({"apiVersion": "elasti.truefoundry.com/v1alpha1",
            "kind": "ElastiService", "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"service": "web", "scaleTargetRef": {"apiVersion": "apps/v1",
                "kind": "Deployment", "name": "web"}}}),
        );
    }
    if path.contains("/events") {
        return (
            201,
            serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "ns"}, "eventTime": null}),
        );
    }
    (
        404,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": format!("{method} {path}")}),
    )
}

/// A JWT-shaped token (unsigned) with `aud` and `exp` (seconds since the epoch).
pub fn jwt(aud: &str, exp: i64) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#);
    let payload = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"aud": [aud], "exp": exp, "iss": "https://kubernetes.default.svc",
            "sub": AGENT_USER})
        .to_string(),
    );
    format!("{header}.{payload}.c2lnbmF0dXJl")
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A wake server over the stand-in, on a free loopback port, knowing `elastiservices`
/// (synced). Not started: `elasti_operator::wake::server::serve(addr, svc)`.
pub async fn wake_server(
    state: Arc<State>,
    elastiservices: Vec<elasti_api::ElastiService>,
) -> (
    std::net::SocketAddr,
    Arc<elasti_operator::wake::server::WakeService>,
) {
    use elasti_operator::{
        metrics::Metrics,
        scale::Scaler,
        term::Leader,
        wake::{auth::Authenticator, server},
    };
    use kube::runtime::{events::Recorder, reflector, watcher};
    let client = client(state);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let (store, mut writer) = reflector::store();
    for es in elastiservices {
        writer.apply_watcher_event(&watcher::Event::Apply(es));
    }
    let scaler = Arc::new(Scaler::new(
        client.clone(),
        Recorder::new(client.clone(), "test".into()),
        metrics.clone(),
    ));
    let health = Arc::new(server::Health::default());
    health.synced.store(true, Ordering::Release);
    let wake = Arc::new(server::WakeService {
        client: client.clone(),
        auth: Authenticator::new(client, "elasti-system", "elasti-agent"),
        scaler,
        store,
        health,
        metrics,
        leader: Leader::default(),
        max_connections: 8192,
    });
    std::mem::forget(writer);
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = probe.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(probe);
    (addr, wake)
}

/// ElastiService `name` in `ns` for Service `name` and Deployment `name`.
pub fn elastiservice(ns: &str, name: &str) -> elasti_api::ElastiService {
    let mut es = elasti_api::ElastiService::new(
        name,
        serde_json::from_value(serde_json::json!({
            "service": name,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        }))
        .unwrap_or_else(|e| panic!("{e}")),
    );
    es.metadata.namespace = Some(ns.into());
    es.metadata.uid = Some(format!("uid-{name}"));
    es
}
