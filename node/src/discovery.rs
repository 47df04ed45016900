//! SR-IOV and RDMA discovery from sysfs under a root path.
//!
//! Every path is taken relative to `root` so tests (and the simulated NIC) run the very same code over
//! a tree in a temporary directory. Oddities on one device are logged and that device skipped: a node
//! with one broken VF must still serve the healthy ones.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::{NodeError, Result};

/// A character device as the kernel numbers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharDev {
    /// Node name under /dev/infiniband, e.g. `uverbs3` or `rdma_cm`.
    pub name: String,
    pub major: i64,
    pub minor: i64,
}

impl CharDev {
    /// Where the device node lives on the host and, identically, inside the container.
    pub fn dev_path(&self) -> String {
        format!("/dev/infiniband/{}", self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdmaDevice {
    pub name: String,
    pub uverbs: Option<CharDev>,
    /// A software device bound to the VF's netdev (Soft-RoCE) rather than to its PCI function:
    /// the kernel drops it when the netdev changes network namespace.
    #[serde(default)]
    pub soft: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vf {
    pub index: u32,
    pub pci: String,
    pub netdev: Option<String>,
    pub rdma: Option<RdmaDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pf {
    pub netdev: String,
    pub pci: String,
    /// Link speed in Mbps; `None` while the link is down or the driver does not report it.
    pub speed_mbps: Option<u64>,
    pub numa_node: Option<i32>,
    pub total_vfs: u32,
    pub vfs: Vec<Vf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub pfs: Vec<Pf>,
    pub rdma_cm: Option<CharDev>,
}

/// Reads the SR-IOV and RDMA layout of the machine whose sysfs is at `<root>/sys`.
pub fn discover(root: &Path) -> Result<Node> {
    let net = root.join("sys/class/net");
    let entries = sorted_dir(&net).map_err(|e| NodeError::Discovery {
        path: net.clone(),
        reason: e.to_string(),
    })?;
    let by_netdev = rdma_by_netdev(root);
    let uverbs = uverbs_by_ibdev(root);
    let mut pfs: Vec<Pf> = Vec::new();
    for name in entries {
        let device = net.join(&name).join("device");
        if !device.join("sriov_totalvfs").exists() {
            continue;
        }
        match read_pf(&net, &name, &device, &by_netdev, &uverbs) {
            Ok(pf) if pfs.iter().any(|p| p.pci == pf.pci) => {
                // A second port netdev of the same PCI function: the VFs belong to the first.
                tracing::debug!(pf = %name, pci = %pf.pci, "netdev shares a PCI function already seen");
            }
            Ok(pf) => pfs.push(pf),
            Err(e) => warn!(pf = %name, error = %e, "skipping PF"),
        }
    }
    let rdma_cm = match read_dev_numbers(&root.join("sys/class/misc/rdma_cm/dev")) {
        Ok((major, minor)) => Some(CharDev {
            name: "rdma_cm".into(),
            major,
            minor,
        }),
        Err(e) => {
            if !pfs.is_empty() {
                warn!(error = %e, "no rdma_cm device: pods get verbs but not the RDMA connection manager");
            }
            None
        }
    };
    Ok(Node { pfs, rdma_cm })
}

fn read_pf(
    net: &Path,
    name: &str,
    device: &Path,
    by_netdev: &HashMap<String, (String, bool)>,
    uverbs: &HashMap<String, CharDev>,
) -> Result<Pf> {
    let dev_dir = canonical(device)?;
    let pci = file_name(&dev_dir);
    let total_vfs = read_trimmed(&device.join("sriov_totalvfs"))?
        .parse::<u32>()
        .map_err(|e| NodeError::Discovery {
            path: device.join("sriov_totalvfs"),
            reason: e.to_string(),
        })?;
    // Reading `speed` fails with EINVAL while the link is down; that is "unknown", not an error.
    let speed_mbps = read_trimmed(&net.join(name).join("speed"))
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|s| {
            u64::try_from(s)
                .ok()
                .filter(|s| *s > 0 && *s != u32::MAX as u64)
        });
    let numa_node = read_trimmed(&dev_dir.join("numa_node"))
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .filter(|n| *n >= 0);

    let mut vfs = Vec::new();
    for entry in sorted_dir(&dev_dir).map_err(|e| NodeError::Discovery {
        path: dev_dir.clone(),
        reason: e.to_string(),
    })? {
        let Some(index) = entry
            .strip_prefix("virtfn")
            .and_then(|i| i.parse::<u32>().ok())
        else {
            continue;
        };
        match read_vf(&dev_dir.join(&entry), index, by_netdev, uverbs) {
            Ok(vf) => vfs.push(vf),
            Err(e) => warn!(pf = %name, vf = index, error = %e, "skipping VF"),
        }
    }
    vfs.sort_by_key(|v| v.index);
    Ok(Pf {
        netdev: name.to_string(),
        pci,
        speed_mbps,
        numa_node,
        total_vfs,
        vfs,
    })
}

fn read_vf(
    link: &Path,
    index: u32,
    by_netdev: &HashMap<String, (String, bool)>,
    uverbs: &HashMap<String, CharDev>,
) -> Result<Vf> {
    let dir = canonical(link)?;
    let pci = file_name(&dir);
    // An unbound VF has no net/ directory; it can still be listed but never allocated.
    let netdev = sorted_dir(&dir.join("net"))
        .ok()
        .and_then(|v| v.into_iter().next());
    // mlx5-style devices hang their RDMA device off the PCI function; soft devices (rxe, siw) are
    // only linked to the netdev through their GID table.
    let ib_name = sorted_dir(&dir.join("infiniband"))
        .ok()
        .and_then(|v| v.into_iter().next())
        .map(|n| (n, false))
        .or_else(|| netdev.as_ref().and_then(|n| by_netdev.get(n).cloned()));
    // Soft devices carry a `parent` attribute naming their netdev, wherever sysfs hangs them
    // (Linux 7.x parents rxe to the netdev's PCI function, so it shows under the VF too).
    let rdma = ib_name.map(|(name, soft)| RdmaDevice {
        uverbs: uverbs.get(&name).cloned(),
        soft: soft || by_netdev.values().any(|(n, s)| *s && *n == name),
        name,
    });
    Ok(Vf {
        index,
        pci,
        netdev,
        rdma,
    })
}

/// Maps netdev name -> (RDMA device name, soft device). Soft devices (rxe) name their netdev in `parent`; other
/// devices only through their ports' GID netdev tables, which are scanned only when there is no
/// `parent` (an rxe port has 1024 GID entries, nearly all unreadable).
fn rdma_by_netdev(root: &Path) -> HashMap<String, (String, bool)> {
    let mut map = HashMap::new();
    let class = root.join("sys/class/infiniband");
    for ib in sorted_dir(&class).unwrap_or_default() {
        let dir = class.join(&ib);
        if let Ok(parent) = read_trimmed(&dir.join("parent")) {
            if !parent.is_empty() {
                map.entry(parent).or_insert_with(|| (ib.clone(), true));
                continue;
            }
        }
        for port in sorted_dir(&dir.join("ports")).unwrap_or_default() {
            let ndevs = dir.join("ports").join(&port).join("gid_attrs/ndevs");
            for gid in sorted_dir(&ndevs).unwrap_or_default() {
                // Unused GID entries fail to read (EINVAL): they carry no binding.
                if let Ok(nd) = read_trimmed(&ndevs.join(gid)) {
                    if !nd.is_empty() {
                        map.entry(nd).or_insert_with(|| (ib.clone(), false));
                    }
                }
            }
        }
    }
    map
}

/// Maps RDMA device name -> its uverbs character device.
fn uverbs_by_ibdev(root: &Path) -> HashMap<String, CharDev> {
    let mut map = HashMap::new();
    let class = root.join("sys/class/infiniband_verbs");
    for name in sorted_dir(&class).unwrap_or_default() {
        if !name.starts_with("uverbs") {
            continue; // abi_version lives here too
        }
        let dir = class.join(&name);
        match (
            read_trimmed(&dir.join("ibdev")),
            read_dev_numbers(&dir.join("dev")),
        ) {
            (Ok(ibdev), Ok((major, minor))) => {
                map.insert(ibdev, CharDev { name, major, minor });
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(uverbs = %name, error = %e, "skipping uverbs device")
            }
        }
    }
    map
}

fn read_dev_numbers(path: &Path) -> Result<(i64, i64)> {
    let text = read_trimmed(path)?;
    let bad = || NodeError::Discovery {
        path: path.to_path_buf(),
        reason: format!("{text:?} is not MAJOR:MINOR"),
    };
    let (a, b) = text.split_once(':').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

pub(crate) fn read_trimmed(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| NodeError::Discovery {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn sorted_dir(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| natural_key(n));
    Ok(names)
}

/// Orders `virtfn10` after `virtfn9`.
fn natural_key(s: &str) -> (String, u64) {
    let split = s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    (s[..split].to_string(), s[split..].parse().unwrap_or(0))
}

fn canonical(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(|e| NodeError::Discovery {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Discovery result indexed for lookups by PF name.
pub fn pfs_by_name(node: &Node) -> BTreeMap<&str, &Pf> {
    node.pfs.iter().map(|p| (p.netdev.as_str(), p)).collect()
}
