//! Registration as an EndpointSlice owned by the instance.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use k8s_openapi::{
    api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    Api, Client,
};
use tracing::{info, warn};

use super::{kube_error, MANAGED_BY};
use crate::{
    advertise_address, backend::backoff::Backoff, registry::StopSignal, Instance, Registration,
    Registry, Result,
};

/// How often a registration checks that its slice still exists, by default.
const RECHECK: Duration = Duration::from_secs(30);

/// Registers instances that no endpoints controller manages (VMs, other
/// clusters) as EndpointSlices of a selector-less Service.
///
/// Each registration applies (server-side apply) one slice labelled
/// `kubernetes.io/service-name: <service>` and
/// `endpointslice.kubernetes.io/managed-by: registry-ext`, checks every 30 s
/// (`recheck_interval`) that it still exists (re-applying it if someone deleted it), and deletes
/// it on deregister. The instance's `zone` and `node` tags become the
/// endpoint's zone and node name.
///
/// ```no_run
/// use rpc_ext_registry::{k8s::K8sRegistry, Instance, Registry};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = K8sRegistry::try_default().await?.namespace("prod").port_name("grpc");
/// let registration = registry
///     .register(Instance::new("echo", "10.1.2.3:50051".parse().unwrap()))
///     .await?;
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct K8sRegistry {
    client: Client,
    namespace: Option<String>,
    port_name: Option<String>,
    advertise_ip: Option<IpAddr>,
    recheck: Duration,
}

impl std::fmt::Debug for K8sRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sRegistry")
            .field("namespace", &self.namespace)
            .field("port_name", &self.port_name)
            .finish_non_exhaustive()
    }
}

impl K8sRegistry {
    /// A registry using the usual configuration (in-cluster, then `KUBECONFIG`).
    pub async fn try_default() -> Result<Self> {
        Ok(Self::new(Client::try_default().await.map_err(kube_error)?))
    }

    /// A registry using `client`, in the client's default namespace.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self {
            client,
            namespace: None,
            port_name: None,
            advertise_ip: None,
            recheck: RECHECK,
        }
    }

    /// How often each registration checks that its slice still exists
    /// (default 30 s).
    #[must_use]
    pub fn recheck_interval(mut self, interval: Duration) -> Self {
        self.recheck = interval;
        self
    }

    /// The namespace of the Service (default: the client's).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The port name, matching the Service port's name (default: unnamed,
    /// for single-port Services).
    #[must_use]
    pub fn port_name(mut self, name: impl Into<String>) -> Self {
        self.port_name = Some(name.into());
        self
    }

    /// The IP to advertise for instances registered on `0.0.0.0` or `::`.
    #[must_use]
    pub fn advertise_ip(mut self, ip: IpAddr) -> Self {
        self.advertise_ip = Some(ip);
        self
    }

    fn api(&self) -> Api<EndpointSlice> {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::default_namespaced(self.client.clone()),
        }
    }

    fn slice_of(&self, instance: &Instance) -> EndpointSlice {
        let ip = instance.address.ip();
        let name = format!("{}-{}-{}", instance.service, ip, instance.address.port())
            .to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
        let name: String = name
            .chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches('-')
            .to_owned();
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name),
                labels: Some(BTreeMap::from([
                    (
                        "kubernetes.io/service-name".to_owned(),
                        instance.service.clone(),
                    ),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_owned(),
                        MANAGED_BY.to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            address_type: if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned(),
            endpoints: Some(vec![Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                zone: instance.tags.get("zone").cloned(),
                node_name: instance.tags.get("node").cloned(),
                ..Endpoint::default()
            }]),
            ports: Some(vec![EndpointPort {
                name: self.port_name.clone(),
                port: Some(i32::from(instance.address.port())),
                protocol: Some("TCP".to_owned()),
                ..EndpointPort::default()
            }]),
        }
    }
}

impl Registry for K8sRegistry {
    async fn register(&self, mut instance: Instance) -> Result<Registration> {
        instance.address = advertise_address(instance.address, self.advertise_ip)?;
        instance.validate()?;
        let slice = self.slice_of(&instance);
        let keeper = Keeper {
            api: self.api(),
            recheck: self.recheck,
            name: slice.metadata.name.clone().unwrap_or_default(),
            slice,
        };
        keeper.apply().await?;
        info!(slice = %keeper.name, "registered as an EndpointSlice");
        let (registration, stop) = Registration::new(instance);
        tokio::spawn(Arc::new(keeper).keep(stop));
        Ok(registration)
    }
}

struct Keeper {
    api: Api<EndpointSlice>,
    recheck: Duration,
    name: String,
    slice: EndpointSlice,
}

impl Keeper {
    async fn apply(&self) -> Result<()> {
        let params = PatchParams::apply(MANAGED_BY).force();
        self.api
            .patch(&self.name, &params, &Patch::Apply(&self.slice))
            .await
            .map(drop)
            .map_err(kube_error)
    }

    async fn keep(self: Arc<Self>, mut stop: StopSignal) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut delay = self.recheck;
        loop {
            tokio::select! {
                reason = stop.wait() => {
                    let deleted = match self.api.delete(&self.name, &DeleteParams::default()).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                        Err(error) => Err(kube_error(error)),
                    };
                    if deleted.is_ok() {
                        info!(slice = %self.name, "deregistered (EndpointSlice deleted)");
                    }
                    reason.reply(deleted);
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
            let present = match self.api.get_opt(&self.name).await {
                Ok(found) => Ok(found.is_some()),
                Err(error) => Err(error),
            };
            delay = match present {
                Ok(true) => {
                    backoff.reset();
                    self.recheck
                }
                Ok(false) => {
                    warn!(slice = %self.name, "EndpointSlice gone; applying it again");
                    match self.apply().await {
                        Ok(()) => self.recheck,
                        Err(error) => {
                            warn!(slice = %self.name, %error, "EndpointSlice re-apply failed");
                            backoff.next_delay()
                        }
                    }
                }
                Err(error) => {
                    warn!(slice = %self.name, %error, "Kubernetes API unreachable");
                    backoff.next_delay()
                }
            };
        }
    }
}
