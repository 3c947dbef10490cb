//! A TCP proxy on 127.0.0.1 between a PostgreSQL client and server that,
//! when armed, cuts the connection of the next `COMMIT` it sees — after
//! handing the `COMMIT` to the server, without its reply (the server
//! commits, the client never learns it), or before it (the server aborts)
//! — and can then stay down (every connection cut, new ones refused: the
//! database unreachable) until [`CommitCut::restore`]; or swallow the
//! `COMMIT` ([`Cut::SwallowCommit`]: the client's side closed, the
//! server's kept open and silent — a half-open connection as the server
//! sees it, its transaction waiting for a `COMMIT` that never comes); or
//! freeze at it ([`Cut::Freeze`]: both sides kept open and silent — the
//! client's host gone without a word, as both ends see it).
//!
//! It follows the client's side of the protocol (the startup message, then
//! messages of a type byte and a length) to find a simple `Query` of
//! exactly `COMMIT`, which is how `tokio-postgres` commits a transaction.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Where the armed proxy cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// After the server has the `COMMIT`; its reply is never forwarded.
    AfterCommit = 1,
    /// Before the server has the `COMMIT`.
    BeforeCommit = 2,
    /// As [`Cut::AfterCommit`], and then down: every other connection cut
    /// and new ones refused (before the client learns of the cut).
    AfterCommitThenDown = 3,
    /// The `COMMIT` (and all after it) never forwarded; the connection to
    /// the server held open until the server closes it or the proxy is
    /// dropped, the client's closed.
    SwallowCommit = 4,
    /// As [`Cut::SwallowCommit`], but the client's side is kept open too
    /// (what it sends is read and dropped, nothing is answered), even once
    /// the client closes it: the client waits for its `COMMIT`'s reply
    /// and the server for the `COMMIT`, neither told anything.
    Freeze = 5,
}

#[derive(Default)]
struct Shared {
    /// 0: not armed; else a [`Cut`].
    armed: AtomicU8,
    /// Connections cut.
    cuts: AtomicU64,
    /// Down: connections refused.
    down: AtomicBool,
    /// The relays, to cut them all when going down.
    relays: Mutex<Vec<AbortHandle>>,
    /// Connections to the server held open after [`Cut::SwallowCommit`]
    /// or [`Cut::Freeze`],
    /// each with whether the server has closed it.
    held: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Shared {
    /// Down: refuses new connections and cuts every relay.
    fn go_down(&self) {
        self.down.store(true, SeqCst);
        for r in self.relays.lock().unwrap().drain(..) {
            r.abort();
        }
    }
}

/// The proxy; stops accepting when dropped.
pub(crate) struct CommitCut {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl CommitCut {
    /// A proxy on 127.0.0.1 (free port) to the server on 127.0.0.1:`upstream`.
    pub(crate) async fn start(upstream: u16) -> CommitCut {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if shared.down.load(SeqCst) {
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue;
                    };
                    let relay = tokio::spawn(relay(client, server, shared.clone()));
                    shared.relays.lock().unwrap().push(relay.abort_handle());
                }
            }
        });
        CommitCut { port, shared, task }
    }

    /// The port clients connect to.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Cuts the connection of the next `COMMIT` (one, on any connection).
    pub(crate) fn arm(&self, cut: Cut) {
        self.shared.armed.store(cut as u8, SeqCst);
    }

    /// Up again after [`Cut::AfterCommitThenDown`]: connections accepted.
    pub(crate) fn restore(&self) {
        self.shared.down.store(false, SeqCst);
    }

    /// Connections cut so far.
    pub(crate) fn cuts(&self) -> u64 {
        self.shared.cuts.load(SeqCst)
    }

    /// Connections held open after [`Cut::SwallowCommit`] or
    /// [`Cut::Freeze`] that the server has closed since.
    pub(crate) fn held_closed_by_server(&self) -> usize {
        let held = self.shared.held.lock().unwrap();
        held.iter().filter(|c| c.load(SeqCst)).count()
    }
}

impl Drop for CommitCut {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `SSLRequest` code (a client asking for TLS before its startup).
const SSL_REQUEST: u32 = 80_877_103;

/// Forwards both ways until either side closes, or the armed cut.
async fn relay(mut client: TcpStream, mut server: TcpStream, shared: Arc<Shared>) {
    let (mut cbuf, mut sbuf) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    // Client bytes not yet forwarded (an incomplete message at the end).
    let mut pending: Vec<u8> = Vec::new();
    let mut started = false;
    loop {
        tokio::select! {
            n = client.read(&mut cbuf) => {
                let Ok(n @ 1..) = n else { return };
                pending.extend_from_slice(&cbuf[..n]);
                let mut at = 0;
                loop {
                    let rest = &pending[at..];
                    let (len, body) = if started {
                        if rest.len() < 5 { break; }
                        (1 + u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize, 5)
                    } else {
                        if rest.len() < 8 { break; }
                        (u32::from_be_bytes(rest[0..4].try_into().unwrap()) as usize, 8)
                    };
                    if rest.len() < len { break; }
                    if !started {
                        let code = u32::from_be_bytes(rest[4..8].try_into().unwrap());
                        started = code != SSL_REQUEST;
                    } else if rest[0] == b'Q' && &rest[body..len] == b"COMMIT\0" {
                        let armed = shared.armed.swap(0, SeqCst);
                        if armed != 0 {
                            shared.cuts.fetch_add(1, SeqCst);
                            if armed == Cut::SwallowCommit as u8 {
                                drop(client);
                                hold(server, &pending[..at], &shared).await;
                                return;
                            }
                            if armed == Cut::Freeze as u8 {
                                tokio::join!(hold(server, &pending[..at], &shared), mute(client));
                                return;
                            }
                            let end = if armed == Cut::BeforeCommit as u8 { at } else { at + len };
                            cut(server, &pending[..end]).await;
                            if armed == Cut::AfterCommitThenDown as u8 {
                                shared.go_down();
                            }
                            drop(client);
                            return;
                        }
                    }
                    at += len;
                }
                if server.write_all(&pending[..at]).await.is_err() { return; }
                pending.drain(..at);
            }
            n = server.read(&mut sbuf) => {
                let Ok(n @ 1..) = n else { return };
                if client.write_all(&sbuf[..n]).await.is_err() { return; }
            }
        }
    }
}

/// Hands `last` to the server and closes the connection to it; its reply
/// is read and dropped until it has closed (a clean close: closing with
/// its reply unread would reset the connection, and could discard the
/// `COMMIT` before the server reads it). Once this returns the server has
/// ended the transaction, and the caller closes the client's side.
async fn cut(mut server: TcpStream, last: &[u8]) {
    if server.write_all(last).await.is_err() {
        return;
    }
    let _ = server.shutdown().await;
    let mut sink = vec![0u8; 1 << 12];
    while let Ok(1..) = server.read(&mut sink).await {}
}

/// Reads and drops what the client sends, answering nothing, until it
/// closes; then keeps nothing else open (the server's side is [`hold`]'s).
async fn mute(mut client: TcpStream) {
    let mut sink = vec![0u8; 1 << 12];
    while let Ok(1..) = client.read(&mut sink).await {}
}

/// Hands `before` (what came ahead of the swallowed `COMMIT`) to the
/// server, then keeps the connection open without a byte more, reading
/// (and dropping) what the server sends until it closes it; records when
/// it has. The caller has closed the client's side.
async fn hold(mut server: TcpStream, before: &[u8], shared: &Shared) {
    let closed = Arc::new(AtomicBool::new(false));
    shared.held.lock().unwrap().push(closed.clone());
    if server.write_all(before).await.is_ok() {
        let mut sink = vec![0u8; 1 << 12];
        while let Ok(1..) = server.read(&mut sink).await {}
    }
    closed.store(true, SeqCst);
}
