//! `ElastiService`: which Service elasti manages, which workload backs it, and when that
//! workload may sleep. The spec is KubeElasti's, field for field; the status adds
//! `conditions`, `observedGeneration` and `proxyPorts`.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// KubeElasti's finalizer name, kept so objects it created are handled the same way.
pub const FINALIZER: &str = "elasti.truefoundry.com/finalizer";

/// Desired state of an [`ElastiService`].
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "elasti.truefoundry.com",
    version = "v1alpha1",
    kind = "ElastiService",
    plural = "elastiservices",
    shortname = "elastisvc",
    namespaced,
    status = "ElastiServiceStatus",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.scaleTargetRef.name"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minTargetReplicas"}"#,
    printcolumn = r#"{"name":"Cooldown","type":"integer","jsonPath":".spec.cooldownPeriod"}"#,
    printcolumn = r#"{"name":"Scaled Up","type":"date","jsonPath":".status.lastScaledUpTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ElastiServiceSpec {
    /// The workload to scale (through its `/scale` subresource).
    pub scale_target_ref: ScaleTargetRef,
    /// Name of the Service, in the same namespace, whose traffic wakes the target.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// Replicas to scale the target up to when traffic arrives.
    #[serde(default = "default_min_target_replicas")]
    #[schemars(range(min = 1))]
    pub min_target_replicas: i32,
    /// Seconds the target must have been up (and idle) before it may be scaled to zero.
    #[serde(default = "default_cooldown_period")]
    #[schemars(range(min = 0, max = 604_800))]
    pub cooldown_period: i32,
    /// Conditions under which the target is idle; all must hold to scale to zero.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<ScaleTrigger>,
    /// An HPA or KEDA ScaledObject that also scales the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSpec>,
}

fn default_min_target_replicas() -> i32 {
    1
}

fn default_cooldown_period() -> i32 {
    900
}

/// The workload behind the Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    pub api_version: TargetApiVersion,
    pub kind: TargetKind,
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetApiVersion {
    #[serde(rename = "apps/v1")]
    AppsV1,
    #[serde(rename = "argoproj.io/v1alpha1")]
    ArgoprojV1alpha1,
}

/// The target's kind. KubeElasti also accepts the legacy lower-case plurals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetKind {
    Deployment,
    StatefulSet,
    Rollout,
    /// Legacy spelling of [`TargetKind::Deployment`].
    #[serde(rename = "deployments")]
    LegacyDeployments,
    /// Legacy spelling of [`TargetKind::Rollout`].
    #[serde(rename = "rollouts")]
    LegacyRollouts,
}

impl TargetKind {
    /// The kind with legacy spellings resolved.
    pub fn normalized(self) -> Self {
        match self {
            Self::LegacyDeployments => Self::Deployment,
            Self::LegacyRollouts => Self::Rollout,
            other => other,
        }
    }

    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self.normalized() {
            Self::Deployment | Self::LegacyDeployments => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::Rollout | Self::LegacyRollouts => "Rollout",
        }
    }
}

/// One idleness condition. Only `prometheus` exists, as in KubeElasti.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScaleTrigger {
    #[serde(rename = "type")]
    pub kind: TriggerType,
    pub metadata: PrometheusTrigger,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerType {
    Prometheus,
}

/// `metadata` of a `prometheus` trigger: the service is idle while `query` is below
/// `threshold`. Unknown keys are kept, as KubeElasti's schemaless field keeps them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct PrometheusTrigger {
    /// Base URL of the Prometheus server.
    #[schemars(length(min = 1))]
    pub server_address: String,
    /// PromQL returning one sample.
    #[schemars(length(min = 1))]
    pub query: String,
    /// A number, as a string (KubeElasti's wire format).
    #[schemars(regex(pattern = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"))]
    pub threshold: String,
    /// Label filter for the `up{…}` health check run before trusting the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_filter: Option<String>,
    /// Extra HTTP headers for the Prometheus request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// An autoscaler that also owns the target's replica count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AutoscalerSpec {
    #[serde(rename = "type")]
    pub kind: AutoscalerType,
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalerType {
    Hpa,
    Keda,
}

/// Observed state of an [`ElastiService`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ElastiServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconciled_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scaled_up_time: Option<Time>,
    /// `proxy` while the target has no Ready endpoint, `serve` once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The agent listener port allocated for each port of the Service (design §2.5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_ports: Vec<ProxyPort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Proxy,
    Serve,
}

/// One Service port and the cluster-wide agent port allocated for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPort {
    /// The Service port's name ("" for a single unnamed port).
    #[serde(default)]
    pub name: String,
    /// The Service port.
    pub port: i32,
    /// `TCP` (the only protocol held today).
    pub protocol: String,
    /// The agents' listener port for it, on every node.
    pub proxy_port: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KubeElasti's sample manifest, as its docs give it.
    const KUBEELASTI_SAMPLE: &str = r#"
apiVersion: elasti.truefoundry.com/v1alpha1
kind: ElastiService
metadata:
  name: target-elastiservice
  namespace: target
spec:
  minTargetReplicas: 1
  service: target-service
  cooldownPeriod: 5
  scaleTargetRef:
    apiVersion: apps/v1
    kind: deployments
    name: target-deployment
  triggers:
    - type: prometheus
      metadata:
        query: sum(rate(nginx_ingress_controller_nginx_process_requests_total[1m])) or vector(0)
        serverAddress: http://kube-prometheus-stack-prometheus.monitoring.svc.cluster.local:9090
        threshold: "0.5"
"#;

    #[test]
    fn kubeelasti_sample_parses_and_keeps_its_meaning() {
        let es: ElastiService =
            serde_yaml::from_str(KUBEELASTI_SAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(es.spec.service, "target-service");
        assert_eq!(
            es.spec.scale_target_ref.kind.normalized(),
            TargetKind::Deployment
        );
        assert_eq!(es.spec.cooldown_period, 5);
        assert_eq!(es.spec.triggers[0].metadata.threshold, "0.5");
    }

    #[test]
    fn defaults_match_kubeelasti() {
        let spec: ElastiServiceSpec = serde_json::from_value(serde_json::json!({
            "service": "s",
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.min_target_replicas, 1);
        assert_eq!(spec.cooldown_period, 900);
    }

    #[test]
    fn legacy_kinds_normalize() {
        assert_eq!(TargetKind::LegacyRollouts.as_str(), "Rollout");
        assert_eq!(TargetKind::LegacyDeployments.as_str(), "Deployment");
        assert_eq!(TargetKind::StatefulSet.as_str(), "StatefulSet");
    }
}
