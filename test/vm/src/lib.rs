//! Helpers for the tests that run inside the VM node (`sudo hack/vm-node.sh 'bash test/vm/run.sh'`).
//!
//! The VM has a real igb PF with VFs, one Soft-RoCE (rxe) device per VF netdev, cgroup v2 with the
//! rdma controller and a tmpfs /run, set up by `hack/vm/node-setup.sh`, which also writes what it
//! built, read straight from sysfs and the `rdma` tool, to `$CONRDMA_VM_NODE_FACTS`. Tests compare
//! ConRDMA's view against those facts and against the kernel itself.
//!
//! Every test in `tests/` is `#[ignore]`d so `cargo test --workspace` on a development machine only
//! lists them; `test/vm/run.sh` runs them inside the VM with `--include-ignored`, where
//! [`require_vm_node`] passes.

pub mod node;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The reason given to `#[ignore]` on every VM test.
pub const IGNORE_REASON: &str =
    "runs inside the VM node: sudo hack/vm-node.sh 'bash test/vm/run.sh'";

/// One VF as the node setup created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfFact {
    pub index: u32,
    /// PCI address, e.g. `0000:01:10.0`.
    pub pci: String,
    pub netdev: String,
    /// The rxe device bound to the VF netdev, e.g. `rxe0`.
    pub rdma: String,
    /// `uverbsN`.
    pub uverbs: String,
    pub major: i64,
    pub minor: i64,
}

/// The node as `hack/vm/node-setup.sh` built it.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub pf: String,
    pub pf_pci: String,
    pub speed_mbps: u64,
    pub total_vfs: u32,
    pub vfs: Vec<VfFact>,
    pub rdma_cm: (i64, i64),
}

impl NodeFacts {
    pub fn vf(&self, index: u32) -> &VfFact {
        self.vfs
            .iter()
            .find(|v| v.index == index)
            .unwrap_or_else(|| panic!("node facts have no VF {index}: {:?}", self.vfs))
    }

    pub fn vf_by_rdma(&self, rdma: &str) -> &VfFact {
        self.vfs.iter().find(|v| v.rdma == rdma).unwrap_or_else(|| {
            panic!(
                "node facts have no VF with RDMA device {rdma}: {:?}",
                self.vfs
            )
        })
    }
}

/// Panics with how to run the test unless this is the VM node.
pub fn require_vm_node() {
    if std::env::var("CONRDMA_VM_NODE").as_deref() != Ok("1") {
        panic!("not the VM node: these tests need a real SR-IOV PF, Soft-RoCE and cgroup v2; {IGNORE_REASON}");
    }
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(name).unwrap_or_else(|| panic!("${name} is not set ({IGNORE_REASON})")),
    )
}

/// Host-built artifacts (see `hack/vm/stage.sh`).
pub fn stage_dir() -> PathBuf {
    env_path("CONRDMA_VM_STAGE")
}

/// The read-write results directory shared with the host.
pub fn results_dir() -> PathBuf {
    env_path("CONRDMA_VM_RESULTS")
}

/// The pod image with the rdma-probe and its libraries.
pub fn probe_image_tar() -> PathBuf {
    stage_dir().join("images/rdma-probe.tar")
}

/// Name of the image in [`probe_image_tar`].
pub const PROBE_IMAGE: &str = "localhost/conrdma/rdma-probe:latest";

/// Where the probe is inside [`PROBE_IMAGE`].
pub const PROBE_IN_IMAGE: &str = "/usr/local/bin/conrdma-rdma-probe";

pub fn node_facts() -> NodeFacts {
    let path = env_path("CONRDMA_VM_NODE_FACTS");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading node facts {}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("node facts {} are not JSON ({e}): {text}", path.display()));
    let s = |v: &Value, k: &str| -> String {
        v[k].as_str()
            .unwrap_or_else(|| panic!("node facts: {k} missing in {v}"))
            .to_string()
    };
    let dev = |text: &str| -> (i64, i64) {
        let (a, b) = text
            .split_once(':')
            .unwrap_or_else(|| panic!("{text:?} is not MAJOR:MINOR"));
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let vfs = v["vfs"]
        .as_array()
        .expect("node facts: vfs")
        .iter()
        .map(|f| {
            let (major, minor) = dev(&s(f, "dev"));
            VfFact {
                index: f["index"].as_u64().expect("vf index") as u32,
                pci: s(f, "pci"),
                netdev: s(f, "netdev"),
                rdma: s(f, "rdma"),
                uverbs: s(f, "uverbs"),
                major,
                minor,
            }
        })
        .collect();
    NodeFacts {
        pf: s(&v, "pf"),
        pf_pci: s(&v, "pf_pci"),
        speed_mbps: s(&v, "speed").parse().unwrap_or(0),
        total_vfs: v["total_vfs"].as_u64().unwrap_or(0) as u32,
        vfs,
        rdma_cm: dev(&s(&v, "rdma_cm")),
    }
}

/// Major and minor of a device number as glibc's `gnu_dev_major`/`gnu_dev_minor` split it.
pub fn split_dev(rdev: u64) -> (i64, i64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as i64, minor as i64)
}

/// (major, minor) of a character device node, or None if it is missing or not a char device.
pub fn char_dev_numbers(path: &str) -> Option<(i64, i64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    m.file_type().is_char_device().then(|| split_dev(m.rdev()))
}

/// Runs a command to completion; returns (exit code, stdout, stderr).
pub fn run(program: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The single JSON line the rdma-probe printed (its last non-empty stdout line).
pub fn probe_line(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("the probe printed nothing"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("probe output is not JSON ({e}): {line}"))
}

/// Runs the staged rdma-probe on the VM itself (not in a container).
pub fn probe_on_host(args: &[&str]) -> Value {
    let bin = conrdma_e2e::workspace_bin("conrdma-rdma-probe").expect("staged rdma-probe");
    let (_, out, err) = run(bin.to_str().unwrap(), args);
    let v = probe_line(&out);
    if v["stage"] == "build" {
        panic!("the staged rdma-probe was built without libibverbs: {v} {err}");
    }
    v
}

/// A VF's transmit rates as the PF reports them over netlink (`ip -j link show`), Mbps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VfRates {
    pub max_tx: u64,
    pub min_tx: u64,
}

/// Every VF's rates from the PF's IFLA_VFINFO_LIST, read with iproute2 (independent of ConRDMA's
/// own netlink code, so tests of the limiter do not check it against itself).
pub fn vf_rates(pf: &str) -> Vec<(u32, VfRates)> {
    let (code, out, err) = run("ip", &["-j", "link", "show", "dev", pf]);
    assert_eq!(code, 0, "ip -j link show dev {pf}: {err}");
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j output ({e}): {out}"));
    v[0]["vfinfo_list"]
        .as_array()
        .unwrap_or_else(|| panic!("{pf} reports no vfinfo_list: {out}"))
        .iter()
        .map(|vf| {
            (
                vf["vf"].as_u64().unwrap_or(u64::MAX) as u32,
                VfRates {
                    max_tx: vf["rate"]["max_tx"].as_u64().unwrap_or(0),
                    min_tx: vf["rate"]["min_tx"].as_u64().unwrap_or(0),
                },
            )
        })
        .collect()
}

pub fn vf_rate(pf: &str, vf: u32) -> VfRates {
    vf_rates(pf)
        .into_iter()
        .find(|(i, _)| *i == vf)
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("{pf} has no VF {vf} in its vfinfo_list"))
}

/// Marks a test as skipped, with the reason, in the test output and in `skipped.txt` of the
/// results directory (test/vm/run.sh prints that list at the end). Returns so the caller can
/// `return` right after.
pub fn skip(test: &str, reason: &str) {
    let line = format!("VM-SKIP {test}: {reason}");
    eprintln!("{line}");
    if let Ok(dir) = std::env::var("CONRDMA_VM_RESULTS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(PathBuf::from(dir).join("skipped.txt"))
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Records a fact the real kernel showed (in the test output and in `kernel-facts.txt` of the
/// results directory), for docs/vm-testbed.md and for whoever compares with hardware.
pub fn note(fact: &str) {
    eprintln!("kernel: {fact}");
    if let Ok(dir) = std::env::var("CONRDMA_VM_RESULTS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(PathBuf::from(dir).join("kernel-facts.txt"))
        {
            let _ = writeln!(f, "{fact}");
        }
    }
}

/// The host path of a container's cgroup (cgroupfs driver, cgroup v2), from its OCI spec.
pub fn host_cgroup_dir(spec: &Value) -> PathBuf {
    let p = spec["linux"]["cgroupsPath"]
        .as_str()
        .unwrap_or_else(|| panic!("spec has no linux.cgroupsPath: {}", spec["linux"]));
    assert!(
        p.starts_with('/'),
        "cgroupsPath {p:?} is not a cgroupfs path (systemd driver?)"
    );
    PathBuf::from("/sys/fs/cgroup").join(p.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_device_numbers_like_glibc() {
        // makedev(231, 192) and makedev(10, 124) as the kernel encodes them for userspace.
        assert_eq!(split_dev((231 << 8) | 192), (231, 192));
        assert_eq!(split_dev((10 << 8) | 124), (10, 124));
        // A minor above 255 (dynamic uverbs region) lands in the high bits.
        let rdev = (240u64 << 8) | (300 & 0xff) | ((300u64 & !0xff) << 12);
        assert_eq!(split_dev(rdev), (240, 300));
    }

    #[test]
    fn reads_the_probe_line_among_other_output() {
        let v = probe_line("warning\n{\"probe\":\"conrdma-rdma-probe\",\"ok\":true}\n\n");
        assert_eq!(v["ok"], true);
    }
}
