//! Fuzz target: kube-scheduler extender bodies (`ExtenderArgs`, with NodeNames or full Node
//! objects) through the webhook's `/filter` and `/prioritize` logic, against a store that knows
//! two nodes. Errors are answers (400s); a panic is a finding.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use conrdma_api::report::{NodeReport, PfReport, PoolReport, REPORT_VERSION};
use conrdma_placement::extender::ExtenderArgs;
use conrdma_placement::store::{unix_ms, Settings};
use conrdma_placement::{verbs, Config, Store};

fn pf(name: &str, guaranteed_gbps: u64, vfs_free: u32) -> PfReport {
    PfReport {
        name: name.into(),
        line_rate_mbps: 100_000,
        capacity_mbps: 100_000,
        guaranteed_mbps: guaranteed_gbps * 1000,
        pods: 8 - vfs_free,
        vfs_total: 8,
        vfs_free,
    }
}

fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let mut s = Store::new(Settings::from(&Config::with_tokens_file("/nonexistent")));
        let now = SystemTime::now();
        for (node, pfs) in [
            ("worker-1", vec![pf("ens1f0", 70, 5)]),
            ("worker-2", vec![pf("ens1f0", 90, 6), pf("ens1f1", 50, 7)]),
        ] {
            let report = NodeReport {
                version: REPORT_VERSION,
                node: node.into(),
                time_unix_ms: unix_ms(now),
                pools: vec![PoolReport::from_pfs("default", pfs)],
            };
            s.put_node(report, Instant::now(), unix_ms(now));
        }
        s
    })
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let store = store();
        if let Ok(args) = serde_json::from_slice::<ExtenderArgs>(data) {
            if let Ok(out) = verbs::filter(store, args, Instant::now()) {
                let _ = out.to_json();
            }
        }
        if let Ok(args) = serde_json::from_slice::<ExtenderArgs>(data) {
            if let Ok(list) = verbs::prioritize(store, args, Instant::now()) {
                let _ = conrdma_placement::extender::host_priorities_json(&list);
            }
        }
    });
}
