//! The simulator's flags and their checks.

use clap::{Parser, ValueEnum};
use conrdma_api::conserve::Tuning;
use conrdma_api::rate::Rate;

use super::{SAMPLES, TICK_MS};
use crate::SimError;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "conrdma-sim",
    version,
    about = "Simulate the work-conserving bandwidth controller against static rates and the ideal"
)]
pub struct Args {
    /// Seed for the VF set and the demand traces.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated seconds per scenario.
    #[arg(long, default_value_t = 7200)]
    pub seconds: u64,
    /// Controller interval, ms (a multiple of 200).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stretches (>1) or compresses (<1) every duration in the traces.
    #[arg(long, default_value_t = 1.0)]
    pub timescale: f64,
    /// VFs on the PF (the last one is best-effort: no guarantee).
    #[arg(long, default_value_t = 8)]
    pub vfs: usize,
    /// PF line rate.
    #[arg(long, default_value = "100Gbps", value_parser = parse_rate)]
    pub line: Rate,
    /// Share of the line rate that is guaranteed (the admission ratio).
    #[arg(long, default_value_t = 0.9)]
    pub admitted: f64,
    /// Max rates add up to at most line x headroom.
    #[arg(long, default_value_t = 1.0)]
    pub headroom: f64,
    /// Quiet intervals before a guarantee is lent.
    #[arg(long, default_value_t = Tuning::default().lend_after)]
    pub lend_after: u32,
    /// Room above a measured demand, as a fraction of it.
    #[arg(long, default_value_t = Tuning::default().margin)]
    pub margin: f64,
    /// Room above a measured demand, in multiples of the VF's jitter.
    #[arg(long, default_value_t = Tuning::default().spread)]
    pub spread: f64,
    /// Which scenarios to run.
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: ScenarioArg,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    Rate::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    All,
    Bursty,
    Diurnal,
    Incast,
}

impl Args {
    pub fn check(&self) -> Result<(), SimError> {
        let bad = |msg: String| Err(SimError::Argument(msg));
        if !(self.admitted > 0.0 && self.admitted <= 1.0) {
            return bad(format!("--admitted {} is not in (0, 1]", self.admitted));
        }
        if !(self.headroom > 0.0 && self.headroom <= 1.0) || self.headroom < self.admitted {
            return bad(format!(
                "--headroom {} must be in (0, 1] and at least --admitted {}",
                self.headroom, self.admitted
            ));
        }
        if self.interval_ms == 0 || self.interval_ms % (TICK_MS * SAMPLES) != 0 {
            return bad(format!(
                "--interval-ms {} is not a positive multiple of {}",
                self.interval_ms,
                TICK_MS * SAMPLES
            ));
        }
        if self.vfs < 2 || self.seconds * 1000 < self.interval_ms {
            return bad("use --vfs >= 2 and --seconds of at least one interval".into());
        }
        if !(self.timescale > 0.0 && self.timescale.is_finite()) {
            return bad(format!("--timescale {} is not positive", self.timescale));
        }
        Ok(())
    }

    pub fn tuning(&self) -> Tuning {
        Tuning {
            headroom: self.headroom,
            lend_after: self.lend_after,
            margin: self.margin,
            spread: self.spread,
            ..Tuning::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--interval-ms", "300"][..],
            &["--headroom", "0.8"],
            &["--admitted", "0"],
            &["--vfs", "1"],
            &["--timescale", "0"],
        ] {
            let mut argv = vec!["conrdma-sim"];
            argv.extend_from_slice(bad);
            assert!(Args::parse_from(argv).check().is_err(), "{bad:?}");
        }
    }
}
