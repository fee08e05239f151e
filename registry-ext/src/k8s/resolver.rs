//! Resolution from EndpointSlices with kube's runtime watcher.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    api_error, denied,
    lease_watch::LeaseWatch,
    view::{SliceMap, SliceView, Slices},
    PortSpec, Target, DEFAULT_LEASE_DURATION, LEASES, SERVICES, SLICES,
};
use crate::{
    health::RegistryHealth,
    kit::{Backoff, Cause, Publisher, Subscriptions},
    Error, Resolver, Result, ServiceWatch,
};

/// How often a numeric target's Service is read again while the watch
/// runs, so that a change of its port names or numbers is followed.
const SERVICE_RECHECK: Duration = Duration::from_secs(60);

/// Resolves `k8s://<service>.<namespace>:<port>` targets to the endpoints
/// of the Service's EndpointSlices that kube-proxy would use (ready ones,
/// else serving terminating ones; see the [module documentation](super)),
/// pushing every change. A numeric port names a Service port and is mapped
/// to the slices' port through the Service object.
///
/// Endpoints of slices written by [`K8sRegistry`](super::K8sRegistry) are
/// used only while their registration's Lease is live (see the [module
/// documentation](super#liveness)): the resolver then also watches the
/// Service's registration Leases (needs `list` and `watch` on
/// `leases.coordination.k8s.io`), and drops an endpoint when its Lease goes
/// unrenewed for its duration, without waiting for any event.
///
/// When the watch fails (the API server unreachable or answering errors),
/// the last known instances are kept and the error is reported in
/// [`ServiceSnapshot::last_error`](crate::ServiceSnapshot::last_error). The
/// watcher is then started again after a capped backoff: its fresh list
/// replaces the set once complete and clears the error, so `last_error`
/// does not outlive the outage even when nothing changed meanwhile (kube's
/// watcher resumes a watch silently).
///
/// Each followed target is an entry of the resolver's
/// [`health`](Self::health): the instances shown, watch restarts, errors,
/// and whether the last known set is served while the API server fails.
///
/// ```no_run
/// use rpc_ext_registry::{k8s::K8sResolver, volo::VoloDiscover};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let resolver = K8sResolver::try_default().await?;
/// // Volo: the client's service name is the target.
/// let discover = VoloDiscover::new(resolver);
/// // EchoClientBuilder::new("k8s://echo.default:grpc").discover(discover).build();
/// # let _ = discover; Ok(()) }
/// ```
#[derive(Clone)]
pub struct K8sResolver {
    shared: Arc<Shared>,
    missing_lease_grace: Duration,
}

struct Shared {
    client: Client,
    subscriptions: Subscriptions,
    health: RegistryHealth,
}

impl Shared {
    fn new(client: Client, health: RegistryHealth) -> Arc<Self> {
        Arc::new(Self {
            client,
            subscriptions: Subscriptions::new(super::BACKEND, health.clone()),
            health,
        })
    }
}

impl std::fmt::Debug for K8sResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sResolver").finish_non_exhaustive()
    }
}

impl K8sResolver {
    /// A resolver using the usual configuration: in-cluster service account,
    /// else `KUBECONFIG` or `~/.kube/config`.
    pub async fn try_default() -> Result<Self> {
        let client = Client::try_default().await.map_err(super::kube_error)?;
        Ok(Self::new(client))
    }

    /// A resolver using `client` (build it from an explicit `kube::Config`
    /// with `kube::Client::try_from`).
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self {
            shared: Shared::new(client, RegistryHealth::new()),
            missing_lease_grace: DEFAULT_LEASE_DURATION,
        }
    }

    /// Reports the health of the subscriptions into `health` (default: a
    /// handle of this resolver's own), so that several registries and
    /// resolvers can be read at once. Set it before subscribing: the
    /// resolver it returns follows targets on its own, and its clones made
    /// before keep the previous handle.
    ///
    /// ```no_run
    /// use rpc_ext_registry::{health::RegistryHealth, k8s::{K8sRegistry, K8sResolver}};
    ///
    /// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
    /// let health = RegistryHealth::new();
    /// let resolver = K8sResolver::try_default().await?.with_health(health.clone());
    /// let registry = K8sRegistry::try_default().await?.with_health(health.clone());
    /// // `health.snapshot()` reads the entries of both.
    /// # let _ = (resolver, registry); Ok(()) }
    /// ```
    #[must_use]
    pub fn with_health(self, health: RegistryHealth) -> Self {
        Self {
            shared: Shared::new(self.shared.client.clone(), health),
            ..self
        }
    }

    /// The health of this resolver's subscriptions (shared by its clones):
    /// per followed target, the instances shown, the age of the last list
    /// or event the API server sent, watch restarts, errors, and whether
    /// the last known set is served while the API server fails. See
    /// [`health`](crate::health).
    ///
    /// ```
    /// use rpc_ext_registry::k8s::K8sResolver;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let config = kube::Config::new("http://127.0.0.1:6443".parse().unwrap());
    /// let resolver = K8sResolver::new(kube::Client::try_from(config).unwrap());
    /// // Nothing followed yet.
    /// assert!(resolver.health().snapshot().subscriptions.is_empty());
    /// # }
    /// ```
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.shared.health.clone()
    }

    /// How long the endpoint of a slice that names a Lease which does not
    /// exist is still used, from the moment the resolver first finds it
    /// missing (default 30 s, the registry's default lease duration). A
    /// registration writes its slice just before its Lease, and creates the
    /// Lease again if someone deletes it, so a short absence is normal.
    /// Applies to the targets subscribed after it is set.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rpc_ext_registry::k8s::K8sResolver;
    ///
    /// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
    /// let resolver = K8sResolver::try_default()
    ///     .await?
    ///     .missing_lease_grace(Duration::from_secs(10));
    /// # let _ = resolver; Ok(()) }
    /// ```
    #[must_use]
    pub fn missing_lease_grace(mut self, grace: Duration) -> Self {
        self.missing_lease_grace = grace;
        self
    }
}

impl Resolver for K8sResolver {
    async fn subscribe(&self, target: &str) -> Result<ServiceWatch> {
        let parsed = Target::parse(target)?;
        let client = &self.shared.client;
        let namespace = parsed
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let follower = Follower {
            slices: Api::namespaced(client.clone(), &namespace),
            services: Api::namespaced(client.clone(), &namespace),
            namespace,
            name: target.into(),
            target: parsed,
        };
        let grace = self.missing_lease_grace;
        self.shared
            .subscriptions
            .subscribe(target, |tx: Publisher| follower.run(tx, grace))
            .await
    }
}

/// Why one watcher ended.
enum Ended {
    /// Every subscriber is gone.
    Unsubscribed,
    /// The watch failed: start another after a pause.
    Failed,
    /// The Service's port mapping changed: start another at once.
    PortChanged,
}

struct Follower {
    slices: Api<EndpointSlice>,
    services: Api<Service>,
    namespace: String,
    /// The target followed: the service name every instance shares.
    name: Arc<str>,
    target: Target,
}

impl Follower {
    async fn run(self, tx: Publisher, missing_lease_grace: Duration) {
        let selector = format!("kubernetes.io/service-name={}", self.target.service);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // Kept across watcher restarts.
        let mut slices = Slices::new().missing_lease_grace(missing_lease_grace);
        loop {
            let port_name = tokio::select! {
                () = tx.closed() => return,
                port_name = self.slice_port() => port_name,
            };
            let ended = match port_name {
                Ok(port_name) => {
                    let events = watcher(
                        self.slices.clone(),
                        watcher::Config::default().labels(&selector),
                    )
                    .default_backoff()
                    .boxed();
                    self.follow(&tx, events, &port_name, &mut slices, &mut backoff)
                        .await
                }
                Err(error) => {
                    warn!(target = %self.name, %error, "cannot map the target's port; keeping last known instances");
                    tx.publish_error(error);
                    Ended::Failed
                }
            };
            match ended {
                Ended::Unsubscribed => return,
                Ended::PortChanged => tx.watch_restarted(),
                // Start a fresh watcher (list, then watch) after a pause.
                // Its completed list clears the published error.
                Ended::Failed => {
                    tx.watch_restarted();
                    if !tx.pause(backoff.next_delay()).await {
                        return;
                    }
                }
            }
        }
    }

    /// The name of the slice port the target means: its port name, or the
    /// name of the Service port with its number.
    async fn slice_port(&self) -> Result<String> {
        let number = match &self.target.port {
            PortSpec::Name(name) => return Ok(name.clone()),
            PortSpec::Number(number) => *number,
        };
        let service = self
            .services
            .get_opt(&self.target.service)
            .await
            .map_err(|error| api_error(error, "get", SERVICES, &self.namespace))?
            .ok_or_else(|| {
                Error::backend(
                    super::BACKEND,
                    format!(
                        "Service {}/{} not found: a numeric port in {} names a port of the \
                         Service, which must exist",
                        self.namespace, self.target.service, self.name
                    ),
                )
            })?;
        let ports = service
            .spec
            .as_ref()
            .and_then(|spec| spec.ports.as_deref())
            .unwrap_or_default();
        // A number may be a port twice (53/UDP and 53/TCP): RPC is TCP.
        ports
            .iter()
            .filter(|port| port.port == i32::from(number))
            .min_by_key(|port| port.protocol.as_deref().is_some_and(|p| p != "TCP"))
            .map(|port| port.name.clone().unwrap_or_default())
            .ok_or_else(|| {
                let known: Vec<String> = ports
                    .iter()
                    .map(|p| format!("{}={}", p.name.as_deref().unwrap_or("(unnamed)"), p.port))
                    .collect();
                Error::Config(format!(
                    "{}: Service {}/{} has no port {number} (its ports: {}); a numeric target \
                     names a Service port, not a target port",
                    self.name,
                    self.namespace,
                    self.target.service,
                    known.join(", ")
                ))
            })
    }

    /// Follows one watcher until it fails, the subscribers are gone, or the
    /// Service's mapping of a numeric target changes; and, once a slice
    /// names a Lease, the Service's Leases, publishing again whenever one
    /// expires.
    async fn follow(
        &self,
        tx: &Publisher,
        mut events: futures::stream::BoxStream<
            'static,
            watcher::Result<watcher::Event<EndpointSlice>>,
        >,
        port_name: &str,
        slices: &mut Slices,
        backoff: &mut Backoff,
    ) -> Ended {
        // Buffers a (re-)list so the current set stays in place until the
        // new list is complete.
        let mut relisting: Option<SliceMap> = None;
        // Whether this watcher has begun a list: another is a re-list the
        // watcher made by itself, a restart as much as a new watcher.
        let mut listing_began = false;
        let mut leases = LeaseWatch::new(
            Api::namespaced(self.slices.clone().into_client(), &self.namespace),
            &self.target.service,
        );
        if slices.name_leases() {
            leases.start();
        }
        let numeric = matches!(self.target.port, PortSpec::Number(_));
        let mut recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + SERVICE_RECHECK,
            SERVICE_RECHECK,
        );
        loop {
            let expiry = slices.liveness.next_expiry(Instant::now());
            let event = tokio::select! {
                () = tx.closed() => return Ended::Unsubscribed,
                _ = recheck.tick(), if numeric => {
                    if self.port_changed(port_name).await {
                        return Ended::PortChanged;
                    }
                    continue;
                }
                // A Lease expires: publish without its endpoints, now (the
                // resolver's clock, not news from the API server).
                () = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    slices.publish(tx, leases.error(), Cause::Local);
                    continue;
                }
                event = leases.next() => {
                    let failed = event.is_err();
                    if self.lease_event(event, slices, &mut leases) {
                        let cause = if failed { Cause::Local } else { Cause::Backend };
                        slices.publish(tx, leases.error(), cause);
                    }
                    if failed {
                        // The Lease watch starts over after a pause.
                        tx.watch_restarted();
                    }
                    continue;
                }
                event = events.next() => event,
            };
            let changed = match event {
                None => return Ended::Unsubscribed,
                Some(Ok(watcher::Event::Init)) => {
                    if std::mem::replace(&mut listing_began, true) {
                        tx.watch_restarted();
                    }
                    relisting = Some(SliceMap::new());
                    false
                }
                Some(Ok(watcher::Event::InitApply(slice))) => {
                    let (name, view) = self.candidates_of(port_name, &slice);
                    relisting
                        .get_or_insert_with(SliceMap::new)
                        .insert(name, view);
                    false
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    slices.replace_all(relisting.take().unwrap_or_default());
                    backoff.reset();
                    true
                }
                Some(Ok(watcher::Event::Apply(slice))) => {
                    let (name, view) = self.candidates_of(port_name, &slice);
                    slices.insert(name, view);
                    true
                }
                Some(Ok(watcher::Event::Delete(slice))) => {
                    let name = slice.metadata.name.unwrap_or_default();
                    slices.remove(&name)
                }
                Some(Err(error)) => {
                    let error = self.watch_error(error, SLICES);
                    warn!(target = %self.name, %error, "EndpointSlice watch failed; keeping last known instances");
                    // The API server is likely out of reach for the Lease
                    // watch too: renewals made meanwhile cannot be seen.
                    slices.liveness.pause(Instant::now());
                    tx.publish_error(error);
                    return Ended::Failed;
                }
            };
            if changed {
                if slices.name_leases() {
                    leases.start();
                }
                // Also clears a published error (but a failing Lease
                // watch's).
                slices.publish(tx, leases.error(), Cause::Backend);
            }
        }
    }

    /// Whether the Service now maps the target's number to another port
    /// name (or to none). A failed read changes nothing: the watch goes on
    /// with the mapping it has.
    async fn port_changed(&self, port_name: &str) -> bool {
        match self.slice_port().await {
            Ok(now) => now != port_name,
            Err(Error::Config(why)) => {
                warn!(target = %self.name, %why, "the Service no longer has the target's port");
                true
            }
            Err(error) => {
                debug!(target = %self.name, %error, "Service re-read failed; keeping its port mapping");
                false
            }
        }
    }

    /// Applies an event of the Lease watch to the liveness of `slices`;
    /// whether to publish again.
    fn lease_event(
        &self,
        event: watcher::Result<watcher::Event<Lease>>,
        slices: &mut Slices,
        leases: &mut LeaseWatch,
    ) -> bool {
        let now = Instant::now();
        let liveness = &mut slices.liveness;
        match event {
            Ok(watcher::Event::Init) => {
                liveness.start_list();
                false
            }
            // The list's end publishes whatever it changed.
            Ok(watcher::Event::InitApply(lease)) => {
                liveness.observe(&lease, now);
                false
            }
            Ok(watcher::Event::InitDone) => {
                liveness.finish_list(now);
                leases.listed();
                true
            }
            // Only a change of liveness is published: a renewal of a live
            // Lease neither recomputes the set nor counts as an update of
            // it (`last_update_age` grows while the set stays quiet).
            Ok(watcher::Event::Apply(lease)) => liveness.observe(&lease, now),
            Ok(watcher::Event::Delete(lease)) => {
                liveness.forget(lease.metadata.name.as_deref().unwrap_or_default(), now);
                true
            }
            Err(error) => {
                let error = self.watch_error(error, LEASES);
                warn!(target = %self.name, %error, "Lease watch failed; no endpoint expires until it is back");
                liveness.pause(now);
                leases.failed(error);
                true
            }
        }
    }

    /// A watcher failure on `resource`, with a 403 named as the permission
    /// it lacks.
    fn watch_error(&self, error: watcher::Error, resource: &'static str) -> Error {
        match error {
            watcher::Error::InitialListFailed(error) => {
                api_error(error, "list", resource, &self.namespace)
            }
            watcher::Error::WatchStartFailed(error) | watcher::Error::WatchFailed(error) => {
                api_error(error, "watch", resource, &self.namespace)
            }
            watcher::Error::WatchError(status) if status.code == 403 => {
                denied(&status.message, "watch", resource, &self.namespace)
            }
            other => Error::backend(super::BACKEND, other),
        }
    }

    /// The slice's name and what it holds for the target's slice port.
    fn candidates_of(&self, port_name: &str, slice: &EndpointSlice) -> (String, SliceView) {
        let name = slice.metadata.name.clone().unwrap_or_default();
        (name, SliceView::of(&self.name, port_name, slice))
    }
}

#[cfg(test)]
mod relist_tests;
