//! The objects the suites, the demo and the bench deploy, as typed values: the HTTP and TCP
//! test workloads (`workloads/`) behind a Service, client pods, and ElastiServices.
use std::collections::BTreeMap;

use elasti_api::{
    ElastiService, ElastiServiceSpec, PrometheusTrigger, ScaleTargetRef, ScaleTrigger,
    TargetApiVersion, TargetKind, TriggerType,
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec},
        core::v1::{
            Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
            Pod, PodSpec, PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec,
            TCPSocketAction,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::api::ObjectMeta;

use crate::{kube::Kube, paths};

/// The HTTP/h2c/gRPC/websocket workload (and the `http-get` client).
pub fn http_image() -> String {
    paths::image_ref("elasti-http-workload")
}

/// The raw TCP echo workload.
pub fn tcp_echo_image() -> String {
    paths::image_ref("elasti-tcp-echo")
}

/// The workload's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    StatefulSet,
}

impl Kind {
    /// The `/scale` resource's plural.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Deployment => "deployments",
            Self::StatefulSet => "statefulsets",
        }
    }

    fn target(self) -> TargetKind {
        match self {
            Self::Deployment => TargetKind::Deployment,
            Self::StatefulSet => TargetKind::StatefulSet,
        }
    }
}

/// A test workload (pods labelled `app: <name>`) and its ClusterIP Service on port 80.
#[derive(Clone, Debug)]
pub struct App {
    pub name: String,
    pub kind: Kind,
    pub replicas: i32,
    image: String,
    /// (container port, its name, the probe).
    port: (i32, &'static str),
    tcp: bool,
    env: Vec<(String, String)>,
    node: Option<String>,
}

impl App {
    /// The HTTP workload: port 80 → 8080 (`http`), Ready when `/healthz` answers.
    pub fn http(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: Kind::Deployment,
            replicas: 1,
            image: http_image(),
            port: (8080, "http"),
            tcp: false,
            env: Vec::new(),
            node: None,
        }
    }

    /// The TCP echo workload: port 80 → 9000 (`tcp`), Ready when it accepts.
    pub fn tcp_echo(name: &str) -> Self {
        Self {
            image: tcp_echo_image(),
            port: (9000, "tcp"),
            tcp: true,
            ..Self::http(name)
        }
    }

    pub fn replicas(mut self, n: i32) -> Self {
        self.replicas = n;
        self
    }

    pub fn stateful_set(mut self) -> Self {
        self.kind = Kind::StatefulSet;
        self
    }

    /// An environment variable of the workload (`READY_AFTER_MS`, …).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Pins the pods to `node`.
    pub fn on_node(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), self.name.clone())])
    }

    fn template(&self) -> PodTemplateSpec {
        let (port, port_name) = self.port;
        let mut env = vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }];
        env.extend(self.env.iter().map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..Default::default()
        }));
        let named = IntOrString::String(port_name.into());
        let readiness = Probe {
            http_get: (!self.tcp).then(|| HTTPGetAction {
                path: Some("/healthz".into()),
                port: named.clone(),
                ..Default::default()
            }),
            tcp_socket: self.tcp.then(|| TCPSocketAction {
                port: named.clone(),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(1),
            ..Default::default()
        };
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(self.labels()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                node_name: self.node.clone(),
                termination_grace_period_seconds: Some(1),
                containers: vec![Container {
                    name: port_name.into(),
                    image: Some(self.image.clone()),
                    image_pull_policy: Some("Never".into()),
                    env: Some(env),
                    ports: Some(vec![ContainerPort {
                        container_port: port,
                        name: Some(port_name.into()),
                        ..Default::default()
                    }]),
                    readiness_probe: Some(readiness),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            ..Default::default()
        }
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.labels()),
            ..Default::default()
        }
    }

    pub fn deployment(&self) -> Deployment {
        Deployment {
            metadata: self.meta(),
            spec: Some(DeploymentSpec {
                replicas: Some(self.replicas),
                selector: self.selector(),
                template: self.template(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn stateful_set_object(&self) -> StatefulSet {
        StatefulSet {
            metadata: self.meta(),
            spec: Some(StatefulSetSpec {
                replicas: Some(self.replicas),
                service_name: Some(self.name.clone()),
                selector: self.selector(),
                template: self.template(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn service(&self) -> Service {
        let (_, port_name) = self.port;
        Service {
            metadata: self.meta(),
            spec: Some(ServiceSpec {
                selector: Some(self.labels()),
                ports: Some(vec![ServicePort {
                    name: Some(port_name.into()),
                    port: 80,
                    target_port: Some(IntOrString::String(port_name.into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The ElastiService for this workload's Service (no triggers).
    pub fn elastiservice(&self) -> ElastiService {
        elastiservice(&self.name, self.kind)
    }

    /// Applies the workload and its Service in `namespace`.
    pub fn apply(&self, kube: &Kube, namespace: &str) -> anyhow::Result<()> {
        match self.kind {
            Kind::Deployment => kube.apply(namespace, &self.deployment()).map(drop)?,
            Kind::StatefulSet => kube
                .apply(namespace, &self.stateful_set_object())
                .map(drop)?,
        }
        kube.apply(namespace, &self.service()).map(drop)
    }
}

/// An ElastiService `name` for Service `name` and its `kind` target of the same name.
pub fn elastiservice(name: &str, kind: Kind) -> ElastiService {
    ElastiService {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: ElastiServiceSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: TargetApiVersion::AppsV1,
                kind: kind.target(),
                name: name.into(),
            },
            service: name.into(),
            min_target_replicas: 1,
            cooldown_period: 900,
            triggers: Vec::new(),
            autoscaler: None,
            enabled_period: None,
            probe_response: Vec::new(),
            wake_with: Vec::new(),
        },
        status: None,
    }
}

/// An EndpointSlice of Service `service` written by hand (as a Service without a selector
/// has them), managed by `managed_by`, for port `http` 8080: one endpoint per address in
/// `addresses`, each Ready or not by `ready`.
pub fn manual_slice(
    name: &str,
    service: &str,
    managed_by: &str,
    addresses: &[&str],
    ready: bool,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                (
                    elasti_api::endpoints::SERVICE_NAME_LABEL.to_string(),
                    service.to_string(),
                ),
                (
                    elasti_api::fallback::MANAGED_BY_LABEL.to_string(),
                    managed_by.to_string(),
                ),
            ])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
        endpoints: addresses
            .iter()
            .map(|a| Endpoint {
                addresses: vec![(*a).to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                ..Default::default()
            })
            .collect(),
    }
}

/// A Prometheus trigger as KubeElasti's samples write it.
pub fn prometheus_trigger(server: &str, query: &str, threshold: &str) -> ScaleTrigger {
    ScaleTrigger {
        kind: TriggerType::Prometheus,
        metadata: Some(PrometheusTrigger {
            server_address: server.into(),
            query: query.into(),
            threshold: threshold.into(),
            uptime_filter: Some("job=\"prometheus\"".into()),
            headers: None,
            headers_from_secret: None,
        }),
    }
}

/// A pod to `kubectl exec` `http-get` in (the HTTP workload image, listening on loopback
/// only), optionally pinned to `node` and on the host network.
pub fn client_pod(name: &str, node: Option<&str>, host_network: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("role".to_string(), "client".to_string())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: node.map(String::from),
            host_network: host_network.then_some(true),
            termination_grace_period_seconds: Some(1),
            containers: vec![Container {
                name: "client".into(),
                image: Some(http_image()),
                image_pull_policy: Some("Never".into()),
                env: Some(vec![EnvVar {
                    name: "LISTEN".into(),
                    // A port of its own per pod, so hostNetwork clients never collide.
                    value: Some(format!("127.0.0.1:{}", 18080 + (name.len() as u16 % 100))),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_app_serves_port_80_from_its_named_port_and_probes_healthz() {
        let app = App::http("web")
            .replicas(0)
            .env("READY_AFTER_MS", "6000")
            .on_node("n2");
        let d = app.deployment();
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(0));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.node_name.as_deref(), Some("n2"));
        let c = &pod.containers[0];
        let probe = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        assert_eq!(probe.path.as_deref(), Some("/healthz"));
        assert!(
            c.env
                .as_ref()
                .expect("env")
                .iter()
                .any(|e| e.name == "READY_AFTER_MS")
        );
        let svc = app.service().spec.expect("svc");
        let port = &svc.ports.expect("ports")[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (80, Some(IntOrString::String("http".into())))
        );
    }

    #[test]
    fn tcp_echo_is_probed_by_a_connect_and_elastiservices_name_their_kind() {
        let app = App::tcp_echo("echo");
        let c = &app
            .deployment()
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod")
            .containers[0];
        assert!(
            c.readiness_probe
                .as_ref()
                .is_some_and(|p| p.tcp_socket.is_some() && p.http_get.is_none())
        );
        let es = App::http("web").stateful_set().elastiservice();
        assert_eq!(es.spec.scale_target_ref.kind, TargetKind::StatefulSet);
        assert_eq!(es.spec.service, "web");
    }
}
