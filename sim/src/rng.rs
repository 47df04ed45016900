//! The one random number generator of both simulators.
//!
//! SplitMix64: small, fast, and the same sequence on every platform and Rust version, so a seed
//! means the same figures everywhere (the docs quote figures by seed).

/// A seeded SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The stream for `seed`. Callers wanting several independent streams from one seed derive a
    /// seed per stream (a different multiplier or mask); SplitMix64 decorrelates nearby seeds.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..n; `None` when `n` is 0 (nothing to pick from).
    pub fn below(&mut self, n: usize) -> Option<usize> {
        (n > 0).then(|| (self.next_u64() % n as u64) as usize)
    }

    /// Exponentially distributed, with this mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        // 1 - unit() is in (0, 1]: the logarithm stays finite.
        -mean * (1.0 - self.unit()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_values_in_range() {
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            assert!((2.0..3.0).contains(&a.range(2.0, 3.0)));
            assert!(a.below(7).is_some_and(|k| k < 7));
            let e = a.exp(5.0);
            assert!(e.is_finite() && e >= 0.0);
            b.unit();
            b.range(2.0, 3.0);
            b.below(7);
            b.exp(5.0);
        }
        assert_eq!(a.below(0), None);
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
