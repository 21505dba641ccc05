//! The cluster's apiserver through a typed `kube::Client`, callable from plain (blocking)
//! test code and from xtask alike: every call runs on a runtime of its own, so it works on
//! any thread, inside another runtime's `spawn_blocking` too.
use std::{
    fmt::Debug,
    future::Future,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{NamespaceResourceScope, api::core::v1::Namespace};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::netns;

/// The field manager of every server-side apply the test bed makes.
const FIELD_MANAGER: &str = "elasti-testbed";
/// How often the waits look again.
const POLL: Duration = Duration::from_millis(200);

/// A blocking handle on the apiserver named by `KUBECONFIG`.
pub struct Kube {
    client: Option<Client>,
    runtime: tokio::runtime::Handle,
    /// Whether its threads live in the cluster's network namespace (podman).
    confined: bool,
}

/// Set when a runtime thread could not enter the cluster's network namespace.
static NOT_CONFINED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Fails unless this thread is in the cluster's network namespace.
fn ensure_in_cluster_netns() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(netns::path())?.ino();
    let here = std::fs::read_link("/proc/thread-self/ns/net")?;
    if NOT_CONFINED.load(std::sync::atomic::Ordering::SeqCst)
        || here.to_string_lossy() != format!("net:[{want}]")
    {
        bail!(
            "refusing to reach the apiserver from outside netns {}",
            netns::NETNS
        );
    }
    Ok(())
}

/// The process-wide [`Kube`], connected on first use. Its runtime lives as long as the
/// process, so nothing is ever dropped inside an async context.
///
/// # Errors
/// When `KUBECONFIG` is missing or names no reachable apiserver.
pub fn kube() -> Result<&'static Kube> {
    static KUBE: OnceLock<std::result::Result<Kube, String>> = OnceLock::new();
    KUBE.get_or_init(|| Kube::connect().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

impl Kube {
    /// Connects with `KUBECONFIG`, or else the cluster's own kubeconfig.
    ///
    /// On podman the apiserver's address exists only inside the cluster's network
    /// namespace; in the machine's own namespace the same address routes out of the
    /// machine. So every thread of this runtime enters the cluster's namespace, whatever
    /// namespace the caller is in (xtask, or the suites inside a node's), and [`Kube::run`]
    /// refuses to send anything if a thread could not.
    fn connect() -> Result<Self> {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(crate::kind::Cluster::kubeconfig);
        Self::connect_to(&kubeconfig)
    }

    /// [`Kube::connect`] with the kubeconfig at `path`.
    fn connect_to(path: &std::path::Path) -> Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(2)
            .enable_all()
            .thread_name("testbed-kube");
        let confined = netns::exists();
        if confined {
            let path = netns::path();
            builder.on_thread_start(move || {
                let entered = std::fs::File::open(&path).is_ok_and(|f| {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                });
                if !entered {
                    NOT_CONFINED.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
        let runtime = builder.build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("testbed-kube".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        let me = Self {
            client: None,
            runtime: handle,
            confined,
        };
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("kubeconfig {}", path.display()))?;
        let client = me
            .block_on(async move {
                let options = kube::config::KubeConfigOptions::default();
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
                Ok(Client::try_from(config)?)
            })
            .context("kube client (KUBECONFIG, or the kind cluster's kubeconfig)")?;
        Ok(Self {
            client: Some(client),
            ..me
        })
    }

    /// Runs `f` on the runtime, once every thread of it is known to be where it must be.
    fn block_on<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let confined = self.confined;
        let task = self.runtime.spawn(async move {
            if confined {
                ensure_in_cluster_netns()?;
            }
            f.await
        });
        match futures::executor::block_on(task) {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => bail!("kube task: {e}"),
        }
    }

    /// Runs `f(client)` on the test bed's runtime and waits for it.
    pub fn run<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.block_on(f(self.client()))
    }

    /// `each(client, i)` for every `i` in `0..n`, `concurrency` at a time (creating many
    /// objects through the apiserver); the first error ends it.
    pub fn for_each_concurrently<F, Fut>(&self, n: usize, concurrency: usize, each: F) -> Result<()>
    where
        F: Fn(Client, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        use futures::{StreamExt, TryStreamExt};
        self.run(move |c| async move {
            futures::stream::iter(0..n)
                .map(|i| each(c.clone(), i))
                .buffer_unordered(concurrency.max(1))
                .try_collect::<Vec<()>>()
                .await
                .map(drop)
        })
    }

    pub fn client(&self) -> Client {
        self.client
            .clone()
            .unwrap_or_else(|| unreachable!("a Kube is only handed out connected"))
    }

    /// Server-side applies `obj` in `namespace` (forcing ownership of its fields).
    pub fn apply<K>(&self, namespace: &str, obj: &K) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default,
    {
        let (ns, obj) = (namespace.to_string(), obj.clone());
        self.run(move |c| async move { apply_with(c, &ns, &obj).await })
    }

    /// The object, or `None` when it does not exist.
    pub fn get_opt<K>(&self, namespace: &str, name: &str) -> Result<Option<K>>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let (ns, name) = (namespace.to_string(), name.to_string());
        self.run(move |c| async move {
            Api::<K>::namespaced(c, &ns)
                .get_opt(&name)
                .await
                .with_context(|| format!("get {} {ns}/{name}", K::kind(&Default::default())))
        })
    }

    /// The object; an error when it does not exist.
    pub fn get<K>(&self, namespace: &str, name: &str) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        self.get_opt(namespace, name)?.with_context(|| {
            format!(
                "{} {namespace}/{name} not found",
                K::kind(&Default::default())
            )
        })
    }

    /// Objects in `namespace` matching the label `selector` ("" for all).
    pub fn list<K>(&self, namespace: &str, selector: &str) -> Result<Vec<K>>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let (ns, selector) = (namespace.to_string(), selector.to_string());
        self.run(move |c| async move {
            Ok(Api::<K>::namespaced(c, &ns)
                .list(&ListParams::default().labels(&selector))
                .await
                .with_context(|| format!("list {} in {ns}", K::kind(&Default::default())))?
                .items)
        })
    }

    /// Deletes the object if it exists.
    pub fn delete<K>(&self, namespace: &str, name: &str) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let (ns, name) = (namespace.to_string(), name.to_string());
        self.run(move |c| async move {
            match Api::<K>::namespaced(c, &ns)
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e).with_context(|| format!("delete {ns}/{name}")),
            }
        })
    }

    /// Polls the object until `done` holds, or fails with `what` and the last state seen.
    pub fn wait_for<K>(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&K) -> bool,
    ) -> Result<K>
    where
        K: Resource<Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout {
            if let Some(obj) = self.get_opt::<K>(namespace, name)? {
                if done(&obj) {
                    return Ok(obj);
                }
                last = Some(obj);
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "timed out after {timeout:?} waiting for {what} ({namespace}/{name}); last seen: {last:?}"
        )
    }

    /// Sets the replicas of `kind` (`deployments`, `statefulsets`) `name` through `/scale`.
    pub fn scale(&self, namespace: &str, kind: &str, name: &str, replicas: i32) -> Result<()> {
        let (ns, kind, name) = (namespace.to_string(), kind.to_string(), name.to_string());
        self.run(move |c| async move {
            let patch = serde_json::json!({"spec": {"replicas": replicas}});
            let params = PatchParams::default();
            let result = match kind.as_str() {
                "deployments" | "deployment" => {
                    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c, &ns)
                        .patch_scale(&name, &params, &Patch::Merge(&patch))
                        .await
                }
                "statefulsets" | "statefulset" => {
                    Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(c, &ns)
                        .patch_scale(&name, &params, &Patch::Merge(&patch))
                        .await
                }
                other => bail!("scale: no {other}"),
            };
            result.with_context(|| format!("scale {kind} {ns}/{name} to {replicas}"))?;
            Ok(())
        })
    }

    /// Creates namespace `name` and waits for its default ServiceAccount (pods are refused
    /// until it exists).
    pub fn create_namespace(&self, name: &str) -> Result<()> {
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let name = name.to_string();
        self.run(move |c| async move {
            Api::<Namespace>::all(c.clone())
                .create(&PostParams::default(), &ns)
                .await
                .with_context(|| format!("create namespace {name}"))?;
            let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(c, &name);
            let start = Instant::now();
            while sa.get_opt("default").await?.is_none() {
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("namespace {name}: no default ServiceAccount after 30 s");
                }
                tokio::time::sleep(POLL).await;
            }
            Ok(())
        })
    }

    /// Deletes namespace `name` without waiting.
    pub fn delete_namespace(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.run(move |c| async move {
            match Api::<Namespace>::all(c)
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e).with_context(|| format!("delete namespace {name}")),
            }
        })
    }
}

/// A namespace of the test's own, deleted when dropped (the policy-controller habit).
pub struct TempNamespace {
    pub name: String,
}

impl TempNamespace {
    /// `<prefix>-<random hex>`.
    pub fn create(prefix: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!("{prefix}-{:x}", nanos ^ std::process::id());
        kube()?.create_namespace(&name)?;
        Ok(Self { name })
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        if let Ok(k) = kube() {
            let _ = k.delete_namespace(&self.name);
        }
    }
}

/// [`Kube::apply`] on a client of [`Kube::run`]'s, for applies made concurrently.
pub async fn apply_with<K>(client: Client, namespace: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned,
    K::DynamicType: Default,
{
    let name = obj.name_any();
    Api::<K>::namespaced(client, namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .with_context(|| format!("apply {} {namespace}/{name}", K::kind(&Default::default())))
}

#[cfg(test)]
mod tests {
    use std::{io::Read, time::Duration};

    use super::*;

    /// On podman the apiserver's address only exists inside the cluster's namespace; from
    /// the machine's own it routes out. The client must connect from inside, whatever the
    /// caller's namespace. A loopback listener inside the namespace tells: a connect from
    /// anywhere else finds nothing there (and loopback never leaves the machine).
    #[test]
    fn the_client_connects_from_inside_the_cluster_namespace() -> Result<()> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED (needs root to enter a network namespace): run as root, as CI does");
            return Ok(());
        }
        let created = netns::ensure()?;
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        netns::run_in(&netns::path(), move || -> Result<()> {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            port_tx.send(listener.local_addr()?.port())?;
            std::thread::spawn(move || {
                if let Ok((mut s, _)) = listener.accept() {
                    let _ = seen_tx.send(());
                    let mut b = [0u8; 16];
                    let _ = s.read(&mut b);
                }
            });
            Ok(())
        })??;
        let port = port_rx.recv()?;
        let dir = std::env::temp_dir().join(format!("elasti-kube-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
            ),
        )?;
        let kube = Kube::connect_to(&kubeconfig)?;
        // Not a TLS server: the request fails; what matters is where it was sent from.
        let _ = kube.run(|c| async move { Ok(c.apiserver_version().await?) });
        let seen = seen_rx.recv_timeout(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&dir);
        if created {
            netns::delete();
        }
        assert!(
            seen.is_ok(),
            "the client did not connect from inside netns {}",
            netns::NETNS
        );
        Ok(())
    }
}
