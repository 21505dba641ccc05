//! Writes an OCI image layout tarball (uncompressed layers, config, manifest, index) that
//! `ctr images import`, `kind load image-archive` and `podman load` accept. No Docker
//! needed.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// One file placed in the image.
pub struct ImageFile {
    /// Absolute path inside the image.
    pub dest: String,
    /// The file on this machine to copy.
    pub source: PathBuf,
    pub mode: u32,
}

pub struct ImageSpec {
    /// Full reference, e.g. `elasti.local/elasti-agent:0.1.0`.
    pub reference: String,
    pub files: Vec<ImageFile>,
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    /// `uid:gid`, numeric so no /etc/passwd lookup is needed.
    pub user: String,
    /// A prebuilt layer tarball below [`ImageSpec::files`] (a root filesystem).
    pub base_layer: Option<PathBuf>,
}

/// One layer's blob: built in memory, or a tarball on disk.
enum Blob {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Blob {
    fn digest_and_size(&self) -> Result<(String, u64)> {
        match self {
            Self::Bytes(b) => Ok((sha256(b), b.len() as u64)),
            Self::File(p) => {
                use std::io::Read;
                let mut f = fs::File::open(p).with_context(|| p.display().to_string())?;
                let (mut h, mut n, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
                loop {
                    let read = f.read(&mut buf)?;
                    if read == 0 {
                        break;
                    }
                    h.update(&buf[..read]);
                    n += read as u64;
                }
                Ok((hex(&h.finalize()), n))
            }
        }
    }
}

/// Writes `spec` as an OCI layout tarball at `out`.
pub fn write(spec: &ImageSpec, out: &Path) -> Result<()> {
    let mut layers: Vec<Blob> = spec.base_layer.iter().cloned().map(Blob::File).collect();
    layers.push(Blob::Bytes(layer_tar(&spec.files)?));
    let described = layers
        .iter()
        .map(Blob::digest_and_size)
        .collect::<Result<Vec<_>>>()?;
    let diff_ids: Vec<String> = described
        .iter()
        .map(|(d, _)| format!("sha256:{d}"))
        .collect();
    let layer_descriptors: Vec<serde_json::Value> = described
        .iter()
        .map(|(d, size)| {
            json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{d}"),
                "size": size,
            })
        })
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Env": spec.env,
            "User": spec.user,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [{ "created_by": "cargo xtask images" }],
    }))?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": layer_descriptors,
    }))?;
    let manifest_digest = sha256(&manifest);
    let tag = spec.reference.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": spec.reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;

    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension("partial");
    let mut tar =
        tar::Builder::new(fs::File::create(&tmp).with_context(|| tmp.display().to_string())?);
    append_bytes(
        &mut tar,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    append_bytes(&mut tar, "index.json", &index, 0o644)?;
    for (layer, (digest, _)) in layers.iter().zip(&described) {
        let path = format!("blobs/sha256/{digest}");
        match layer {
            Blob::Bytes(b) => append_bytes(&mut tar, &path, b, 0o644)?,
            Blob::File(p) => tar.append_file(&path, &mut fs::File::open(p)?)?,
        }
    }
    for (digest, blob) in [(&config_digest, &config), (&manifest_digest, &manifest)] {
        append_bytes(&mut tar, &format!("blobs/sha256/{digest}"), blob, 0o644)?;
    }
    tar.into_inner()?.flush()?;
    fs::rename(&tmp, out)?;
    Ok(())
}

fn layer_tar(files: &[ImageFile]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let mut p = Path::new(f.dest.trim_start_matches('/')).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    // Every image gets a writable /tmp, as distroless images do.
    dirs.insert(PathBuf::from("tmp"));
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if d == Path::new("tmp") { 0o1777 } else { 0o755 });
        h.set_size(0);
        h.set_mtime(0);
        tar.append_data(&mut h, format!("{}/", d.display()), std::io::empty())?;
    }
    for f in files {
        let data =
            fs::read(&f.source).with_context(|| format!("image file {}", f.source.display()))?;
        append_bytes(&mut tar, f.dest.trim_start_matches('/'), &data, f.mode)?;
    }
    Ok(tar.into_inner()?)
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, io::Read};

    use super::*;

    #[test]
    fn every_blob_is_stored_under_its_digest_and_the_index_names_the_image() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("elasti-oci-test-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let source = dir.join("hello");
        fs::write(&source, b"hello")?;
        let spec = ImageSpec {
            reference: "elasti.local/test:1.2.3".into(),
            files: vec![ImageFile {
                dest: "/usr/local/bin/hello".into(),
                source,
                mode: 0o755,
            }],
            entrypoint: vec!["/usr/local/bin/hello".into()],
            env: vec![],
            user: "65532:65532".into(),
            base_layer: None,
        };
        let out = dir.join("image.tar");
        write(&spec, &out)?;

        let mut entries = HashMap::new();
        for e in tar::Archive::new(fs::File::open(&out)?).entries()? {
            let mut e = e?;
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            entries.insert(e.path()?.display().to_string(), data);
        }
        for (path, data) in &entries {
            if let Some(digest) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(
                    sha256(data),
                    digest,
                    "{path} is not stored under its digest"
                );
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&entries["index.json"])?;
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "elasti.local/test:1.2.3"
        );
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "1.2.3"
        );
        let manifest_digest = m["digest"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("sha256:");
        let manifest: serde_json::Value =
            serde_json::from_slice(&entries[&format!("blobs/sha256/{manifest_digest}")])?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("sha256:");
        let config: serde_json::Value =
            serde_json::from_slice(&entries[&format!("blobs/sha256/{config_digest}")])?;
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"],
            "uncompressed layer: diff_id = digest"
        );
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
