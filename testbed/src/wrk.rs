//! wrk, the HTTP load generator both benches use (`cargo xtask bench`'s cluster figures and
//! `elasti-bench`'s proxy comparison): its arguments and its report.
use anyhow::{Result, bail};

/// wrk from Debian (`setup` installs it).
pub const PROGRAM: &str = "/usr/bin/wrk";

/// One wrk run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Wrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Two threads, `connections` keep-alive connections, `secs` seconds, with the latency
/// distribution.
pub fn args(url: &str, connections: u32, secs: u32) -> Vec<String> {
    vec![
        "-t2".into(),
        format!("-c{connections}"),
        format!("-d{secs}s"),
        "--latency".into(),
        url.into(),
    ]
}

/// [`args`] with `Connection: close` on every request: a new connection per request.
pub fn args_per_request(url: &str, connections: u32, secs: u32) -> Vec<String> {
    let mut a = args(url, connections, secs);
    a.splice(0..0, ["-H".to_string(), "Connection: close".to_string()]);
    a
}

/// wrk's report: requests per second, and the median and p99 latency. A run that saw
/// errors or non-2xx answers is an error, not a figure.
pub fn parse(url: &str, out: &str) -> Result<Wrk> {
    let ms = |s: &str| -> Option<f64> {
        if let Some(v) = s.strip_suffix("us") {
            v.parse::<f64>().ok().map(|v| v / 1000.0)
        } else if let Some(v) = s.strip_suffix("ms") {
            v.parse().ok()
        } else if let Some(v) = s.strip_suffix('s') {
            v.parse::<f64>().ok().map(|v| v * 1000.0)
        } else {
            None
        }
    };
    let mut w = Wrk::default();
    for line in out.lines() {
        if line.contains("Non-2xx") || line.contains("Socket errors") {
            bail!("wrk saw errors against {url}: {line}");
        }
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["Requests/sec:", v] => w.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => w.p50_ms = ms(v).unwrap_or(0.0),
            ["99%", v] => w.p99_ms = ms(v).unwrap_or(0.0),
            _ => {}
        }
    }
    if w.rps == 0.0 {
        bail!("wrk output not understood:\n{out}");
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let out = "Running 8s test\n  Latency Distribution\n     50%  412.00us\n     75%  1.02ms\n     99%    3.10ms\n  1000 requests in 8.00s\nRequests/sec:   1250.50\n";
        let w = parse("u", out).unwrap_or_else(|e| panic!("{e}"));
        assert!((w.rps - 1250.5).abs() < 1e-6);
        assert!((w.p50_ms - 0.412).abs() < 1e-6);
        assert!((w.p99_ms - 3.1).abs() < 1e-6);
        assert!(parse("u", "Non-2xx or 3xx responses: 5\nRequests/sec: 1\n").is_err());
    }
}
