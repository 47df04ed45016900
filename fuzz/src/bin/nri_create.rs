//! NRI CreateContainer in the plugin: the ttrpc request body decoded with
//! `CreateContainerRequest::parse_from_bytes` (protobuf), then `Plugin::create` (annotations,
//! admission, ledger write, spec adjustment) on a node set up once per process over a simulated
//! NIC (4 PFs x 16 VFs, like nri-plugin/benches/create_container.rs). Errors are fine; panics are
//! findings. The pod is released after every input so that each run starts from an empty ledger.

use std::sync::{Arc, OnceLock};

use conrdma_api::rate::Rate;
use conrdma_node::simulate::{build, Binding, SimOptions};
use conrdma_node::NodeConfig;
use conrdma_nri::protobuf::Message;
use conrdma_nri::CreateContainerRequest;
use conrdma_nri_plugin::{NodeState, Plugin};

struct Setup {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    node: Arc<NodeState>,
    plugin: Plugin,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let sys = conrdma_fuzz::scratch_dir("sysfs dir");
        let opts = SimOptions {
            pfs: 4,
            vfs_per_pf: 16,
            speed: Rate::parse("100G").expect("rate"),
            binding: Binding::Pci,
            mknod: false,
        };
        build(sys.path(), &opts).expect("simulated NIC");
        let state = conrdma_fuzz::scratch_dir("state dir");
        let node = Arc::new(
            NodeState::open(sys.path(), state.path(), NodeConfig::default()).expect("node"),
        );
        let plugin = Plugin::new(node.clone());
        Setup {
            _dirs: (sys, state),
            node,
            plugin,
        }
    })
}

fn main() {
    setup();
    afl::fuzz!(|data: &[u8]| {
        // Not captured: NodeState holds a `dyn RateLimiter`, which is not RefUnwindSafe.
        let s = setup();
        let Ok(req) = CreateContainerRequest::parse_from_bytes(data) else {
            return;
        };
        // Twice: the second call is the pod's next container (the lookup path).
        let _ = s.plugin.create(&req);
        let _ = s.plugin.create(&req);
        if let Some(pod) = req.pod.as_ref() {
            let _ = s.node.release(&pod.id);
        }
        assert!(
            s.node.held().is_empty(),
            "a pod is still held after its release"
        );
    });
}
