//! Summaries of samples: min / median / p99 / max.
use serde::Serialize;

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=1).
fn rank(v: &[f64], q: f64) -> f64 {
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

impl Summary {
    /// `{n, min, median, p99, max}`, as the bench's JSON lists every figure.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"n": self.n, "min": self.min, "median": self.p50, "p99": self.p99, "max": self.max})
    }
}

/// The median of `samples` (nearest rank).
pub fn median(samples: &[f64]) -> f64 {
    summarize(samples).p50
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Summary {
            n: 0,
            min: f64::NAN,
            p50: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
        };
    }
    Summary {
        n: v.len(),
        min: v[0],
        p50: rank(&v, 0.5),
        p99: rank(&v, 0.99),
        max: v[v.len() - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = summarize(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!((s.min, s.p50, s.p99, s.max), (1.0, 50.0, 99.0, 100.0));
        let one = summarize(&[7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
    }
}
