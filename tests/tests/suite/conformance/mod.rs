//! One conformance suite for every registry backend: each scenario is
//! written once, generic over [`tests::backends::BackendFixture`], and run
//! against every backend, each (backend, scenario) pair a test of its own
//! named `conformance::<backend>::<scenario>`.
//!
//! Scenarios come in groups, by what they need from the backend:
//!
//! - `core` (every backend): `registered_instances_are_seen`,
//!   `tag_updates_are_seen`, `deregistered_instances_are_gone`,
//!   `dropping_the_handle_deregisters`, `zero_instances_is_an_answer`,
//!   `many_services_each_see_their_own`.
//! - `weights`: `weight_updates_are_seen`; the backend stores weights.
//! - `expiry`: `registrations_outlive_their_ttl`; registrations expire
//!   unless renewed.
//! - `outage`: `backend_down_keeps_the_last_set`,
//!   `backend_back_clears_the_error`; the fixture can take the backend
//!   down and bring it back.
//! - `data_loss`: `restart_losing_data_brings_registrations_back`; the
//!   fixture can make the backend lose its data.
//!
//! Adding a backend is one `impl BackendFixture` in `tests/src/backends/`
//! (see that module) and one `conformance!` line below naming its groups.
//! A group left out generates no test, so a scenario a backend cannot run
//! never passes silently; the line says why it is left out.
//!
//! Assertions are exact (the instance sets, addresses, weights and tags; what
//! the backend itself holds), deadlines generous (see `harness`).

mod data_loss;
mod expiry;
mod harness;
mod outage;
mod registration;
mod scale;
mod updates;

/// `conformance!(<backend>: <fixture type>; <group>, ...)`: a module
/// `<backend>` with one `#[tokio::test]` per scenario of each group.
macro_rules! conformance {
    (@core $fixture:ty) => {
        conformance!(@tests $fixture;
            registration::registered_instances_are_seen,
            updates::tag_updates_are_seen,
            registration::deregistered_instances_are_gone,
            registration::dropping_the_handle_deregisters,
            registration::zero_instances_is_an_answer,
            scale::many_services_each_see_their_own
        );
    };
    (@weights $fixture:ty) => {
        conformance!(@tests $fixture; updates::weight_updates_are_seen);
    };
    (@expiry $fixture:ty) => {
        conformance!(@tests $fixture; expiry::registrations_outlive_their_ttl);
    };
    (@outage $fixture:ty) => {
        conformance!(@tests $fixture;
            outage::backend_down_keeps_the_last_set,
            outage::backend_back_clears_the_error
        );
    };
    (@data_loss $fixture:ty) => {
        conformance!(@tests $fixture; data_loss::restart_losing_data_brings_registrations_back);
    };
    (@tests $fixture:ty; $($module:ident::$scenario:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() -> anyhow::Result<()> {
                super::$module::$scenario::<$fixture>().await
            }
        )+
    };
    ($backend:ident: $fixture:ty; $($group:ident),+) => {
        mod $backend {
            $(conformance!(@$group $fixture);)+
        }
    };
}

// In process: nothing expires, goes down or loses data, so no `expiry`,
// `outage` or `data_loss` tests.
conformance!(memory: tests::backends::MemoryFixture; core, weights);
conformance!(etcd: tests::backends::EtcdFixture; core, weights, expiry, outage, data_loss);
conformance!(zookeeper: tests::backends::ZooKeeperFixture; core, weights, expiry, outage, data_loss);
conformance!(consul: tests::backends::ConsulFixture; core, weights, expiry, outage, data_loss);
// Files in a directory, a backend built outside rpc-ext-registry on its kit.
conformance!(directory: tests::backends::DirectoryFixture; core, weights, expiry, outage, data_loss);
// An EndpointSlice endpoint has no weight (every instance resolves with the
// default), so no `weights` test; `core` checks that default.
conformance!(k8s: tests::backends::K8sFixture; core, expiry, outage, data_loss);
