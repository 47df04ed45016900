//! Addresses of pools with a network section, as the ledger books them: which are taken, and
//! whether a pod's static address may be had.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::Ledger;
use crate::error::{NodeError, Result};
use crate::inventory::{Inventory, PoolInv};
use conrdma_api::network::{Cidr, StaticAddress};
use conrdma_api::request::{Request, KEY_ADDRESS};
use conrdma_api::ApiError;

impl Ledger {
    /// The addresses booked in `pool`.
    pub(super) fn addresses_in(&self, pool: &str) -> HashSet<Ipv4Addr> {
        self.held
            .values()
            .filter(|h| h.record.pool == pool)
            .filter_map(|h| h.record.address.as_deref())
            .filter_map(|a| Cidr::parse(a).ok())
            .map(|c| c.addr)
            .collect()
    }

    /// Narrows `pools` to those whose subnet holds the pod's static address, refusing (naming the
    /// annotation) when none does or the address is taken.
    pub(super) fn pools_for_address<'i>(
        &self,
        inv: &'i Inventory,
        pools: Vec<&'i PoolInv>,
        req: &Request,
        want: &StaticAddress,
    ) -> Result<Vec<&'i PoolInv>> {
        let refuse = |reason: String, accepted: String| {
            NodeError::Api(ApiError::InvalidAnnotation {
                key: KEY_ADDRESS.into(),
                value: want.text.clone(),
                reason,
                accepted,
            })
        };
        let fits: Vec<&PoolInv> = pools
            .into_iter()
            .filter(|p| {
                p.network
                    .as_ref()
                    .is_some_and(|n| n.subnet.contains(want.addr))
            })
            .collect();
        if fits.is_empty() {
            let nets: Vec<String> = inv
                .pools
                .iter()
                .filter(|p| req.pool.as_ref().is_none_or(|n| n == &p.name))
                .filter_map(|p| {
                    p.network
                        .as_ref()
                        .map(|n| format!("{} ({})", p.name, n.subnet))
                })
                .collect();
            return Err(refuse(
                format!(
                    "no pool{} has a network whose subnet holds {}",
                    match &req.pool {
                        Some(p) => format!(" named {p}"),
                        None => String::new(),
                    },
                    want.addr
                ),
                if nets.is_empty() {
                    "none: no pool here has a network section".into()
                } else {
                    format!("an address in the subnet of {}", nets.join(", "))
                },
            ));
        }
        for p in &fits {
            if let Some(h) = self.held.values().find(|h| {
                h.record.pool == p.name
                    && h.record
                        .address
                        .as_deref()
                        .and_then(|a| Cidr::parse(a).ok())
                        .is_some_and(|c| c.addr == want.addr)
            }) {
                return Err(refuse(
                    format!(
                        "{} is already in use by pod {}/{}",
                        want.addr, h.pod.namespace, h.pod.name
                    ),
                    "an address no other pod holds".into(),
                ));
            }
        }
        Ok(fits)
    }
}
