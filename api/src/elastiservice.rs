//! `ElastiService`: which Service elasti manages, which workload backs it, and when that
//! workload may sleep. The spec is KubeElasti v0.1.30's, field for field, with its limits
//! and enums: every manifest KubeElasti runs applies unchanged (`enabledPeriod.timeZone` is
//! elasti's one extension). The status adds `conditions`, `observedGeneration` and
//! `proxyPorts`.
use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
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
    /// Replicas to scale the target up to when traffic arrives (at most 1,000: the operator
    /// scales with its own rights, so one ElastiService must not be able to ask for any
    /// number).
    #[serde(default = "default_min_target_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_target_replicas: i32,
    /// Seconds the target must have been up (and idle) before it may be scaled to zero.
    #[serde(default = "default_cooldown_period")]
    #[schemars(range(min = 0, max = 604_800))]
    pub cooldown_period: i32,
    /// Conditions under which the target is idle; all must hold to scale to zero.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub triggers: Vec<ScaleTrigger>,
    /// An HPA or KEDA ScaledObject that also scales the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSpec>,
    /// When scale-to-zero is allowed. Absent: always. Outside the window the target is kept
    /// at `minTargetReplicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_period: Option<EnabledPeriod>,
    /// Answers given without waking the target while it is at zero (load balancer health
    /// checks and the like). The first rule whose matchers all hold wins; a request no rule
    /// matches wakes the target as usual.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub probe_response: Vec<ProbeRule>,
    /// elasti's extension: other ElastiServices in this namespace (by name) woken together
    /// with this one, such as the backend an API calls. A member is not scaled down while
    /// a member that wakes it is up. Cycles are allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub wake_with: Vec<String>,
}

fn default_min_target_replicas() -> i32 {
    1
}

fn default_cooldown_period() -> i32 {
    900
}

/// The windows in which scale-to-zero is allowed: each starts at a fire time of `schedule`
/// and lasts `duration`; windows that overlap or touch merge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnabledPeriod {
    /// A five-field cron expression (minute hour day-of-month month day-of-week), in UTC
    /// unless `timeZone` is set. KubeElasti's `CRON_TZ=<zone> ` prefix is understood too.
    /// Example: `0 9 * * 1-5`, 09:00 Monday to Friday.
    #[serde(default = "default_schedule")]
    #[schemars(regex(pattern = r"^\s*((CRON_)?TZ=\S+\s+)?\S+(\s+\S+){4}\s*$"))]
    pub schedule: String,
    /// How long each window lasts from its fire time, as a positive Go duration: `24h`,
    /// `1h30m`, `90s`, `1.5h`.
    #[serde(default = "default_duration")]
    #[schemars(regex(pattern = r"^\+?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$"))]
    pub duration: String,
    /// elasti's extension: the IANA time zone `schedule` is read in (`Europe/Berlin`).
    /// Absent: UTC, as in KubeElasti.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$"))]
    pub time_zone: Option<String>,
}

impl Default for EnabledPeriod {
    fn default() -> Self {
        Self {
            schedule: default_schedule(),
            duration: default_duration(),
            time_zone: None,
        }
    }
}

fn default_schedule() -> String {
    "0 0 * * *".into()
}

fn default_duration() -> String {
    "24h".into()
}

/// One synthetic answer (a KubeElasti `probeResponse` rule): every matcher given must hold,
/// with Gateway API `HTTPRouteMatch` semantics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRule {
    /// The request path to match. Absent: `PathPrefix` `/`, every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Request headers that must all match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// Query parameters that must all match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryParamMatch>,
    /// The request method to match, compared case-insensitively. Absent: any method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// The answer.
    pub response: ProbeResponse,
}

/// A request path matcher (Gateway API `HTTPPathMatch`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// How `value` is compared. Absent: `PathPrefix`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<PathMatchType>,
    /// The path, path prefix or regular expression. Absent or empty with `PathPrefix`: `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub value: Option<String>,
}

/// How a path matcher compares. Absent: `PathPrefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    /// The path equals the value.
    Exact,
    /// The path is the value or lies below it, element by element: `/foo` matches `/foo`
    /// and `/foo/bar`, not `/foobar`.
    PathPrefix,
    /// The value, an RE2 regular expression, matches somewhere in the path (unanchored).
    RegularExpression,
}

/// A request header matcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// The header name, compared case-insensitively.
    #[schemars(length(max = 256))]
    pub name: String,
    /// How `value` is compared. Absent: `Exact`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ValueMatchType>,
    /// The value, or a regular expression; any of the header's values may match.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A query parameter matcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// The parameter name, compared exactly.
    #[schemars(length(max = 256))]
    pub name: String,
    /// How `value` is compared. Absent: `Exact`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ValueMatchType>,
    /// The value, or a regular expression; any of the parameter's values may match.
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// How a header or query parameter matcher compares. Absent: `Exact`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ValueMatchType {
    /// The value equals the matcher's.
    Exact,
    /// The matcher's RE2 regular expression matches somewhere in the value (unanchored).
    RegularExpression,
}

/// The request methods a probe rule may name (KubeElasti's list), compared
/// case-insensitively. Absent: any method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    /// The method's name, as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
        }
    }
}

/// What a matching probe rule answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResponse {
    /// The HTTP status.
    pub status: ProbeStatus,
    /// The body, sent verbatim (`HEAD` requests and 204 answers carry none).
    pub body: String,
}

/// The HTTP statuses a probe rule may answer with (KubeElasti's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub enum ProbeStatus {
    Ok = 200,
    NoContent = 204,
    BadRequest = 400,
    Unauthorized = 401,
    Forbidden = 403,
    NotFound = 404,
    InternalServerError = 500,
    BadGateway = 502,
    ServiceUnavailable = 503,
    GatewayTimeout = 504,
}

impl ProbeStatus {
    /// Every status, in KubeElasti's order.
    pub const ALL: [Self; 10] = [
        Self::Ok,
        Self::NoContent,
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::InternalServerError,
        Self::BadGateway,
        Self::ServiceUnavailable,
        Self::GatewayTimeout,
    ];

    /// The status code.
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

impl From<ProbeStatus> for u16 {
    fn from(status: ProbeStatus) -> Self {
        status.as_u16()
    }
}

impl TryFrom<u16> for ProbeStatus {
    type Error = String;

    fn try_from(code: u16) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_u16() == code)
            .ok_or_else(|| format!("status {code} is not one a probe rule may answer with"))
    }
}

impl JsonSchema for ProbeStatus {
    fn schema_name() -> Cow<'static, str> {
        "ProbeStatus".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let codes: Vec<u16> = Self::ALL.iter().map(|s| s.as_u16()).collect();
        json_schema!({ "type": "integer", "enum": codes })
    }
}

/// The workload behind the Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.apiVersion == 'apps/v1' ? self.kind in ['Deployment', 'StatefulSet', 'deployments'] : self.kind in ['Rollout', 'rollouts']",
    "message": "apps/v1 targets are a Deployment or a StatefulSet; argoproj.io/v1alpha1 targets are a Rollout"
}]))]
pub struct ScaleTargetRef {
    /// `apps/v1` for a Deployment or StatefulSet, `argoproj.io/v1alpha1` for a Rollout.
    pub api_version: TargetApiVersion,
    /// The target's kind.
    pub kind: TargetKind,
    /// The target's name, in the ElastiService's namespace.
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

/// One idleness condition: `prometheus` (KubeElasti's) or `activity` (elasti's: the agents'
/// own connection counts, no Prometheus needed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.type != 'prometheus' || has(self.metadata)",
    "message": "a prometheus trigger needs metadata {serverAddress, query, threshold}"
}]))]
pub struct ScaleTrigger {
    /// The trigger's kind: `prometheus`, or `activity`.
    #[serde(rename = "type")]
    pub kind: TriggerType,
    /// A `prometheus` trigger's settings: the target is idle while `query` is below
    /// `threshold`. An `activity` trigger takes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PrometheusTrigger>,
}

impl ScaleTrigger {
    /// The Prometheus settings of a `prometheus` trigger.
    pub fn prometheus(&self) -> Option<&PrometheusTrigger> {
        match self.kind {
            TriggerType::Prometheus => self.metadata.as_ref(),
            TriggerType::Activity => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerType {
    /// Idle while a PromQL query is below a threshold (KubeElasti's trigger).
    Prometheus,
    /// Idle when no connection to the Service was opened, and none was open, for the whole
    /// `cooldownPeriod`, as counted by the agents' eBPF programs on every node.
    Activity,
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
    /// A number, as a string (KubeElasti's wire format): every decimal form Go's
    /// `strconv.ParseFloat` reads (`0.5`, `.5`, `+2`, `1e3`, `Inf`, `NaN`).
    #[schemars(regex(
        pattern = r"^([-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|[iI][nN][fF]([iI][nN][iI][tT][yY])?)|[nN][aA][nN])$"
    ))]
    pub threshold: String,
    /// Label filter for the `up{…}` health check run before trusting the query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_filter: Option<String>,
    /// Extra HTTP headers for the Prometheus request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// elasti's extension: a Secret in the ElastiService's namespace whose keys are header
    /// names and values header values, sent with every query (credentials stay out of the
    /// spec). The Secret must carry the label `elasti.truefoundry.com/trigger-headers:
    /// "true"`, so only someone who may write it can offer it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_from_secret: Option<String>,
}

/// An autoscaler that also owns the target's replica count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AutoscalerSpec {
    /// `hpa` for a HorizontalPodAutoscaler, `keda` for a KEDA ScaledObject.
    #[serde(rename = "type")]
    pub kind: AutoscalerType,
    /// The autoscaler's name, in the ElastiService's namespace.
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
    /// When the operator last wrote this status. While nothing else changes it is
    /// refreshed every ten poll intervals (5 min by default), not at every reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconciled_time: Option<Time>,
    /// When the target was last scaled up from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scaled_up_time: Option<Time>,
    /// When an agent last asked to wake the target (also when it was up already): the
    /// cooldown counts from it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_wake_time: Option<Time>,
    /// `proxy` while the target has no Ready endpoint, `serve` once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The `metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Kubernetes-style conditions.
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
        assert_eq!(
            es.spec.triggers[0]
                .prometheus()
                .map(|p| p.threshold.as_str()),
            Some("0.5")
        );
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

    /// A manifest with every KubeElasti v0.1.30 field (its e2e template, plus the rest).
    const KUBEELASTI_FULL: &str = r#"
service: target-deployment
minTargetReplicas: 2
cooldownPeriod: 300
scaleTargetRef:
  apiVersion: argoproj.io/v1alpha1
  kind: Rollout
  name: target-rollout
triggers:
  - type: prometheus
    metadata:
      query: round(sum(rate(envoy_http_downstream_rq_total[1m])),0.001) or vector(0)
      serverAddress: http://prometheus-operated.monitoring.svc.cluster.local:9090
      threshold: ".01"
      uptimeFilter: container="prometheus"
      headers:
        X-Scope-OrgID: tenant-a
autoscaler:
  name: target-scaled-object
  type: keda
enabledPeriod:
  schedule: "0 9 * * 1-5"
  duration: 8h
probeResponse:
  - method: GET
    path:
      type: PathPrefix
      value: /healthz
    headers:
      - name: User-Agent
        type: RegularExpression
        value: ^kube-probe/
      - name: X-Check
        value: "1"
    queryParams:
      - name: deep
        type: Exact
        value: "false"
    response:
      status: 200
      body: '{"ok":true}'
  - path:
      type: RegularExpression
      value: ^/v[0-9]+/ready$
    response:
      status: 503
      body: ""
"#;

    #[test]
    fn every_kubeelasti_field_parses_and_serializes_back_unchanged() {
        let spec: ElastiServiceSpec =
            serde_yaml::from_str(KUBEELASTI_FULL).unwrap_or_else(|e| panic!("{e}"));
        let period = spec.enabled_period.as_ref();
        assert_eq!(period.map(|p| p.duration.as_str()), Some("8h"));
        assert_eq!(spec.probe_response.len(), 2);
        let first = &spec.probe_response[0];
        assert_eq!(first.method, Some(HttpMethod::Get));
        assert_eq!(first.headers[1].kind, None);
        assert_eq!(first.response.status, ProbeStatus::Ok);
        assert_eq!(
            spec.probe_response[1].response.status,
            ProbeStatus::ServiceUnavailable
        );

        let input: serde_json::Value =
            serde_yaml::from_str(KUBEELASTI_FULL).unwrap_or_else(|e| panic!("{e}"));
        let output = serde_json::to_value(&spec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(output, input);
    }

    #[test]
    fn enabled_period_defaults_match_kubeelasti() {
        let period: EnabledPeriod =
            serde_json::from_value(serde_json::json!({})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(period, EnabledPeriod::default());
        assert_eq!(period.schedule, "0 0 * * *");
        assert_eq!(period.duration, "24h");
        assert_eq!(period.time_zone, None);
        let period: EnabledPeriod =
            serde_json::from_value(serde_json::json!({"timeZone": "Europe/Berlin"}))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(period.time_zone.as_deref(), Some("Europe/Berlin"));
    }

    #[test]
    fn probe_status_outside_kubeelasti_list_is_refused() {
        for code in [200, 204, 400, 401, 403, 404, 500, 502, 503, 504] {
            let status: ProbeStatus =
                serde_json::from_value(serde_json::json!(code)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status.as_u16(), code);
        }
        for bad in [
            serde_json::json!(418),
            serde_json::json!("200"),
            serde_json::json!(0),
        ] {
            assert!(
                serde_json::from_value::<ProbeStatus>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    /// The generated schema carries KubeElasti's limits, for the apiserver to enforce.
    #[test]
    fn schema_carries_kubeelasti_limits() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(ElastiService::crd()).unwrap_or_else(|e| panic!("{e}"));
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let rules = &spec["probeResponse"];
        let rule = &rules["items"]["properties"];
        let checks = [
            (&rules["maxItems"], serde_json::json!(32)),
            (&rule["headers"]["maxItems"], serde_json::json!(16)),
            (&rule["queryParams"]["maxItems"], serde_json::json!(16)),
            (
                &rule["path"]["properties"]["value"]["maxLength"],
                serde_json::json!(1024),
            ),
            (
                &rule["headers"]["items"]["properties"]["value"]["maxLength"],
                serde_json::json!(4096),
            ),
            (
                &rule["queryParams"]["items"]["properties"]["value"]["maxLength"],
                serde_json::json!(1024),
            ),
            (
                &rule["response"]["properties"]["status"]["enum"],
                serde_json::json!([200, 204, 400, 401, 403, 404, 500, 502, 503, 504]),
            ),
            (
                &rule["response"]["required"],
                serde_json::json!(["body", "status"]),
            ),
            (&spec["triggers"]["minItems"], serde_json::json!(1)),
            (
                &spec["enabledPeriod"]["properties"]["schedule"]["default"],
                serde_json::json!("0 0 * * *"),
            ),
            (
                &spec["enabledPeriod"]["properties"]["duration"]["default"],
                serde_json::json!("24h"),
            ),
        ];
        for (i, (got, want)) in checks.into_iter().enumerate() {
            assert_eq!(*got, want, "check {i}");
        }
    }

    /// Issue 14 item 6: what can never work is refused at admission.
    #[test]
    fn schema_caps_min_replicas_and_pairs_api_versions_with_kinds() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(ElastiService::crd()).unwrap_or_else(|e| panic!("{e}"));
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["minTargetReplicas"]["maximum"].as_f64(),
            Some(1000.0)
        );
        let rule = spec["properties"]["scaleTargetRef"]["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap_or_default();
        assert!(
            rule.contains("'apps/v1'") && rule.contains("'rollouts'"),
            "{rule}"
        );
    }

    #[test]
    fn legacy_kinds_normalize() {
        assert_eq!(TargetKind::LegacyRollouts.as_str(), "Rollout");
        assert_eq!(TargetKind::LegacyDeployments.as_str(), "Deployment");
        assert_eq!(TargetKind::StatefulSet.as_str(), "StatefulSet");
    }
}
