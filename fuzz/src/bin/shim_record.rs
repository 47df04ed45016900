//! `conrdma_shim::pod::RateState::load`: the shim's per-pod record in the bundle, written by one
//! shim process and read by the next (and by `delete`). A corrupt record must be refused with an
//! error, never a panic; an accepted one must survive save + load unchanged.

use std::sync::OnceLock;

use conrdma_shim::pod::RateState;

fn bundle() -> &'static tempfile::TempDir {
    static B: OnceLock<tempfile::TempDir> = OnceLock::new();
    B.get_or_init(|| conrdma_fuzz::scratch_dir("bundle dir"))
}

fn main() {
    let dir = bundle().path();
    afl::fuzz!(|data: &[u8]| {
        std::fs::write(RateState::path(dir), data).expect("writing the record");
        let Ok(Some(state)) = RateState::load(dir) else {
            return;
        };
        state.save(dir).expect("saving an accepted record");
        let back = RateState::load(dir)
            .expect("loading a record the shim saved")
            .expect("the saved record is there");
        assert_eq!(back, state, "the record changed across save + load");
        RateState::update(dir, |s| s.reset = true).expect("updating an accepted record");
    });
}
