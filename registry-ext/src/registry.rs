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
            StopSignal(Some(rx)),
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

/// Why a keeper task must stop: what [`StopSignal::wait`] returns. Either
/// [`Registration::deregister`] was called and waits for the outcome, or the
/// handle was dropped and nobody waits.
#[derive(Debug)]
pub struct Stop {
    waiting: Option<StopRequest>,
}

impl Stop {
    /// Whether `deregister` was called (and waits for [`reply`](Self::reply)),
    /// rather than the handle dropped.
    pub fn is_requested(&self) -> bool {
        self.waiting.is_some()
    }

    /// Reports how deregistering went to a waiting
    /// [`Registration::deregister`]; nobody waits after a drop.
    pub fn reply(self, outcome: Result<()>) {
        if let Some(waiting) = self.waiting {
            let _ = waiting.send(outcome);
        }
    }
}

/// The keeper side of a [`Registration`]: the keeper task deregisters and
/// returns once it resolves.
#[derive(Debug)]
pub struct StopSignal(Option<oneshot::Receiver<StopRequest>>);

impl StopSignal {
    /// Resolves once the handle asks to stop (or is dropped). Cancel-safe,
    /// so it can sit in a `select!` loop; once it has resolved, it never
    /// resolves again.
    pub async fn wait(&mut self) -> Stop {
        let Some(rx) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        let waiting = rx.await.ok();
        self.0 = None;
        Stop { waiting }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_stop_signal_resolves_once_then_never_again() {
        let (registration, mut signal) =
            Registration::new(Instance::new("echo", "10.0.0.7:80".parse().unwrap()));
        drop(registration);
        let stop = signal.wait().await;
        assert!(!stop.is_requested(), "a drop is not a request");
        stop.reply(Ok(()));
        // Polled again after it resolved: pending, not a panic.
        let again = tokio::time::timeout(Duration::from_millis(50), signal.wait()).await;
        assert!(again.is_err());
    }

    #[tokio::test]
    async fn deregister_gets_the_keepers_reply() {
        let (registration, mut signal) =
            Registration::new(Instance::new("echo", "10.0.0.7:80".parse().unwrap()));
        let keeper = tokio::spawn(async move {
            let stop = signal.wait().await;
            assert!(stop.is_requested());
            stop.reply(Err(crate::Error::Closed));
        });
        assert!(matches!(
            registration.deregister().await,
            Err(crate::Error::Closed)
        ));
        keeper.await.unwrap();
    }
}
