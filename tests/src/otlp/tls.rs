//! TLS for both transports of a receiver: certificates generated at start
//! (a CA, a server certificate for `127.0.0.1` and `localhost`, a client
//! certificate), their PEM files for clients, and a listener that hands
//! finished handshakes to the servers and counts the failed ones.

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tokio_rustls::{
    rustls::{
        crypto::aws_lc_rs,
        pki_types::{CertificateDer, PrivatePkcs8KeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    server::TlsStream,
    TlsAcceptor,
};
use tokio_stream::{Stream, StreamExt as _};

/// A client that connects and never finishes its handshake counts as
/// rejected after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files a client needs, in a directory that lives as long as the
/// receiver.
pub(super) struct TlsFiles {
    _dir: TempDir,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// The client certificate's private key (PKCS#8).
    pub client_key: PathBuf,
}

/// The server side of a receiver's TLS: one rustls configuration for both
/// transports, and the count of failed handshakes on either.
pub(super) struct ServerTls {
    pub files: TlsFiles,
    config: ServerConfig,
    rejections: Arc<AtomicU64>,
}

impl ServerTls {
    /// Generates the certificates and writes the client's PEM files.
    /// With `require_client_cert`, handshakes without a client certificate
    /// signed by the CA fail.
    pub fn generate(require_client_cert: bool) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "otlp receiver test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca)?;
            anyhow::Ok((cert, key))
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "otlp receiver",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            Vec::new(),
            "otlp exporter",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let dir = tempfile::Builder::new().prefix("otlp-tls-").tempdir()?;
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            anyhow::Ok(path)
        };
        let files = TlsFiles {
            ca: write("ca.pem", ca_cert.pem())?,
            client_cert: write("client.pem", client_cert.pem())?,
            client_key: write("client-key.pem", client_key.serialize_pem())?,
            _dir: dir,
        };

        // An explicit provider: rustls panics when it has to pick one and
        // more than one is compiled in.
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(ca_cert.der().clone())?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let server_key = PrivatePkcs8KeyDer::from(server_key.serialize_der());
        let config = builder.with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            server_key.into(),
        )?;
        Ok(Self {
            files,
            config,
            rejections: Arc::default(),
        })
    }

    /// Runs TLS handshakes on connections to `listener`, offering `alpn`
    /// (`h2` for gRPC, `http/1.1` for OTLP/HTTP), until `stop` turns true.
    pub fn listen(
        &self,
        listener: TcpListener,
        alpn: &[u8],
        stop: watch::Receiver<bool>,
    ) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let mut config = self.config.clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (handshaken, receiver) = mpsc::channel(16);
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            self.rejections.clone(),
            handshaken,
            stop,
        ));
        Ok(TlsListener {
            handshaken: receiver,
            local_addr,
        })
    }

    /// Handshakes that failed or timed out, on either transport.
    pub fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }
}

type Handshaken = (TlsStream<TcpStream>, SocketAddr);

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    rejections: Arc<AtomicU64>,
    handshaken: mpsc::Sender<Handshaken>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: try again shortly.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, rejections, handshaken) =
            (acceptor.clone(), rejections.clone(), handshaken.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = handshaken.send((tls, peer)).await;
                }
                Ok(Err(_)) | Err(_) => {
                    rejections.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Connections whose TLS handshake succeeded, for axum (as a
/// [`axum::serve::Listener`]) or tonic (through [`TlsListener::into_stream`]).
pub(super) struct TlsListener {
    handshaken: mpsc::Receiver<Handshaken>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// The connections as the stream tonic serves.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send {
        tokio_stream::wrappers::ReceiverStream::new(self.handshaken).map(|(tls, _)| Ok(tls))
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accept loop stopped: so does the server, by its shutdown
            // signal; never hand it another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
