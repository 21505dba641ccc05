//! Flags and config files of each cluster component. JSON is valid YAML, so kubeconfigs and
//! component configs are written with serde_json.
use std::{fs, path::Path};

use anyhow::Result;
use serde_json::json;

use super::{
    host::{PODS_CGROUP, RUN_DIR, STATE_DIR},
    net,
};

pub fn pki() -> String {
    format!("{STATE_DIR}/pki")
}

pub fn kubeconfig(name: &str) -> String {
    format!("{STATE_DIR}/kubeconfig/{name}.yaml")
}

pub fn containerd_socket() -> String {
    format!("{RUN_DIR}/containerd/containerd.sock")
}

fn server() -> String {
    format!("https://{}:{}", net::NODE_IP, net::APISERVER_PORT)
}

/// One kubeconfig per client certificate.
pub fn write_kubeconfigs() -> Result<()> {
    let pki = pki();
    for c in super::pki::clients() {
        let path = kubeconfig(c.name);
        if let Some(dir) = Path::new(&path).parent() {
            fs::create_dir_all(dir)?;
        }
        let cfg = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "elasti-e2e", "cluster": {
                "server": server(),
                "certificate-authority": format!("{pki}/ca.crt"),
            }}],
            "users": [{ "name": c.name, "user": {
                "client-certificate": format!("{pki}/{}.crt", c.name),
                "client-key": format!("{pki}/{}.key", c.name),
            }}],
            "contexts": [{ "name": "elasti-e2e", "context": { "cluster": "elasti-e2e", "user": c.name }}],
            "current-context": "elasti-e2e",
        });
        fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    }
    Ok(())
}

pub fn etcd_args() -> Vec<String> {
    strings(&[
        "--name=elasti-e2e",
        &format!("--data-dir={STATE_DIR}/etcd"),
        "--listen-client-urls=http://127.0.0.1:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=elasti-e2e=http://127.0.0.1:2380",
        "--listen-metrics-urls=http://127.0.0.1:2381",
        // A throwaway single-member test store: favour speed over durability.
        "--unsafe-no-fsync=true",
        "--quota-backend-bytes=2147483648",
        "--log-level=warn",
    ])
}

pub fn apiserver_args() -> Vec<String> {
    let pki = pki();
    strings(&[
        "--etcd-servers=http://127.0.0.1:2379",
        &format!("--advertise-address={}", net::NODE_IP),
        "--bind-address=0.0.0.0",
        &format!("--secure-port={}", net::APISERVER_PORT),
        &format!("--service-cluster-ip-range={}", net::SERVICE_CIDR),
        "--service-node-port-range=30000-32767",
        &format!("--client-ca-file={pki}/ca.crt"),
        &format!("--tls-cert-file={pki}/apiserver.crt"),
        &format!("--tls-private-key-file={pki}/apiserver.key"),
        &format!("--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt"),
        &format!("--kubelet-client-key={pki}/apiserver-kubelet-client.key"),
        &format!("--kubelet-certificate-authority={pki}/ca.crt"),
        "--kubelet-preferred-address-types=InternalIP",
        &format!("--service-account-key-file={pki}/sa.pub"),
        &format!("--service-account-signing-key-file={pki}/sa.key"),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--api-audiences=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ])
}

pub fn controller_manager_args() -> Vec<String> {
    let pki = pki();
    let kc = kubeconfig("controller-manager");
    strings(&[
        &format!("--kubeconfig={kc}"),
        &format!("--authentication-kubeconfig={kc}"),
        &format!("--authorization-kubeconfig={kc}"),
        &format!("--root-ca-file={pki}/ca.crt"),
        &format!("--service-account-private-key-file={pki}/sa.key"),
        &format!("--cluster-signing-cert-file={pki}/ca.crt"),
        &format!("--cluster-signing-key-file={pki}/ca.key"),
        "--use-service-account-credentials=true",
        &format!("--service-cluster-ip-range={}", net::SERVICE_CIDR),
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        "--controllers=*",
        "--v=1",
    ])
}

pub fn scheduler_args() -> Vec<String> {
    let kc = kubeconfig("scheduler");
    strings(&[
        &format!("--kubeconfig={kc}"),
        &format!("--authentication-kubeconfig={kc}"),
        &format!("--authorization-kubeconfig={kc}"),
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        "--v=1",
    ])
}

/// containerd with its own root, state and socket, pods attached to our CNI config, and
/// the pause image we build as the sandbox image.
pub fn write_containerd_config() -> Result<String> {
    let dir = format!("{STATE_DIR}/containerd");
    fs::create_dir_all(&dir)?;
    let path = format!("{dir}/config.toml");
    let sandbox = crate::images::reference("pause");
    let config = format!(
        r#"version = 2
root = "{STATE_DIR}/containerd/root"
state = "{RUN_DIR}/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{sock}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  enable_unprivileged_ports = true
  # This machine's root lacks CAP_SYS_RESOURCE, so the -998 that kubelet asks for the
  # sandbox would fail in runc; keep scores at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{RUN_DIR}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{STATE_DIR}/cni/net.d"
"#,
        sock = containerd_socket(),
    );
    fs::write(&path, config)?;
    Ok(path)
}

/// A bridge network with host-local IPAM on [`net::POD_CIDR`], plus portmap for hostPort.
pub fn write_cni_config() -> Result<()> {
    let dir = format!("{STATE_DIR}/cni/net.d");
    fs::create_dir_all(&dir)?;
    let conf = json!({
        "cniVersion": "0.4.0",
        "name": net::CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": net::CNI_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": net::POD_CIDR }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": format!("{STATE_DIR}/cni/ipam"),
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    fs::write(
        format!("{dir}/10-elasti-e2e.conflist"),
        serde_json::to_vec_pretty(&conf)?,
    )?;
    Ok(())
}

pub fn write_kubelet_config() -> Result<String> {
    let pki = pki();
    let dir = format!("{STATE_DIR}/kubelet");
    fs::create_dir_all(&dir)?;
    // Pods get a resolv.conf that names only the cluster DNS; nothing is forwarded upstream.
    let resolv = format!("{dir}/resolv.conf");
    fs::write(&resolv, format!("nameserver {}\n", net::DNS_SERVICE_IP))?;
    let path = format!("{dir}/config.yaml");
    let cfg = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net::NODE_IP,
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": format!("{pki}/ca.crt") },
        },
        "authorization": { "mode": "Webhook" },
        "tlsCertFile": format!("{pki}/kubelet-serving.crt"),
        "tlsPrivateKeyFile": format!("{pki}/kubelet-serving.key"),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": format!("/{PODS_CGROUP}"),
        // This host still mounts cgroup v1 controllers (design §3).
        "failCgroupV1": false,
        "failSwapOn": false,
        "containerRuntimeEndpoint": format!("unix://{}", containerd_socket()),
        "clusterDomain": "cluster.local",
        "clusterDNS": [net::DNS_SERVICE_IP],
        "resolvConf": resolv,
        // Imported images cannot be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": { "memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%" },
        "podPidsLimit": -1,
        "serializeImagePulls": false,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "4s",
        "maxPods": 250,
        "protectKernelDefaults": false,
        "localStorageCapacityIsolation": false,
    });
    fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(path)
}

pub fn kubelet_args(config: &str) -> Vec<String> {
    strings(&[
        &format!("--config={config}"),
        &format!("--kubeconfig={}", kubeconfig("kubelet")),
        &format!("--root-dir={STATE_DIR}/kubelet/root"),
        &format!("--hostname-override={}", net::NODE_NAME),
        &format!("--node-ip={}", net::NODE_IP),
        "--v=1",
    ])
}

pub fn write_kube_proxy_config() -> Result<String> {
    let dir = format!("{STATE_DIR}/kube-proxy");
    fs::create_dir_all(&dir)?;
    let path = format!("{dir}/config.yaml");
    let cfg = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": { "kubeconfig": kubeconfig("kube-proxy") },
        "mode": "iptables",
        "clusterCIDR": net::POD_CIDR,
        "hostnameOverride": net::NODE_NAME,
        "bindAddress": net::NODE_IP,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": { "maxPerCore": 0 },
        "nodePortAddresses": [format!("{}/32", net::NODE_IP)],
    });
    fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(path)
}

/// Objects applied once the apiserver is up: the apiserver's access to kubelets, and
/// CoreDNS serving `cluster.local` only (no upstream: nothing leaves the namespace).
pub fn system_manifests() -> String {
    let coredns_image = crate::images::reference("coredns");
    let dns_ip = net::DNS_SERVICE_IP;
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: elasti-e2e:apiserver-kubelet-client
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:kubelet-api-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: kube-apiserver-kubelet-client
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
    .:53 {{
        errors
        health {{
            lameduck 2s
        }}
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 5
        }}
        cache 5
        loop
        reload
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  replicas: 1
  selector:
    matchLabels: {{k8s-app: kube-dns}}
  template:
    metadata:
      labels: {{k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      containers:
      - name: coredns
        image: {coredns_image}
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {{containerPort: 53, name: dns, protocol: UDP}}
        - {{containerPort: 53, name: dns-tcp, protocol: TCP}}
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 2
        livenessProbe:
          httpGet: {{path: /health, port: 8080}}
        volumeMounts:
        - {{name: config, mountPath: /etc/coredns, readOnly: true}}
      volumes:
      - name: config
        configMap: {{name: coredns}}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  clusterIP: {dns_ip}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
"#
    )
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_string()).collect()
}
