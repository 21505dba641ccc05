//! A real Prometheus (Debian's package) beside the cluster: it runs where
//! [`Cluster::command`] runs (the cluster's namespace on podman), listens on all its
//! addresses, and pods reach it at [`Cluster::host_ip`]. Debian's build has no Kubernetes
//! discovery, so the pods to scrape are written to a `file_sd` file ([`Prometheus::scrape`]).
use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{cmd, elasti, kind::Cluster};

pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    /// Where pods and nodes reach it: `http://<host ip>:<port>`.
    pub url: String,
    /// Where this machine's cluster namespace reaches it.
    local: String,
}

impl Prometheus {
    /// Starts Prometheus on `port`, scraping itself (job `prometheus`, which the triggers'
    /// `uptimeFilter` checks) and job `web` every 2 s, and waits until it is ready.
    pub fn start(cluster: &Cluster, port: u16, dir: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            r#"global: {{scrape_interval: 2s, evaluation_interval: 2s}}
scrape_configs:
- job_name: prometheus
  static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
- job_name: web
  file_sd_configs: [{{files: ["{}"], refresh_interval: 1s}}]
"#,
            dir.join("targets.json").display()
        );
        std::fs::write(dir.join("targets.json"), "[]")?;
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let mut c = cluster.command("/usr/bin/prometheus");
        c.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=0.0.0.0:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        let child = c
            .spawn()
            .context("starting prometheus (Debian package `prometheus`, installed by setup)")?;
        let me = Self {
            child: Some(child),
            dir,
            url: format!("http://{}:{port}", cluster.host_ip()),
            local: format!("127.0.0.1:{port}"),
        };
        cmd::wait_for("Prometheus ready", Duration::from_secs(30), || {
            let local = me.local.clone();
            cluster
                .run_beside(move || {
                    elasti::http_get(&local, "/-/ready", Duration::from_secs(1))
                        .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
                })
                .unwrap_or(false)
        })?;
        Ok(me)
    }

    /// Scrapes `targets` (`ip:port`) as job `web` from now on.
    pub fn scrape(&self, targets: &[String]) -> Result<()> {
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            self.dir.join("targets.json.tmp"),
            format!(r#"[{{"targets": [{}]}}]"#, list.join(", ")),
        )?;
        std::fs::rename(
            self.dir.join("targets.json.tmp"),
            self.dir.join("targets.json"),
        )?;
        Ok(())
    }

    /// Leaves it running after this handle goes (the demo's); `cluster down` stops it with
    /// everything else in the cluster's namespace.
    pub fn detach(mut self) {
        self.child = None;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
