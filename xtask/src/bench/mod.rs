//! `cargo xtask bench`: builds the eBPF object and `elasti-bench` (release) and runs it as
//! root, then the figures that need the kind cluster ([`cluster`]). Results:
//! `target/bench/results.{json,md}` and `target/bench/cluster.{json,md}`; tables printed;
//! `target/bench/chart.svg` drawn from them ([`chart`]).
mod chart;
mod cluster;

use std::process::Command;

use anyhow::{Result, bail};

use elasti_testbed::{cmd, paths};

use crate::ebpf;

#[derive(clap::Args)]
pub struct Args {
    /// Only the cluster figures (skip elasti-bench's local ones).
    #[arg(long, default_value_t = false)]
    pub cluster_only: bool,
    /// Only draw `target/bench/chart.svg` from the figures an earlier run left there.
    #[arg(long, default_value_t = false)]
    pub chart_only: bool,
    /// Rounds of each cluster figure (0 skips the cluster part).
    #[arg(long, default_value_t = 3)]
    pub cluster_rounds: usize,
    /// Which cluster figures to measure (all by default).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [
        cluster::Figure::Warm,
        cluster::Figure::Wake,
        cluster::Figure::Cold,
        cluster::Figure::ScaleDown,
        cluster::Figure::OperatorScale,
        cluster::Figure::AgentScale,
    ])]
    pub figures: Vec<cluster::Figure>,
    /// Extra arguments for elasti-bench (e.g. `--held 2000 --rounds 3` for a quick run).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub extra: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    if args.chart_only {
        return draw_chart();
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bench: the connect() figures attach real eBPF programs; run as root");
    }
    ebpf::build()?;
    if !args.cluster_only {
        local(args)?;
    }
    if args.cluster_rounds > 0 {
        cluster_figures(args)?;
    }
    draw_chart()
}

/// The chart of whatever this run (or an earlier one) left in `target/bench`.
fn draw_chart() -> Result<()> {
    let dir = paths::repo().join("target/bench");
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(dir.join(name)).ok()?).ok()
    };
    if let Some(svg) = chart::render(read("results.json").as_ref(), read("cluster.json").as_ref()) {
        std::fs::write(dir.join("chart.svg"), svg)?;
        println!("chart: {}", dir.join("chart.svg").display());
    }
    Ok(())
}

/// elasti-bench: the figures measured without the cluster.
fn local(args: &Args) -> Result<()> {
    cmd::run(
        "build elasti-bench",
        Command::new("cargo").current_dir(paths::repo()).args([
            "build",
            "--release",
            "--locked",
            "-p",
            "elasti-bench",
        ]),
    )?;
    cmd::run(
        "elasti-bench",
        Command::new(paths::repo().join("target/release/elasti-bench"))
            .current_dir(paths::repo())
            .args(["--out", "target/bench"])
            .args(&args.extra),
    )
}

fn cluster_figures(args: &Args) -> Result<()> {
    let (rows, json) = cluster::run(args.cluster_rounds, &args.figures)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut samples = Vec::new();
    sample_lines("", &json, &mut samples);
    let md = format!(
        "Cluster figures, {cores} cores, {} rounds of each wrk figure, medians:\n\n| figure | baseline (same run) | elasti | ratio / difference |\n| --- | --- | --- | --- |\n{rows}\nSamples (n: min / median / max):\n\n{}\n",
        args.cluster_rounds,
        samples.join("\n")
    );
    let out = paths::repo().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("cluster.md"), &md)?;
    std::fs::write(out.join("cluster.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("\n{md}");
    Ok(())
}

/// One Markdown list item per sample summary (`{n, min, median, max}`) in `json`, named by
/// its path.
fn sample_lines(path: &str, json: &serde_json::Value, out: &mut Vec<String>) {
    let Some(map) = json.as_object() else { return };
    if let (Some(n), Some(min), Some(median), Some(max)) = (
        map.get("n").and_then(|v| v.as_u64()),
        map.get("min").and_then(|v| v.as_f64()),
        map.get("median").and_then(|v| v.as_f64()),
        map.get("max").and_then(|v| v.as_f64()),
    ) {
        out.push(format!(
            "- `{path}` ({n}): {min:.1} / {median:.1} / {max:.1}"
        ));
        return;
    }
    for (k, v) in map {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        sample_lines(&p, v, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_summary_is_listed_by_its_path() {
        let json = serde_json::json!({
            "warm": {"baseline_rps": {"n": 3, "min": 1.0, "median": 2.0, "p99": 3.0, "max": 3.0}},
            "cold": {"elasti": {"total_ms": {"n": 20, "min": 900.0, "median": 1000.0, "max": 1200.5}}},
        });
        let mut out = Vec::new();
        sample_lines("", &json, &mut out);
        out.sort();
        assert_eq!(
            out,
            vec![
                "- `cold.elasti.total_ms` (20): 900.0 / 1000.0 / 1200.5",
                "- `warm.baseline_rps` (3): 1.0 / 2.0 / 3.0",
            ]
        );
    }
}
