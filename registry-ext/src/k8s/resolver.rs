//! Resolution from EndpointSlices with kube's runtime watcher.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tokio::sync::watch;
use tracing::warn;

use super::{slice::ready_instances, Target};
use crate::{
    backend::{
        backoff::Backoff,
        subscriptions::{publish_error, publish_instances, Subscriptions},
    },
    Instance, Resolver, Result, ServiceSnapshot, ServiceWatch,
};

/// Resolves `k8s://<service>.<namespace>:<port>` targets to the ready
/// endpoints of the Service's EndpointSlices, pushing every change.
///
/// When the watch fails (the API server unreachable or answering errors),
/// the last known instances are kept and the error is reported in
/// [`ServiceSnapshot::last_error`]. The watcher is then started again after
/// a capped backoff: its fresh list replaces the set once complete and
/// clears the error, so `last_error` does not outlive the outage even when
/// nothing changed meanwhile (kube's watcher resumes a watch silently).
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
}

struct Shared {
    client: Client,
    subscriptions: Subscriptions,
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
            shared: Arc::new(Shared {
                client,
                subscriptions: Subscriptions::default(),
            }),
        }
    }
}

impl Resolver for K8sResolver {
    async fn subscribe(&self, target: &str) -> Result<ServiceWatch> {
        let parsed = Target::parse(target)?;
        let api: Api<EndpointSlice> = match &parsed.namespace {
            Some(namespace) => Api::namespaced(self.shared.client.clone(), namespace),
            None => Api::default_namespaced(self.shared.client.clone()),
        };
        let follower = Follower {
            api,
            name: target.to_owned(),
            target: parsed,
        };
        self.shared
            .subscriptions
            .subscribe(target, |tx| follower.run(tx))
            .await
    }
}

struct Follower {
    api: Api<EndpointSlice>,
    name: String,
    target: Target,
}

impl Follower {
    async fn run(self, tx: watch::Sender<ServiceSnapshot>) {
        let selector = format!("kubernetes.io/service-name={}", self.target.service);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // Instances by slice name, kept across watcher restarts.
        let mut slices: HashMap<String, Vec<Arc<Instance>>> = HashMap::new();
        loop {
            let events = watcher(
                self.api.clone(),
                watcher::Config::default().labels(&selector),
            )
            .default_backoff()
            .boxed();
            if !self.follow(&tx, events, &mut slices, &mut backoff).await {
                return;
            }
            // The watch failed: start a fresh watcher (list, then watch)
            // after a pause. Its completed list clears the published error.
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Follows one watcher until it fails (`true`: start another) or the
    /// subscribers are gone (`false`).
    async fn follow(
        &self,
        tx: &watch::Sender<ServiceSnapshot>,
        mut events: futures::stream::BoxStream<
            'static,
            watcher::Result<watcher::Event<EndpointSlice>>,
        >,
        slices: &mut HashMap<String, Vec<Arc<Instance>>>,
        backoff: &mut Backoff,
    ) -> bool {
        // Buffers a (re-)list so the current set stays in place until the
        // new list is complete.
        let mut relisting: Option<HashMap<String, Vec<Arc<Instance>>>> = None;
        loop {
            let event = tokio::select! {
                () = tx.closed() => return false,
                event = events.next() => event,
            };
            let changed = match event {
                None => return false,
                Some(Ok(watcher::Event::Init)) => {
                    relisting = Some(HashMap::new());
                    false
                }
                Some(Ok(watcher::Event::InitApply(slice))) => {
                    let (name, instances) = self.instances_of(&slice);
                    relisting
                        .get_or_insert_with(HashMap::new)
                        .insert(name, instances);
                    false
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    *slices = relisting.take().unwrap_or_default();
                    backoff.reset();
                    true
                }
                Some(Ok(watcher::Event::Apply(slice))) => {
                    let (name, instances) = self.instances_of(&slice);
                    slices.insert(name, instances);
                    true
                }
                Some(Ok(watcher::Event::Delete(slice))) => {
                    let (name, _) = self.instances_of(&slice);
                    slices.remove(&name).is_some()
                }
                Some(Err(error)) => {
                    warn!(target = %self.name, %error, "EndpointSlice watch failed; keeping last known instances");
                    publish_error(tx, crate::Error::backend(super::BACKEND, error));
                    return true;
                }
            };
            if changed {
                // Also clears a published error.
                publish_instances(tx, slices.values().flatten().cloned().collect());
            }
        }
    }

    /// The slice's name and its ready instances at the target's port.
    fn instances_of(&self, slice: &EndpointSlice) -> (String, Vec<Arc<Instance>>) {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let instances = ready_instances(&self.name, &self.target.port, slice)
            .into_iter()
            .map(Arc::new)
            .collect();
        (name, instances)
    }
}
