//! The NRI connection multiplexer.
//!
//! One AF_UNIX stream carries several logical byte streams. Every frame is an
//! 8-byte header (connection id, payload length; both u32 big-endian)
//! followed by the payload. There is no handshake and there are no open or
//! close frames: the socket's end is every connection's end.
//!
//! NRI uses connection 1 for the plugin service (containerd is the ttrpc
//! client) and connection 2 for the runtime service (the plugin is the
//! client). The mux itself is symmetric, so tests use it for the peer too.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use tokio::io::{
    split, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{debug, trace, warn};

/// Connection carrying the `Plugin` service (served by the plugin).
pub const PLUGIN_CONN: u32 = 1;
/// Connection carrying the `Runtime` service (served by containerd).
pub const RUNTIME_CONN: u32 = 2;
/// Frame header size.
pub const HEADER_LEN: usize = 8;
/// Largest payload this mux sends in one frame. containerd hands each frame
/// to a single read() of a 4096-byte buffer, so anything larger kills the
/// session without a message.
pub const MAX_FRAME_PAYLOAD: usize = 4096;
/// Largest payload accepted from the peer (containerd's own writer cap).
pub const MAX_INBOUND_PAYLOAD: usize = 16 << 20;
/// Buffer of each in-memory connection pipe. Both ends are drained
/// continuously by ttrpc, so this only bounds bursts.
const PIPE_BUFFER: usize = 256 << 10;

/// How the shared socket ended.
#[derive(Debug, Clone)]
enum End {
    /// The peer closed the socket at a frame boundary.
    Eof,
    /// Reading or writing the socket failed.
    Failed(io::ErrorKind, String),
}

/// A running multiplexer. Dropping it stops all of its tasks, which closes
/// the socket and ends every connection's byte stream.
pub struct Mux {
    tasks: Vec<JoinHandle<()>>,
    end: watch::Receiver<Option<End>>,
}

impl Mux {
    /// Starts multiplexing `stream` and returns one in-memory byte stream per
    /// id in `conn_ids`, in the same order. Frames for other ids are dropped.
    ///
    /// Must be called inside a tokio runtime (it spawns the I/O tasks).
    pub fn start<S, const N: usize>(stream: S, conn_ids: [u32; N]) -> (Mux, [DuplexStream; N])
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (sock_rd, sock_wr) = split(stream);
        let sock_wr = Arc::new(Mutex::new(sock_wr));
        let (end_tx, end_rx) = watch::channel(None);
        let end_tx = Arc::new(end_tx);

        let mut sinks = HashMap::with_capacity(N);
        let mut tasks = Vec::with_capacity(N + 1);
        let user_ends = conn_ids.map(|id| {
            debug_assert!(id != 0, "connection id 0 is reserved");
            let (user_end, mux_end) = tokio::io::duplex(PIPE_BUFFER);
            let (from_user, to_user) = split(mux_end);
            sinks.insert(id, to_user);
            let sock_wr = sock_wr.clone();
            let end_tx = end_tx.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = write_frames(id, from_user, &sock_wr).await {
                    debug!(conn = id, error = %e, "mux write failed");
                    set_end(&end_tx, End::Failed(e.kind(), e.to_string()));
                }
            }));
            user_end
        });

        tasks.push(tokio::spawn(async move {
            let result = read_frames(sock_rd, &mut sinks).await;
            // Let every connection see end-of-stream, whatever ended the socket.
            for sink in sinks.values_mut() {
                let _ = sink.shutdown().await;
            }
            match result {
                Ok(()) => {
                    debug!("mux socket closed by peer");
                    set_end(&end_tx, End::Eof);
                }
                Err(e) => {
                    debug!(error = %e, "mux read failed");
                    set_end(&end_tx, End::Failed(e.kind(), e.to_string()));
                }
            }
        }));

        (Mux { tasks, end: end_rx }, user_ends)
    }

    /// Waits until the socket ends: `Ok` when the peer closed it cleanly,
    /// `Err` when reading or writing it failed.
    pub async fn closed(&self) -> io::Result<()> {
        let mut end = self.end.clone();
        let outcome = match end.wait_for(Option::is_some).await {
            Ok(state) => state.clone(),
            // Unreachable while tasks hold the sender; treat as an error.
            Err(_) => Some(End::Failed(
                io::ErrorKind::Other,
                "mux tasks vanished".into(),
            )),
        };
        match outcome {
            Some(End::Failed(kind, msg)) => Err(io::Error::new(kind, msg)),
            _ => Ok(()),
        }
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Records the first way the socket ended; later ones are consequences.
fn set_end(tx: &watch::Sender<Option<End>>, end: End) {
    tx.send_if_modified(|state| {
        if state.is_none() {
            *state = Some(end);
            true
        } else {
            false
        }
    });
}

/// Copies one connection's outgoing bytes into frames of at most
/// [`MAX_FRAME_PAYLOAD`] bytes. Returns `Ok` when the local side closes the
/// connection, `Err` when the socket write fails.
async fn write_frames<W>(
    conn: u32,
    mut from_user: ReadHalf<DuplexStream>,
    sock: &Mutex<WriteHalf<W>>,
) -> io::Result<()>
where
    W: AsyncWrite,
{
    let mut frame = vec![0u8; HEADER_LEN + MAX_FRAME_PAYLOAD];
    frame[..4].copy_from_slice(&conn.to_be_bytes());
    loop {
        // The read is bounded by the buffer, so each read is one frame.
        let n = from_user.read(&mut frame[HEADER_LEN..]).await?;
        if n == 0 {
            trace!(conn, "mux connection closed locally");
            return Ok(());
        }
        // n <= 4096, so the cast cannot truncate.
        frame[4..HEADER_LEN].copy_from_slice(&(n as u32).to_be_bytes());
        // One lock per frame keeps header and payload contiguous on the wire.
        let mut sock = sock.lock().await;
        sock.write_all(&frame[..HEADER_LEN + n]).await?;
        sock.flush().await?;
        trace!(conn, len = n, "mux frame sent");
    }
}

/// Reads frames until EOF and appends each payload to its connection's
/// stream. EOF between frames is the normal end (`Ok`).
async fn read_frames<R>(
    mut sock: ReadHalf<R>,
    sinks: &mut HashMap<u32, WriteHalf<DuplexStream>>,
) -> io::Result<()>
where
    R: AsyncRead,
{
    let mut header = [0u8; HEADER_LEN];
    let mut payload = Vec::new();
    loop {
        if !read_header(&mut sock, &mut header).await? {
            return Ok(());
        }
        let conn = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > MAX_INBOUND_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("mux frame of {len} bytes for connection {conn} exceeds the limit"),
            ));
        }
        payload.resize(len, 0);
        sock.read_exact(&mut payload).await?;
        trace!(conn, len, "mux frame received");

        let Some(sink) = sinks.get_mut(&conn) else {
            debug!(conn, len, "dropping mux frame for unknown connection");
            continue;
        };
        if let Err(e) = sink.write_all(&payload).await {
            // The local user of this connection is gone; its later frames
            // are dropped but the other connections keep working.
            warn!(conn, error = %e, "mux connection no longer read locally, dropping its frames");
            sinks.remove(&conn);
        }
    }
}

/// Fills `header`; `Ok(false)` on EOF before its first byte.
async fn read_header<R: AsyncRead>(
    sock: &mut ReadHalf<R>,
    header: &mut [u8; HEADER_LEN],
) -> io::Result<bool> {
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = sock.read(&mut header[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "socket closed inside a mux frame header",
            ));
        }
        filled += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::UnixStream;
    use tokio::time::timeout;

    const T: Duration = Duration::from_secs(5);

    async fn read_raw_frame(sock: &mut UnixStream) -> (u32, Vec<u8>) {
        let mut header = [0u8; HEADER_LEN];
        sock.read_exact(&mut header).await.expect("header");
        let conn = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        let mut payload = vec![0u8; len];
        sock.read_exact(&mut payload).await.expect("payload");
        (conn, payload)
    }

    fn raw_frame(conn: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
        f.extend_from_slice(&conn.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn large_write_is_cut_into_small_frames() {
        let (ours, mut raw) = UnixStream::pair().expect("pair");
        let (_mux, mut conns) = Mux::start(ours, [PLUGIN_CONN, RUNTIME_CONN]);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        conns[1].write_all(&data).await.expect("write");

        let mut got = Vec::new();
        while got.len() < data.len() {
            let (conn, payload) = timeout(T, read_raw_frame(&mut raw)).await.expect("frame");
            assert_eq!(conn, RUNTIME_CONN);
            assert!(!payload.is_empty() && payload.len() <= 4096);
            got.extend_from_slice(&payload);
        }
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn frames_are_reassembled_per_connection_and_unknown_ids_dropped() {
        let (ours, mut raw) = UnixStream::pair().expect("pair");
        let (mux, mut conns) = Mux::start(ours, [PLUGIN_CONN, RUNTIME_CONN]);
        let mut wire = Vec::new();
        wire.extend(raw_frame(PLUGIN_CONN, b"hel"));
        wire.extend(raw_frame(7, b"junk"));
        wire.extend(raw_frame(RUNTIME_CONN, b"other"));
        wire.extend(raw_frame(0, b"reserved"));
        wire.extend(raw_frame(PLUGIN_CONN, b"lo"));
        // Split the bytes at an awkward point to exercise partial reads.
        raw.write_all(&wire[..5]).await.expect("write");
        raw.write_all(&wire[5..]).await.expect("write");
        drop(raw);

        let mut one = Vec::new();
        timeout(T, conns[0].read_to_end(&mut one))
            .await
            .expect("eof")
            .expect("read");
        let mut two = Vec::new();
        timeout(T, conns[1].read_to_end(&mut two))
            .await
            .expect("eof")
            .expect("read");
        assert_eq!(one, b"hello");
        assert_eq!(two, b"other");
        timeout(T, mux.closed())
            .await
            .expect("closed")
            .expect("clean eof");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (ours, mut raw) = UnixStream::pair().expect("pair");
        let (mux, mut conns) = Mux::start(ours, [PLUGIN_CONN]);
        let frame = raw_frame(PLUGIN_CONN, b"abcdef");
        raw.write_all(&frame[..HEADER_LEN + 2])
            .await
            .expect("write");
        drop(raw);
        let err = timeout(T, mux.closed())
            .await
            .expect("closed")
            .expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // The connection still ends, so ttrpc on top of it stops too.
        let mut rest = Vec::new();
        timeout(T, conns[0].read_to_end(&mut rest))
            .await
            .expect("eof")
            .expect("read");
    }

    #[tokio::test]
    async fn oversized_inbound_frame_is_an_error() {
        let (ours, mut raw) = UnixStream::pair().expect("pair");
        let (mux, _conns) = Mux::start(ours, [PLUGIN_CONN]);
        let mut header = Vec::new();
        header.extend_from_slice(&PLUGIN_CONN.to_be_bytes());
        header.extend_from_slice(&((MAX_INBOUND_PAYLOAD as u32) + 1).to_be_bytes());
        raw.write_all(&header).await.expect("write");
        let err = timeout(T, mux.closed())
            .await
            .expect("closed")
            .expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn dropping_the_mux_closes_the_socket() {
        let (ours, mut raw) = UnixStream::pair().expect("pair");
        let (mux, _conns) = Mux::start(ours, [PLUGIN_CONN]);
        drop(mux);
        let mut buf = Vec::new();
        let n = timeout(T, raw.read_to_end(&mut buf))
            .await
            .expect("eof")
            .expect("read");
        assert_eq!(n, 0);
    }
}
