//! The allocation ledger: which pod holds which VF and how much guaranteed bandwidth.
//!
//! Admission keeps, per PF, the sum of guarantees <= line rate x admission ratio, and gives each pod
//! one VF. The ledger is written to disk (temp file, fsync, rename, fsync dir) before a decision is
//! returned, so a crash at any point leaves either the old or the new state, never a torn one; an
//! exclusive lock on the state dir keeps two plugins from booking the same VFs. After a (re)connect
//! the plugin reconciles it with containerd's list of live pods.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

mod addresses;
mod podnet;

pub use podnet::{NetPhase, PodNet};

use crate::error::{NodeError, Result};
use crate::inventory::{Inventory, PfInv, PoolInv, VfInv};
use crate::private_fs;
use conrdma_api::allocation::AllocationRecord;
use conrdma_api::rate::format_mbps;
use conrdma_api::report::PoolReport;
use conrdma_api::request::{Request, KEY_ADDRESS, KEY_POOL};
use conrdma_api::ApiError;

const LEDGER_FILE: &str = "ledger.json";
const LOCK_FILE: &str = "ledger.lock";
const FORMAT_VERSION: u32 = 1;
/// How long a sweep leaves a pod admitted with its own network namespace alone while no runtime
/// list has shown it: containerd adds a sandbox to its CRI store only after NRI RunPodSandbox
/// returns, and the plugin admits such pods during that call. Bounded, because a sandbox whose
/// RunPodSandbox failed after the admission is never listed.
pub const SANDBOX_LISTING_GRACE: Duration = Duration::from_secs(30);

/// The pod an allocation belongs to. `id` is the CRI sandbox id, the key containerd uses everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub id: String,
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub pod: PodRef,
    pub record: AllocationRecord,
    /// The plugin itself set this VF's rate (the pod does not run under the ConRDMA shim), so the
    /// plugin resets it at release.
    #[serde(default)]
    pub plugin_enforced: bool,
    /// Where the VF netdev is, for a pod in its own network namespace in a pool with a network
    /// section. Written before the netdev moves, so a crash mid-move leaves a trace to finish from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<PodNet>,
}

#[derive(Debug, Default, Deserialize)]
struct LedgerFile {
    version: u32,
    /// Keyed by pod sandbox id.
    held: BTreeMap<String, Held>,
}

/// The on-disk form, borrowed so a write does not copy the ledger.
#[derive(Serialize)]
struct LedgerFileRef<'a> {
    version: u32,
    held: &'a BTreeMap<String, Held>,
}

/// What a reconcile changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Pods that are gone: their VFs and bandwidth were freed.
    pub released: Vec<Held>,
    /// Allocations found on live containers but missing from the ledger: taken back in.
    pub adopted: Vec<PodRef>,
    /// Allocations found on live containers whose VF the ledger gives to another pod: left alone.
    pub conflicts: Vec<PodRef>,
}

pub struct Ledger {
    dir: PathBuf,
    held: BTreeMap<String, Held>,
    /// Admission counter, in memory only: see [`Ledger::mark`].
    admissions: u64,
    /// Pod id -> the counter's value when this process admitted it. Entries read from disk at
    /// open are absent (they count as admitted before any mark).
    admitted_at: HashMap<String, u64>,
    /// Pods with their own network namespace admitted by this process that no runtime list has
    /// shown yet, with when: see [`SANDBOX_LISTING_GRACE`].
    unlisted: HashMap<String, Instant>,
    _lock: Flock<File>,
}

impl Ledger {
    /// Opens (or creates) the ledger in `state_dir` and takes its lock.
    pub fn open(state_dir: &Path) -> Result<Ledger> {
        private_fs::create_dir(state_dir)
            .map_err(|e| NodeError::io("creating state dir", state_dir, e))?;
        let lock_path = state_dir.join(LOCK_FILE);
        let lock_file = private_fs::open_for_write(&lock_path, false)
            .map_err(|e| NodeError::io("opening", &lock_path, e))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| NodeError::Config {
            origin: state_dir.display().to_string(),
            reason: format!("the ledger is locked by another process ({errno}); run one plugin per state dir"),
        })?;
        let path = state_dir.join(LEDGER_FILE);
        let held = match fs::read(&path) {
            Ok(bytes) => {
                let file: LedgerFile =
                    serde_json::from_slice(&bytes).map_err(|e| NodeError::LedgerCorrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if file.version != FORMAT_VERSION {
                    return Err(NodeError::LedgerCorrupt {
                        path,
                        reason: format!("format version {} is not {FORMAT_VERSION}", file.version),
                    });
                }
                file.held
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(NodeError::io("reading", path, e)),
        };
        Ok(Ledger {
            dir: state_dir.to_path_buf(),
            held,
            admissions: 0,
            admitted_at: HashMap::new(),
            unlisted: HashMap::new(),
            _lock: lock,
        })
    }

    /// Reads the ledger in `state_dir` without taking its lock: for inspection while a plugin runs.
    /// Safe because writes replace the file atomically.
    pub fn snapshot(state_dir: &Path) -> Result<Vec<Held>> {
        let path = state_dir.join(LEDGER_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<LedgerFile>(&bytes)
                .map(|f| f.held.into_values().collect())
                .map_err(|e| NodeError::LedgerCorrupt {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(NodeError::io("reading", path, e)),
        }
    }

    pub fn get(&self, pod_id: &str) -> Option<&Held> {
        self.held.get(pod_id)
    }

    pub fn held(&self) -> impl Iterator<Item = &Held> {
        self.held.values()
    }

    /// Admits the pod and books a VF, or says why not. A pod that already holds a VF gets the same
    /// record again (its second container, or a retry), so this is idempotent. `finish` completes
    /// the entry (e.g. the rdma cgroup note) before it is written.
    pub fn admit(
        &mut self,
        inv: &Inventory,
        pod: &PodRef,
        req: &Request,
        finish: impl FnOnce(&mut Held),
    ) -> Result<(AllocationRecord, bool)> {
        self.admit_in(inv, pod, req, None, finish)
    }

    /// [`Ledger::admit`] for a pod whose network namespace is `netns` (`None`: the host's). In a
    /// pool with a network section such a pod also gets an address, booked in the same write as
    /// its VF.
    pub fn admit_in(
        &mut self,
        inv: &Inventory,
        pod: &PodRef,
        req: &Request,
        netns: Option<&Path>,
        finish: impl FnOnce(&mut Held),
    ) -> Result<(AllocationRecord, bool)> {
        if let Some(h) = self.held.get(&pod.id) {
            // Its container is being created: the runtime has the sandbox.
            self.unlisted.remove(&pod.id);
            return Ok((h.record.clone(), false));
        }
        let fixed = req.static_address();
        if let (Some(a), None) = (&fixed, netns) {
            return Err(NodeError::Api(ApiError::InvalidAnnotation {
                key: KEY_ADDRESS.into(),
                value: a.text.clone(),
                reason: "the pod shares the host's network namespace (hostNetwork), where its VF stays without an address".into(),
                accepted: "a static address only on pods with their own network namespace".into(),
            }));
        }
        let mut pools: Vec<&PoolInv> = match &req.pool {
            Some(name) => vec![inv.pool(name).ok_or_else(|| {
                let known: Vec<&str> = inv.pools.iter().map(|p| p.name.as_str()).collect();
                NodeError::NotFound(format!(
                    "{KEY_POOL}={name:?} names no pool on this node; pools here: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            })?],
            None => inv.pools.iter().collect(),
        };
        if let Some(a) = &fixed {
            pools = self.pools_for_address(inv, pools, req, a)?;
        }
        // Pools whose range is used up cannot take a pod that needs an address from them.
        let addressed = |pool: &PoolInv| netns.is_some() && pool.network.is_some();
        let exhausted: Vec<&str> = pools
            .iter()
            .filter(|p| addressed(p) && fixed.is_none())
            .filter(|p| {
                p.network
                    .as_ref()
                    .is_some_and(|n| n.free(&self.addresses_in(&p.name)).is_none())
            })
            .map(|p| p.name.as_str())
            .collect();
        let ask = req.guaranteed_mbps();
        // Policy: the PF with the most guaranteed headroom that still fits the pod (spreads load
        // and keeps the largest gaps open for big pods elsewhere); ties go to the PF with fewer
        // pods, then to configuration order. Within the PF, the lowest free VF index.
        let mut best: Option<(u64, usize, &PoolInv, &PfInv, u32)> = None;
        for pool in &pools {
            if exhausted.contains(&pool.name.as_str()) {
                continue;
            }
            for pf in &pool.pfs {
                let (held_mbps, pods) = self.pf_load(&pf.name);
                let headroom = pf.capacity_mbps.saturating_sub(held_mbps);
                let Some(vf) = pf
                    .vfs
                    .iter()
                    .map(|v| v.index)
                    .find(|i| !self.vf_taken(&pf.name, *i))
                else {
                    continue;
                };
                if headroom < ask {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((h, n, ..)) => headroom > h || (headroom == h && pods < n),
                };
                if better {
                    best = Some((headroom, pods, pool, pf, vf));
                }
            }
        }
        let Some((_, _, pool, pf, vf_index)) = best else {
            let mut why = self.refusal(&pools, req);
            for name in exhausted {
                if let Some(n) = inv.pool(name).and_then(|p| p.network.as_ref()) {
                    why.push_str(&format!(
                        "; pool {name}: no free address in {}-{} ({} in use)",
                        n.first,
                        n.last,
                        self.addresses_in(name).len()
                    ));
                }
            }
            return Err(NodeError::Insufficient(why));
        };
        let address = match (pool.network.as_ref(), netns) {
            (Some(n), Some(_)) => match &fixed {
                Some(a) => Some(n.check_static(&pool.name, a)?),
                None => n.free(&self.addresses_in(&pool.name)),
            },
            _ => None,
        };
        let vf = pf
            .vfs
            .iter()
            .find(|v| v.index == vf_index)
            .ok_or_else(|| NodeError::NotFound("VF vanished".into()))?;
        let limit =
            req.limit
                .map(|r| r.mbps())
                .unwrap_or(if ask > 0 { ask } else { pf.line_rate_mbps });
        let record = AllocationRecord {
            pool: pool.name.clone(),
            pf: pf.name.clone(),
            vf: vf.index,
            vf_pci: vf.pci.clone(),
            rdma_device: vf.rdma_device.clone(),
            netdev: vf.netdev.clone(),
            guaranteed_mbps: ask,
            // A VF cannot go faster than its PF's line.
            limit_mbps: limit.min(pf.line_rate_mbps),
            uverbs: vf.uverbs.dev_path(),
            rdma_cgroup: Default::default(),
            start_max_mbps: None,
            address: address.map(|a| a.to_string()),
            ifname: address.and(pool.network.as_ref().map(|n| n.ifname.clone())),
        };
        let net = match (address, netns) {
            (Some(_), Some(ns)) => Some(PodNet {
                netns: ns.to_path_buf(),
                phase: NetPhase::Booked,
                host_mtu: None,
                soft_uverbs: None,
                vf: vf.clone(),
            }),
            _ => None,
        };
        let mut held = Held {
            pod: pod.clone(),
            record,
            plugin_enforced: false,
            net,
        };
        finish(&mut held);
        let record = held.record.clone();
        self.held.insert(pod.id.clone(), held);
        if let Err(e) = self.persist() {
            self.held.remove(&pod.id);
            return Err(e);
        }
        self.admissions += 1;
        self.admitted_at.insert(pod.id.clone(), self.admissions);
        if netns.is_some() {
            self.unlisted.insert(pod.id.clone(), Instant::now());
        }
        Ok((record, true))
    }

    /// Frees the pod's VF and bandwidth. Idempotent: an unknown pod is not an error.
    pub fn release(&mut self, pod_id: &str) -> Result<Option<Held>> {
        let Some(h) = self.held.remove(pod_id) else {
            return Ok(None);
        };
        if let Err(e) = self.persist() {
            self.held.insert(pod_id.to_string(), h);
            return Err(e);
        }
        self.admitted_at.remove(pod_id);
        self.unlisted.remove(pod_id);
        Ok(Some(h))
    }

    /// A point in the admission sequence, taken before asking the runtime which pods exist.
    ///
    /// A pod admitted before the mark had its sandbox before the question was asked, so if the
    /// answer lacks it, it is gone. A pod admitted after the mark may be missing from the answer
    /// only because it is newer: [`Ledger::sweep`] leaves it alone.
    pub fn mark(&self) -> u64 {
        self.admissions
    }

    /// Frees what belongs to pods missing from `live`, a list of every pod sandbox the runtime
    /// holds taken after `mark`. Unlike [`Ledger::reconcile`] (whose list comes from NRI
    /// Synchronize, during which no pod is admitted) this runs alongside admissions, hence the mark.
    pub fn sweep(&mut self, live: &HashSet<String>, mark: u64) -> Result<Vec<Held>> {
        self.unlisted.retain(|id, _| !live.contains(id));
        let before = self.held.clone();
        let released = self.take_gone(live, mark);
        if released.is_empty() {
            return Ok(released);
        }
        self.commit(before, &released)?;
        info!(released = released.len(), "ledger swept");
        Ok(released)
    }

    /// The VFs whose netdev may be in a pod, as (PF, VF as booked): for
    /// [`Inventory::keep_lent`].
    pub fn lent(&self) -> impl Iterator<Item = (&str, &VfInv)> {
        self.held
            .values()
            .filter(|h| h.net_out())
            .filter_map(|h| h.net.as_ref().map(|n| (h.record.pf.as_str(), &n.vf)))
    }

    /// Pods missing from `live` (admitted no later than `mark`) whose VF netdev may still be out
    /// of the host: to be brought home before [`Ledger::sweep`] or [`Ledger::reconcile`] frees them.
    pub fn gone_out(&self, live: &HashSet<String>, mark: u64) -> Vec<Held> {
        self.held
            .values()
            .filter(|h| !live.contains(&h.pod.id) && h.net_out())
            .filter(|h| !self.maybe_unlisted(&h.pod.id, mark))
            .cloned()
            .collect()
    }

    /// Whether a pod missing from a runtime's list taken after `mark` may be missing only
    /// because the list is older than the pod: admitted after the mark, or (for a sweep, which
    /// runs alongside admissions) admitted with its own network namespace, never listed since,
    /// and within [`SANDBOX_LISTING_GRACE`]: such a pod is admitted during NRI RunPodSandbox and
    /// listed only once containerd finishes that call.
    fn maybe_unlisted(&self, pod_id: &str, mark: u64) -> bool {
        self.admitted_at.get(pod_id).is_some_and(|n| *n > mark)
            || (mark != u64::MAX
                && self
                    .unlisted
                    .get(pod_id)
                    .is_some_and(|t| t.elapsed() < SANDBOX_LISTING_GRACE))
    }

    /// Removes (in memory) the pods missing from `live` that were admitted no later than `mark`.
    fn take_gone(&mut self, live: &HashSet<String>, mark: u64) -> Vec<Held> {
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|id| !live.contains(*id))
            .filter(|id| !self.maybe_unlisted(id, mark))
            // Their VF must be brought home first (the caller does, then marks it returned).
            .filter(|id| !self.held.get(*id).is_some_and(Held::net_out))
            .cloned()
            .collect();
        gone.iter().filter_map(|id| self.held.remove(id)).collect()
    }

    /// Persists the in-memory changes, or puts `before` back if that fails.
    fn commit(&mut self, before: BTreeMap<String, Held>, released: &[Held]) -> Result<()> {
        if let Err(e) = self.persist() {
            self.held = before;
            return Err(e);
        }
        for h in released {
            self.admitted_at.remove(&h.pod.id);
            self.unlisted.remove(&h.pod.id);
        }
        Ok(())
    }

    /// Brings the ledger in line with the pods containerd says are alive: frees what belongs to
    /// gone pods and takes back allocations recorded on live containers that the ledger lacks
    /// (e.g. a lost state dir), unless their VF is already booked.
    pub fn reconcile(&mut self, live: &HashSet<String>, found: Vec<Held>) -> Result<Reconciled> {
        let before = self.held.clone();
        // No admission runs during a Synchronize, so every pod not listed is gone.
        let mut out = Reconciled {
            released: self.take_gone(live, u64::MAX),
            ..Default::default()
        };
        for h in found {
            if self.held.contains_key(&h.pod.id) || !live.contains(&h.pod.id) {
                continue;
            }
            if self.vf_taken(&h.record.pf, h.record.vf) {
                warn!(pod_id = %h.pod.id, pf = %h.record.pf, vf = h.record.vf, "live container claims a VF the ledger gives to another pod");
                out.conflicts.push(h.pod);
                continue;
            }
            out.adopted.push(h.pod.clone());
            self.held.insert(h.pod.id.clone(), h);
        }
        if self.held != before {
            self.commit(before, &out.released)?;
            info!(
                released = out.released.len(),
                adopted = out.adopted.len(),
                "ledger reconciled"
            );
        }
        Ok(out)
    }

    /// Per-pool figures (capacity, guaranteed sum, pods, free VFs), as node reports carry them.
    pub fn usage(&self, inv: &Inventory) -> Vec<PoolReport> {
        crate::report::pool_reports(inv, self.held.values().map(|h| &h.record))
    }

    /// Replaces the pod's entry with what `change` makes of it, durably; the entry is unchanged
    /// if the write fails. `None`: the pod holds nothing.
    pub fn update(&mut self, pod_id: &str, change: impl FnOnce(&mut Held)) -> Result<Option<Held>> {
        let Some(before) = self.held.get(pod_id).cloned() else {
            return Ok(None);
        };
        let mut after = before.clone();
        change(&mut after);
        if after == before {
            return Ok(Some(after));
        }
        self.held.insert(pod_id.to_string(), after.clone());
        if let Err(e) = self.persist() {
            self.held.insert(pod_id.to_string(), before);
            return Err(e);
        }
        Ok(Some(after))
    }

    fn pf_load(&self, pf: &str) -> (u64, usize) {
        self.held
            .values()
            .filter(|h| h.record.pf == pf)
            .fold((0u64, 0), |(g, n), h| {
                (g.saturating_add(h.record.guaranteed_mbps), n + 1)
            })
    }

    fn vf_taken(&self, pf: &str, vf: u32) -> bool {
        self.held
            .values()
            .any(|h| h.record.pf == pf && h.record.vf == vf)
    }

    /// "pool fabric-a: 15Gbps of 100Gbps guaranteed bandwidth left (85Gbps held by 4 pods); pod asks 40Gbps"
    fn refusal(&self, pools: &[&PoolInv], req: &Request) -> String {
        let ask = req.guaranteed_mbps();
        if pools.is_empty() {
            return format!(
                "no SR-IOV RDMA VFs are offered on this node; pod asks {}",
                asked(ask)
            );
        }
        let parts: Vec<String> = pools
            .iter()
            .map(|pool| {
                let cap: u64 = pool.pfs.iter().map(|pf| pf.capacity_mbps).sum();
                let (mut held, mut pods, mut best_pf, mut free_vfs, mut vfs) = (0u64, 0, 0, 0, 0);
                for pf in &pool.pfs {
                    let (h, n) = self.pf_load(&pf.name);
                    let free = pf
                        .vfs
                        .iter()
                        .filter(|v| !self.vf_taken(&pf.name, v.index))
                        .count();
                    held = held.saturating_add(h);
                    pods += n;
                    free_vfs += free;
                    vfs += pf.vfs.len();
                    if free > 0 {
                        best_pf = best_pf.max(pf.capacity_mbps.saturating_sub(h));
                    }
                }
                let mut s = format!(
                    "pool {}: {} of {} guaranteed bandwidth left ({} held by {} pod{})",
                    pool.name,
                    format_mbps(cap.saturating_sub(held)),
                    format_mbps(cap),
                    format_mbps(held),
                    pods,
                    if pods == 1 { "" } else { "s" }
                );
                if free_vfs == 0 {
                    s.push_str(&format!(", no free VF ({vfs} of {vfs} in use)"));
                } else if pool.pfs.len() > 1 && cap.saturating_sub(held) >= ask {
                    s.push_str(&format!(", at most {} on one PF", format_mbps(best_pf)));
                }
                s
            })
            .collect();
        format!("{}; pod asks {}", parts.join("; "), asked(ask))
    }

    fn persist(&self) -> Result<()> {
        let path = self.dir.join(LEDGER_FILE);
        let tmp = self.dir.join(format!("{LEDGER_FILE}.tmp"));
        let file = LedgerFileRef {
            version: FORMAT_VERSION,
            held: &self.held,
        };
        let bytes = serde_json::to_vec(&file)
            .map_err(|e| NodeError::io("encoding", &path, std::io::Error::other(e)))?;
        let mut f = private_fs::open_for_write(&tmp, true)
            .map_err(|e| NodeError::io("creating", &tmp, e))?;
        f.write_all(&bytes)
            .map_err(|e| NodeError::io("writing", &tmp, e))?;
        f.sync_all()
            .map_err(|e| NodeError::io("syncing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| NodeError::io("renaming into", &path, e))?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| NodeError::io("syncing", &self.dir, e))
    }
}

fn asked(mbps: u64) -> String {
    if mbps == 0 {
        "a VF with no guarantee".to_string()
    } else {
        format_mbps(mbps)
    }
}
