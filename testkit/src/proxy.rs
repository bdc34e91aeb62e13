//! A small TCP proxy for fault tests: sits between a service and PostgreSQL
//! or RabbitMQ and can cut every connection (and refuse new ones) until
//! restored, like a network partition, or stall them (connections stay open,
//! bytes stop flowing), like a broker that stopped reading.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use tokio_util::sync::CancellationToken;

/// A running proxy to one upstream address; stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    /// Connections accepted and forwarded so far.
    accepted: Arc<AtomicU64>,
}

#[derive(Debug)]
struct State {
    cut: bool,
    stalled: Arc<AtomicBool>,
    /// Cancelled on cut: ends every connection of the current generation.
    generation: CancellationToken,
}

impl FaultProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            cut: false,
            stalled: Arc::new(AtomicBool::new(false)),
            generation: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        let accepted = Arc::new(AtomicU64::new(0));
        tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&state),
            stop.clone(),
            Arc::clone(&accepted),
        ));
        Ok(Self {
            addr,
            state,
            stop,
            accepted,
        })
    }

    /// How many connections it has accepted and forwarded.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The address services should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state lock");
        state.cut = true;
        state.generation.cancel();
        state.generation = CancellationToken::new();
    }

    /// Keeps connections open but stops forwarding bytes (they are held,
    /// and delivered on restore).
    pub fn stall(&self) {
        let state = self.state.lock().expect("proxy state lock");
        state.stalled.store(true, Ordering::SeqCst);
    }

    /// Lets connections and bytes through again.
    pub fn restore(&self) {
        let mut state = self.state.lock().expect("proxy state lock");
        state.cut = false;
        state.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    accepted_count: Arc<AtomicU64>,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        let (cut, generation, stalled) = {
            let state = state.lock().expect("proxy state lock");
            (
                state.cut,
                state.generation.clone(),
                Arc::clone(&state.stalled),
            )
        };
        if cut {
            drop(client);
            continue;
        }
        accepted_count.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                () = generation.cancelled() => {}
                () = forward(client_read, server_write, Arc::clone(&stalled)) => {}
                () = forward(server_read, client_write, stalled) => {}
            }
        });
    }
}

/// Copies bytes one way, holding them while the proxy is stalled.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, stalled: Arc<AtomicBool>) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
