//! The plugin's node state: config, the inventory (refreshed off the hot path) and the ledger.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use conrdma_core::discovery::{discover, CharDev};
use conrdma_core::ledger::{Held, PodRef, Reconciled};
use conrdma_core::request::KEY_ALLOCATION;
use conrdma_core::{AllocationRecord, Inventory, Ledger, NodeConfig, Request};
use tracing::{info, warn};

use crate::adjust::rdma_cgroup_decision;
use crate::cgroup::RdmaCgroup;
use crate::error::PluginError;

pub struct NodeState {
    root: PathBuf,
    cfg: RwLock<Arc<NodeConfig>>,
    inventory: RwLock<Arc<Inventory>>,
    ledger: Mutex<Ledger>,
    cgroup: RdmaCgroup,
}

/// What CreateContainer needs to adjust one container.
pub struct Grant {
    pub record: AllocationRecord,
    /// Newly admitted (first container of the pod) rather than looked up.
    pub fresh: bool,
    pub uverbs: CharDev,
    pub rdma_cm: Option<CharDev>,
}

impl NodeState {
    /// Discovers the node under `root`, opens (and locks) the ledger in `state_dir`.
    pub fn open(root: &Path, state_dir: &Path, cfg: NodeConfig) -> Result<NodeState, PluginError> {
        let node = discover(root)?;
        let inventory = Inventory::build(&node, &cfg);
        let ledger = Ledger::open(state_dir)?;
        let cgroup = RdmaCgroup::detect(&cfg.cgroup_root);
        info!(
            pfs = node.pfs.len(),
            vfs = inventory.vf_count(),
            held = ledger.held().count(),
            rdma_cgroup = ?cgroup,
            "node state ready"
        );
        Ok(NodeState {
            root: root.to_path_buf(),
            cfg: RwLock::new(Arc::new(cfg)),
            inventory: RwLock::new(Arc::new(inventory)),
            ledger: Mutex::new(ledger),
            cgroup,
        })
    }

    pub fn config(&self) -> Arc<NodeConfig> {
        self.cfg
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn inventory(&self) -> Arc<Inventory> {
        self.inventory
            .read()
            .map(|i| i.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Rescans sysfs and swaps the inventory in; held allocations are untouched.
    pub fn refresh(&self) -> Result<(), PluginError> {
        let cfg = self.config();
        let inv = Inventory::build(&discover(&self.root)?, &cfg);
        match self.inventory.write() {
            Ok(mut g) => *g = Arc::new(inv),
            Err(p) => *p.into_inner() = Arc::new(inv),
        }
        Ok(())
    }

    /// Replaces the node config (e.g. from NRI Configure) and rebuilds the inventory with it.
    pub fn set_config(&self, cfg: NodeConfig) -> Result<(), PluginError> {
        match self.cfg.write() {
            Ok(mut g) => *g = Arc::new(cfg),
            Err(p) => *p.into_inner() = Arc::new(cfg),
        }
        self.refresh()
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the ledger half-updated on disk (writes are
        // atomic) and the in-memory map is restored on failure, so the data is still sound.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits the pod (or finds its existing allocation) and resolves its device numbers.
    pub fn grant(&self, pod: &PodRef, req: &Request) -> Result<Grant, PluginError> {
        let inv = self.inventory();
        let cfg = self.config();
        let (record, fresh) = self.ledger().admit(&inv, pod, req, |rec| {
            rec.rdma_cgroup = rdma_cgroup_decision(self.cgroup, req, &cfg, &rec.rdma_device);
        })?;
        let uverbs = inv
            .pf(&record.pf)
            .and_then(|(_, pf)| pf.vfs.iter().find(|v| v.index == record.vf))
            .map(|v| v.uverbs.clone())
            .ok_or_else(|| {
                PluginError::Setup(format!(
                    "VF {} of {} held by this pod is no longer on the node (driver unbound?)",
                    record.vf, record.pf
                ))
            })?;
        Ok(Grant {
            record,
            fresh,
            uverbs,
            rdma_cm: inv.rdma_cm.clone(),
        })
    }

    pub fn release(&self, pod_id: &str) -> Result<Option<Held>, PluginError> {
        Ok(self.ledger().release(pod_id)?)
    }

    /// Reconciles the ledger with containerd's view: `pods` are the live sandboxes, `containers`
    /// their live containers as (pod id, annotations).
    pub fn reconcile<'a>(
        &self,
        pods: impl IntoIterator<Item = PodRef>,
        containers: impl IntoIterator<Item = (&'a str, &'a HashMap<String, String>)>,
    ) -> Result<Reconciled, PluginError> {
        let pods: HashMap<String, PodRef> = pods.into_iter().map(|p| (p.id.clone(), p)).collect();
        let live: HashSet<String> = pods.keys().cloned().collect();
        let mut found: HashMap<String, Held> = HashMap::new();
        for (pod_id, annotations) in containers {
            let (Some(pod), Some(json)) = (pods.get(pod_id), annotations.get(KEY_ALLOCATION))
            else {
                continue;
            };
            match AllocationRecord::from_json(json) {
                Ok(record) => {
                    found.entry(pod_id.to_string()).or_insert(Held {
                        pod: pod.clone(),
                        record,
                    });
                }
                Err(e) => warn!(pod_id, error = %e, "ignoring unreadable allocation annotation"),
            }
        }
        Ok(self
            .ledger()
            .reconcile(&live, found.into_values().collect())?)
    }

    pub fn held(&self) -> Vec<Held> {
        self.ledger().held().cloned().collect()
    }
}
