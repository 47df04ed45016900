//! Bandwidth quantities. Everything inside ConRDMA counts whole megabits per second (SI), because that
//! is the unit netlink's VF rate and mlx5's sysfs use; text is parsed exactly (no floats) and rounded up
//! so a pod never gets less than it asked for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The accepted textual form, quoted in every parse error.
pub const ACCEPTED_FORM: &str =
    "a decimal number, an optional single space and an SI unit Kbps|Mbps|Gbps|Tbps or K|M|G|T (case-insensitive), e.g. \"25Gbps\", \"2.5 G\", \"800Mbps\"";

/// Largest rate we accept: 1000 Tbps, far above any NIC, small enough for u64 arithmetic anywhere.
pub const MAX_MBPS: u64 = 1_000_000_000;

/// A rate in whole Mbps, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rate(u64);

impl Rate {
    pub const MIN: Rate = Rate(1);

    /// A rate of `mbps` megabits per second; `None` for 0 or above [`MAX_MBPS`].
    pub fn from_mbps(mbps: u64) -> Option<Rate> {
        (1..=MAX_MBPS).contains(&mbps).then_some(Rate(mbps))
    }

    pub fn mbps(self) -> u64 {
        self.0
    }

    /// Parses the public text form; see [`ACCEPTED_FORM`].
    pub fn parse(text: &str) -> Result<Rate, ApiError> {
        let bad = |reason: &str| ApiError::InvalidRate {
            value: text.to_string(),
            reason: reason.to_string(),
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, rest) = s.split_at(num_end);
        if number.is_empty() {
            return Err(bad("it does not start with a decimal number"));
        }
        let unit = rest.strip_prefix(' ').unwrap_or(rest);
        let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
            "k" | "kbps" => 1_000,
            "m" | "mbps" => 1_000_000,
            "g" | "gbps" => 1_000_000_000,
            "t" | "tbps" => 1_000_000_000_000,
            "" => return Err(bad("it has no unit")),
            _ => {
                return Err(bad(&format!(
                    "unit {unit:?} is not one of Kbps, Mbps, Gbps, Tbps"
                )))
            }
        };
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if int_part.is_empty()
            || frac_part.contains('.')
            || (number.contains('.') && frac_part.is_empty())
        {
            return Err(bad("it is not a plain decimal number"));
        }
        // Digits beyond 15 cannot change the rounded-up Mbps of any rate below MAX_MBPS in a way that
        // matters, but keeping them exact is cheap: only refuse absurd lengths that would overflow.
        if int_part.len() > 20 || frac_part.len() > 18 {
            return Err(bad("it has too many digits"));
        }
        let digits: u128 = format!("{int_part}{frac_part}")
            .parse()
            .map_err(|_| bad("it is not a plain decimal number"))?;
        let scale = 10u128.pow(frac_part.len() as u32) * 1_000_000;
        // Up to 38 digits times 10^12 overflows u128; any such product is far above MAX_MBPS.
        let bits_scaled = digits
            .checked_mul(multiplier)
            .ok_or_else(|| bad("it is above 1000Tbps"))?;
        let mbps = bits_scaled.div_ceil(scale);
        if mbps == 0 {
            return Err(bad("it must be more than zero"));
        }
        if mbps > MAX_MBPS as u128 {
            return Err(bad("it is above 1000Tbps"));
        }
        Ok(Rate(mbps as u64))
    }
}

impl FromStr for Rate {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rate::parse(s)
    }
}

impl fmt::Display for Rate {
    /// Shortest exact SI form: 100000 -> "100Gbps", 2500 -> "2.5Gbps", 800 -> "800Mbps".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format_mbps(self.0))
    }
}

/// Formats any Mbps count (including 0, which [`Rate`] cannot hold) the way [`Rate`] displays.
pub fn format_mbps(mbps: u64) -> String {
    let (div, unit) = if mbps >= 1_000_000 {
        (1_000_000, "Tbps")
    } else if mbps >= 1_000 {
        (1_000, "Gbps")
    } else {
        (1, "Mbps")
    };
    let whole = mbps / div;
    let frac = mbps % div;
    if frac == 0 {
        return format!("{whole}{unit}");
    }
    let width = div.ilog10() as usize;
    let frac = format!("{frac:0width$}");
    format!("{whole}.{}{unit}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbps(s: &str) -> u64 {
        Rate::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).mbps()
    }

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(mbps("25Gbps"), 25_000);
        assert_eq!(mbps("25 Gbps"), 25_000);
        assert_eq!(mbps("  25g "), 25_000);
        assert_eq!(mbps("2.5G"), 2_500);
        assert_eq!(mbps("800Mbps"), 800);
        assert_eq!(mbps("800 m"), 800);
        assert_eq!(mbps("1T"), 1_000_000);
        assert_eq!(mbps("0.5Tbps"), 500_000);
        assert_eq!(mbps("1500KBPS"), 2, "1.5 Mbps rounds up");
        assert_eq!(mbps("1Kbps"), 1, "below 1 Mbps rounds up to 1");
        assert_eq!(mbps("100.0000001M"), 101);
    }

    #[test]
    fn refuses_everything_else_with_the_accepted_form() {
        for bad in [
            "",
            " ",
            "25",
            "25Gi",
            "25GiB",
            "25 GB/s",
            "-5G",
            "+5G",
            "1e3M",
            "1E3M",
            "0G",
            "0.0Mbps",
            "25  G",
            "G",
            ".5G",
            "5.G",
            "1.2.3G",
            "ten G",
            "25Gbpss",
            "2000000Tbps",
            "NaN G",
        ] {
            let err = Rate::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("Kbps|Mbps|Gbps|Tbps"), "{err}");
            assert!(!err.contains('\n'));
        }
    }

    /// Found while writing the fuzz target `annotations`: 38 digits with a Tbps unit overflowed the
    /// u128 product (a panic with overflow checks, a wrapped and possibly accepted rate without).
    #[test]
    fn refuses_numbers_whose_bit_rate_overflows() {
        for text in [
            "99999999999999999999.999999999999999999Tbps",
            "99999999999999999999.999999999999999999G",
            "340282366920938463463.37M",
        ] {
            let err = Rate::parse(text).expect_err(text).to_string();
            assert!(
                err.contains("above 1000Tbps") || err.contains("too many digits"),
                "{err}"
            );
        }
    }

    #[test]
    fn displays_shortest_exact_form() {
        for (m, s) in [
            (100_000, "100Gbps"),
            (2_500, "2.5Gbps"),
            (800, "800Mbps"),
            (1_250_000, "1.25Tbps"),
            (1_001, "1.001Gbps"),
        ] {
            assert_eq!(Rate::from_mbps(m).unwrap().to_string(), s);
            assert_eq!(Rate::parse(s).unwrap().mbps(), m, "display round-trips");
        }
        assert_eq!(format_mbps(0), "0Mbps");
    }

    proptest::proptest! {
        #[test]
        fn display_round_trips(m in 1u64..=MAX_MBPS) {
            let r = Rate::from_mbps(m).unwrap();
            proptest::prop_assert_eq!(Rate::parse(&r.to_string()).unwrap(), r);
        }

        #[test]
        fn parse_never_rounds_down(int in 0u64..100_000, frac in 0u64..1000, unit in 0usize..4) {
            let (u, mult) = [("K", 1_000u128), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000)][unit];
            let text = format!("{int}.{frac:03}{u}");
            let bits_x1000 = (int as u128 * 1000 + frac as u128) * mult;
            match Rate::parse(&text) {
                Ok(r) => {
                    proptest::prop_assert!(r.mbps() as u128 * 1_000_000_000 >= bits_x1000);
                    proptest::prop_assert!((r.mbps() as u128 - 1) * 1_000_000_000 < bits_x1000 || r.mbps() == 1);
                }
                Err(_) => proptest::prop_assert!(bits_x1000 == 0 || bits_x1000 > MAX_MBPS as u128 * 1_000_000_000),
            }
        }
    }
}
