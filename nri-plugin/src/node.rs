//! The plugin's node state: config, the inventory (refreshed off the hot path) and the ledger.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use conrdma_api::request::KEY_ALLOCATION;
use conrdma_api::{AllocationRecord, Request};
use conrdma_node::discovery::{discover, CharDev};
use conrdma_node::ledger::{Held, NetPhase, PodNet, PodRef, Reconciled};
use conrdma_node::limiter::{LimiterKind, Limiters, RateLimiter};
use conrdma_node::netns::{NetlinkNetworking, PodNetworking};
use conrdma_node::{Inventory, Ledger, NodeConfig};
use tracing::{debug, error, info, warn};

use crate::adjust::rdma_cgroup_decision;
use crate::cgroup::RdmaCgroup;
use crate::error::PluginError;
use crate::steering::{Outcome, Steering};

/// The longest CreateContainer waits for the work-conserving controller to make room for a new
/// pod (well inside containerd's 2 s NRI request timeout).
const STEER_WAIT_MAX: Duration = Duration::from_secs(1);

pub struct NodeState {
    pub(crate) root: PathBuf,
    cfg: RwLock<Arc<NodeConfig>>,
    inventory: RwLock<Arc<Inventory>>,
    ledger: Mutex<Ledger>,
    /// Moves VF netdevs into pods' network namespaces and back.
    pub(crate) net: Arc<dyn PodNetworking>,
    /// One move at a time: a stop, a release and a sweep of the same pod must not interleave.
    pub(crate) net_lock: Mutex<()>,
    /// RDMA devices are per network namespace (`rdma system set netns exclusive`).
    pub(crate) rdma_exclusive: bool,
    cgroup: RdmaCgroup,
    /// The limiter kind the plugin enforces rates with itself, for pods not run by the shim:
    /// `[enforce] limiter` when `[enforce] enabled` at open (a later Configure changes neither).
    enforce: Option<LimiterKind>,
    /// Every rate the plugin sets or reads goes through these: admission's enforcement and the
    /// work-conserving controller share one instance per kind.
    limiters: Limiters,
    /// Woken whenever the ledger changes, so the node report goes out at once.
    pub changed: tokio::sync::Notify,
    /// Admission's handshake with the work-conserving controller.
    pub steering: Steering,
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
        let net = Arc::new(NetlinkNetworking::new(root));
        Self::open_with(root, state_dir, cfg, net)
    }

    /// [`NodeState::open`] with the pod-network step given (tests inject theirs); rate limiters
    /// are the real ones (see [`NodeState::with_limiter`]).
    pub fn open_with(
        root: &Path,
        state_dir: &Path,
        cfg: NodeConfig,
        net: Arc<dyn PodNetworking>,
    ) -> Result<NodeState, PluginError> {
        let node = discover(root)?;
        let mut inventory = Inventory::build(&node, &cfg);
        let ledger = Ledger::open(state_dir)?;
        inventory.keep_lent(ledger.lent());
        let cgroup = RdmaCgroup::detect(&cfg.cgroup_root);
        let enforce = cfg.enforce.enabled.then_some(cfg.enforce.limiter);
        // Asked only where a pool moves VFs: other nodes never touch RDMA netlink.
        let rdma_exclusive =
            cfg.pools.iter().any(|p| p.network.is_some()) && crate::podnet::rdma_exclusive();
        info!(
            pfs = node.pfs.len(),
            vfs = inventory.vf_count(),
            held = ledger.held().count(),
            rdma_cgroup = ?cgroup,
            rdma_exclusive,
            "node state ready"
        );
        Ok(NodeState {
            root: root.to_path_buf(),
            cfg: RwLock::new(Arc::new(cfg)),
            inventory: RwLock::new(Arc::new(inventory)),
            ledger: Mutex::new(ledger),
            net,
            net_lock: Mutex::new(()),
            rdma_exclusive,
            cgroup,
            enforce,
            limiters: Limiters::new(root),
            changed: tokio::sync::Notify::new(),
            steering: Steering::default(),
        })
    }

    /// This node with every rate set, read and reset (admission's enforcement, release, the
    /// work-conserving controller) going to `limiter`, whatever kind the config names: tests
    /// watch what reaches the hardware.
    pub fn with_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> NodeState {
        self.limiters = Limiters::only(limiter);
        self
    }

    /// The node's limiter of this kind.
    pub fn limiter(&self, kind: LimiterKind) -> Arc<dyn RateLimiter> {
        self.limiters.get(kind).clone()
    }

    /// The limiter the plugin enforces rates with, where it does.
    fn enforcer(&self) -> Option<&Arc<dyn RateLimiter>> {
        self.enforce.map(|kind| self.limiters.get(kind))
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

    /// Rescans sysfs and swaps the inventory in; held allocations are untouched, and VFs whose
    /// netdev is lent to a pod stay in it although the host's sysfs no longer shows them.
    pub fn refresh(&self) -> Result<(), PluginError> {
        let cfg = self.config();
        let mut inv = Inventory::build(&discover(&self.root)?, &cfg);
        inv.keep_lent(self.ledger().lent());
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

    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the ledger half-updated on disk (writes are
        // atomic) and the in-memory map is restored on failure, so the data is still sound.
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits the pod (or finds its existing allocation) and resolves its device numbers. Where the
    /// plugin enforces rates for pods outside the ConRDMA runtime, it also sets the VF's rate, and
    /// if that fails the admission is undone: an unenforced pod must not run unlimited.
    /// `netns` is the pod's network namespace (`None`: hostNetwork); in a pool with a network
    /// section the VF netdev is moved into it before this returns.
    pub fn grant(
        &self,
        pod: &PodRef,
        req: &Request,
        runtime_handler: &str,
        netns: Option<&Path>,
    ) -> Result<Grant, PluginError> {
        let inv = self.inventory();
        let cfg = self.config();
        let enforce = self.enforces(&cfg, runtime_handler);
        let (mut record, fresh) = self.ledger().admit_in(&inv, pod, req, netns, |h| {
            h.record.rdma_cgroup =
                rdma_cgroup_decision(self.cgroup, req, &cfg, &h.record.rdma_device);
            h.plugin_enforced = enforce;
            if cfg.conserve.controls(&h.record.pool) {
                h.record.start_max_mbps = Some(conrdma_api::conserve::start_max_mbps(
                    h.record.guaranteed_mbps,
                ));
            }
        })?;
        if fresh && record.start_max_mbps.is_some() {
            self.make_room(pod, &record, &cfg);
        }
        if let (true, true, Some(limiter)) = (fresh, enforce, self.enforcer()) {
            match limiter.set(&record.pf, record.vf, record.start_rate()) {
                Ok(applied) if !applied.min_enforced => {
                    warn!(pod_id = %pod.id, pf = %record.pf, vf = record.vf, note = ?applied.note, "guarantee not enforced in hardware; the limit is")
                }
                Ok(_) => {}
                Err(e) => {
                    if let Err(undo) = self.release(&pod.id) {
                        error!(pod_id = %pod.id, error = %undo, "undoing the admission failed");
                    }
                    return Err(e.into());
                }
            }
        }
        let mut soft_uverbs = None;
        if record.address.is_some() {
            match self.settle_net(&pod.id) {
                Ok(Some(h)) => {
                    soft_uverbs = NodeState::uverbs_for(&h);
                    record = h.record;
                }
                Ok(None) => {}
                Err(e) => {
                    // Never a half-set-up pod: bring the VF home and free the booking (also one
                    // made earlier, e.g. before a crash), so the next container asks afresh.
                    if let Err(undo) = self.release(&pod.id) {
                        error!(pod_id = %pod.id, error = %undo, "undoing the admission after a failed move failed; the VF stays booked and is retried");
                    }
                    return Err(e);
                }
            }
        }
        let uverbs = soft_uverbs.map(Ok).unwrap_or_else(|| {
            inv.pf(&record.pf)
                .and_then(|(_, pf)| pf.vfs.iter().find(|v| v.index == record.vf))
                .map(|v| v.uverbs.clone())
                .ok_or_else(|| PluginError::VfGone {
                    pf: record.pf.clone(),
                    vf: record.vf,
                })
        })?;
        if fresh {
            self.changed.notify_one();
        }
        Ok(Grant {
            record,
            fresh,
            uverbs,
            rdma_cm: inv.rdma_cm.clone(),
        })
    }

    /// Has the work-conserving controller take back the loans the new pod's start maximum needs
    /// before anyone writes it. Not an error when it cannot: the pod is admitted either way, and
    /// the controller's next decision restores the bound.
    fn make_room(&self, pod: &PodRef, record: &AllocationRecord, cfg: &NodeConfig) {
        let wait = Duration::from_millis(cfg.conserve.interval_ms).min(STEER_WAIT_MAX);
        match self.steering.request(wait) {
            Outcome::Done => {
                debug!(pod_id = %pod.id, pf = %record.pf, vf = record.vf, "the controller made room for the new VF")
            }
            Outcome::TimedOut => {
                warn!(pod_id = %pod.id, pf = %record.pf, vf = record.vf, waited_ms = wait.as_millis() as u64,
                      "the work-conserving controller did not decide in time: the PF's sum of maxima may exceed its bound until its next decision")
            }
            Outcome::Unattached => {}
        }
    }

    /// Whether the plugin itself holds pods of this runtime handler to their rate.
    fn enforces(&self, cfg: &NodeConfig, runtime_handler: &str) -> bool {
        self.enforce.is_some()
            && !cfg
                .enforce
                .shim_runtime_handlers
                .iter()
                .any(|h| h == runtime_handler)
    }

    /// Brings the pod's VF netdev home at StopPodSandbox, before containerd deletes the pod's
    /// network namespace; the VF stays booked until the pod is removed.
    pub fn stop(&self, pod_id: &str) -> Result<(), PluginError> {
        self.return_net(pod_id)
    }

    /// Frees the pod's allocation, and its VF's rate where the plugin had set it. A VF netdev
    /// lent to the pod is brought home first; if that fails the VF stays booked.
    pub fn release(&self, pod_id: &str) -> Result<Option<Held>, PluginError> {
        self.return_net(pod_id)?;
        let held = self.ledger().release(pod_id)?;
        self.after_release(held.as_slice());
        Ok(held)
    }

    fn reset_rate(&self, h: &Held) {
        if let (true, Some(limiter)) = (h.plugin_enforced, self.enforcer()) {
            // Idempotent; a failure leaves a stale limit on a now-free VF, which the next
            // allocation of that VF overwrites.
            if let Err(e) = limiter.reset(&h.record.pf, h.record.vf) {
                error!(pod_id = %h.pod.id, pf = %h.record.pf, vf = h.record.vf, error = %e, "resetting the VF rate failed");
            }
        }
    }

    /// Reconciles the ledger with containerd's view: `pods` are the live sandboxes with their
    /// runtime handler and network namespace (`None`: the host's), `containers` their live
    /// containers as (pod id, annotations).
    pub fn reconcile<'a>(
        &self,
        pods: impl IntoIterator<Item = (PodRef, &'a str, Option<PathBuf>)>,
        containers: impl IntoIterator<Item = (&'a str, &'a HashMap<String, String>)>,
    ) -> Result<Reconciled, PluginError> {
        let cfg = self.config();
        let pods: HashMap<String, (PodRef, &str, Option<PathBuf>)> = pods
            .into_iter()
            .map(|(p, h, ns)| (p.id.clone(), (p, h, ns)))
            .collect();
        let live: HashSet<String> = pods.keys().cloned().collect();
        let mut found: HashMap<String, Held> = HashMap::new();
        for (pod_id, annotations) in containers {
            let (Some((pod, handler, netns)), Some(json)) =
                (pods.get(pod_id), annotations.get(KEY_ALLOCATION))
            else {
                continue;
            };
            match AllocationRecord::from_json(json) {
                Ok(record) => {
                    let plugin_enforced = self.enforces(&cfg, handler);
                    // A container runs, so a VF with an address is in the pod: it must come home
                    // before the VF is freed.
                    let net = match (&record.address, netns) {
                        (Some(_), Some(ns)) => self.booked_vf(&record).map(|vf| PodNet {
                            netns: ns.clone(),
                            phase: NetPhase::InPod,
                            host_mtu: None,
                            soft_uverbs: None,
                            vf,
                        }),
                        _ => None,
                    };
                    found.entry(pod_id.to_string()).or_insert(Held {
                        pod: pod.clone(),
                        record,
                        plugin_enforced,
                        net,
                    });
                }
                Err(e) => warn!(pod_id, error = %e, "ignoring unreadable allocation annotation"),
            }
        }
        self.return_gone(&live, u64::MAX);
        let out = self
            .ledger()
            .reconcile(&live, found.into_values().collect())?;
        self.finish_booked(&live);
        self.after_release(&out.released);
        if !out.adopted.is_empty() {
            self.changed.notify_one();
        }
        Ok(out)
    }

    /// See [`conrdma_node::Ledger::mark`]: taken before asking containerd which pods exist.
    pub fn admission_mark(&self) -> u64 {
        self.ledger().mark()
    }

    /// Frees the allocations of pods missing from `live` (all sandboxes containerd holds, listed
    /// after `mark`), and their VF rates where the plugin had set them.
    pub fn sweep(&self, live: &HashSet<String>, mark: u64) -> Result<Vec<Held>, PluginError> {
        self.return_gone(live, mark);
        let released = self.ledger().sweep(live, mark)?;
        self.after_release(&released);
        Ok(released)
    }

    fn after_release(&self, released: &[Held]) {
        for h in released {
            self.reset_rate(h);
        }
        if !released.is_empty() {
            self.changed.notify_one();
        }
    }

    pub fn held(&self) -> Vec<Held> {
        self.ledger().held().cloned().collect()
    }
}
