//! The agent's flags. Every one has a default (or says why it must be given) and an
//! `ELASTI_*` environment variable, so the DaemonSet can set them from the downward API.
use std::{net::IpAddr, net::SocketAddr, path::PathBuf};

use clap::Parser;

use crate::hold::admission::Limits;

#[derive(Clone, Debug, Parser)]
#[command(
    after_help = "Every flag can also come from a YAML file (--config): its keys are the flag names \
without dashes' prefix, e.g. `max-held: 5000`. Precedence: flags, then the file, then ELASTI_* variables, \
then the defaults."
)]
#[command(
    name = "elasti-agent",
    about = "elasti node agent: holds connections to scaled-to-zero Services and wakes them",
    version
)]
pub struct Args {
    /// cgroup v2 directory whose processes' connects are intercepted. `auto`: the host's
    /// cgroup v2 root (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts), checked
    /// to be the root (id 1). Tests point it at a subtree holding only test processes.
    #[arg(long, env = "ELASTI_CGROUP_PATH", default_value = "auto")]
    pub cgroup_path: String,

    /// The address held connects are steered to. By default a link-local address the agent
    /// puts on its own link (`--proxy-interface`); the node IP also works (then set
    /// `--proxy-interface ""`). Never 127.0.0.1: inside a pod's netns that is the pod.
    #[arg(long, env = "ELASTI_PROXY_ADDRESS", default_value = "169.254.20.11")]
    pub proxy_address: IpAddr,

    /// The link the agent creates (dummy, or a port-less bridge where the kernel has no
    /// dummy driver) to carry `--proxy-address`, and removes on exit. Empty: use an
    /// address the node already has.
    #[arg(long, env = "ELASTI_PROXY_INTERFACE", default_value = "elasti0")]
    pub proxy_interface: String,

    /// Remove the proxy link on exit. The DaemonSet turns this off: during a rolling
    /// update the next agent is already serving on that address.
    #[arg(long, env = "ELASTI_REMOVE_INTERFACE_ON_EXIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub remove_interface_on_exit: bool,

    /// Address the proxy listeners bind (one per allocated proxy port).
    #[arg(long, env = "ELASTI_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,

    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "ELASTI_ADMIN_ADDRESS", default_value = "0.0.0.0:9090")]
    pub admin_address: SocketAddr,

    /// Connections/requests one service may hold at once; more get 503 + Retry-After.
    #[arg(long, env = "ELASTI_MAX_HELD", default_value_t = Limits::DEFAULT_MAX_HELD)]
    pub max_held: usize,

    /// Seconds a held connection/request waits for a Ready endpoint before 504.
    #[arg(long, env = "ELASTI_HOLD_TIMEOUT_SECS", default_value_t = Limits::DEFAULT_DEADLINE.as_secs())]
    pub hold_timeout_secs: u64,

    /// Milliseconds the agent keeps steering new connects after a service became Ready, so
    /// kube-proxy has programmed the Service before clients go direct again.
    #[arg(long, env = "ELASTI_HANDBACK_GRACE_MS", default_value_t = 2000)]
    pub handback_grace_ms: u64,

    /// Seconds to let accepted connections finish on SIGTERM before exiting.
    #[arg(long, env = "ELASTI_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Base URL of the operator's wake API.
    #[arg(
        long,
        env = "ELASTI_OPERATOR_URL",
        default_value = "http://elasti-operator.elasti-system.svc:8080"
    )]
    pub operator_url: String,

    /// Projected ServiceAccount token (audience elasti-operator) sent with wake requests.
    #[arg(
        long,
        env = "ELASTI_TOKEN_PATH",
        default_value = "/var/run/secrets/elasti/token"
    )]
    pub token_path: PathBuf,

    /// `--watch-namespaces`, `--config`, `--log-json`.
    #[command(flatten)]
    pub common: elasti_runtime::config_file::CommonArgs,
}

pub use elasti_runtime::config_file::Error;

impl Args {
    /// Parses the command line, with the values of `--config`'s file (if any) placed
    /// before it so the command line wins.
    ///
    /// # Errors
    /// When the file can't be read or parsed, or a flag is invalid.
    pub fn load(argv: Vec<String>) -> Result<Self, Error> {
        elasti_runtime::config_file::load(argv, |a: &Self| a.common.config.as_str())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_held: self.max_held,
            deadline: std::time::Duration::from_secs(self.hold_timeout_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_become_flags_and_the_command_line_wins() {
        let dir = std::env::temp_dir().join(format!("elasti-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("agent.yaml");
        std::fs::write(
            &file,
            "max-held: 5000\nhold-timeout-secs: 60\nwatch-namespaces: [a, b]\nlog-json: true\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let argv = [
            "elasti-agent",
            "--config",
            file.to_str().unwrap_or_default(),
            "--max-held",
            "7",
        ];
        let args = Args::load(argv.iter().map(|s| s.to_string()).collect())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.max_held, 7, "the command line wins");
        assert_eq!(args.hold_timeout_secs, 60, "the file fills in");
        assert_eq!(
            args.common.namespaces(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert!(args.common.log_json);
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    }
}
