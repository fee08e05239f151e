//! A loopback TCP proxy that injects network faults between a client and a
//! real server: cut every open connection, refuse new ones, add latency.
//!
//! The server stays up, so these faults isolate what a client does when its
//! connections break, which a process kill cannot (a kill also loses the
//! server's in-memory state, such as a watch's progress).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

/// Chunks in flight per direction while latency is added; the reader waits
/// when the writer falls this far behind, so memory stays bounded.
const IN_FLIGHT_CHUNKS: usize = 256;

/// A proxy in front of one upstream address; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// Bumped by [`FaultProxy::cut`]: connections of older epochs close.
    epoch: watch::Sender<u64>,
    refusing: AtomicBool,
    delay: Mutex<Duration>,
    accepted: AtomicU64,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            epoch: watch::Sender::new(0),
            refusing: AtomicBool::new(false),
            delay: Mutex::new(Duration::ZERO),
            accepted: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            address,
            shared,
            accept,
        })
    }

    /// Starts a proxy in front of an `http://host:port` endpoint.
    pub async fn in_front_of(endpoint: &str) -> anyhow::Result<Self> {
        let authority = endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        Self::start(authority.parse()?).await
    }

    /// `http://127.0.0.1:<port>` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Closes every open connection, in both directions, at once.
    pub fn cut(&self) {
        self.shared.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// While set, cuts every open connection and closes new ones as soon as
    /// they are accepted (the server looks unreachable).
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
        if refusing {
            self.cut();
        }
    }

    /// Latency added to every chunk, in each direction (so a round trip
    /// gains twice this). Applies to bytes read from now on.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    /// Connections accepted so far (each reconnect of a client adds one).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        tokio::spawn(proxy_connection(client, shared.clone()));
    }
}

async fn proxy_connection(client: TcpStream, shared: Arc<Shared>) {
    let mut epoch = shared.epoch.subscribe();
    let started_in = *epoch.borrow_and_update();
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let cut = async move {
        // Ends when the epoch moves on, or when the proxy is dropped.
        let _ = epoch.wait_for(|now| *now != started_in).await;
    };
    // Dropping both directions closes both sockets.
    tokio::select! {
        () = cut => {}
        () = pipe(client_read, server_write, shared.clone()) => {}
        () = pipe(server_read, client_write, shared.clone()) => {}
    }
}

/// Copies one direction, holding each chunk until its delay has passed.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let read = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let delay = *shared.delay.lock().unwrap_or_else(|e| e.into_inner());
                    if tx
                        .send((Instant::now() + delay, buffer[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // The writer drains what was read before the reader saw EOF.
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(address)
    }

    async fn round_trip(stream: &mut TcpStream) -> anyhow::Result<Duration> {
        let started = Instant::now();
        stream.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await?;
        anyhow::ensure!(&reply == b"ping");
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn forwards_delays_cuts_and_refuses() -> anyhow::Result<()> {
        let proxy = FaultProxy::start(echo_server().await?).await?;
        let mut stream = TcpStream::connect(proxy.address).await?;
        assert!(round_trip(&mut stream).await? < Duration::from_millis(100));

        proxy.set_delay(Duration::from_millis(150));
        assert!(round_trip(&mut stream).await? >= Duration::from_millis(300));
        proxy.set_delay(Duration::ZERO);

        proxy.cut();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await?;
        assert!(matches!(read, Ok(0) | Err(_)), "cut connection still open");

        let mut fresh = TcpStream::connect(proxy.address).await?;
        round_trip(&mut fresh).await?;

        proxy.set_refusing(true);
        let mut refused = TcpStream::connect(proxy.address).await?;
        let read = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut byte)).await?;
        assert!(matches!(read, Ok(0) | Err(_)), "refused connection served");
        assert_eq!(proxy.accepted(), 3);
        Ok(())
    }
}
