//! Registration as an EndpointSlice owned by the instance.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use k8s_openapi::{
    api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    Api, Client,
};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    api_error,
    api_versions::EndpointList,
    heartbeat::{Heartbeat, Renewal},
    keeper_health::KeeperHealth,
    kube_error,
    target::is_service_name,
    DEFAULT_LEASE_DURATION, LEASE_LABEL, MANAGED_BY, REGISTRATION_LABEL, SLICES,
};
use crate::{
    advertise_address, health::RegistryHealth, kit::Backoff, kit::StopSignal, Instance,
    Registration, Registry, Result,
};

/// How often a registration checks that its slice still exists, by default.
const RECHECK: Duration = Duration::from_secs(30);

/// Registers instances that no endpoints controller manages (VMs, other
/// clusters) as EndpointSlices of a selector-less Service.
///
/// Each registration applies (server-side apply) one slice labelled
/// `kubernetes.io/service-name: <service>` and
/// `endpointslice.kubernetes.io/managed-by: registry-ext`, checks every 30 s
/// (`recheck_interval`) that it still exists (re-applying it if someone
/// deleted it), and deletes it on deregister. The instance's `zone` and
/// `node` tags become the endpoint's zone and node name.
///
/// Each registration also holds a `coordination.k8s.io/v1` Lease of the
/// slice's name, which the slice names in its
/// [`LEASE_LABEL`](super::LEASE_LABEL): `holderIdentity` is the
/// registration id, `leaseDurationSeconds` the
/// [`lease_duration`](Self::lease_duration) (30 s by default), and
/// `renewTime` is renewed every third of it (retried after a failure,
/// created again if someone deleted the Lease). Resolvers stop using the
/// endpoint once the Lease has not been renewed for its duration, so a
/// process killed without deregistering (SIGKILL, OOM kill, lost host)
/// leaves their sets within one lease duration; see the [module
/// documentation](super#liveness).
///
/// Each registration is an entry of the registry's
/// [`health`](Self::health): `Registered` while its slice is stored and
/// its Lease renewed; `Reregistering` from the check that finds the slice
/// deleted until it is applied again, and from the first failed renewal
/// after the Lease went unrenewed for its duration (when resolvers stop
/// using the endpoint) until a renewal is stored again. Every renewal the
/// API server stored is counted in `renewals_ok`; every failed or refused
/// renewal, slice found deleted, failed check and failed re-apply in
/// `renewals_failed`.
///
/// The slice is named after the service, IP and port (a readable prefix and
/// a hash of the three), so registering the same instance again — a
/// restarted process — takes the slice over. Each registration labels it with
/// a random id ([`REGISTRATION_LABEL`](super::REGISTRATION_LABEL)), and
/// deregistering deletes the slice only while it still carries that id (with
/// a resource-version precondition), so an old process leaving after its
/// successor registered does not remove the successor's slice. The same
/// holds for the Lease: the successor takes it over, the old process stops
/// renewing a Lease held by another registration and deletes it only while
/// it holds it.
///
/// The instance's service name is the Service's name, so it must be one:
/// an RFC 1035 label (`echo`, `payments-api`; at most 63 characters);
/// anything else is refused with [`InvalidInstance`](crate::Error::InvalidInstance)
/// before any request. The slice's port carries [`port_name`](Self::port_name),
/// which should be the name of the Service port it serves: `k8s://` targets
/// match it by name, and numeric targets through the Service port of that
/// name.
///
/// It needs `get`, `create`, `patch` and `delete` on
/// `endpointslices.discovery.k8s.io`, and `get`, `create`, `update` and
/// `delete` on `leases.coordination.k8s.io` in its namespace (see the
/// [module documentation](super#permissions)); a refused request is an
/// [`Error::PermissionDenied`](crate::Error::PermissionDenied) naming the
/// permission.
///
/// ```no_run
/// use rpc_ext_registry::{k8s::K8sRegistry, Instance, Registry};
///
/// # #[tokio::main] async fn main() -> rpc_ext_registry::Result<()> {
/// let registry = K8sRegistry::try_default()
///     .await?
///     .namespace("prod")
///     .port_name("grpc")
///     .lease_duration(std::time::Duration::from_secs(15));
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
    lease_duration: Duration,
    health: RegistryHealth,
}

impl std::fmt::Debug for K8sRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sRegistry")
            .field("namespace", &self.namespace)
            .field("port_name", &self.port_name)
            .field("lease_duration", &self.lease_duration)
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
            lease_duration: DEFAULT_LEASE_DURATION,
            health: RegistryHealth::new(),
        }
    }

    /// Reports the health of the registrations into `health` (default: a
    /// handle of this registry's own), so that several registries and
    /// resolvers can be read at once (see
    /// [`K8sResolver::with_health`](super::K8sResolver::with_health)).
    #[must_use]
    pub fn with_health(mut self, health: RegistryHealth) -> Self {
        self.health = health;
        self
    }

    /// The health of this registry's registrations (shared by its clones):
    /// each one's state, the Lease renewals the API server stored or that
    /// failed, and re-registrations after a deleted slice or an expired
    /// Lease. See [`health`](crate::health).
    ///
    /// ```
    /// use rpc_ext_registry::k8s::K8sRegistry;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let config = kube::Config::new("http://127.0.0.1:6443".parse().unwrap());
    /// let registry = K8sRegistry::new(kube::Client::try_from(config).unwrap());
    /// // Nothing registered yet.
    /// assert!(registry.health().snapshot().registrations.is_empty());
    /// # }
    /// ```
    #[must_use]
    pub fn health(&self) -> RegistryHealth {
        self.health.clone()
    }

    /// How long a registration's Lease stays live without a renewal
    /// (default 30 s, whole seconds, at least 1): the longest time resolvers
    /// keep using the endpoint of a process that died without
    /// deregistering. It is renewed every third of this. Resolvers read the
    /// duration from each Lease, so registries may use different ones.
    #[must_use]
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration;
        self
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

    /// The namespace of the slices: the configured one, else the client's.
    fn namespace_name(&self) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| self.client.default_namespace().to_owned())
    }

    fn slice_of(&self, instance: &Instance, registration: &str) -> EndpointSlice {
        let ip = instance.address.ip();
        let name = slice_name(&instance.service, ip, instance.address.port());
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "kubernetes.io/service-name".to_owned(),
                        instance.service.to_string(),
                    ),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_owned(),
                        MANAGED_BY.to_owned(),
                    ),
                    (REGISTRATION_LABEL.to_owned(), registration.to_owned()),
                    // The Lease has the slice's name.
                    (LEASE_LABEL.to_owned(), name.clone()),
                ])),
                ..ObjectMeta::default()
            },
            address_type: if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned(),
            endpoints: EndpointList::from_endpoints(vec![Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                zone: instance.tags.get("zone").map(str::to_owned),
                node_name: instance.tags.get("node").map(str::to_owned),
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
        // The service name becomes the `kubernetes.io/service-name` label
        // and must name the Service a `k8s://` target resolves: refused
        // here rather than by the API server (a label value over 63
        // characters is a 422) or, worse, accepted and never resolvable
        // (`Echo`, `echo.v1`).
        if !is_service_name(&instance.service) {
            return Err(crate::Error::InvalidInstance(format!(
                "{:?} cannot be a Kubernetes Service name: at most 63 lowercase letters, \
                 digits or '-', starting with a letter and ending with a letter or digit",
                instance.service
            )));
        }
        let registration = crate::instance::registration_id();
        let slice = self.slice_of(&instance, &registration);
        let namespace = self.namespace_name();
        let name = slice.metadata.name.clone().unwrap_or_default();
        let mut keeper = Keeper {
            api: Api::namespaced(self.client.clone(), &namespace),
            heartbeat: Heartbeat::new(
                Api::namespaced(self.client.clone(), &namespace),
                namespace.clone(),
                name.clone(),
                registration.clone(),
                instance.service.to_string(),
                self.lease_duration,
            ),
            held_by_other: false,
            namespace,
            recheck: self.recheck,
            name,
            slice,
            registration,
        };
        keeper.apply().await?;
        // The slice first: resolvers give a slice whose Lease they have not
        // seen yet a grace period, so the order is invisible to them, and a
        // registration refused here leaves no Lease behind.
        if let Err(error) = keeper.heartbeat.acquire().await {
            if let Err(cleanup) = keeper.delete_slice().await {
                warn!(slice = %keeper.name, %cleanup, "cannot remove the slice of a failed registration");
            }
            return Err(error);
        }
        info!(slice = %keeper.name, "registered as an EndpointSlice with a Lease");
        let (mut registration, stop) = Registration::new(instance);
        let probe = registration.track(super::BACKEND, &self.health);
        let health = KeeperHealth::new(probe, keeper.heartbeat.duration());
        tokio::spawn(keeper.keep(stop, health));
        Ok(registration)
    }
}

struct Keeper {
    api: Api<EndpointSlice>,
    heartbeat: Heartbeat,
    /// Whether the last renewal found the Lease held by another
    /// registration (logged once per takeover).
    held_by_other: bool,
    /// For naming a refused permission.
    namespace: String,
    recheck: Duration,
    name: String,
    slice: EndpointSlice,
    registration: String,
}

/// Longest slice name this crate makes: a DNS label, as the names the
/// endpoints controller generates.
const MAX_NAME: usize = 63;
/// Hex digits of the hash that ends every slice name.
const HASH_DIGITS: usize = 12;

/// The slice name of an instance: `<service>-<ip>-<port>` made a DNS label
/// (lowercase alphanumerics and `-`), cut so that `-` and a hash of the
/// exact service, IP and port still fit in 63 characters. The hash keeps
/// apart instances whose readable prefixes are the same once cut or
/// sanitised (a long service name with IPv6 addresses that differ at the
/// end, `a.b` and `a-b`). The hash is fixed (`stable_hash`), so that every
/// build and version of this crate gives an instance the same name.
fn slice_name(service: &str, ip: IpAddr, port: u16) -> String {
    let full = format!("{service}\0{ip}\0{port}");
    let hash = crate::instance::stable_hash(&full);
    let readable = format!("{service}-{ip}-{port}")
        .to_ascii_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    let prefix: String = readable.chars().take(MAX_NAME - 1 - HASH_DIGITS).collect();
    let prefix = prefix.trim_matches('-');
    let hash = format!("{hash:016x}");
    let hash = &hash[..HASH_DIGITS];
    if prefix.is_empty() {
        hash.to_owned()
    } else {
        format!("{prefix}-{hash}")
    }
}

impl Keeper {
    async fn apply(&self) -> Result<()> {
        let params = PatchParams::apply(MANAGED_BY).force();
        self.api
            .patch(&self.name, &params, &Patch::Apply(&self.slice))
            .await
            .map(drop)
            .map_err(|error| api_error(error, "patch", SLICES, &self.namespace))
    }

    /// The slice, if it exists.
    async fn get(&self) -> Result<Option<EndpointSlice>> {
        self.api
            .get_opt(&self.name)
            .await
            .map_err(|error| api_error(error, "get", SLICES, &self.namespace))
    }

    /// Deletes the slice, then the Lease, each only if it is still this
    /// registration's. A Lease left behind (its delete failed) expires; a
    /// slice left behind then names an expired Lease, so its endpoint is
    /// not used either.
    async fn delete(&self) -> Result<()> {
        let slice = self.delete_slice().await;
        let lease = self.heartbeat.release().await;
        slice.and(lease)
    }

    /// Deletes the slice if it is still this registration's. A slice
    /// labelled with another registration id was taken over by a later
    /// registration of the same instance (a successor process) and is left
    /// alone. The delete carries the resource version and UID that were
    /// checked as preconditions, so a takeover between the read and the
    /// delete makes the API server refuse it (409), and the check runs again.
    async fn delete_slice(&self) -> Result<()> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let Some(current) = self.get().await? else {
                info!(slice = %self.name, "EndpointSlice already gone");
                return Ok(());
            };
            let owner = current
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(REGISTRATION_LABEL));
            if owner.map(String::as_str) != Some(self.registration.as_str()) {
                info!(
                    slice = %self.name,
                    ours = %self.registration,
                    theirs = owner.map_or("none", String::as_str),
                    "not deleting the EndpointSlice: another registration took it over"
                );
                return Ok(());
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: current.metadata.resource_version.clone(),
                    uid: current.metadata.uid.clone(),
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(&self.name, &params).await {
                Ok(_) => {
                    info!(slice = %self.name, "deregistered (EndpointSlice deleted)");
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
                // Changed since it was read: look again.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(error) => return Err(api_error(error, "delete", SLICES, &self.namespace)),
            }
        }
        Err(crate::Error::backend(
            super::BACKEND,
            format!(
                "EndpointSlice {} kept changing; not deleted after {ATTEMPTS} attempts",
                self.name
            ),
        ))
    }

    /// Renews the Lease every third of its duration and checks the slice
    /// every `recheck`, recording both in `health`, until the handle asks
    /// to stop or is dropped.
    async fn keep(mut self, mut stop: StopSignal, mut health: KeeperHealth) {
        let renew_every = self.heartbeat.renew_interval();
        let mut renewal_backoff = Backoff::new(Duration::from_millis(200), renew_every);
        let mut check_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut next_renewal = Instant::now() + renew_every;
        let mut next_check = Instant::now() + self.recheck;
        loop {
            tokio::select! {
                reason = stop.wait() => {
                    reason.reply(self.delete().await);
                    return;
                }
                () = tokio::time::sleep_until(next_renewal.min(next_check)) => {}
            }
            if Instant::now() >= next_renewal {
                let delay = match self.renew(renew_every).await {
                    Ok(renewal) => {
                        match renewal {
                            Renewal::Renewed => health.lease_renewed(),
                            Renewal::HeldBy(_) => health.lease_held_by_other(),
                        }
                        renewal_backoff.reset();
                        renew_every
                    }
                    Err(error) => {
                        warn!(lease = %self.name, %error, "Lease renewal failed; retrying");
                        if health.lease_renewal_failed() {
                            warn!(lease = %self.name, "Lease unrenewed for its duration: resolvers no longer use the endpoint");
                        }
                        renewal_backoff.next_delay()
                    }
                };
                next_renewal = Instant::now() + delay;
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + self.check(&mut check_backoff, &mut health).await;
            }
        }
    }

    /// One renewal, given at most `limit` so that an API server that does
    /// not answer delays the retry rather than every later renewal.
    async fn renew(&mut self, limit: Duration) -> Result<Renewal> {
        match tokio::time::timeout(limit, self.heartbeat.renew()).await {
            Ok(Ok(Renewal::Renewed)) => {
                self.held_by_other = false;
                Ok(Renewal::Renewed)
            }
            Ok(Ok(Renewal::HeldBy(holder))) => {
                // Taken over by a successor: its Lease, not ours to renew.
                // Checked again at each renewal, so that a Lease the
                // successor deleted is created again while this
                // registration lives.
                if !std::mem::replace(&mut self.held_by_other, true) {
                    info!(lease = %self.name, %holder, "Lease held by another registration; not renewing it");
                }
                Ok(Renewal::HeldBy(holder))
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(crate::Error::backend(
                super::BACKEND,
                format!("Lease renewal took longer than {limit:?}"),
            )),
        }
    }

    /// Checks that the slice exists, applying it again if it does not; the
    /// delay until the next check.
    async fn check(&self, backoff: &mut Backoff, health: &mut KeeperHealth) -> Duration {
        match self.get().await.map(|found| found.is_some()) {
            Ok(true) => {
                health.slice_found();
                backoff.reset();
                self.recheck
            }
            Ok(false) => {
                warn!(slice = %self.name, "EndpointSlice gone; applying it again");
                health.slice_gone();
                match self.apply().await {
                    Ok(()) => {
                        health.slice_applied();
                        info!(slice = %self.name, "EndpointSlice applied again");
                        self.recheck
                    }
                    Err(error) => {
                        warn!(slice = %self.name, %error, "EndpointSlice re-apply failed");
                        health.slice_check_failed();
                        backoff.next_delay()
                    }
                }
            }
            Err(error) => {
                warn!(slice = %self.name, %error, "cannot check the EndpointSlice");
                health.slice_check_failed();
                backoff.next_delay()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    }

    #[test]
    fn long_names_with_ipv6_addresses_do_not_collide() {
        let service = "a-rather-long-service-name-for-the-payments-gateway";
        let a = slice_name(service, "fd00:1234:5678::1".parse().unwrap(), 50051);
        let b = slice_name(service, "fd00:1234:5678::2".parse().unwrap(), 50051);
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(is_dns_label(name), "{name}");
            assert!(name.starts_with("a-rather-long-service-name"), "{name}");
        }
        // The same instance always gets the same name.
        assert_eq!(
            a,
            slice_name(service, "fd00:1234:5678::1".parse().unwrap(), 50051)
        );
    }

    #[test]
    fn names_stay_readable_and_valid() {
        let name = slice_name("echo", "10.1.2.3".parse().unwrap(), 50051);
        assert!(name.starts_with("echo-10-1-2-3-50051-"), "{name}");
        assert!(is_dns_label(&name), "{name}");
        // Names the same once sanitised differ by their hash.
        let dotted = slice_name("A.b", "10.1.2.3".parse().unwrap(), 1);
        let dashed = slice_name("a-b", "10.1.2.3".parse().unwrap(), 1);
        assert_ne!(dotted, dashed);
        assert!(is_dns_label(&dotted) && is_dns_label(&dashed));
        assert!(is_dns_label(&slice_name("--", "::1".parse().unwrap(), 1)));
    }
}
