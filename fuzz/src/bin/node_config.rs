//! `conrdma_node::NodeConfig::from_toml`: the node config file and NRI Configure text.

use conrdma_node::NodeConfig;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(cfg) = NodeConfig::from_toml(text, "fuzz") {
            // Debug-format everything accepted (cheap, and walks every field).
            let _ = format!("{cfg:?}");
        }
    });
}
