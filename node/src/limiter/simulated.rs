//! The simulated limiter: VF rates and counters as files under a root, where mlx5's legacy SR-IOV
//! sysfs keeps them: `<root>/sys/class/net/<pf>/device/sriov/<vf>/min_tx_rate` and `max_tx_rate`
//! (Mbps, 0 = none) and `stats` (`tx_bytes: N` lines). On sysfs the files are written in place, as
//! attributes must be, so the same code drives mlx5's real files when the root is `/`; elsewhere
//! each write replaces the file whole, so readers in other processes never catch one empty.
//!
//! A VF directory without a `min_tx_rate` file stands for a driver that cannot guarantee a minimum
//! (like igb): a requested minimum is then dropped and reported as not enforced.

use std::fs;
use std::io::{ErrorKind, Write};

use nix::fcntl::{Flock, FlockArg};
use std::path::{Path, PathBuf};

use super::{limiter_error, Applied, RateLimiter, VfCounters, VfRate};
use crate::error::{ErrorClass, NodeError, Result};

#[derive(Debug, Clone)]
pub struct SimulatedLimiter {
    root: PathBuf,
}

impl SimulatedLimiter {
    pub fn new(root: impl Into<PathBuf>) -> SimulatedLimiter {
        SimulatedLimiter { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/sys/class/net/<pf>/device/sriov/<vf>`.
    pub fn vf_dir(&self, pf: &str, vf: u32) -> PathBuf {
        self.root
            .join("sys/class/net")
            .join(pf)
            .join("device/sriov")
            .join(vf.to_string())
    }

    fn existing_vf_dir(&self, pf: &str, vf: u32) -> Result<PathBuf> {
        let dir = self.vf_dir(pf, vf);
        if dir.is_dir() {
            return Ok(dir);
        }
        let pf_dir = self.root.join("sys/class/net").join(pf);
        let reason = if !pf_dir.exists() {
            format!(
                "no PF {pf} under {}",
                self.root.join("sys/class/net").display()
            )
        } else {
            format!("PF {pf} has no VF {vf} ({} is missing)", dir.display())
        };
        Err(limiter_error(pf, vf, reason, ErrorClass::NotFound))
    }

    /// Both rate files, without locking (callers hold the VF's lock where there is one).
    fn read_rate(&self, pf: &str, vf: u32, dir: &Path) -> Result<VfRate> {
        Ok(VfRate {
            min_mbps: self
                .read_rate_file(pf, vf, &dir.join("min_tx_rate"))?
                .unwrap_or(0),
            max_mbps: self
                .read_rate_file(pf, vf, &dir.join("max_tx_rate"))?
                .unwrap_or(0),
        })
    }

    fn read_rate_file(&self, pf: &str, vf: u32, path: &Path) -> Result<Option<u64>> {
        match fs::read_to_string(path) {
            Ok(text) => text.trim().parse::<u64>().map(Some).map_err(|_| {
                limiter_error(
                    pf,
                    vf,
                    format!(
                        "{} holds {:?}, not a whole number of Mbps",
                        path.display(),
                        text.trim()
                    ),
                    ErrorClass::Precondition,
                )
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::io("reading", path, e)),
        }
    }
}

/// Whether `dir` is real sysfs (root `/` on a host with mlx5): attributes are written in place
/// there and the kernel serialises them itself.
fn on_sysfs(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, SYSFS_MAGIC};
    statfs(dir).is_ok_and(|s| s.filesystem_type() == SYSFS_MAGIC)
}

/// Off sysfs, an flock on the VF directory, so a reader sees a set's two files change together
/// (shared for reads, exclusive for writes); the shim, the plugin, its controller and tests all
/// use these files from different processes.
fn lock_vf(dir: &Path, arg: FlockArg) -> Result<Option<Flock<fs::File>>> {
    if on_sysfs(dir) {
        return Ok(None);
    }
    let f = fs::File::open(dir).map_err(|e| NodeError::io("opening", dir, e))?;
    Flock::lock(f, arg)
        .map(Some)
        .map_err(|(_, errno)| NodeError::io("locking", dir, std::io::Error::from(errno)))
}

/// Writes one rate file: in place on sysfs; elsewhere the file is replaced whole (temp file +
/// rename), so a reader that does not take the lock (an older tool, `cat`) never sees it empty.
fn write_value(path: &Path, value: u64, in_place: bool) -> Result<()> {
    if in_place {
        return fs::write(path, format!("{value}\n"))
            .map_err(|e| NodeError::io("writing", path, e));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| NodeError::io("creating a file in", dir, e))?;
    tmp.write_all(format!("{value}\n").as_bytes())
        .and_then(|_| {
            // As readable as sysfs' own rate files (a temp file starts at 0600).
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))
        })
        .map_err(|e| NodeError::io("writing", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| NodeError::io("renaming into", path, e.error))?;
    Ok(())
}

impl RateLimiter for SimulatedLimiter {
    fn kind(&self) -> &'static str {
        super::LimiterKind::Simulated.as_str()
    }

    fn set(&self, pf: &str, vf: u32, rate: VfRate) -> Result<Applied> {
        super::check_rate(rate, pf, vf)?;
        let dir = self.existing_vf_dir(pf, vf)?;
        let lock = lock_vf(&dir, FlockArg::LockExclusive)?;
        let in_place = lock.is_none();
        let min_path = dir.join("min_tx_rate");
        let min_supported = min_path.exists();
        let mut applied = rate;
        let mut note = None;
        if !min_supported {
            applied.min_mbps = 0;
            if rate.min_mbps > 0 {
                note = Some(format!(
                    "the driver of {pf} has no min_tx_rate for VF {vf}: the guarantee of {} Mbps is not enforced in hardware",
                    rate.min_mbps
                ));
            }
        }
        // Order the writes so that min <= max holds after each one, as real drivers insist.
        let current_max = self
            .read_rate_file(pf, vf, &dir.join("max_tx_rate"))?
            .unwrap_or(0);
        let lower_min_first = current_max != 0 && applied.min_mbps <= current_max;
        if min_supported && lower_min_first {
            write_value(&min_path, applied.min_mbps, in_place)?;
        }
        write_value(&dir.join("max_tx_rate"), applied.max_mbps, in_place)?;
        if min_supported && !lower_min_first {
            write_value(&min_path, applied.min_mbps, in_place)?;
        }
        Ok(Applied {
            requested: rate,
            applied: self.read_rate(pf, vf, &dir)?,
            min_enforced: rate.min_mbps == 0 || min_supported,
            note,
        })
    }

    fn get(&self, pf: &str, vf: u32) -> Result<VfRate> {
        let dir = self.existing_vf_dir(pf, vf)?;
        let _lock = lock_vf(&dir, FlockArg::LockShared)?;
        self.read_rate(pf, vf, &dir)
    }

    fn counters(&self, pf: &str, vf: u32) -> Result<VfCounters> {
        let path = self.existing_vf_dir(pf, vf)?.join("stats");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            // No stats file: nothing measured yet.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(VfCounters::default()),
            Err(e) => return Err(NodeError::io("reading", path, e)),
        };
        parse_stats(&text).map_err(|reason| {
            limiter_error(
                pf,
                vf,
                format!("{}: {reason}", path.display()),
                ErrorClass::Precondition,
            )
        })
    }
}

/// Parses `key: value` lines; `tx_bytes` and `rx_bytes` are read, other keys ignored, missing
/// ones count as 0.
pub fn parse_stats(text: &str) -> std::result::Result<VfCounters, String> {
    let mut c = VfCounters::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("line {line:?} is not `key: value`"));
        };
        let slot = match key.trim() {
            "tx_bytes" => &mut c.tx_bytes,
            "rx_bytes" => &mut c.rx_bytes,
            _ => continue,
        };
        *slot = value
            .trim()
            .parse()
            .map_err(|_| format!("{} {:?} is not a whole number", key.trim(), value.trim()))?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{build, SimOptions};

    fn nic() -> (tempfile::TempDir, SimulatedLimiter) {
        let dir = tempfile::tempdir().unwrap();
        let opts = SimOptions {
            pfs: 1,
            vfs_per_pf: 2,
            ..Default::default()
        };
        build(dir.path(), &opts).unwrap();
        let l = SimulatedLimiter::new(dir.path());
        (dir, l)
    }

    fn read(l: &SimulatedLimiter, vf: u32, file: &str) -> String {
        fs::read_to_string(l.vf_dir("ens1f0", vf).join(file))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn readers_never_see_a_rate_half_written() {
        let dir = tempfile::tempdir().unwrap();
        build(
            dir.path(),
            &SimOptions {
                pfs: 1,
                vfs_per_pf: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let writer = {
            let l = SimulatedLimiter::new(dir.path());
            std::thread::spawn(move || {
                for i in 1..=2_000u64 {
                    l.set("ens1f0", 0, VfRate::new(i, 2 * i)).unwrap();
                }
            })
        };
        let l = SimulatedLimiter::new(dir.path());
        let mut reads = 0;
        while !writer.is_finished() {
            // Never an empty file, and never one file of a set without the other.
            let r = l.get("ens1f0", 0).unwrap();
            assert_eq!(r.max_mbps, 2 * r.min_mbps, "{r:?}");
            reads += 1;
        }
        writer.join().unwrap();
        assert!(reads > 0);
        assert_eq!(l.get("ens1f0", 0).unwrap(), VfRate::new(2_000, 4_000));
        let mode = std::fs::metadata(l.vf_dir("ens1f0", 0).join("max_tx_rate"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o644);
    }

    #[test]
    fn set_get_reset_through_the_files() {
        let (_d, l) = nic();
        assert_eq!(l.get("ens1f0", 1).unwrap(), VfRate::NONE);
        let a = l.set("ens1f0", 1, VfRate::new(10_000, 25_000)).unwrap();
        assert_eq!(a.applied, VfRate::new(10_000, 25_000));
        assert!(a.min_enforced && a.note.is_none());
        assert_eq!(read(&l, 1, "max_tx_rate"), "25000");
        assert_eq!(read(&l, 1, "min_tx_rate"), "10000");
        assert_eq!(read(&l, 0, "max_tx_rate"), "0", "other VFs untouched");
        // Lowering both below the old minimum keeps min <= max at every step.
        l.set("ens1f0", 1, VfRate::new(1_000, 5_000)).unwrap();
        assert_eq!(l.get("ens1f0", 1).unwrap(), VfRate::new(1_000, 5_000));
        l.reset("ens1f0", 1).unwrap();
        l.reset("ens1f0", 1).unwrap();
        assert_eq!(l.get("ens1f0", 1).unwrap(), VfRate::NONE);
    }

    #[test]
    fn another_process_sees_the_rates() {
        let (d, l) = nic();
        l.set("ens1f0", 0, VfRate::new(0, 800)).unwrap();
        let other = SimulatedLimiter::new(d.path());
        assert_eq!(other.get("ens1f0", 0).unwrap(), VfRate::new(0, 800));
    }

    #[test]
    fn missing_min_file_means_guarantee_not_enforced() {
        let (_d, l) = nic();
        fs::remove_file(l.vf_dir("ens1f0", 0).join("min_tx_rate")).unwrap();
        let a = l.set("ens1f0", 0, VfRate::new(3_000, 9_000)).unwrap();
        assert_eq!(a.applied, VfRate::new(0, 9_000));
        assert!(!a.min_enforced);
        assert!(a.note.unwrap().contains("not enforced in hardware"));
        let a = l.set("ens1f0", 0, VfRate::new(0, 9_000)).unwrap();
        assert!(a.min_enforced, "no minimum asked, nothing missing");
    }

    #[test]
    fn unknown_pf_or_vf_is_not_found() {
        let (_d, l) = nic();
        let e = l.set("ens9f9", 0, VfRate::new(0, 1)).unwrap_err();
        assert_eq!(e.class(), ErrorClass::NotFound);
        assert!(e.to_string().contains("no PF ens9f9"), "{e}");
        let e = l.get("ens1f0", 7).unwrap_err();
        assert!(e.to_string().contains("PF ens1f0 has no VF 7"), "{e}");
        let e = l.set("ens1f0", 0, VfRate::new(9, 3)).unwrap_err();
        assert_eq!(e.class(), ErrorClass::InvalidInput);
    }

    #[test]
    fn counters_come_from_the_stats_file() {
        let (_d, l) = nic();
        assert_eq!(l.counters("ens1f0", 1).unwrap(), VfCounters::default());
        fs::write(
            l.vf_dir("ens1f0", 1).join("stats"),
            "tx_bytes: 1250000\nrx_bytes: 42\ntx_packets: 7\n",
        )
        .unwrap();
        assert_eq!(
            l.counters("ens1f0", 1).unwrap(),
            VfCounters {
                tx_bytes: 1_250_000,
                rx_bytes: 42
            }
        );
        fs::write(l.vf_dir("ens1f0", 1).join("stats"), "tx_bytes: lots\n").unwrap();
        let e = l.counters("ens1f0", 1).unwrap_err().to_string();
        assert!(e.contains("tx_bytes \"lots\""), "{e}");
        fs::write(l.vf_dir("ens1f0", 1).join("max_tx_rate"), "fast\n").unwrap();
        assert!(l.get("ens1f0", 1).is_err());
    }

    #[test]
    fn stats_parser_tolerates_other_keys_and_blank_lines() {
        assert_eq!(
            parse_stats("\nrx_packets: 3\ntx_bytes:  9 \n\n").unwrap(),
            VfCounters {
                tx_bytes: 9,
                rx_bytes: 0
            }
        );
        assert!(parse_stats("garbage").is_err());
    }
}
