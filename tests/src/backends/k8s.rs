//! Kubernetes as a fixture: the stand-in API server, or the real cluster of
//! `KUBECONFIG`.

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use rpc_ext_registry::{
    k8s::{K8sRegistry, K8sResolver},
    Instance, DEFAULT_WEIGHT,
};

use super::{ensure_covers, unique_name, BackendFixture, Capabilities, TTL};
use crate::{
    k8s::{client_for, K8sStandIn},
    FaultProxy,
};

/// The namespace of every slice and Lease the fixture's registries write.
const NAMESPACE: &str = "default";
/// The slices' port name, which targets name.
const PORT_NAME: &str = "grpc";
/// How often each registration checks that its slice still exists.
const RECHECK: Duration = Duration::from_millis(200);
/// The tags an EndpointSlice endpoint carries (its zone and node name).
const CARRIED_TAGS: [&str; 2] = ["zone", "node"];

/// A Kubernetes API server: the real cluster of `KUBECONFIG` when set and
/// the test needs no capability (a test cannot take a cluster down or wipe
/// it), else the stand-in. Registries and resolvers reach the stand-in
/// through a [`FaultProxy`], which refuses connections while it is down;
/// losing data deletes every EndpointSlice and Lease of the namespace.
pub struct K8sFixture {
    cluster: Cluster,
}

enum Cluster {
    Real(kube::Client),
    StandIn { api: K8sStandIn, proxy: FaultProxy },
}

impl K8sFixture {
    /// A client for registries and resolvers.
    fn client(&self) -> anyhow::Result<kube::Client> {
        match &self.cluster {
            Cluster::Real(client) => Ok(client.clone()),
            Cluster::StandIn { proxy, .. } => client_for(&proxy.endpoint()),
        }
    }

    /// A client for reading what the API server holds: past the proxy.
    fn direct_client(&self) -> anyhow::Result<kube::Client> {
        match &self.cluster {
            Cluster::Real(client) => Ok(client.clone()),
            Cluster::StandIn { api, .. } => api.client(),
        }
    }

    fn stand_in(&self, what: &str) -> anyhow::Result<(&K8sStandIn, &FaultProxy)> {
        match &self.cluster {
            Cluster::StandIn { api, proxy } => Ok((api, proxy)),
            Cluster::Real(_) => anyhow::bail!("the real cluster of KUBECONFIG cannot {what}"),
        }
    }
}

impl BackendFixture for K8sFixture {
    type Registry = K8sRegistry;
    type Resolver = K8sResolver;

    const NAME: &'static str = "k8s";

    async fn start(needs: Capabilities) -> anyhow::Result<Self> {
        ensure_covers::<Self>(Capabilities::ALL, needs)?;
        let cluster = match std::env::var("KUBECONFIG") {
            Ok(path) if !path.is_empty() && Capabilities::NONE.covers(needs) => {
                Cluster::Real(kube::Client::try_default().await?)
            }
            _ => {
                let api = K8sStandIn::start().await?;
                let proxy = FaultProxy::in_front_of(&api.url()).await?;
                Cluster::StandIn { api, proxy }
            }
        };
        Ok(Self { cluster })
    }

    fn describe(&self) -> String {
        match &self.cluster {
            Cluster::Real(_) => "the real cluster of KUBECONFIG".to_owned(),
            Cluster::StandIn { api, proxy } => format!(
                "the Kubernetes stand-in at {} behind a fault proxy at {}",
                api.url(),
                proxy.endpoint()
            ),
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self.cluster {
            Cluster::Real(_) => Capabilities::NONE,
            Cluster::StandIn { .. } => Capabilities::ALL,
        }
    }

    fn ttl(&self) -> Option<Duration> {
        Some(TTL)
    }

    async fn registry(&self) -> anyhow::Result<K8sRegistry> {
        Ok(K8sRegistry::new(self.client()?)
            .namespace(NAMESPACE)
            .port_name(PORT_NAME)
            .lease_duration(TTL)
            .recheck_interval(RECHECK))
    }

    async fn resolver(&self) -> anyhow::Result<K8sResolver> {
        Ok(K8sResolver::new(self.client()?))
    }

    async fn stored(&self, service: &str) -> anyhow::Result<Vec<SocketAddr>> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.direct_client()?, NAMESPACE);
        let selector = format!("kubernetes.io/service-name={service}");
        let listed = slices
            .list(&ListParams::default().labels(&selector))
            .await?;
        let mut addresses = Vec::new();
        for slice in listed.items {
            let port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(PORT_NAME))
                .and_then(|p| p.port)
                .ok_or_else(|| anyhow::anyhow!("a slice without port {PORT_NAME}: {slice:?}"))?;
            let port = u16::try_from(port)?;
            for endpoint in slice.endpoints.iter().flatten() {
                for ip in &endpoint.addresses {
                    addresses.push(SocketAddr::new(ip.parse()?, port));
                }
            }
        }
        addresses.sort_unstable();
        Ok(addresses)
    }

    fn service_name(&self, base: &str) -> String {
        match self.cluster {
            // Other tests and runs share a real cluster.
            Cluster::Real(_) => unique_name(base),
            Cluster::StandIn { .. } => base.to_owned(),
        }
    }

    fn target(&self, service: &str) -> String {
        format!("k8s://{service}.{NAMESPACE}:{PORT_NAME}")
    }

    /// Not loopback: a real API server may refuse loopback endpoints.
    fn address(&self, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 1, 2, 3], port))
    }

    /// Resolved instances are named after the target, have the default
    /// weight (a slice has no weight) and only the tags an endpoint carries.
    fn as_resolved(&self, registered: &Instance) -> Instance {
        Instance {
            service: self.target(&registered.service).into(),
            address: registered.address,
            weight: DEFAULT_WEIGHT,
            tags: registered
                .tags
                .iter()
                .filter(|(key, _)| CARRIED_TAGS.contains(key))
                .collect(),
        }
    }

    async fn take_down(&mut self) -> anyhow::Result<()> {
        self.stand_in("be taken down")?.1.set_refusing(true);
        Ok(())
    }

    async fn bring_back(&mut self) -> anyhow::Result<()> {
        self.stand_in("be brought back")?.1.set_refusing(false);
        Ok(())
    }

    async fn restart_losing_data(&mut self) -> anyhow::Result<()> {
        let (api, _) = self.stand_in("lose its data")?;
        for name in api.names(NAMESPACE) {
            api.remove(NAMESPACE, &name);
        }
        for name in api.lease_names(NAMESPACE) {
            api.remove_lease(NAMESPACE, &name);
        }
        Ok(())
    }
}
