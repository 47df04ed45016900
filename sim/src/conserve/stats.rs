//! What one run of one policy counts, and the figures derived from it.

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub intervals: u64,
    pub vf_intervals: u64,
    /// Mbps x ticks.
    pub served: u128,
    pub ideal: u128,
    pub missed_vf_intervals: u64,
    pub intervals_with_miss: u64,
    /// Lengths of the spells in which a VF was short of its guarantee, in ticks.
    pub short_runs: Vec<u64>,
    pub ticks_per_interval: u64,
    /// Rate changes made (limiter calls).
    pub sets: u64,
    /// Decisions taken before their interval was up, to take a loan back.
    pub early: u64,
    /// Mbps x intervals above guarantees (controller only).
    pub borrowed: u128,
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        self.intervals += o.intervals;
        self.vf_intervals += o.vf_intervals;
        self.served += o.served;
        self.ideal += o.ideal;
        self.missed_vf_intervals += o.missed_vf_intervals;
        self.intervals_with_miss += o.intervals_with_miss;
        self.short_runs.extend(&o.short_runs);
        self.ticks_per_interval = o.ticks_per_interval;
        self.sets += o.sets;
        self.early += o.early;
        self.borrowed += o.borrowed;
    }

    pub fn utilisation(&self) -> f64 {
        if self.ideal == 0 {
            1.0
        } else {
            self.served as f64 / self.ideal as f64
        }
    }

    pub fn miss_pct(&self) -> f64 {
        100.0 * self.missed_vf_intervals as f64 / self.vf_intervals.max(1) as f64
    }

    pub fn any_miss_pct(&self) -> f64 {
        100.0 * self.intervals_with_miss as f64 / self.intervals.max(1) as f64
    }

    /// The longest spell short of a guarantee, in intervals.
    pub fn reclaim_max(&self) -> f64 {
        self.short_runs.iter().copied().max().unwrap_or(0) as f64
            / self.ticks_per_interval.max(1) as f64
    }

    pub fn reclaim_mean(&self) -> f64 {
        if self.short_runs.is_empty() {
            0.0
        } else {
            self.short_runs.iter().sum::<u64>() as f64
                / self.short_runs.len() as f64
                / self.ticks_per_interval.max(1) as f64
        }
    }
}
