//! The decision: whether a pod fits a node, what `/filter` does with the node, how much
//! `/prioritize` likes it, and the reasons kube-scheduler shows.

use std::sync::Arc;
use std::time::Instant;

use conrdma_api::rate::format_mbps;
use conrdma_api::Request;

use super::{Settings, Store};
use crate::config::{Policy, UnknownNodes};
use crate::fits::PfFit;

/// Why a pod does not fit a node (or why the node is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No report ever arrived from the node.
    NeverReported,
    /// The node's last report is older than the TTL.
    Stale,
    /// The node reports no pool at all.
    NoVfs,
    /// The node has no pool of the name the pod asks for.
    NoPool,
    /// No PF of the node could carry the guarantee even when empty.
    TooBig,
    /// Every PF that could carry the guarantee has all its VFs in use.
    NoFreeVf,
    /// No PF with a free VF has the guarantee's headroom left.
    NoHeadroom,
}

impl Why {
    /// Whether evicting pods could make room (kube-scheduler may try preemption for these).
    pub fn resolvable(self) -> bool {
        matches!(self, Why::NoFreeVf | Why::NoHeadroom)
    }
}

/// What the webhook thinks of one node for one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The pod fits; `score` is the policy's preference from 0 to 100 (before scaling).
    Fits { score: u32 },
    /// No fresh report: treated as configured by `unknown_nodes`.
    Unknown(Why),
    /// The pod does not fit.
    No(Why),
}

/// What `/filter` does with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// In `FailedNodes`: preemption could help.
    Failed(Why),
    /// In `FailedAndUnresolvableNodes`.
    Unresolvable(Why),
}

/// The reason texts kube-scheduler shows, built once per request and shared by every node they
/// apply to. Free of per-node numbers so kube-scheduler can aggregate them in the pod's events.
pub struct Reasons {
    texts: [Arc<str>; 7],
}

impl Reasons {
    pub fn new(settings: &Settings, req: &Request) -> Reasons {
        let ask = format_mbps(req.guaranteed_mbps());
        let in_pool = req
            .pool
            .as_deref()
            .map(|p| format!(" in pool {p:?}"))
            .unwrap_or_default();
        let t = |s: String| Arc::<str>::from(s);
        Reasons {
            texts: [
                t("conrdma: no report from this node".into()),
                t(format!(
                    "conrdma: the node's last report is older than the {}s TTL",
                    settings.node_ttl.as_secs()
                )),
                t("conrdma: no RDMA VFs on this node".into()),
                t(format!(
                    "conrdma: no RDMA pool {:?} on this node",
                    req.pool.as_deref().unwrap_or_default()
                )),
                t(format!("conrdma: no PF{in_pool} can guarantee {ask}")),
                t(format!("conrdma: no free VF{in_pool}")),
                t(format!(
                    "conrdma: no PF{in_pool} with a free VF has {ask} of guarantee left"
                )),
            ],
        }
    }

    pub fn text(&self, why: Why) -> &Arc<str> {
        &self.texts[why as usize]
    }
}

/// Which pools a request may use, resolved once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolSel {
    Any,
    Id(u32),
    /// Names a pool no node has ever reported.
    Unknown,
}

/// A request resolved against the store: see [`Store::ask`].
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    mbps: u64,
    sel: PoolSel,
    pool: Option<&'a str>,
}

impl Store {
    fn fresh<'a>(&'a self, node: &str, now: Instant) -> Result<&'a [PfFit], Why> {
        let (received, pfs) = self.fits.get(node).ok_or(Why::NeverReported)?;
        if now.saturating_duration_since(received) > self.settings.node_ttl {
            return Err(Why::Stale);
        }
        Ok(pfs)
    }

    /// Resolves a request against the store once, for [`Store::evaluate_ask`] over many nodes.
    pub fn ask<'a>(&self, req: &'a Request) -> Ask<'a> {
        Ask {
            mbps: req.guaranteed_mbps(),
            sel: match req.pool.as_deref() {
                None => PoolSel::Any,
                Some(p) => self
                    .pool_ids
                    .get(p)
                    .map_or(PoolSel::Unknown, |id| PoolSel::Id(*id)),
            },
            pool: req.pool.as_deref(),
        }
    }

    /// Whether the pod can get one VF on one PF with guaranteed headroom for its request, and how
    /// much the configured policy likes the node.
    pub fn evaluate(&self, node: &str, req: &Request, now: Instant) -> Fit {
        self.evaluate_ask(node, &self.ask(req), now)
    }

    /// [`Store::evaluate`] with the request resolved beforehand.
    pub fn evaluate_ask(&self, node: &str, ask: &Ask, now: Instant) -> Fit {
        let data = match self.fresh(node, now) {
            Ok(d) => d,
            Err(why) => return Fit::Unknown(why),
        };
        let want = ask.mbps;
        let (mut any_pool, mut any_cap, mut any_vf) = (false, false, false);
        let mut best: Option<f64> = None;
        let mut pool_capacity = 0u64;
        for pf in data {
            match ask.sel {
                PoolSel::Any => {}
                PoolSel::Id(id) if id == pf.pool => {}
                _ => continue,
            }
            any_pool = true;
            pool_capacity += pf.capacity;
            if pf.capacity < want || pf.capacity == 0 {
                continue;
            }
            any_cap = true;
            if pf.vfs_free == 0 {
                continue;
            }
            any_vf = true;
            if pf.headroom < want {
                continue;
            }
            let left = (pf.headroom - want) as f64 / pf.capacity as f64;
            let s = match self.settings.policy {
                Policy::BestFit => 1.0 - left,
                Policy::Spread => left,
                // Scored per node below; any fitting PF will do.
                Policy::LeastMeasuredUsage => 0.0,
            };
            best = Some(best.map_or(s, |b: f64| b.max(s)));
        }
        let Some(best) = best else {
            return Fit::No(if !any_pool {
                if ask.pool.is_some() {
                    Why::NoPool
                } else {
                    Why::NoVfs
                }
            } else if !any_cap {
                Why::TooBig
            } else if !any_vf {
                Why::NoFreeVf
            } else {
                Why::NoHeadroom
            });
        };
        let share = match self.settings.policy {
            Policy::BestFit | Policy::Spread => best,
            Policy::LeastMeasuredUsage => {
                let (tx, rx) = self.measured(node, ask.pool, now);
                if pool_capacity == 0 {
                    0.0
                } else {
                    1.0 - (tx.max(rx) / pool_capacity as f64).min(1.0)
                }
            }
        };
        Fit::Fits {
            score: (share.clamp(0.0, 1.0) * 100.0).round() as u32,
        }
    }

    /// The `/filter` outcome for a fit.
    pub fn verdict(&self, fit: Fit) -> Verdict {
        match fit {
            Fit::Fits { .. } => Verdict::Pass,
            Fit::Unknown(why) => match self.settings.unknown_nodes {
                UnknownNodes::Neutral => Verdict::Pass,
                UnknownNodes::Exclude => Verdict::Unresolvable(why),
            },
            Fit::No(why) if why.resolvable() => Verdict::Failed(why),
            Fit::No(why) => Verdict::Unresolvable(why),
        }
    }

    /// The text kube-scheduler would show for a fit (tests, tools; the verbs share [`Reasons`]).
    pub fn reason(&self, fit: Fit, req: &Request) -> Option<String> {
        match fit {
            Fit::Fits { .. } => None,
            Fit::Unknown(why) | Fit::No(why) => {
                Some(Reasons::new(&self.settings, req).text(why).to_string())
            }
        }
    }

    /// The `/prioritize` score for a fit, from 0 to `max_score`.
    pub fn score(&self, fit: Fit) -> i64 {
        let share = match fit {
            Fit::Fits { score } => score as i64,
            Fit::Unknown(_) if self.settings.unknown_nodes == UnknownNodes::Neutral => 50,
            _ => 0,
        };
        (share * self.settings.max_score + 50) / 100
    }
}
