//! A simulated SR-IOV RDMA NIC: writes the sysfs (and /dev) layout a real mlx5-like card, or a Soft-RoCE
//! setup, shows, under a root directory. Discovery reads it with the same code it uses on `/`, and the
//! simulated rate limiter keeps VF rates in it, so other processes can watch and drive the "hardware".

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::error::{NodeError, Result};
use conrdma_api::rate::Rate;

/// How each VF's RDMA device is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Like mlx5: `<vf pci dir>/infiniband/mlx5_N`.
    Pci,
    /// Like rxe on a VF netdev: a virtual device whose GID table names the netdev.
    Netdev,
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub pfs: u32,
    pub vfs_per_pf: u32,
    pub speed: Rate,
    pub binding: Binding,
    /// Create real character device nodes under `<root>/dev/infiniband` (needs CAP_MKNOD).
    pub mknod: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            pfs: 2,
            vfs_per_pf: 8,
            speed: Rate::from_mbps(100_000).unwrap_or(Rate::MIN),
            binding: Binding::Pci,
            mknod: false,
        }
    }
}

/// Kernel numbering of uverbs: the first 32 devices use the fixed major 231 from minor 192, the
/// rest come from a dynamic region.
const UVERBS_MAJOR: i64 = 231;
const UVERBS_BASE_MINOR: i64 = 192;
const UVERBS_FIXED: i64 = 32;
const UVERBS_DYNAMIC_MAJOR: i64 = 240;
const MISC_MAJOR: i64 = 10;
/// rdma_cm takes a dynamic misc minor; 124 is what Debian's 6.1 kernel gave it in the VM tier.
const RDMA_CM_MINOR: i64 = 124;

pub fn uverbs_numbers(index: i64) -> (i64, i64) {
    if index < UVERBS_FIXED {
        (UVERBS_MAJOR, UVERBS_BASE_MINOR + index)
    } else {
        (UVERBS_DYNAMIC_MAJOR, index - UVERBS_FIXED)
    }
}

/// Predictable netdev name of PF `p` on a dual-port card in slot `1 + p / 2`.
pub fn pf_name(p: u32) -> String {
    format!("ens{}f{}", 1 + p / 2, p % 2)
}

fn pf_pci(p: u32) -> String {
    format!("0000:{:02x}:00.0", 0x3b + p)
}

/// VFs follow their PF at routing-id offset 1, stride 1, as mlx5 lays them out.
fn vf_pci(p: u32, v: u32) -> String {
    let rid = v + 1;
    format!("0000:{:02x}:{:02x}.{}", 0x3b + p, rid / 8, rid % 8)
}

/// Builds the tree. Refuses a root that already holds a `sys` directory, so it never mixes with
/// (or clobbers) a previous tree or a real one.
pub fn build(root: &Path, opts: &SimOptions) -> Result<()> {
    if opts.pfs == 0 || opts.pfs > 64 || opts.vfs_per_pf > 255 {
        return Err(NodeError::Config {
            origin: "simulate-nic".into(),
            reason: format!(
                "{} PFs x {} VFs is out of range: use 1-64 PFs and 0-255 VFs per PF",
                opts.pfs, opts.vfs_per_pf
            ),
        });
    }
    if root.join("sys").exists() {
        return Err(NodeError::Config {
            origin: "simulate-nic".into(),
            reason: format!(
                "{} already holds a sys/ tree; pick an empty directory",
                root.display()
            ),
        });
    }
    let t = Tree {
        root: root.to_path_buf(),
    };
    let bus = "sys/devices/pci0000:00";
    t.file(
        "sys/class/misc/rdma_cm/dev",
        &format!("{MISC_MAJOR}:{RDMA_CM_MINOR}"),
    )?;
    t.file("sys/class/infiniband_verbs/abi_version", "6")?;
    let mut ib_index: i64 = 0;
    let mut devs = vec![("rdma_cm".to_string(), MISC_MAJOR, RDMA_CM_MINOR)];
    let mut next_ib = |t: &Tree, parent: &str, netdev: &str| -> Result<(String, i64)> {
        let (prefix, i) = match opts.binding {
            Binding::Pci => ("mlx5_", ib_index),
            Binding::Netdev => ("rxe", ib_index),
        };
        ib_index += 1;
        let ib = format!("{prefix}{i}");
        let ib_dir = match opts.binding {
            Binding::Pci => format!("{parent}/infiniband/{ib}"),
            Binding::Netdev => format!("sys/devices/virtual/infiniband/{ib}"),
        };
        t.file(&format!("{ib_dir}/ports/1/state"), "4: ACTIVE")?;
        t.file(&format!("{ib_dir}/ports/1/gid_attrs/ndevs/0"), netdev)?;
        t.file(&format!("{ib_dir}/ports/1/gid_attrs/ndevs/1"), netdev)?;
        t.link(&format!("sys/class/infiniband/{ib}"), &ib_dir)?;
        if opts.binding == Binding::Netdev {
            t.file(&format!("{ib_dir}/parent"), netdev)?;
        }
        let uv = format!("uverbs{i}");
        let (major, minor) = uverbs_numbers(i);
        let uv_dir = match opts.binding {
            Binding::Pci => format!("{parent}/infiniband_verbs/{uv}"),
            Binding::Netdev => format!("sys/devices/virtual/infiniband_verbs/{uv}"),
        };
        t.file(&format!("{uv_dir}/ibdev"), &ib)?;
        t.file(&format!("{uv_dir}/dev"), &format!("{major}:{minor}"))?;
        t.link(&format!("sys/class/infiniband_verbs/{uv}"), &uv_dir)?;
        Ok((uv, i))
    };

    for p in 0..opts.pfs {
        let name = pf_name(p);
        let pci = pf_pci(p);
        let dev = format!("{bus}/{pci}");
        t.file(
            &format!("{dev}/sriov_totalvfs"),
            &opts.vfs_per_pf.to_string(),
        )?;
        t.file(&format!("{dev}/sriov_numvfs"), &opts.vfs_per_pf.to_string())?;
        t.file(&format!("{dev}/numa_node"), &(p / 2).to_string())?;
        t.file(&format!("{dev}/vendor"), "0x15b3")?;
        t.file(&format!("{dev}/device"), "0x1017")?;
        netdev(&t, &dev, &name, opts.speed.mbps())?;
        if opts.binding == Binding::Pci {
            let (uv, i) = next_ib(&t, &dev, &name)?;
            let (major, minor) = uverbs_numbers(i);
            devs.push((uv, major, minor));
        }
        for v in 0..opts.vfs_per_pf {
            let vpci = vf_pci(p, v);
            let vdev = format!("{bus}/{vpci}");
            t.file(&format!("{vdev}/vendor"), "0x15b3")?;
            t.file(&format!("{vdev}/device"), "0x1018")?;
            t.file(&format!("{vdev}/numa_node"), &(p / 2).to_string())?;
            t.link(&format!("{dev}/virtfn{v}"), &vdev)?;
            t.link(&format!("{vdev}/physfn"), &dev)?;
            let vname = format!("{name}v{v}");
            netdev(&t, &vdev, &vname, opts.speed.mbps())?;
            let (uv, i) = next_ib(&t, &vdev, &vname)?;
            let (major, minor) = uverbs_numbers(i);
            devs.push((uv, major, minor));
            // Where mlx5 exposes per-VF rate knobs and counters; the simulated limiter uses them.
            t.file(&format!("{dev}/sriov/{v}/min_tx_rate"), "0")?;
            t.file(&format!("{dev}/sriov/{v}/max_tx_rate"), "0")?;
            t.file(
                &format!("{dev}/sriov/{v}/stats"),
                "tx_bytes: 0\nrx_bytes: 0\ntx_packets: 0\nrx_packets: 0",
            )?;
        }
    }
    for (name, major, minor) in devs {
        t.dev_node(&name, major, minor, opts.mknod)?;
    }
    Ok(())
}

fn netdev(t: &Tree, dev: &str, name: &str, speed_mbps: u64) -> Result<()> {
    let nd = format!("{dev}/net/{name}");
    t.file(&format!("{nd}/speed"), &speed_mbps.to_string())?;
    t.file(&format!("{nd}/operstate"), "up")?;
    t.file(&format!("{nd}/mtu"), "9000")?;
    t.link(&format!("{nd}/device"), dev)?;
    t.link(&format!("sys/class/net/{name}"), &nd)
}

struct Tree {
    root: PathBuf,
}

impl Tree {
    fn file(&self, rel: &str, content: &str) -> Result<()> {
        let path = self.root.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| NodeError::io("creating", dir, e))?;
        }
        fs::write(&path, format!("{content}\n")).map_err(|e| NodeError::io("writing", path, e))
    }

    /// A relative symlink `rel -> target` (both relative to the root), as sysfs uses, so the tree
    /// stays valid wherever the root is moved or mounted.
    fn link(&self, rel: &str, target: &str) -> Result<()> {
        let path = self.root.join(rel);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| NodeError::io("creating", &dir, e))?;
        let depth = Path::new(rel)
            .parent()
            .map_or(0, |p| p.components().count());
        let up = "../".repeat(depth);
        symlink(format!("{up}{target}"), &path).map_err(|e| NodeError::io("linking", path, e))
    }

    fn dev_node(&self, name: &str, major: i64, minor: i64, mknod: bool) -> Result<()> {
        let dir = self.root.join("dev/infiniband");
        fs::create_dir_all(&dir).map_err(|e| NodeError::io("creating", &dir, e))?;
        let path = dir.join(name);
        if mknod {
            use nix::sys::stat::{makedev, mknod as mk, Mode, SFlag};
            let dev = makedev(major as u64, minor as u64);
            mk(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), dev)
                .map_err(|e| NodeError::io("mknod", &path, std::io::Error::from(e)))
        } else {
            // A plain file stands in for the node; its numbers live in sysfs `dev`, which is what
            // discovery and the OCI spec use.
            fs::write(&path, format!("{major}:{minor}\n"))
                .map_err(|e| NodeError::io("writing", path, e))
        }
    }
}
