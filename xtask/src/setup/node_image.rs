//! The kind node image for podman, built from source because `kind build node-image`
//! drives Docker only and pulls its base and component images. Kept in podman's image
//! store under [`paths::node_image`] (the tag carries the Kubernetes version and the recipe
//! revision), so it is built once per version:
//!
//! 1. a Debian bookworm root filesystem from debootstrap (systemd 252 still runs on this
//!    cgroup v1 hybrid host), with Debian's containerd, runc and CNI plugins;
//! 2. kind's base-image files from the kind module (`images/base/files`), with the unit
//!    set-up of its Dockerfile done by hand, and kubeadm, kubelet and kubectl;
//! 3. the component images (apiserver, controller-manager, scheduler, kube-proxy, etcd,
//!    CoreDNS, pause) written as OCI tarballs from the binaries built here, imported into
//!    the node's containerd in a container with no network, then committed.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use elasti_testbed::{
    cmd,
    kind::{BAKE_CONTAINER, Provider},
    netns, paths,
};

use crate::images;

/// What the node needs beyond debootstrap's minbase (kind's base Dockerfile's list, with
/// Debian's containerd, runc and CNI plugins instead of kind's source builds).
const NODE_PACKAGES: &str = "systemd,systemd-sysv,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,fuse-overlayfs,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins,socat,ebtables";
/// Where debootstrap fetches bookworm (the Debian registry these machines reach).
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// kind's node entrypoint, as its base image declares it.
const ENTRYPOINT: &str = r#"ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]"#;

pub fn ensure() -> Result<()> {
    let image = paths::node_image();
    let provider = Provider::Podman;
    provider.prepare()?;
    let created_netns = netns::ensure()?;
    let result = if cmd::succeeds(provider.engine().args(["image", "exists", &image])) {
        eprintln!("    cached in podman's image store as {image}");
        Ok(())
    } else {
        build(provider, &image)
    };
    if created_netns && !elasti_testbed::kind::is_up() {
        netns::delete();
    }
    result
}

fn build(provider: Provider, image: &str) -> Result<()> {
    let work = paths::node_image_work();
    let rootfs = ensure_rootfs(&work)?;
    let kind_files = kind_module()?.join("images/base/files");
    let root = work.join("node-root");
    let _ = fs::remove_dir_all(&root);
    cmd::run(
        "copy the root filesystem",
        Command::new("cp").arg("-a").arg(&rootfs).arg(&root),
    )?;
    assemble(&root, &kind_files)?;
    let base = format!("{image}-base");
    import(provider, &root, &base)?;
    fs::remove_dir_all(&root)?;
    let tarballs = component_images(&work, &rootfs)?;
    let baked = bake(provider, &base, image, &tarballs);
    let _ = provider
        .engine()
        .args(["rm", "-f", BAKE_CONTAINER])
        .output();
    let _ = provider.engine().args(["rmi", "-f", &base]).output();
    let _ = fs::remove_dir_all(work.join("images"));
    baked
}

/// debootstrap's bookworm, cached under the work folder with a stamp.
fn ensure_rootfs(work: &Path) -> Result<PathBuf> {
    let rootfs = work.join("rootfs-bookworm");
    let stamp = work.join("rootfs-bookworm.complete");
    if stamp.is_file() && rootfs.is_dir() {
        return Ok(rootfs);
    }
    let partial = work.join("rootfs-bookworm.partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(work)?;
    cmd::run_logged(
        "debootstrap bookworm",
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={NODE_PACKAGES}"))
            .arg("bookworm")
            .arg(&partial)
            .arg(DEBIAN_MIRROR),
        &work.join("debootstrap.log"),
    )?;
    let _ = fs::remove_dir_all(&rootfs);
    fs::rename(&partial, &rootfs)?;
    fs::write(&stamp, b"")?;
    Ok(rootfs)
}

/// The kind module's folder in the Go module cache (downloaded if missing).
fn kind_module() -> Result<PathBuf> {
    let out = cmd::output(
        "go mod download sigs.k8s.io/kind",
        Command::new(super::gobuild::go()).args([
            "mod",
            "download",
            "-json",
            &format!("sigs.k8s.io/kind@v{}", paths::KIND_VERSION),
        ]),
    )?;
    let info: serde_json::Value = serde_json::from_str(&out)?;
    Ok(PathBuf::from(
        info["Dir"].as_str().context("go mod download: no Dir")?,
    ))
}

/// kind's base Dockerfile, done by hand on `root`.
fn assemble(root: &Path, kind: &Path) -> Result<()> {
    let copy = |from: &Path, to: &str, mode: &str| -> Result<()> {
        let dest = root.join(to);
        fs::create_dir_all(&dest)?;
        for entry in fs::read_dir(from).with_context(|| from.display().to_string())? {
            let path = entry?.path();
            if path.is_file() {
                cmd::run(
                    "install kind file",
                    Command::new("install")
                        .args(["-m", mode])
                        .arg(&path)
                        .arg(&dest),
                )?;
            }
        }
        Ok(())
    };
    copy(&kind.join("usr/local/bin"), "usr/local/bin", "0755")?;
    cmd::run(
        "kind folder",
        Command::new("cp")
            .arg("-r")
            .arg(kind.join("kind/."))
            .arg(root.join("kind")),
    )?;
    cmd::run(
        "kind folder modes",
        Command::new("chmod")
            .args(["-R", "u+w,a+rX"])
            .arg(root.join("kind")),
    )?;
    for f in fs::read_dir(root.join("kind/bin"))? {
        set_mode(&f?.path(), 0o755)?;
    }
    copy(&kind.join("LICENSES"), "LICENSES", "0644")?;
    copy(&kind.join("etc"), "etc", "0644")?;
    for sub in [
        "containerd",
        "default",
        "sysctl.d",
        "systemd/system",
        "systemd/system/kubelet.service.d",
    ] {
        copy(&kind.join("etc").join(sub), &format!("etc/{sub}"), "0644")?;
    }
    // The unit clean-up of the Dockerfile's first RUN.
    for pattern in [
        "lib/systemd/system/sysinit.target.wants/systemd-tmpfiles-setup.service",
        "lib/systemd/system/multi-user.target.wants/*",
        "etc/systemd/system/*.wants/*",
        "lib/systemd/system/local-fs.target.wants/*",
        "lib/systemd/system/sockets.target.wants/*udev*",
        "lib/systemd/system/sockets.target.wants/*initctl*",
        "lib/systemd/system/basic.target.wants/*",
    ] {
        cmd::run(
            "unit clean-up",
            Command::new("sh")
                .current_dir(root)
                .args(["-c", &format!("rm -f {pattern}")]),
        )?;
    }
    append(&root.join("etc/systemd/journald.conf"), "ReadKMsg=no\n")?;
    symlink("/usr/lib/systemd/systemd", &root.join("sbin/init"))?;
    // Debian's containerd, ctr, shim and runc where kind's units expect its own builds.
    for (target, link) in [
        ("/usr/bin/containerd", "usr/local/bin/containerd"),
        ("/usr/bin/ctr", "usr/local/bin/ctr"),
        (
            "/usr/bin/containerd-shim-runc-v2",
            "usr/local/bin/containerd-shim-runc-v2",
        ),
        ("/usr/sbin/runc", "usr/local/sbin/runc"),
    ] {
        symlink(target, &root.join(link))?;
    }
    fs::create_dir_all(root.join("opt/cni/bin"))?;
    for plugin in fs::read_dir(root.join("usr/lib/cni"))? {
        let name = plugin?.file_name();
        symlink(
            &format!("/usr/lib/cni/{}", name.to_string_lossy()),
            &root.join("opt/cni/bin").join(&name),
        )?;
    }
    write_cri_base(root)?;
    let config = root.join("etc/containerd/config.toml");
    let text = fs::read_to_string(&config)?;
    let text = text
        // The pause tag kubeadm 1.35 asks for.
        .replace(
            r#"sandbox_image = "registry.k8s.io/pause:3.10""#,
            &format!(
                r#"sandbox_image = "registry.k8s.io/pause:{}""#,
                paths::PAUSE_VERSION
            ),
        )
        // No CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj (pause asks for -998),
        // so containerd must clamp it, as kind does when rootless.
        .replace(
            "restrict_oom_score_adj = false",
            "restrict_oom_score_adj = true",
        );
    if !text.contains("restrict_oom_score_adj = true") {
        bail!("node image: containerd config has no restrict_oom_score_adj to set");
    }
    fs::write(&config, text)?;
    cmd::run(
        "systemctl enable",
        Command::new("chroot").arg(root).args([
            "systemctl",
            "enable",
            "kubelet.service",
            "containerd.service",
            "undo-mount-hacks.service",
        ]),
    )?;
    cmd::run(
        "systemctl mask",
        Command::new("chroot")
            .arg(root)
            .args(["systemctl", "mask", "systemd-binfmt.service"]),
    )?;
    fs::create_dir_all(root.join("etc/kubernetes/manifests"))?;
    // kind applies this; there is no provisioner image here, and the suites need no volumes.
    fs::create_dir_all(root.join("kind/manifests"))?;
    fs::write(
        root.join("kind/manifests/default-storage.yaml"),
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: standard\n  annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\n",
    )?;
    for b in ["kubeadm", "kubelet", "kubectl"] {
        cmd::run(
            "install kubeadm, kubelet, kubectl",
            Command::new("install")
                .args(["-m", "0755"])
                .arg(paths::kubernetes_bin().join(b))
                .arg(root.join("usr/bin").join(b)),
        )?;
    }
    fs::write(
        root.join("kind/version"),
        format!("v{}", paths::KUBERNETES_VERSION),
    )?;
    Ok(())
}

/// containerd's base OCI spec for pods, as kind's Dockerfile makes it: `ctr oci spec`, plus
/// kind's product-files hook, without rlimits.
fn write_cri_base(root: &Path) -> Result<()> {
    let spec = cmd::output(
        "ctr oci spec",
        Command::new("chroot")
            .arg(root)
            .args(["ctr", "oci", "spec"]),
    )?;
    let mut spec: serde_json::Value = serde_json::from_str(&spec)?;
    let hooks = spec["hooks"]["createContainer"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut hooks = hooks;
    hooks.push(serde_json::json!({"path": "/kind/bin/mount-product-files.sh"}));
    spec["hooks"]["createContainer"] = serde_json::Value::Array(hooks);
    if let Some(process) = spec["process"].as_object_mut() {
        process.remove("rlimits");
    }
    fs::write(
        root.join("etc/containerd/cri-base.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    Ok(())
}

/// `root` as a podman image with the metadata kind's base image sets.
fn import(provider: Provider, root: &Path, reference: &str) -> Result<()> {
    let p = cmd::Progress::start(format!("import the node root filesystem as {reference}"));
    let tarball = root.with_extension("tar");
    cmd::run(
        "tar the node root filesystem",
        Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["--numeric-owner", "-cf"])
            .arg(&tarball)
            .arg("."),
    )?;
    let imported = cmd::output(
        "podman import",
        provider
            .engine()
            .args([
                "import",
                "--change",
                "ENV container=docker",
                "--change",
                "STOPSIGNAL SIGRTMIN+3",
                "--change",
                ENTRYPOINT,
            ])
            .arg(&tarball)
            .arg(reference),
    );
    fs::remove_file(&tarball)?;
    imported?;
    p.done();
    Ok(())
}

/// The images kubeadm and kind start, as OCI tarballs under `<work>/images`.
fn component_images(work: &Path, rootfs: &Path) -> Result<Vec<PathBuf>> {
    let p = cmd::Progress::start("component images (OCI tarballs)");
    let dir = work.join("images");
    fs::create_dir_all(&dir)?;
    let k = paths::KUBERNETES_VERSION;
    let kube = paths::kubernetes_bin();
    let single = [
        (
            "kube-apiserver",
            kube.join("kube-apiserver"),
            format!("registry.k8s.io/kube-apiserver:v{k}"),
        ),
        (
            "kube-controller-manager",
            kube.join("kube-controller-manager"),
            format!("registry.k8s.io/kube-controller-manager:v{k}"),
        ),
        (
            "kube-scheduler",
            kube.join("kube-scheduler"),
            format!("registry.k8s.io/kube-scheduler:v{k}"),
        ),
        (
            "etcd",
            paths::etcd_bin().join("etcd"),
            format!("registry.k8s.io/etcd:{}-0", paths::ETCD_VERSION),
        ),
    ];
    let mut out = Vec::new();
    for (name, bin, reference) in single {
        let dest = format!("/usr/local/bin/{name}");
        out.push(images::write_binary_image(
            &reference,
            &bin,
            &dest,
            "0:0",
            None,
            &dir.join(format!("{name}.tar")),
        )?);
    }
    for name in ["pause", "coredns"] {
        out.push(images::upstream_image(name, &dir)?);
    }
    // kube-proxy execs iptables, ip6tables and conntrack: it runs on the Debian root
    // filesystem (a layer of its own below the binary).
    let layer = dir.join("rootfs-layer.tar");
    cmd::run(
        "root filesystem layer",
        Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["--numeric-owner", "-cf"])
            .arg(&layer)
            .arg("."),
    )?;
    out.push(images::write_binary_image(
        &format!("registry.k8s.io/kube-proxy:v{k}"),
        &kube.join("kube-proxy"),
        "/usr/local/bin/kube-proxy",
        "0:0",
        Some(&layer),
        &dir.join("kube-proxy.tar"),
    )?);
    fs::remove_file(&layer)?;
    p.done();
    Ok(out)
}

/// Preloads `tarballs` into the node's containerd, as kind's own node-image build does: in
/// a container with no network, `ctr images import --no-unpack`, then commit.
fn bake(provider: Provider, base: &str, image: &str, tarballs: &[PathBuf]) -> Result<()> {
    let p = cmd::Progress::start(format!(
        "preload {} images into the node's containerd",
        tarballs.len()
    ));
    let name = BAKE_CONTAINER;
    let _ = provider.engine().args(["rm", "-f", name]).output();
    let dir = tarballs
        .first()
        .and_then(|t| t.parent())
        .context("bake: no images")?;
    cmd::output(
        "bake container",
        provider.engine().args([
            "run",
            "-d",
            "--name",
            name,
            "--network=none",
            "--entrypoint=sleep",
            "-v",
            &format!("{}:/kind-images:ro", dir.display()),
            base,
            "infinity",
        ]),
    )?;
    cmd::output(
        "containerd in the bake container",
        provider.engine().args([
            "exec",
            "-d",
            name,
            "sh",
            "-c",
            "containerd > /tmp/containerd.log 2>&1",
        ]),
    )?;
    cmd::wait_for(
        "containerd in the bake container",
        Duration::from_secs(60),
        || cmd::succeeds(provider.engine().args(["exec", name, "ctr", "version"])),
    )?;
    for t in tarballs {
        let file = t.file_name().context("bake: tarball name")?;
        cmd::output(
            &format!("ctr images import {}", t.display()),
            provider.engine().args([
                "exec",
                name,
                "ctr",
                "--namespace=k8s.io",
                "images",
                "import",
                "--label=io.cri-containerd.pinned=pinned",
                "--all-platforms",
                "--no-unpack",
                "--digests",
                &format!("/kind-images/{}", file.to_string_lossy()),
            ]),
        )?;
        p.beat(&format!("imported {}", t.display()));
    }
    cmd::output(
        "stop containerd",
        provider.engine().args([
            "exec",
            name,
            "sh",
            "-c",
            "kill $(pidof containerd); while pidof containerd >/dev/null; do sleep 0.2; done; rm -rf /run/containerd /tmp/containerd.log",
        ]),
    )?;
    cmd::output(
        "podman commit",
        provider.engine().args([
            "commit", "-q", "--change", ENTRYPOINT, "--change", "CMD []", name, image,
        ]),
    )?;
    p.done();
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())?;
    Ok(())
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("symlink {} -> {target}", link.display()))
}
