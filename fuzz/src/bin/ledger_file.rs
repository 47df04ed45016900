//! `conrdma_node::Ledger::open` over the fuzz bytes as `ledger.json`, then what the plugin does
//! with a ledger it loaded: pool usage, admitting a pod, releasing it. A corrupt file must be
//! refused with an error, never a panic.
//!
//! One state dir per process (the file is rewritten before every open); a simulated NIC (2 PFs x
//! 8 VFs) provides the inventory.

use std::path::PathBuf;
use std::sync::OnceLock;

use conrdma_node::ledger::PodRef;
use conrdma_node::simulate::{build, SimOptions};
use conrdma_api::{Rate, Request};
use conrdma_node::{discover, Inventory, Ledger, NodeConfig};

struct Setup {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    state: PathBuf,
    inv: Inventory,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let sys = conrdma_fuzz::scratch_dir("sysfs dir");
        build(sys.path(), &SimOptions::default()).expect("simulated NIC");
        let node = discover(sys.path()).expect("discovering the simulated NIC");
        let inv = Inventory::build(&node, &NodeConfig::default());
        let state = conrdma_fuzz::scratch_dir("state dir");
        Setup {
            state: state.path().to_path_buf(),
            _dirs: (sys, state),
            inv,
        }
    })
}

fn main() {
    let s = setup();
    let pod = PodRef {
        id: "fuzz-sandbox".into(),
        uid: "fuzz-uid".into(),
        namespace: "fuzz".into(),
        name: "fuzz-pod".into(),
    };
    let req = Request {
        guarantee: Some(Rate::parse("1Gbps").expect("rate")),
        ..Request::default()
    };
    afl::fuzz!(|data: &[u8]| {
        std::fs::write(s.state.join("ledger.json"), data).expect("writing ledger.json");
        let Ok(mut ledger) = Ledger::open(&s.state) else {
            return;
        };
        let held: Vec<_> = ledger.held().cloned().collect();
        let _ = ledger.usage(&s.inv);
        let _ = ledger.mark();
        if let Ok((_, fresh)) = ledger.admit(&s.inv, &pod, &req, |_| {}) {
            let _ = ledger.usage(&s.inv);
            if fresh {
                ledger
                    .release(&pod.id)
                    .expect("releasing the pod just admitted");
            }
        }
        drop(ledger);
        // Whatever was loaded (and possibly written back by admit/release) reads back the same.
        let again = Ledger::open(&s.state).expect("reopening a ledger this process accepted");
        let again: Vec<_> = again.held().cloned().collect();
        assert_eq!(
            again, held,
            "the ledger changed across admit + release + reopen"
        );
    });
}
