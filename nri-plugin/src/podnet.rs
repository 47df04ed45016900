//! The pod-network step of a grant: the VF netdev (and the RDMA device that follows it) goes into
//! the pod's network namespace after admission and comes home before the booking is released.
//!
//! Order keeps crashes harmless: the ledger records the booking (phase `booked`) before anything
//! moves, `in_pod` once the pod has it, `returned` once it is home, and only a `returned` (or
//! never-moved) entry is ever released. Whatever is cut short is finished by the next grant,
//! stop, release, reconcile or sweep, which all start by looking where the netdev is now.

use std::path::PathBuf;
use std::sync::MutexGuard;

use conrdma_api::network::Cidr;
use conrdma_node::discovery::CharDev;
use conrdma_node::error::{ErrorClass, NodeError};
use conrdma_node::inventory::VfInv;
use conrdma_node::ledger::{Held, NetPhase};
use conrdma_node::netns::{Detached, HostLink, PodLink, RdmaFollow};
use conrdma_node::rdma_netlink::{NetnsMode, RdmaNetlink};
use tracing::{debug, info, warn};

use crate::error::PluginError;
use crate::node::NodeState;

/// The network namespace of a pod as NRI describes it; `None` for a hostNetwork pod.
pub fn pod_netns(pod: &conrdma_nri::PodSandbox) -> Option<PathBuf> {
    pod.linux
        .as_ref()?
        .namespaces
        .iter()
        .find(|n| n.type_ == "network" && !n.path.is_empty())
        .map(|n| PathBuf::from(&n.path))
}

/// Whether the kernel runs RDMA devices in exclusive netns mode; a kernel without RDMA netlink
/// (no ib_core) counts as shared, where nothing has to move.
pub fn rdma_exclusive() -> bool {
    match RdmaNetlink::open().and_then(|r| r.netns_mode()) {
        Ok(NetnsMode::Exclusive) => true,
        Ok(NetnsMode::Shared) => false,
        Err(e) => {
            debug!(error = %e, "RDMA netlink unavailable: treating RDMA devices as shared across namespaces");
            false
        }
    }
}

impl NodeState {
    /// How the pod's RDMA device follows its netdev.
    fn follow(&self, h: &Held) -> RdmaFollow {
        let soft = h.net.as_ref().is_some_and(|n| n.vf.rdma_soft);
        let name = h.record.rdma_device.clone();
        if soft {
            RdmaFollow::Soft { name }
        } else if self.rdma_exclusive {
            RdmaFollow::Exclusive { name }
        } else {
            RdmaFollow::Shared
        }
    }

    /// Refuses what the kernel cannot do, before anything moves: in exclusive netns mode an rxe
    /// device neither moves (EOPNOTSUPP) nor stays in the namespace it is created in (the kernel
    /// registers it in the initial one), so the pod would not see it.
    fn check_follow(&self, h: &Held) -> Result<(), PluginError> {
        if let (RdmaFollow::Soft { name }, true) = (self.follow(h), self.rdma_exclusive) {
            return Err(NodeError::PodNetwork {
                reason: format!(
                    "Soft-RoCE device {name} cannot follow its VF into the pod in exclusive RDMA netns mode: the kernel neither moves rxe devices between namespaces nor keeps one created in a pod's namespace there; use `rdma system set netns shared`, a hostNetwork pod, or a pool without [pool.network]"
                ),
                class: ErrorClass::Precondition,
            }
            .into());
        }
        Ok(())
    }

    /// The VF of `record` (an allocation adopted from a live container's annotation): as the
    /// inventory has it, else rebuilt from the record and its uverbs node on the host (the host's
    /// sysfs does not show a VF whose netdev is in a pod).
    pub(crate) fn booked_vf(&self, record: &conrdma_api::AllocationRecord) -> Option<VfInv> {
        if let Some(vf) = self
            .inventory()
            .pf(&record.pf)
            .and_then(|(_, pf)| pf.vfs.iter().find(|v| v.index == record.vf).cloned())
        {
            return Some(vf);
        }
        let st = nix::sys::stat::stat(record.uverbs.as_str()).ok()?;
        let name = record.uverbs.rsplit('/').next()?.to_string();
        Some(VfInv {
            index: record.vf,
            pci: record.vf_pci.clone(),
            netdev: record.netdev.clone(),
            rdma_device: record.rdma_device.clone(),
            uverbs: CharDev {
                name,
                major: nix::sys::stat::major(st.st_rdev) as i64,
                minor: nix::sys::stat::minor(st.st_rdev) as i64,
            },
            rdma_soft: false,
        })
    }

    fn net_guard(&self) -> MutexGuard<'_, ()> {
        self.net_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the pod's VF in if its booking says it is not there yet. Returns the entry as it
    /// stands after, with the uverbs node of a soft device re-created in the pod.
    pub(crate) fn settle_net(&self, pod_id: &str) -> Result<Option<Held>, PluginError> {
        let _g = self.net_guard();
        let Some(h) = self.ledger().get(pod_id).cloned() else {
            return Ok(None);
        };
        let Some(net) = h.net.clone() else {
            return Ok(Some(h));
        };
        if net.phase != NetPhase::Booked {
            return Ok(Some(h));
        }
        let inv = self.inventory();
        let pool_net = inv.pool(&h.record.pool).and_then(|p| p.network.clone());
        let (Some(pool_net), Some(addr)) = (
            pool_net,
            h.record
                .address
                .as_deref()
                .and_then(|a| Cidr::parse(a).ok()),
        ) else {
            return Err(NodeError::PodNetwork {
                reason: format!(
                    "pool {} of this pod's VF has no network section any more (the node config changed after the pod was admitted): remove the pod or restore the section",
                    h.record.pool
                ),
                class: ErrorClass::Precondition,
            }
            .into());
        };
        let vf = host_link(&h);
        let pod = PodLink {
            ifname: h.record.ifname.clone().unwrap_or(pool_net.ifname.clone()),
            address: addr,
            mtu: pool_net.mtu,
            gateway: pool_net.gateway,
            routes: pool_net.routes.clone(),
        };
        self.check_follow(&h)?;
        let follow = self.follow(&h);
        if net.host_mtu.is_none() {
            if let Some(mtu) = self.net.host_mtu(&vf)? {
                self.ledger().update(pod_id, |e| {
                    if let Some(n) = e.net.as_mut() {
                        n.host_mtu = Some(mtu);
                    }
                })?;
            }
        }
        conrdma_node::crash::point("net-booked");
        let started = std::time::Instant::now();
        let attached = self.net.attach(&net.netns, &vf, &pod, &follow)?;
        let soft_uverbs = attached.soft_uverbs.clone();
        let updated = self.ledger().update(pod_id, |e| {
            if let Some(n) = e.net.as_mut() {
                n.phase = NetPhase::InPod;
                n.host_mtu = n.host_mtu.or(attached.host_mtu);
                if let Some(u) = &soft_uverbs {
                    n.soft_uverbs = Some(u.clone());
                    e.record.uverbs = u.dev_path();
                }
            }
        })?;
        info!(pod_id, netdev = %vf.name, ifname = %pod.ifname, address = %pod.address, netns = %net.netns.display(),
              move_us = started.elapsed().as_micros() as u64, "VF netdev moved into the pod");
        Ok(updated)
    }

    /// Brings the pod's VF netdev home if it is out; the booking stays. Errors leave the ledger
    /// saying it is out, so the next attempt tries again.
    pub(crate) fn return_net(&self, pod_id: &str) -> Result<(), PluginError> {
        let _g = self.net_guard();
        let Some(h) = self.ledger().get(pod_id).cloned() else {
            return Ok(());
        };
        self.return_held(&h)
    }

    /// [`NodeState::return_net`] for an entry already read (the caller holds the net lock).
    fn return_held(&self, h: &Held) -> Result<(), PluginError> {
        let Some(net) = h.net.as_ref().filter(|_| h.net_out()) else {
            return Ok(());
        };
        let vf = host_link(h);
        let ifname = h.record.ifname.clone().unwrap_or_default();
        let follow = self.follow(h);
        match self
            .net
            .detach(&net.netns, &vf, &ifname, net.host_mtu, &follow)?
        {
            Detached::Returned => {
                info!(pod_id = %h.pod.id, netdev = %vf.name, "VF netdev back on the host")
            }
            Detached::Missing => {
                warn!(pod_id = %h.pod.id, netdev = %vf.name, pci = %vf.pci, "VF netdev is nowhere to be found: nothing to return")
            }
        }
        self.ledger().update(&h.pod.id, |e| {
            if let Some(n) = e.net.as_mut() {
                n.phase = NetPhase::Returned;
            }
        })?;
        Ok(())
    }

    /// Brings home the VFs of pods that are gone (missing from `live`, admitted by `mark`), so the
    /// release that follows may free them. Failures are logged; those stay booked until a later
    /// pass succeeds.
    pub(crate) fn return_gone(&self, live: &std::collections::HashSet<String>, mark: u64) {
        let _g = self.net_guard();
        let out = self.ledger().gone_out(live, mark);
        for h in out {
            if let Err(e) = self.return_held(&h) {
                warn!(pod_id = %h.pod.id, error = %e, "returning the VF netdev of a removed pod failed; the VF stays booked and is retried");
            }
        }
    }

    /// Finishes the move of live pods cut short by a crash (phase `booked`).
    pub(crate) fn finish_booked(&self, live: &std::collections::HashSet<String>) {
        let booked: Vec<String> = self
            .ledger()
            .held()
            .filter(|h| live.contains(&h.pod.id))
            .filter(|h| h.net.as_ref().is_some_and(|n| n.phase == NetPhase::Booked))
            .map(|h| h.pod.id.clone())
            .collect();
        for id in booked {
            match self.settle_net(&id) {
                Ok(_) => info!(pod_id = %id, "finished moving the VF netdev of a live pod"),
                Err(e) => warn!(pod_id = %id, error = %e, "finishing the VF netdev move failed"),
            }
        }
    }

    /// The uverbs node the pod's containers get: the soft device's own in the pod, else the VF's.
    pub(crate) fn uverbs_for(h: &Held) -> Option<CharDev> {
        h.net.as_ref().and_then(|n| n.soft_uverbs.clone())
    }
}

fn host_link(h: &Held) -> HostLink {
    HostLink {
        name: h.record.netdev.clone(),
        pci: h.record.vf_pci.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use conrdma_api::Request;
    use conrdma_node::netns::{Attached, PodNetworking};
    use conrdma_node::simulate::{build, SimOptions};
    use conrdma_node::NodeConfig;

    use super::*;

    /// A kernel that refuses every move, counting what was asked of it.
    #[derive(Default)]
    struct Refusing {
        calls: Mutex<Vec<&'static str>>,
    }

    impl PodNetworking for Refusing {
        fn host_mtu(&self, _: &HostLink) -> conrdma_node::Result<Option<u32>> {
            Ok(Some(1500))
        }
        fn attach(
            &self,
            _: &Path,
            _: &HostLink,
            _: &PodLink,
            _: &RdmaFollow,
        ) -> conrdma_node::Result<Attached> {
            self.calls.lock().unwrap().push("attach");
            Err(NodeError::PodNetwork {
                reason: "refused by the test's kernel".into(),
                class: ErrorClass::Precondition,
            })
        }
        fn detach(
            &self,
            _: &Path,
            _: &HostLink,
            _: &str,
            _: Option<u32>,
            _: &RdmaFollow,
        ) -> conrdma_node::Result<Detached> {
            self.calls.lock().unwrap().push("detach");
            Ok(Detached::Returned)
        }
    }

    #[test]
    fn a_move_the_kernel_refuses_brings_the_vf_home_and_books_nothing_even_on_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nic");
        let opts = SimOptions {
            pfs: 1,
            vfs_per_pf: 2,
            ..Default::default()
        };
        build(&root, &opts).unwrap();
        let cfg = NodeConfig::from_toml(
            "[[pool]]\nname = \"f\"\npfs = [\"ens1f0\"]\n[pool.network]\nsubnet = \"10.77.0.0/24\"",
            "test",
        )
        .unwrap();
        let net = Arc::new(Refusing::default());
        let state = dir.path().join("state");
        let node = NodeState::open_with(&root, &state, cfg, net.clone()).unwrap();
        let pod = conrdma_node::PodRef {
            id: "sb-1".into(),
            uid: "u".into(),
            namespace: "default".into(),
            name: "p".into(),
        };
        let ann: HashMap<String, String> =
            [("rdma.conrdma.io/bandwidth".to_string(), "1G".to_string())].into();
        let req = Request::from_annotations(&ann).unwrap().unwrap();
        let ns = Path::new("/run/netns/test");
        for attempt in 0..2 {
            let e = node
                .grant(&pod, &req, "runc", Some(ns))
                .err()
                .expect("refused");
            assert!(
                e.to_string().contains("refused by the test's kernel"),
                "{e}"
            );
            assert_eq!(e.code(), conrdma_nri::ttrpc::Code::FAILED_PRECONDITION);
            assert!(
                node.held().is_empty(),
                "attempt {attempt}: nothing stays booked"
            );
        }
        assert_eq!(
            *net.calls.lock().unwrap(),
            ["attach", "detach", "attach", "detach"],
            "every failed move is undone"
        );
        // A booking left by a crash mid-move (phase booked) is undone the same way.
        {
            let inv = node.inventory();
            node.ledger()
                .admit_in(&inv, &pod, &req, Some(ns), |_| {})
                .unwrap();
        }
        assert!(node.grant(&pod, &req, "runc", Some(ns)).is_err());
        assert!(node.held().is_empty());
    }
}
