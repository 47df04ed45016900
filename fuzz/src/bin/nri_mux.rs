//! The NRI mux frame parser and reassembly (`conrdma_nri::mux::Mux`).
//!
//! The fuzz bytes are what the runtime sends on the shared socket. The mux runs over an in-memory
//! duplex stream whose peer end writes the bytes and then closes; both logical connections are
//! read to their end. Besides "no panic, no hang", the bytes each connection receives and how the
//! socket ended are checked against a reference parse of the same input.

use std::sync::OnceLock;
use std::time::Duration;

use conrdma_nri::mux::{Mux, HEADER_LEN, MAX_INBOUND_PAYLOAD, PLUGIN_CONN, RUNTIME_CONN};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime")
    })
}

/// What the mux should deliver: each connection's payloads up to the first bad frame, and
/// whether the input was a whole number of acceptable frames.
fn reference(mut data: &[u8]) -> (Vec<u8>, Vec<u8>, bool) {
    let (mut plugin, mut runtime) = (Vec::new(), Vec::new());
    loop {
        if data.is_empty() {
            return (plugin, runtime, true);
        }
        if data.len() < HEADER_LEN {
            return (plugin, runtime, false);
        }
        let conn = u32::from_be_bytes(data[..4].try_into().unwrap());
        let len = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
        if len > MAX_INBOUND_PAYLOAD || data.len() - HEADER_LEN < len {
            return (plugin, runtime, false);
        }
        let payload = &data[HEADER_LEN..HEADER_LEN + len];
        match conn {
            PLUGIN_CONN => plugin.extend_from_slice(payload),
            RUNTIME_CONN => runtime.extend_from_slice(payload),
            _ => {}
        }
        data = &data[HEADER_LEN + len..];
    }
}

async fn drain(mut conn: DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    // A read error ends the stream like EOF does; the comparison below catches lost bytes.
    let _ = conn.read_to_end(&mut out).await;
    out
}

async fn run(data: &[u8]) -> (Vec<u8>, Vec<u8>, bool) {
    let (mut peer, ours) = tokio::io::duplex(64 << 10);
    let (mux, [plugin, runtime]) = Mux::start(ours, [PLUGIN_CONN, RUNTIME_CONN]);
    let send = async {
        // The mux may fail (and drop its end) before taking every byte: not an error here.
        let _ = peer.write_all(data).await;
        let _ = peer.shutdown().await;
    };
    let ((), plugin, runtime) = tokio::join!(send, drain(plugin), drain(runtime));
    let clean = mux.closed().await.is_ok();
    (plugin, runtime, clean)
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let got = runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(2), run(data))
                .await
                .expect("the mux did not end after its socket closed")
        });
        let want = reference(data);
        assert_eq!(got.0, want.0, "plugin connection bytes differ");
        assert_eq!(got.1, want.1, "runtime connection bytes differ");
        assert_eq!(got.2, want.2, "socket end (clean or failed) differs");
    });
}
