//! Programs built from source through the Go module proxy: Kubernetes (a wrapper module
//! that requires `k8s.io/kubernetes` and replaces its staging modules with their published
//! versions, design §3), etcd and CoreDNS. Each lands in `<cache>/<name>-v<version>/bin`
//! with a stamp written only after a successful build.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use elasti_testbed::{cmd, kind::Provider, paths};

/// Oldest Go that builds Kubernetes 1.35.
const MIN_GO_MINOR: u32 = 25;

pub struct GoProgram {
    pub name: &'static str,
    pub version: String,
    /// The wrapper module's directory (sources, go.mod, build log).
    src: PathBuf,
    /// Where the binaries go.
    bin: PathBuf,
    go_mod: String,
    /// Extra files of the wrapper module: (name, contents).
    files: Vec<(&'static str, String)>,
    /// Packages to `go build`, each giving one binary.
    packages: Vec<String>,
    /// Binaries that must exist after the build.
    outputs: Vec<&'static str>,
    ldflags: String,
}

/// A new enough Go: the one on PATH, or else Go [`paths::GO_VERSION`] from the Go module
/// proxy (`golang.org/toolchain`, the zip `go` itself downloads when it switches
/// toolchains), unpacked into the cache.
pub fn ensure_go() -> Result<()> {
    if let Some(version) = go_minor(&go()) {
        if version >= MIN_GO_MINOR {
            return Ok(());
        }
        eprintln!(
            "    Go 1.{version} is too old (Kubernetes 1.35 needs 1.{MIN_GO_MINOR}); fetching Go {}",
            paths::GO_VERSION
        );
    } else {
        eprintln!("    no Go on PATH; fetching Go {}", paths::GO_VERSION);
    }
    let dir = paths::go_root();
    let zip = dir.with_extension("zip");
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let url = format!(
        "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go{}.linux-amd64.zip",
        paths::GO_VERSION
    );
    cmd::run_logged(
        "download Go",
        Command::new("curl")
            .args(["-fSL", "--retry", "3", "-o"])
            .arg(&zip)
            .arg(&url),
        &dir.with_extension("log"),
    )?;
    let unpack = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&unpack);
    cmd::run_logged(
        "unzip Go",
        Command::new("unzip")
            .args(["-q", "-d"])
            .arg(&unpack)
            .arg(&zip),
        &dir.with_extension("log"),
    )?;
    // The zip's one top folder is `golang.org/toolchain@v0.0.1-go<version>.linux-amd64`.
    let top = unpack.join(format!(
        "golang.org/toolchain@v0.0.1-go{}.linux-amd64",
        paths::GO_VERSION
    ));
    std::fs::rename(&top, &dir)
        .with_context(|| format!("moving {} to {}", top.display(), dir.display()))?;
    std::fs::remove_dir_all(&unpack)?;
    std::fs::remove_file(&zip)?;
    match go_minor(&go()) {
        Some(v) if v >= MIN_GO_MINOR => Ok(()),
        _ => bail!("Go from the module proxy does not run: {}", go().display()),
    }
}

/// The `go` to run: the cached toolchain if setup fetched one, else the one on PATH.
pub fn go() -> PathBuf {
    let cached = paths::go_root().join("bin/go");
    if cached.is_file() {
        cached
    } else {
        PathBuf::from("go")
    }
}

/// The minor version of the Go at `go` (`go1.26.8` → 26), if it runs.
fn go_minor(go: &Path) -> Option<u32> {
    let version = cmd::output("go version", Command::new(go).arg("version")).ok()?;
    version
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.strip_prefix("go1."))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
}

/// Everything this project builds with Go, in build order. With Docker, kind's published
/// node image brings Kubernetes, so only kubectl is built.
pub fn programs(provider: Provider) -> Result<Vec<GoProgram>> {
    Ok(match provider {
        Provider::Podman => vec![
            kubernetes(&KUBERNETES_COMMANDS)?,
            etcd(),
            coredns(),
            helm(),
            kind(),
        ],
        Provider::Docker => vec![kubernetes(&["kubectl"])?, helm(), kind()],
    })
}

/// The Kubernetes binaries the podman node image is made of: kubeadm, kubelet and kubectl
/// run in the node; the others become its component images.
const KUBERNETES_COMMANDS: [&str; 7] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "kubeadm",
];

fn program(name: &'static str, version: &str, bin: PathBuf) -> GoProgram {
    GoProgram {
        name,
        version: version.to_string(),
        src: paths::cache().join(format!("src/{name}-v{version}")),
        bin,
        go_mod: String::new(),
        files: Vec::new(),
        packages: Vec::new(),
        outputs: Vec::new(),
        ldflags: "-s -w".into(),
    }
}

fn kubernetes(cmds: &[&'static str]) -> Result<GoProgram> {
    let v = paths::KUBERNETES_VERSION;
    let mut p = program("kubernetes", v, paths::kubernetes_bin());
    p.outputs = cmds.to_vec();
    if p.is_cached() {
        return Ok(p);
    }
    let staging = staging_modules(v)?;
    let minor = v.split('.').nth(1).unwrap_or("0");
    let mut go_mod = format!(
        "module elasti.local/build/kubernetes\n\ngo 1.25.0\n\ngodebug default=go1.25\n\nrequire k8s.io/kubernetes v{v}\n\n"
    );
    // The staging modules are `=> ./staging/...` in kubernetes' go.mod and absent from
    // its module zip; their published v0.X.Y releases are the same code.
    for m in &staging {
        go_mod.push_str(&format!(
            "replace {m} => {m} v0.{}\n",
            v.trim_start_matches("1.")
        ));
    }
    p.go_mod = go_mod;
    let imports: String = cmds
        .iter()
        .map(|c| format!("\t_ \"k8s.io/kubernetes/cmd/{c}\"\n"))
        .collect();
    p.files.push((
        "tools.go",
        format!("//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"),
    ));
    p.packages = cmds
        .iter()
        .map(|c| format!("k8s.io/kubernetes/cmd/{c}"))
        .collect();
    // As hack/lib/version.sh sets them, so `kubectl version` and the apiserver say v1.35.x.
    let mut ld = String::from("-s -w");
    for pkg in [
        "k8s.io/client-go/pkg/version",
        "k8s.io/component-base/version",
    ] {
        for (k, val) in [
            ("gitVersion", format!("v{v}")),
            ("gitMajor", "1".to_string()),
            ("gitMinor", minor.to_string()),
            ("gitTreeState", "clean".to_string()),
            ("buildDate", "1970-01-01T00:00:00Z".to_string()),
        ] {
            ld.push_str(&format!(" -X '{pkg}.{k}={val}'"));
        }
    }
    p.ldflags = ld;
    Ok(p)
}

/// The `k8s.io/*` modules that kubernetes' go.mod points at `./staging`.
fn staging_modules(version: &str) -> Result<Vec<String>> {
    let out = cmd::output(
        "go mod download k8s.io/kubernetes",
        Command::new(go()).args([
            "mod",
            "download",
            "-json",
            &format!("k8s.io/kubernetes@v{version}"),
        ]),
    )?;
    let info: serde_json::Value = serde_json::from_str(&out).context("go mod download -json")?;
    let go_mod = info["GoMod"]
        .as_str()
        .context("go mod download: no GoMod path")?;
    let text = fs::read_to_string(go_mod).with_context(|| format!("reading {go_mod}"))?;
    let modules = staging_replaces(&text);
    if modules.len() < 20 {
        bail!(
            "k8s.io/kubernetes go.mod: expected ~31 staging replaces, found {}",
            modules.len()
        );
    }
    Ok(modules)
}

/// Module paths of the `replace X => ./staging/...` lines of a go.mod.
fn staging_replaces(go_mod: &str) -> Vec<String> {
    go_mod
        .lines()
        .filter(|l| l.contains("=> ./staging/"))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn etcd() -> GoProgram {
    let v = paths::ETCD_VERSION;
    let mut p = program("etcd", v, paths::etcd_bin());
    p.outputs = vec!["etcd"];
    p.go_mod = format!(
        "module elasti.local/build/etcd\n\ngo 1.25.0\n\nrequire go.etcd.io/etcd/server/v3 v{v}\n"
    );
    p.files.push((
        "main.go",
        "// etcd's own main, from go.etcd.io/etcd/server/v3/etcdmain.\npackage main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n".into(),
    ));
    p.packages = vec![".".into()];
    p
}

fn helm() -> GoProgram {
    let v = paths::HELM_VERSION;
    let mut p = program("helm", v, paths::helm_bin());
    p.outputs = vec!["helm"];
    p.go_mod =
        format!("module elasti.local/build/helm\n\ngo 1.25.0\n\nrequire helm.sh/helm/v3 v{v}\n");
    p.files.push((
        "tools.go",
        "//go:build tools\n\npackage tools\n\nimport _ \"helm.sh/helm/v3/cmd/helm\"\n".into(),
    ));
    p.packages = vec!["helm.sh/helm/v3/cmd/helm".into()];
    p.ldflags = format!("-s -w -X 'helm.sh/helm/v3/internal/version.version=v{v}'");
    p
}

fn kind() -> GoProgram {
    let v = paths::KIND_VERSION;
    let mut p = program("kind", v, paths::kind_bin());
    p.outputs = vec!["kind"];
    p.go_mod =
        format!("module elasti.local/build/kind\n\ngo 1.25.0\n\nrequire sigs.k8s.io/kind v{v}\n");
    p.files.push((
        "tools.go",
        "//go:build tools\n\npackage tools\n\nimport _ \"sigs.k8s.io/kind\"\n".into(),
    ));
    p.packages = vec!["sigs.k8s.io/kind".into()];
    p
}

fn coredns() -> GoProgram {
    let v = paths::COREDNS_VERSION;
    let mut p = program("coredns", v, paths::coredns_bin());
    p.outputs = vec!["coredns"];
    p.go_mod = format!(
        "module elasti.local/build/coredns\n\ngo 1.25.0\n\nrequire github.com/coredns/coredns v{v}\n"
    );
    // Only the plugins kubeadm's Corefile names: no cloud SDKs to download and build.
    // `forward` must exist for that Corefile to parse; the cluster's own Corefile drops it
    // (xtask/src/cluster/kind.rs), so nothing is ever forwarded out of the cluster.
    let plugins = [
        "cache",
        "errors",
        "forward",
        "health",
        "kubernetes",
        "log",
        "loop",
        "metrics",
        "ready",
        "reload",
        "loadbalance",
    ];
    let imports: String = plugins
        .iter()
        .map(|p| format!("\t_ \"github.com/coredns/coredns/plugin/{p}\"\n"))
        .collect();
    p.files.push((
        "main.go",
        format!(
            "// CoreDNS with the plugins elasti's test cluster needs.\npackage main\n\nimport (\n\t\"github.com/coredns/coredns/coremain\"\n\n{imports})\n\nfunc main() {{ coremain.Run() }}\n"
        ),
    ));
    p.packages = vec![".".into()];
    p
}

impl GoProgram {
    fn stamp(&self) -> PathBuf {
        self.bin.join(".complete")
    }

    pub fn is_cached(&self) -> bool {
        self.stamp().is_file() && self.outputs.iter().all(|o| self.bin.join(o).is_file())
    }

    /// Builds the program unless its stamp says it is already built.
    pub fn ensure(&self) -> Result<()> {
        if self.is_cached() {
            eprintln!("    cached at {}", self.bin.display());
            return Ok(());
        }
        fs::create_dir_all(&self.src)?;
        fs::create_dir_all(&self.bin)?;
        fs::write(self.src.join("go.mod"), &self.go_mod)?;
        for (name, contents) in &self.files {
            fs::write(self.src.join(name), contents)?;
        }
        let log = self.src.join("build.log");
        eprintln!(
            "    building in {} (log: {})",
            self.src.display(),
            log.display()
        );
        cmd::run_logged(
            &format!("{}: go mod tidy (module proxy)", self.name),
            &mut self.go(&["mod", "tidy"]),
            &self.src.join("tidy.log"),
        )?;
        // `go build -v` logs one package per line as it compiles: with the count of what
        // the build depends on, that is its progress.
        let total = self
            .go(&["list", "-deps"])
            .args(&self.packages)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().count());
        let mut build = self.go(&["build", "-v", "-trimpath", "-ldflags", &self.ldflags, "-o"]);
        if self.packages.len() == 1 {
            build.arg(self.bin.join(self.outputs[0]));
        } else {
            build.arg(format!("{}/", self.bin.display()));
        }
        build.args(&self.packages);
        cmd::run_logged_counting(
            &format!("{}: go build", self.name),
            &mut build,
            &log,
            total.map(|n| (n, "packages")),
        )?;
        for o in &self.outputs {
            if !self.bin.join(o).is_file() {
                bail!("{}: go build did not produce {o}", self.name);
            }
        }
        fs::write(self.stamp(), format!("{} v{}\n", self.name, self.version))?;
        Ok(())
    }

    fn go(&self, args: &[&str]) -> Command {
        let mut c = Command::new(go());
        c.current_dir(&self.src)
            .env("CGO_ENABLED", "0")
            .env("GOFLAGS", "-mod=mod -buildvcs=false")
            .args(args);
        c
    }
}

/// The static pause binary, compiled from `build/pause/linux/pause.c` in the kubernetes
/// module zip.
pub fn ensure_pause() -> Result<()> {
    let bin = paths::pause_bin();
    let out = bin.join("pause");
    if out.is_file() {
        eprintln!("    cached at {}", bin.display());
        return Ok(());
    }
    fs::create_dir_all(&bin)?;
    let info = cmd::output(
        "go mod download k8s.io/kubernetes",
        Command::new(go()).args([
            "mod",
            "download",
            "-json",
            &format!("k8s.io/kubernetes@v{}", paths::KUBERNETES_VERSION),
        ]),
    )?;
    let info: serde_json::Value = serde_json::from_str(&info)?;
    let dir = Path::new(info["Dir"].as_str().context("go mod download: no Dir")?);
    let tmp = bin.join("pause.partial");
    cmd::run(
        "compile pause.c",
        Command::new("gcc")
            .args([
                "-Os",
                "-static",
                "-Wall",
                &format!("-DVERSION=v{}", paths::PAUSE_VERSION),
                "-o",
            ])
            .arg(&tmp)
            .arg(dir.join("build/pause/linux/pause.c")),
    )?;
    fs::rename(&tmp, &out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_replaces_are_read_from_the_replace_block_only() {
        let go_mod = "require (\n\tk8s.io/api v0.0.0\n)\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n\tgithub.com/x/y => github.com/x/y v1.0.0\n)\n";
        assert_eq!(
            staging_replaces(go_mod),
            vec!["k8s.io/api", "k8s.io/client-go"]
        );
    }
}
