//! The [`Registry`] trait and the [`Registration`] handle it returns.

use std::future::Future;

use tokio::sync::oneshot;

use crate::{
    health::{Listing, RegistrationProbe, RegistryHealth},
    Instance, Result,
};

/// A backend that instances register themselves into.
///
/// Registering returns a [`Registration`]; the backend keeps it alive in the
/// background (lease keep-alive, TTL check...) and re-registers after backend
/// failures until the handle is deregistered or dropped.
///
/// ```
/// use rpc_ext_registry::{Instance, MemoryRegistry, Registry, Resolver};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = MemoryRegistry::new();
/// let registration = registry
///     .register(Instance::new("echo", "127.0.0.1:8080".parse().unwrap()))
///     .await?;
/// assert_eq!(registry.resolve("echo").await?.len(), 1);
/// registration.deregister().await?;
/// assert!(registry.resolve("echo").await?.is_empty());
/// # Ok(()) }
/// ```
pub trait Registry: Send + Sync {
    /// Registers `instance` and keeps it registered until the returned handle
    /// is deregistered or dropped.
    ///
    /// An unspecified IP (`0.0.0.0`, `::`) is replaced by the address other
    /// hosts can reach, see [`advertise_address`](crate::advertise_address).
    fn register(&self, instance: Instance) -> impl Future<Output = Result<Registration>> + Send;
}

type StopRequest = oneshot::Sender<Result<()>>;

/// A live registration. Dropping it deregisters in the background; call
/// [`deregister`](Self::deregister) during graceful shutdown to wait for it.
#[must_use = "dropping a Registration deregisters the instance"]
#[derive(Debug)]
pub struct Registration {
    instance: Instance,
    stop: Option<oneshot::Sender<StopRequest>>,
    /// The registration's health entry, listed while the handle lives: gone
    /// as soon as `deregister` returns or the handle is dropped.
    listing: Option<Listing>,
}

impl Registration {
    /// A handle for `instance` whose keeper task listens on the returned
    /// signal: what a backend's `register` returns once the instance is
    /// written (see [`kit`](crate::kit)).
    pub fn new(instance: Instance) -> (Self, StopSignal) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                instance,
                stop: Some(tx),
                listing: None,
            },
            StopSignal(rx),
        )
    }

    /// Lists this registration in `health` under `backend` for as long as
    /// the handle lives; its keeper records through the returned probe.
    /// `backend` names the backend in health entries and metrics.
    pub fn track(&mut self, backend: &'static str, health: &RegistryHealth) -> RegistrationProbe {
        let (listing, probe) = health.registration(backend, &self.instance);
        self.listing = Some(listing);
        probe
    }

    /// The instance as registered (with its advertised address).
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Removes the instance from the backend and waits until it is gone.
    pub async fn deregister(mut self) -> Result<()> {
        let (done_tx, done_rx) = oneshot::channel();
        let stop = self.stop.take().ok_or(crate::Error::Closed)?;
        stop.send(done_tx).map_err(|_| crate::Error::Closed)?;
        done_rx.await.map_err(|_| crate::Error::Closed)?
    }
}

/// Why a keeper task must stop: what [`StopSignal::wait`] returns.
#[derive(Debug)]
pub enum Stop {
    /// `deregister` was called: report the outcome on the sender.
    Requested(StopRequest),
    /// The handle was dropped: deregister with nobody waiting.
    Dropped,
}

impl Stop {
    /// Reports how deregistering went to a waiting
    /// [`Registration::deregister`]; nobody waits after a drop.
    pub fn reply(self, outcome: Result<()>) {
        if let Stop::Requested(reply) = self {
            let _ = reply.send(outcome);
        }
    }
}

/// The keeper side of a [`Registration`]: the keeper task deregisters and
/// returns once it resolves.
#[derive(Debug)]
pub struct StopSignal(oneshot::Receiver<StopRequest>);

impl StopSignal {
    /// Resolves once the handle asks to stop. Cancel-safe; call it again only
    /// if it has not resolved yet.
    pub async fn wait(&mut self) -> Stop {
        match (&mut self.0).await {
            Ok(reply) => Stop::Requested(reply),
            Err(_) => Stop::Dropped,
        }
    }
}
