//! Summaries of timed samples for the bench binaries.

use std::time::Duration;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The sample count a bench binary was given as its first numeric argument, else `default`.
pub fn samples_arg(default: usize) -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// (p50, mean, p90) of `v` in milliseconds; zeros for no samples.
pub fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort();
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    (ms(v[v.len() / 2]), mean, ms(v[(v.len() * 9) / 10]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_ten_samples() {
        let v = (1..=10).rev().map(Duration::from_millis).collect();
        assert_eq!(stats(v), (6.0, 5.5, 10.0));
        assert_eq!(stats(Vec::new()), (0.0, 0.0, 0.0));
    }
}
